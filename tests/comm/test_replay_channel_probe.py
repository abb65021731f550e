"""Live probe of the replay's channel (real node processes, real CurveZMQ sockets on loopback):
a node with a valid key that sends a ``Packet`` as an agent it does not play in that frame is
refused and counted, while packets from the node that plays their sender go through.

The system: ``player`` (:class:`probe_nodes.SlotPlayer`: frames 0..3, agent 308 in slot 0 and
agent -1 in slot 1 for frames 0 and 1, swapped for frames 2 and 3, ego 42), ``channel`` (the
replay's :class:`~v2x.pipeline.replay.channel.ReplayChannelNode`) and ``watcher`` (a listener
on everything the channel delivers). ``agent0`` and ``ego`` are in the launch (their keys are
the run's) but run no process: the probe sends with their keys, under their names.
"""

import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from comm_helpers import NodeEntry, summary, wait_for

from v2x.comm.demo_nodes import payload_for
from v2x.comm.envelope import Json, Packet, encode_frames
from v2x.comm.graph import Inspector, read_graph
from v2x.comm.launch import LaunchSpec
from v2x.comm.supervisor import Supervisor
from v2x.comm.transport import free_tcp_port
from v2x.pipeline.replay.protocol import POSITIONS

pytestmark = pytest.mark.integration
HERE = str(Path(__file__).parent)
FIRST = {"slots": {"308": 0, "-1": 1}, "ego_id": "42"}
SWAPPED = {"slots": {"-1": 0, "308": 1}, "ego_id": "42"}


def _log(sup, name):
    path = sup.run_dir / f"{name}.log"
    return path.read_text(errors="replace") if path.is_file() else ""


class _Sender:
    """A PUB socket at the channel's inbox with one of the run's keys, sending as that node
    (well-formed, numbered headers: only the packet's ``sender`` may lie)."""

    def __init__(self, sup, name):
        self.name, self.epoch, self.n = name, time.time_ns(), 0
        keys = Path(sup.spec.keys)
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_publickey, self.sock.curve_secretkey = zmq.auth.load_certificate(
            keys / f"{name}.key_secret"
        )
        self.sock.curve_serverkey = zmq.auth.load_certificate(keys / "channel.key")[0]
        self.sock.connect(sup.endpoints["channel"])

    def send(self, topic, msg):
        self.n += 1
        self.sock.send_multipart(
            encode_frames(topic, msg, source=self.name, seq=self.n, epoch=self.epoch, number=self.n)
        )

    def packet(self, seq, agent, frame, receiver="42", kind="features"):
        """Packet ``seq`` (its payload says which) as agent ``agent`` for ``frame``."""
        root = "ego" if kind == "demand" else "agents"
        pkt = Packet(payload_for(seq, 2000), sender=agent, receiver=receiver, kind=kind, frame=frame)
        self.send(f"/{root}/{agent}/{kind}", pkt)


def _counters(sup, until, timeout=20.0):
    last = {}
    with Inspector(read_graph(sup.run_dir), "/diagnostics", ["channel"]) as insp:
        for _, msg, _ in insp.messages(timeout):
            if msg is not None and msg.node == "channel":
                last = dict(msg.counters)
                if until(last):
                    break
    return last


@pytest.fixture
def system(run_dir):
    out, go = run_dir / "watcher.json", run_dir / "go"
    free = {n: f"tcp://127.0.0.1:{free_tcp_port()}" for n in ("agent0", "ego")}
    nodes = [
        NodeEntry(
            "player",
            "probe_nodes:SlotPlayer",
            {"frames": [FIRST, FIRST, SWAPPED, SWAPPED], "pause_at": 3, "go": str(go)},
            env={"PYTHONPATH": HERE},
        ),
        NodeEntry(
            "channel",
            "v2x.pipeline.replay.channel:ReplayChannelNode",
            {"frame_source": "player", "diagnostics_s": 0.2},
            clock="sim",
        ),
        NodeEntry("agent0", "v2x.comm.demo_nodes:Talker", endpoint=free["agent0"]),
        NodeEntry("ego", "v2x.comm.demo_nodes:Talker", endpoint=free["ego"]),
        NodeEntry(
            "watcher",
            "v2x.comm.demo_nodes:Listener",
            {"topic": "/rx/", "summary": str(out), "expect": 4},
        ),
    ]
    sup = Supervisor(
        LaunchSpec("replay-probe", nodes), run_dir / "run", only=["player", "channel", "watcher"]
    )
    sup.start()
    try:
        paused = wait_for(lambda: "paused before frame 3" in _log(sup, "player"), timeout=40.0)
        assert paused, _log(sup, "player")
        yield sup, out, go
    finally:
        sup.stop(timeout=5)


def test_a_node_sending_as_an_agent_it_does_not_play_is_refused_and_counted(system):
    sup, out, go = system
    agent0, ego = _Sender(sup, "agent0"), _Sender(sup, "ego")
    time.sleep(0.5)  # connected and subscribed to (what a PUB sends before that is lost)
    try:
        agent0.packet(1, "308", 0)  # slot 0 plays 308 in frame 0: goes through
        agent0.packet(2, "-1", 0)  # -1 is slot 1's in frame 0
        agent0.packet(3, "-1", 2)  # the slots swapped in frame 2: now its own
        agent0.packet(4, "308", 2)
        agent0.packet(5, "-1", 3)  # frame 3 not played yet: held until its positions, then checked
        agent0.packet(6, "308", 3)
        # a forged assignment for frame 1 (only the player's count), then a packet that needs it
        agent0.send(POSITIONS, Json({"k": 1, "positions": {}, "slots": {"-1": 0}, "ego_id": "42"}))
        agent0.packet(8, "-1", 1)
        agent0.packet(9, "308", -1)  # a frame nobody played
        ego.packet(7, "42", 1, receiver="308", kind="demand")  # the ego's own demand
        ego.packet(10, "308", 1)  # the ego's node sending as an agent
        held = _counters(sup, lambda c: c.get("early_packets", 0) >= 2)
        assert held.get("early_packets", 0) >= 2, held  # 5 and 6 wait for frame 3's positions
        go.touch()
        c = _counters(
            sup, lambda c: c.get("refused:channel.impersonation", 0) >= 5 and c.get("link_sent", 0) >= 4
        )
    finally:
        agent0.sock.close(0)
        ego.sock.close(0)
    assert c["refused:channel.impersonation"] == 5, c
    assert c["refused:channel.impersonation:-1"] == 2  # by the agent it claimed
    assert c["refused:channel.impersonation:308"] == 3
    assert c["refused:channel.not_player:agent0"] == 1
    assert c["refused:channel.unknown_frame:308"] == 1
    assert c["link_sent"] == 4  # the impostor spent no link's budget
    assert not any(k.startswith("refused:inbox") for k in c)  # valid keys, under their own names
    assert wait_for(lambda: "received all 4" in _log(sup, "watcher"), timeout=20.0), _log(sup, "watcher")
    channel = sup.nodes["channel"].proc
    assert channel is not None and channel.poll() is None, _log(sup, "channel")
    log = _log(sup, "channel")
    assert "node 'agent0' sent a packet as agent '-1', which it does not play in frame 0" in log
    assert "node 'ego' sent a packet as agent '308'" in log
    sup.stop()
    s = summary(out)
    assert sorted(s["seen"]) == [1, 3, 5, 7] and s["corrupted"] == 0
    assert sorted(s["senders"]) == ["-1", "-1", "308", "42"]
