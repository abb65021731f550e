"""The parts of "secure by default" that need no process: private key files under any umask,
per-run keys, the per-sender freshness window, the frame gate, and the CLI's flags."""

import os
import stat

import pytest
import zmq.auth
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.comm.freshness import Freshness
from v2x.comm.launch import LaunchError, load_launch
from v2x.comm.limits import MIB, FrameGate, InboxLimits, frame_of
from v2x.comm.security import SecurityError, generate_keys, generate_run_keys


@pytest.fixture
def umask_000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_private_from_the_start_even_with_umask_000(tmp_path, umask_000, monkeypatch):
    """With umask 000 and no chmod allowed at all, every mode must come from creation itself:
    nothing is written loose and tightened afterwards."""

    def refuse(*_a, **_k):
        raise AssertionError("a key file or folder was restricted after it was created")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse)
    out = tmp_path / "a" / "keys"
    r = CliRunner().invoke(cli, ["keys", "generate", "--out", str(out), "--agents", "a1,ego"])
    assert r.exit_code == 0, r.output
    assert _mode(out) == 0o700 and _mode(out / "allowed") == 0o700
    for name in ("a1", "ego", "operator"):
        assert _mode(out / f"{name}.key_secret") == 0o600
        assert not _mode(out / f"{name}.key") & 0o022  # readable, writable by its owner only
        pub, sec = zmq.auth.load_certificate(out / f"{name}.key_secret")
        assert zmq.auth.load_certificate(out / f"{name}.key") == (pub, None) and len(sec) == 40
    assert not _mode(out / "allowed" / "a1.key") & 0o022
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary left behind


def test_an_existing_open_keys_folder_is_tightened(tmp_path, umask_000):
    out = tmp_path / "keys"
    (out / "allowed").mkdir(parents=True)  # umask 000: both 0777
    assert _mode(out) == 0o777
    generate_keys(out, ["a1"])
    assert _mode(out) == 0o700 and _mode(out / "allowed") == 0o700


def test_run_keys_are_fresh_each_run_and_never_replace_a_foreign_folder(tmp_path):
    folder = generate_run_keys(tmp_path / "run" / "keys", ["a1", "ego"])
    first = (folder / "a1.key_secret").read_bytes()
    (folder / "allowed" / "stale.key").write_bytes((folder / "a1.key").read_bytes())
    again = generate_run_keys(folder, ["a1", "ego"])
    assert (again / "a1.key_secret").read_bytes() != first
    assert sorted(p.name for p in (again / "allowed").iterdir()) == ["a1.key", "ego.key"]
    mine = tmp_path / "mine"
    generate_keys(mine, ["a1"])
    with pytest.raises(SecurityError, match="not a per-run keys folder"):
        generate_run_keys(mine, ["a1"])
    assert (mine / "a1.key_secret").is_file()


def test_freshness_admits_each_message_of_a_stream_once():
    f = Freshness(window=8)
    assert [f.check("a", 100, n) for n in (0, 1, 2, 5)] == [None] * 4
    assert f.check("a", 100, 5) == "replay"  # the same message again
    assert f.check("a", 100, 3) is None and f.check("a", 100, 3) == "replay"  # late once, then a copy
    assert f.check("a", 100, 13) is None
    assert f.check("a", 100, 4) == "replay"  # 9 behind the newest: outside the window
    assert f.check("b", 100, 13) is None  # another sender's stream is its own
    assert f.check("a", 200, 0) is None  # restarted: a later epoch opens a new stream
    assert f.check("a", 100, 14) == "stale_epoch"  # the old process's messages are over
    assert f.check("a", 200, 0) == "replay"


def test_freshness_forgets_the_least_recent_sender_beyond_its_bound():
    f = Freshness(max_senders=2)
    for s in ("a", "b", "c"):
        assert f.check(s, 1, 0) is None
    assert len(f) == 2 and f.check("b", 1, 0) == "replay" and f.check("a", 1, 0) is None


def test_frame_gate_with_a_source_bounds_and_frees_future_frames():
    gate = FrameGate(
        InboxLimits(frame_horizon=3, frame_bytes=10, sender_future_bytes=15, frame_sources=frozenset({"p"}))
    )
    assert gate.check("x", 0, 5) is None  # the source has not begun: frames 0..3 are ahead
    gate.admit("x", 0, 5)
    assert gate.check("x", 4, 1) == "future_frame"
    gate.admit("p", 2, 100)  # the source reaches frame 2: frame 0's bytes are given back
    assert gate.reference == 2 and gate.future_bytes == 0
    assert gate.check("p", 99, 1) is None  # the source itself is never ahead
    assert gate.check("x", 5, 1) is None and gate.check("x", 6, 1) == "future_frame"
    gate.admit("x", 3, 10)
    assert gate.check("y", 3, 1) == "frame_limit"  # frame 3 holds its 10 bytes
    gate.admit("x", 4, 5)
    assert gate.check("x", 5, 1) == "sender_future_limit"  # x holds its 15 for frames ahead
    assert gate.check("y", 5, 5) is None and gate.future_bytes == 15
    gate.admit("p", 4, 1)
    assert gate.future_bytes == 0 and gate.check("x", 5, 10) is None


def test_frame_gate_without_a_source_follows_the_newest_frame():
    gate = FrameGate(InboxLimits(frame_horizon=5))
    assert gate.check("x", 1000, MIB) is None  # the first frame heard sets the reference
    gate.admit("x", 1000, MIB)
    assert gate.check("y", 3, MIB) is None and gate.check("y", 1005, MIB) is None
    assert gate.check("y", 1006, MIB) == "future_frame"
    assert frame_of({"m": {"frame": 7}}) == 7 and frame_of({"m": {"frame": -1}}) is None
    assert frame_of({"m": {"frame": True}}) is None and frame_of({"m": []}) is None


def test_insecure_and_keys_contradict(tmp_path):
    f = tmp_path / "l.yaml"
    f.write_text("keys: k\nnodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker'}\n")
    generate_keys(tmp_path / "k", ["a"])
    assert load_launch(f).keys == str((tmp_path / "k").resolve())
    with pytest.raises(LaunchError, match="contradict"):
        load_launch(f, insecure=True)
    r = CliRunner().invoke(cli, ["launch", str(f), "--only", "a", "--insecure", "--duration", "0.1"])
    assert r.exit_code != 0 and "contradict" in r.output
    plain = tmp_path / "p.yaml"
    plain.write_text("nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker'}\n")
    r = CliRunner().invoke(cli, ["launch", str(plain), "--only", "a", "--duration", "0.1"])
    assert r.exit_code != 0 and "--keys" in r.output  # other hosts cannot share per-run keys
