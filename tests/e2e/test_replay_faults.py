"""``v2x replay`` with a collaborator's node killed or stopped mid-run, and a run cut short: real
node processes on loopback, codefilling (its agents wait for each other's offers).

The issue's figures: ``kill -9`` of an agent node used to stall the run for 120 s (its peer
waited for its offer, then the ego dropped the peer too), a stopped one cost seconds per frame,
and a run cut short reported no messages sent. Each test here sets the last safety net
(``wait_s``) to 60 s, so an old-style stall makes the run slower and these assertions fail,
rather than hanging the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from v2x.pipeline.replay.ego_frames import DIED, STOPPED
from v2x.pipeline.replay.results import load_run

FRAMES = 8
VICTIM = "agent0"


@pytest.fixture(scope="module")
def log(tmp_path_factory, generate_log) -> Path:
    """One scene, 8 frames, the ego and 2 collaborators, 32-channel LiDAR."""
    return generate_log(
        tmp_path_factory.mktemp("faults") / "log", frames=FRAMES, cavs=3, rsus=0, channels=32, seed=8
    )


def _start(log: Path, out: Path, tmp: Path) -> subprocess.Popen:
    launch = tmp / "launch.yaml"
    launch.write_text(
        "nodes:\n"
        + "".join(f"  - {{name: {n}, params: {{wait_s: 60}}}}\n" for n in ("agent0", "agent1", "ego"))
    )
    cmd = [sys.executable, "-m", "v2x.cli.main", "replay", str(log), "--out", str(out), "--json"]
    cmd += ["--method", "codefilling", "--tracker", "none", "--launch", str(launch)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _frame_done(out: Path) -> int:
    try:
        return int(json.loads((out / "progress.json").read_text())["k"])
    except (OSError, ValueError, KeyError):
        return -1


def _wait_for_frame(proc: subprocess.Popen, out: Path, k: int, timeout_s: float = 180) -> None:
    end = time.monotonic() + timeout_s
    while _frame_done(out) < k:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < end, f"frame {k} never done"
        time.sleep(0.02)


def _pid(out: Path, node: str) -> int:
    graph = json.loads((out / "nodes" / "graph.json").read_text())
    return next(n["pid"] for n in graph["nodes"] if n["name"] == node)


def _finish(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _victim_and_peer(out: Path) -> tuple[str, str]:
    """The agent ids agent0 and agent1 served (slots are sticky: the same all run here)."""
    first = load_run(out).frames[0]["agents"]
    return first[0], first[1]


def test_a_killed_agent_costs_one_frame_of_its_own_and_its_peer_still_fuses(log, tmp_path):
    out = tmp_path / "run"
    proc = _start(log, out, tmp_path)
    try:
        _wait_for_frame(proc, out, 1)
        os.kill(_pid(out, VICTIM), signal.SIGKILL)
        text = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text[-3000:]
    results = json.loads((out / "results.json").read_text())
    frames = load_run(out).frames
    victim, peer = _victim_and_peer(out)
    assert results["partial"] is False and results["frames"] == FRAMES
    # the peer that waited for the dead agent's offer went on at once: fused in every frame
    assert all(peer in r["fused"] for r in frames)
    gone = [r["k"] for r in frames if victim not in r["fused"]]
    assert gone and gone[0] >= 2  # the victim is missing from the frame it died in on
    assert results["agent_absences"] == {victim: len(gone)} and results["absence_reasons"] == {
        DIED: len(gone)
    }
    assert results["missing_agent_frames"] == len(gone) and results["nodes"]["restarts"] == {VICTIM: 1}
    assert results["messages"]["fused"] == 2 * FRAMES - len(gone)


def test_a_stopped_agent_is_gone_while_stopped_and_back_once_it_runs_again(log, tmp_path):
    out = tmp_path / "run"
    proc = _start(log, out, tmp_path)
    pid = None
    try:
        _wait_for_frame(proc, out, 1)
        pid = _pid(out, VICTIM)
        os.kill(pid, signal.SIGSTOP)
        _wait_for_frame(proc, out, 3)  # two frames go by without it: no wait on the stopped node
        os.kill(pid, signal.SIGCONT)
        text = _finish(proc)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text[-3000:]
    results = json.loads((out / "results.json").read_text())
    frames = load_run(out).frames
    victim, peer = _victim_and_peer(out)
    assert results["frames"] == FRAMES and all(peer in r["fused"] for r in frames)
    gone = [r["k"] for r in frames if victim not in r["fused"]]
    assert 3 in gone and victim in frames[-1]["fused"]  # gone while stopped, back before the end
    assert results["agent_absences"] == {victim: len(gone)} and results["absence_reasons"] == {
        STOPPED: len(gone)
    }
    assert results["nodes"]["restarts"] == {}  # stopped, not dead: nothing was restarted


def test_a_run_cut_short_keeps_the_channels_counts(log, tmp_path):
    out = tmp_path / "run"
    proc = _start(log, out, tmp_path)
    try:
        _wait_for_frame(proc, out, 2)
        proc.send_signal(signal.SIGINT)
        text = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, text[-3000:]  # partial
    results = json.loads((out / "results.json").read_text())
    assert results["partial"] is True and results["reason"] == "interrupted (SIGINT)"
    m, done = results["messages"], results["frames"]
    assert 3 <= done < FRAMES and m["fused"] >= 2 * done
    # each message fused passed the channel, and so did the demand it answered
    assert m["sent"] >= m["delivered"] >= 2 * m["fused"] > 0 and results["channel_stats"] is True
