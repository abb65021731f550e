"""Live probes of a secured system (real node processes, real CurveZMQ sockets on loopback):
a sender with a wrong key, an impersonator (a valid key claiming another node's name), a
replayed message and a flood of large future-frame messages. Each must leave the receiving
node running, with every refused message counted by reason and claimed sender; in the flood
the receiver's memory stays within its configured limits.

The system: ``agent1`` (a talker, 5 messages, the ego's frame source), ``ego`` (a
:class:`probe_nodes.Hoarder`: it keeps every packet for a frame ahead, as the replay's ego
does), and ``agent2``, whose key the probes use but whose process never runs. No keys are
given: the supervisor makes this run's keys itself (secure by default).
"""

import stat
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth
from comm_helpers import NodeEntry, summary, wait_for

from v2x.comm.demo_nodes import payload_for
from v2x.comm.envelope import Packet, encode_frames
from v2x.comm.graph import Inspector, read_graph
from v2x.comm.launch import LaunchSpec
from v2x.comm.security import OPERATOR
from v2x.comm.supervisor import Supervisor
from v2x.comm.transport import free_tcp_port

pytestmark = pytest.mark.integration
HERE = str(Path(__file__).parent)
MIB = 1 << 20
TALKS = 5  # agent1's messages: frames 0..4, so the ego's reference frame ends at 4


@pytest.fixture
def system(run_dir):
    started = []

    def start(insecure=False, talks=TALKS, check=True, **ego_params):
        """``talks``: agent1's message count (0: on and on); ``ego_params``: e.g. its limits."""
        out = run_dir / "ego.json"
        nodes = [
            NodeEntry(
                "agent1",
                "v2x.comm.demo_nodes:Talker",
                {"size": 2000, "rate_hz": 20, "count": talks, "wait_subscribers": 1},
            ),
            NodeEntry("agent2", "v2x.comm.demo_nodes:Talker", endpoint=f"tcp://127.0.0.1:{free_tcp_port()}"),
            NodeEntry(
                "ego",
                "probe_nodes:Hoarder",
                {
                    "summary": str(out),
                    "expect": TALKS,
                    "frame_source": "agent1",
                    "diagnostics_s": 0.2,
                    "check": check,
                    **ego_params,
                },
                env={"PYTHONPATH": HERE},
            ),
        ]
        sup = Supervisor(
            LaunchSpec("probe", nodes, insecure=insecure), run_dir / "run", only=["agent1", "ego"]
        )
        sup.start()
        started.append(sup)
        assert wait_for(lambda: f"received all {TALKS}" in _log(sup, "ego"), timeout=40.0), _log(sup, "ego")
        return sup, out

    yield start
    for sup in started:
        sup.stop(timeout=5)


def _log(sup, name):
    path = sup.run_dir / f"{name}.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def _sender(sup, key_name=None, keypair=None):
    """A PUB socket at the ego's inbox, outside the launch, with one of the run's keys (or a
    given pair, or none on plain links)."""
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    keys = sup.spec.keys
    if keys is not None:
        pub, sec = keypair or zmq.auth.load_certificate(Path(keys) / f"{key_name}.key_secret")
        sock.curve_publickey, sock.curve_secretkey = pub, sec
        sock.curve_serverkey = zmq.auth.load_certificate(Path(keys) / "ego.key")[0]
    sock.connect(sup.endpoints["ego"])
    time.sleep(0.5)  # connected and subscribed to (what a PUB sends before that is lost)
    return sock


def _packet(source, k, frame=-1, size=2000, epoch=None):
    pkt = Packet(payload_for(k, size), sender=source, kind="features", frame=frame)
    return encode_frames(
        f"/agents/{source}/features",
        pkt,
        source=source,
        seq=k,
        sent_ns=time.time_ns(),
        epoch=epoch if epoch is not None else time.time_ns(),
        number=k,
    )


def _counters(sup, until, timeout=20.0):
    """The ego's live counters (its /diagnostics, read on its tap) once ``until`` holds."""
    last = {}
    with Inspector(read_graph(sup.run_dir), "/diagnostics", ["ego"]) as insp:
        for _, msg, _ in insp.messages(timeout):
            if msg is not None and msg.node == "ego":
                last = dict(msg.counters)
                if until(last):
                    break
    return last


def _rss_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) / 1024


def _finish(sup, out):
    """Check the ego still runs, stop it (SIGTERM, a clean exit) and return its summary."""
    ego = sup.nodes["ego"].proc
    assert ego is not None and ego.poll() is None, _log(sup, "ego")
    sup.stop()
    assert sup.nodes["ego"].last_exit == "exit code 0"
    return summary(out)


def test_per_run_keys_are_private_and_on_every_link(system):
    sup, out = system()
    keys = Path(sup.spec.keys)
    assert keys.parent == sup.run_dir and keys.name == "keys"
    for folder in (keys, keys / "allowed"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("agent1", "agent2", "ego", OPERATOR):
        assert stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode) == 0o600
    s = _finish(sup, out)
    assert s["seen"] == list(range(TALKS)) and s["senders"] == ["agent1"] * TALKS
    c = s["diagnostics"]["counters"]
    assert c["inbox_handshakes"] >= 1 and not any(k.startswith("refused:inbox") for k in c)


def test_a_wrong_key_gets_nothing_in(system):
    sup, out = system()
    eve = _sender(sup, keypair=zmq.curve_keypair())
    try:
        for k in range(10):
            eve.send_multipart(_packet("eve", 100 + k))
        c = _counters(sup, lambda c: c.get("auth_refused_inbox", 0) >= 1)
    finally:
        eve.close(0)
    assert c.get("auth_refused_inbox", 0) >= 1 and c.get("inbox_handshake_failed_auth", 0) >= 1
    s = _finish(sup, out)
    assert s["seen"] == list(range(TALKS)) and set(s["senders"]) == {"agent1"}


def test_an_impersonator_is_refused_and_counted_by_claimed_sender(system):
    sup, out = system()
    mallory = _sender(sup, "agent2")  # a valid key of the run: agent2's
    n = 12
    try:
        epoch = time.time_ns()
        for k in range(n):  # claiming to be agent1, well-formed and numbered
            mallory.send_multipart(_packet("agent1", 1000 + k, epoch=epoch))
            time.sleep(0.01)
        # its own name, but not numbered in a stream: on secured links every message must be
        mallory.send_multipart(
            encode_frames("/agents/agent2/features", Packet(payload_for(2000, 64)), source="agent2")
        )
        c = _counters(
            sup,
            lambda c: (
                c.get("refused:inbox.impersonation", 0) >= n and c.get("refused:inbox.unsequenced", 0) >= 1
            ),
        )
    finally:
        mallory.close(0)
    assert c["refused:inbox.impersonation"] == n
    assert c["refused:inbox.unsequenced:agent2"] == 1
    assert c["refused:inbox.impersonation:agent1"] == n  # by the sender it claimed to be
    s = _finish(sup, out)
    assert s["seen"] == list(range(TALKS))  # none of the impostor's messages reached a callback
    assert "the key of 'agent2' sent a message claiming to be 'agent1'" in _log(sup, "ego")


def _tap_copy(sup, source):
    """One real message of ``source`` as it went out, read on its tap (the operator's key)."""
    with Inspector(read_graph(sup.run_dir), f"/agents/{source}/", [source]) as insp:
        insp.sock.setsockopt(zmq.RCVTIMEO, 15000)
        return [bytes(f) for f in insp.sock.recv_multipart()]


def _with_incarnation(frames, incarnation):
    header = msgpack.unpackb(frames[1], raw=False)
    header["i"] = incarnation
    return [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]


@pytest.mark.parametrize("insecure", [False, True], ids=["curve", "plain"])
def test_a_replayed_message_is_refused_even_with_a_new_process_id(system, insecure):
    """A copy of agent1's real message, re-sent as it was and with other incarnations ("i", the
    process id the header carries), is not new: the ego refuses every copy, on secured links
    (the replayer holds agent1's key) and on plain ones (``--insecure``) alike."""
    sup, out = system(insecure=insecure, talks=0)  # agent1 keeps talking: a message to copy
    copy = _tap_copy(sup, "agent1")
    header = msgpack.unpackb(copy[1], raw=False)
    assert header["src"] == "agent1" and {"e", "q"} <= set(header)
    replayer = _sender(sup, "agent1")
    try:
        replayer.send_multipart(copy)
        for inc in (1, 2, header["i"] ^ 0x5A5A):
            replayer.send_multipart(_with_incarnation(copy, inc))
        c = _counters(sup, lambda c: c.get("refused:inbox.replay", 0) >= 4)
    finally:
        replayer.close(0)
    assert c["refused:inbox.replay"] == 4 and c["refused:inbox.replay:agent1"] == 4
    s = _finish(sup, out)
    seq = int(np.frombuffer(copy[2][:8], np.int64)[0])
    assert s["seen"].count(seq) == 1  # the original, once
    assert s["corrupted"] == 0 and s["seen"] == sorted(set(s["seen"]))


def test_a_flood_of_future_frames_is_refused_counted_and_bounded(system):
    """40 packets of 16 MiB from a valid key under its own name, for frames ahead of the frame
    source's newest (4): half beyond the horizon, half within it. The ego keeps whatever it
    is given for frames ahead; the budgets let it be given 3 (48 MiB), and its memory grows by
    no more than the configured limits."""
    limits = {
        "frame_horizon": 10,
        "frame_mb": 20,
        "sender_future_mb": 49,
        "held_mb": 96,
        "sender_held_mb": 64,
    }
    sup, out = system(check=False, **limits)
    start_mb = _rss_mb(sup.nodes["ego"].proc.pid)
    insider = _sender(sup, "agent2")
    big = payload_for(7, 16 * MIB)
    epoch = time.time_ns()
    try:
        for k in range(40):
            frame = 5 + k % 10 if k < 20 else 1000 + k  # within the horizon (4 + 10), then beyond
            pkt = Packet(big, sender="agent2", kind="features", frame=frame)
            frames = encode_frames(
                "/agents/agent2/features", pkt, source="agent2", seq=k, epoch=epoch, number=k
            )
            insider.send_multipart(frames, copy=False)
            time.sleep(0.05)  # the flood's pace; no copy is lost to a full queue
        reasons = ("future_frame", "frame_limit", "sender_future_limit")
        c = _counters(
            sup,
            lambda c: (
                sum(c.get(f"refused:inbox.{r}", 0) for r in reasons) + c.get("future_bytes", 0) // (16 * MIB)
                >= 40
            ),
        )
    finally:
        insider.close(0)
    # frames 5, 6, 7 fit (16 MiB and a header each: the sender's 49 MiB); 8..14 are over the
    # sender's budget;
    # the second round's 5, 6, 7 are over their frame's 20 MiB, 8..14 over the sender's again
    assert c["refused:inbox.future_frame:agent2"] == 20
    assert c["refused:inbox.frame_limit:agent2"] == 3, c
    assert c["refused:inbox.sender_future_limit:agent2"] == 14, c
    assert 3 * 16 * MIB < c["future_bytes"] < 3 * 16 * MIB + 3000  # payloads, headers and topics
    assert not any(k.startswith("refused:inbox.") and "held" in k for k in c)
    s = _finish(sup, out)
    assert s["kept_max"] == 3 * 16 * MIB == s["kept_bytes"]
    assert s["corrupted"] == 0
    grown = s["peak_rss_mb"] - start_mb  # 640 MiB kept, before the frame gate
    assert grown < limits["sender_future_mb"] + limits["held_mb"], s["peak_rss_mb"]
