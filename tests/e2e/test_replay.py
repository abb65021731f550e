"""``v2x replay``: the multi-process replay against the in-process pipeline on a tiny simulated
log, its results, an agent node killed mid-run, and refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.core.boxes import Boxes
from v2x.core.grid import BEVGrid
from v2x.pipeline.replay.results import (
    boxes_from_json,
    boxes_to_json,
    load_run,
    sent_cells_from_json,
    sent_cells_to_json,
)
from v2x.pipeline.replay.run import REALTIME_AGENT_NICE, merge_launch
from v2x.pipeline.replay.slots import SlotMap

FRAMES = 4
OPTIONS = dict(method="where2comm", budget="400kbps", channel="ideal", tracker="ab3dmot")
GRID = BEVGrid()  # the shipped detector's BEV cells (its z range does not matter here)


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory, generate_log) -> Path:
    """One scene, 4 frames, 3 CAVs and an RSU, 32-channel LiDAR (about 5 s to make)."""
    out = tmp_path_factory.mktemp("replay") / "log"
    return generate_log(out, frames=FRAMES, cavs=3, rsus=1, channels=32, seed=5)


@pytest.fixture(scope="module")
def replayed(tiny_log, tmp_path_factory):
    """The log through the node processes (simulated clock), and the same in one process."""
    from v2x.pipeline.config import RunConfig
    from v2x.pipeline.replay.run import ReplayOptions, run_replay
    from v2x.pipeline.runs import run_log

    cfg = RunConfig.from_options(**OPTIONS)
    out = tmp_path_factory.mktemp("replay") / "run"
    results = run_replay(ReplayOptions(tiny_log, cfg, out))
    reference = run_log(tiny_log, RunConfig.from_options(**OPTIONS))
    return results, load_run(out), reference


def _same(a: Boxes | None, b: Boxes | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (
        len(a) == len(b)
        and np.allclose(a.xyzlwhy, b.xyzlwhy, rtol=0, atol=1e-9)
        and np.array_equal(a.labels, b.labels)
        and (a.scores is None) == (b.scores is None)
        and (a.scores is None or np.allclose(a.scores, b.scores, rtol=0, atol=1e-9))
    )


@pytest.mark.slow
def test_processes_and_one_process_give_the_same_detections(replayed):
    results, run, reference = replayed
    ref = reference["_detections"]
    assert len(run.frames) == len(ref) == FRAMES
    for got, want in zip(run.frames, ref, strict=True):
        assert (got["scenario"], got["index"]) == (want["scenario"], want["index"])
        assert _same(got["boxes"], want["boxes"]), f"frame {got['index']}: boxes differ"
        assert _same(got["tracks"], want["tracks"]), f"frame {got['index']}: tracks differ"
        # the same cells from the same senders (what `v2x viz --run` draws)
        sent = sent_cells_from_json(sent_cells_to_json(want["sent_cells"], GRID))
        assert got["sent_cells"].keys() == sent.keys() and len(sent) == len(got["fused"]) == 3
        for aid, xy in sent.items():
            assert len(xy) > 0 and np.allclose(got["sent_cells"][aid], xy, rtol=0, atol=1e-9), aid
    # the same books: detection and tracking scores, bytes, the channel's counts
    assert results["ap_bev"] == reference["ap_bev"]
    assert results["amota"] == pytest.approx(reference["amota"])
    assert results["bytes_per_agent_frame"] == pytest.approx(reference["bytes_per_agent_frame"])
    for key in ("sent", "delivered", "dropped", "fused", "late_dropped"):
        assert results["messages"][key] == reference["messages"][key], key


@pytest.mark.slow
def test_codefilling_over_a_lossy_channel_matches_too(tiny_log, tmp_path):
    """Offers between agents, losses, range-dependent reception and queueing: the replay's
    processes still make run_frames' decisions (a codebook trained on the log in seconds)."""
    from v2x.pipeline.config import RunConfig
    from v2x.pipeline.replay.run import ReplayOptions, run_replay
    from v2x.pipeline.runs import run_log

    book = tmp_path / "codebook.pt"
    res = CliRunner().invoke(
        cli,
        ["train", "codebook", "--data", str(tiny_log), "--out", str(book)]
        + ["--frames", str(FRAMES), "--iters", "5", "--k", "16"],
    )
    assert res.exit_code == 0, res.output
    torch.set_num_threads(1)  # training took two; the nodes compute on one (same sums, same boxes)
    options = dict(OPTIONS, method="codefilling", budget="200kbps", channel="congested", codebook=str(book))
    results = run_replay(ReplayOptions(tiny_log, RunConfig.from_options(**options), tmp_path / "run"))
    reference = run_log(tiny_log, RunConfig.from_options(**options))
    for got, want in zip(load_run(tmp_path / "run").frames, reference["_detections"], strict=True):
        assert _same(got["boxes"], want["boxes"]) and _same(got["tracks"], want["tracks"])
    assert (
        results["messages"] == reference["messages"] and results["links"].keys() == reference["links"].keys()
    )
    for link, want in reference["links"].items():  # latencies agree to the nanosecond the times travel in
        assert results["links"][link] == pytest.approx(want, abs=1e-5), link
    assert results["bytes_per_agent_frame"] == pytest.approx(reference["bytes_per_agent_frame"])


@pytest.mark.slow
def test_bf16_processes_and_one_process_agree_too(tiny_log, tmp_path):
    """``--precision bf16`` reaches every node: their detections are run_frames' in bf16, and
    differ from fp32's (so bf16 really ran there)."""
    from v2x.pipeline.config import RunConfig
    from v2x.pipeline.replay.run import ReplayOptions, run_replay
    from v2x.pipeline.runs import run_log

    options = dict(OPTIONS, precision="bf16")
    torch.set_num_threads(1)
    results = run_replay(ReplayOptions(tiny_log, RunConfig.from_options(**options), tmp_path / "run"))
    reference = run_log(tiny_log, RunConfig.from_options(**options))
    fp32 = run_log(tiny_log, RunConfig.from_options(**OPTIONS))
    assert results["config"]["precision"] == reference["config"]["precision"] == "bf16"
    for got, want in zip(load_run(tmp_path / "run").frames, reference["_detections"], strict=True):
        assert _same(got["boxes"], want["boxes"]) and _same(got["tracks"], want["tracks"])
    assert results["ap_bev"] == reference["ap_bev"] and results["messages"] == reference["messages"]
    assert not all(
        _same(a["boxes"], b["boxes"])
        for a, b in zip(reference["_detections"], fp32["_detections"], strict=True)
    )


@pytest.mark.slow
@pytest.mark.parametrize("latency_ms", [70, 150])
def test_demands_too_late_for_their_frame_are_used_later_in_both_paths(tiny_log, tmp_path, latency_ms):
    """Each demand misses its frame's 50 ms window and is held: on 70 ms links it is used on the
    next frame, on 150 ms links (slower than a frame) two frames later."""
    from v2x.pipeline.config import RunConfig
    from v2x.pipeline.replay.run import ReplayOptions, run_replay
    from v2x.pipeline.runs import run_log

    options = dict(OPTIONS, latency_ms=latency_ms)
    torch.set_num_threads(1)
    results = run_replay(ReplayOptions(tiny_log, RunConfig.from_options(**options), tmp_path / "run"))
    reference = run_log(tiny_log, RunConfig.from_options(**options))
    for got, want in zip(load_run(tmp_path / "run").frames, reference["_detections"], strict=True):
        assert _same(got["boxes"], want["boxes"]) and _same(got["tracks"], want["tracks"])
        assert got["sent_cells"].keys() == want["sent_cells"].keys()
    assert results["messages"] == reference["messages"]
    assert results["bytes_per_agent_frame"] == pytest.approx(reference["bytes_per_agent_frame"])


@pytest.mark.slow
def test_results_json_has_the_fields_and_they_are_sane(replayed):
    results, run, _ = replayed
    on_disk = json.loads((run.path / "results.json").read_text())
    assert on_disk["ap_bev"] == results["ap_bev"]
    assert set(results["ap_bev"]) == {"0.3", "0.5", "0.7"}
    assert all(v is None or 0 <= v <= 1 for v in results["ap_bev"].values())
    assert results["amota"] is not None and results["mota"] is not None
    m = results["messages"]
    assert m["sent"] == m["delivered"] + m["dropped"] > 0
    # 3 collaborators x 4 frames: a demand and a message each, all delivered on an ideal channel
    assert m["delivered"] == 2 * 3 * FRAMES and m["fused"] == 3 * FRAMES
    assert 0 < results["bytes_per_agent_frame"] <= 400_000 / 8 / 10
    assert set(results["latency_ms"]) >= {"p50", "p95"} and results["latency_ms"]["p50"] == 0.0
    assert results["output_latency_ms"]["n"] == FRAMES and results["output_latency_ms"]["p50"] > 0
    assert results["partial"] is False and results["reason"] is None and results["clock"] == "sim"
    assert results["frames"] == results["frames_requested"] == FRAMES
    assert results["nodes"]["lost"] == [] and results["missing_agent_frames"] == 0
    assert results["slots"] == 3 and results["deadline_misses"] == 0
    assert [r["k"] for r in run.frames] == list(range(FRAMES))
    assert all(len(r["agents"]) == 3 for r in run.frames)


@pytest.mark.slow
def test_viz_of_a_run_draws_each_collaborators_sent_cells(replayed, tiny_log, tmp_path):
    import cv2

    from v2x.output.bev import BEVCanvas

    _, run, _ = replayed
    bare = tmp_path / "bare"  # the same run without its sent cells
    bare.mkdir()
    (bare / "results.json").write_text((run.path / "results.json").read_text())
    lines = [json.loads(x) for x in (run.path / "detections.jsonl").read_text().splitlines()]
    (bare / "detections.jsonl").write_text(
        "".join(json.dumps({**r, "sent_cells": None}) + "\n" for r in lines)
    )
    images = {}
    for name, folder in (("run", run.path), ("bare", bare)):
        png = tmp_path / f"{name}.png"
        res = CliRunner().invoke(cli, ["viz", str(tiny_log), "--run", str(folder), "--out", str(png)])
        assert res.exit_code == 0, res.output
        images[name] = cv2.imread(str(png)).astype(int)
    changed = np.abs(images["run"] - images["bare"]).sum(axis=2) > 0
    # the changed pixels lie in the sent cells, and most sent cells show
    pose = run.frames[0]["world_from_ego_bev"]
    canvas = BEVCanvas((-70.4, 70.4), (-40.0, 40.0), 8.0)
    inside = np.zeros_like(changed)
    for xy in run.frames[0]["sent_cells"].values():
        local = (xy - pose[:2, 3]) @ pose[:2, :2]
        for u, v in np.round(canvas.to_px(local)).astype(int):
            inside[max(v - 4, 0) : v + 4, max(u - 4, 0) : u + 4] = True
    assert changed.sum() > 0 and (changed & ~inside).sum() <= 0.02 * changed.sum()


@pytest.mark.slow
def test_viz_min_score_leaves_out_the_weaker_detections(replayed, tiny_log, tmp_path):
    """``--min-score``: a cut above every score draws no detection, one at or below every score
    draws the picture of the default."""
    import cv2

    _, run, _ = replayed
    scores = np.concatenate([r["boxes"].scores for r in run.frames if len(r["boxes"])])
    assert len(scores) > 0
    images = {}
    for name, cut in (("default", None), ("lowest", float(scores.min())), ("above", float(scores.max()) + 1)):
        png = tmp_path / f"{name}.png"
        args = ["viz", str(tiny_log), "--run", str(run.path), "--out", str(png)]
        res = CliRunner().invoke(cli, args + ([] if cut is None else ["--min-score", str(cut)]))
        assert res.exit_code == 0, res.output
        images[name] = cv2.imread(str(png)).astype(int)
    title = slice(0, 30)  # the first line says how many were drawn
    body = slice(30, None)
    assert np.array_equal(images["lowest"][body], images["default"][body])
    assert not np.array_equal(images["above"][body], images["default"][body])
    assert not np.array_equal(images["above"][title], images["default"][title])


@pytest.mark.slow
def test_real_time_replay_reports_its_latency_and_where_it_goes(tiny_log, tmp_path):
    """``--realtime``: the wall clock at 10 Hz. How fast this machine is decides how many frames
    are fused in time, so only the books are checked: every frame played is fused or skipped,
    every message that reached the ego is fused, dropped as late, or expired (held for a later
    frame that came too late or never came; messages of frames the ego skipped included), and
    each fused frame's steps come in order after its capture."""
    from v2x.pipeline.config import RunConfig
    from v2x.pipeline.replay.run import ReplayOptions, run_replay

    cfg = RunConfig.from_options(**OPTIONS, late_policy="compensate")
    results = run_replay(ReplayOptions(tiny_log, cfg, tmp_path / "run", realtime=True, threads=1))
    assert results["clock"] == "realtime" and results["partial"] is False
    fused, skipped = results["frames_fused"], results["frames_skipped"]
    assert fused >= 1 and fused + skipped <= FRAMES
    assert 0 <= results["deadline_misses"] <= fused
    m = results["messages"]
    # how many messages reach the ego depends on this machine's speed; that each is accounted
    # for does not
    assert m["malformed"] == 0
    assert results["delivered_to_ego"] == m["fused"] + m["late_dropped"] + m["expired"]
    assert results["output_latency_ms"]["n"] == fused and results["output_latency_ms"]["p50"] > 0
    stages = results["stage_ms"]
    order = ["ego_started", "ego_perceived", "fuse_started", "output"]
    assert all(stages[s]["n"] == fused for s in order)
    p50 = [stages[s]["p50"] for s in order]
    assert p50 == sorted(p50) and p50[-1] == pytest.approx(results["output_latency_ms"]["p50"])
    assert stages["agents_sent"]["n"] <= 3 * fused
    lines = (tmp_path / "run" / "detections.jsonl").read_text().splitlines()
    assert len(lines) == fused
    assert results["nodes"]["agent_nice"] == REALTIME_AGENT_NICE
    # each frame's own steps, for plotting latency over a run: scoring comes after the output
    for rec in map(json.loads, lines):
        st = rec["stage_ms"]
        assert st["ego_started"] <= st["ego_perceived"] <= st["fuse_started"] <= st["output"] <= st["scored"]


def test_in_real_time_the_collaborators_nodes_yield_the_cpu_to_the_egos(tmp_path):
    from v2x.pipeline.config import RunConfig
    from v2x.pipeline.replay.run import ReplayOptions, build_launch

    def nice(**kw) -> dict:
        opts = ReplayOptions(tmp_path, RunConfig.from_options(**OPTIONS), tmp_path / "o", **kw)
        spec = build_launch(opts, 2, {}, "tcp://127.0.0.1:1")
        return {n["name"]: n.get("nice", 0) for n in spec["nodes"]}

    assert nice(realtime=True) == {
        "player": 0,
        "channel": 0,
        "agent0": REALTIME_AGENT_NICE,
        "agent1": REALTIME_AGENT_NICE,
        "ego": 0,
        "monitor": 0,
    }
    assert set(nice(realtime=False).values()) == {0}
    assert nice(realtime=True, agent_nice=0)["agent0"] == 0 and nice(agent_nice=3)["agent1"] == 3


@pytest.mark.slow
def test_a_killed_agent_node_leaves_the_run_finishing_with_fewer_agents(tiny_log, tmp_path):
    launch = tmp_path / "launch.yaml"  # no restart, so the agent stays gone
    launch.write_text("nodes:\n  - name: agent0\n    restart: never\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "v2x.cli.main", "replay", str(tiny_log), "--out", str(out)]
    cmd += ["--method", "raw", "--budget", "none", "--tracker", "ab3dmot", "--launch", str(launch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 120
        while not (out / "progress.json").is_file():  # the first frame is done
            assert proc.poll() is None and time.monotonic() < end, "no frame done"
            time.sleep(0.05)
        graph = json.loads((out / "nodes" / "graph.json").read_text())
        pid = next(n["pid"] for n in graph["nodes"] if n["name"] == "agent0")
        os.kill(pid, signal.SIGKILL)
        text, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, text
    results = json.loads((out / "results.json").read_text())
    assert results["partial"] is False and results["frames"] == FRAMES
    assert results["nodes"]["lost"] == ["agent0"] and results["missing_agent_frames"] >= 1
    frames = load_run(out).frames
    assert [len(r["agents"]) for r in frames] == [3] * FRAMES  # the log still has them all...
    fused = [len(r["fused"]) for r in frames]
    assert fused[0] == 3 and fused[-1] == 2  # ...but one fewer is fused: agent0's
    assert set(frames[0]["fused"]) - set(frames[-1]["fused"]) == {frames[0]["agents"][0]}
    assert "agent nodes lost" in text


def test_a_folder_of_unknown_format_is_one_clear_line(tmp_path):
    (tmp_path / "notes.txt").write_text("not a log")
    res = CliRunner().invoke(cli, ["replay", str(tmp_path), "--out", str(tmp_path / "out")])
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "not a known log" in lines[0] and str(tmp_path) in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_late_policy_options_reach_the_run(tiny_log, tmp_path):
    out = tmp_path / "out"
    args = ["replay", str(tiny_log), "--in-process", "--out", str(out), "--frames", "2", "--tracker", "none"]
    args += ["--method", "late", "--late-policy", "compensate", "--max-age-ms", "750", "--deadline-ms", "80"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    config = json.loads((out / "results.json").read_text())["config"]
    assert (config["late_policy"], config["max_age_s"], config["deadline_s"]) == ("compensate", 0.75, 0.08)
    assert config["precision"] == "fp32"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], ("drop", 0.1)),
        (["--realtime"], ("compensate", 0.04)),  # real time does not wait for this frame's messages
        (["--realtime", "--late-policy", "drop", "--deadline-ms", "90"], ("drop", 0.09)),
    ],
)
def test_real_time_has_defaults_of_its_own_and_options_win(tiny_log, tmp_path, extra, expected):
    from v2x.pipeline.replay.run import REALTIME_DEADLINE_MS, REALTIME_LATE_POLICY

    assert (REALTIME_LATE_POLICY, REALTIME_DEADLINE_MS) == ("compensate", 40.0)
    out = tmp_path / "out"
    args = ["replay", str(tiny_log), "--in-process", "--out", str(out), "--frames", "1", "--method", "none"]
    res = CliRunner().invoke(cli, [*args, "--tracker", "none", *extra])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "results.json").read_text())["config"]
    assert (config["late_policy"], config["deadline_s"]) == expected


def test_the_table_says_when_real_time_fused_nothing():
    from v2x.cli.replay import _table

    late = {"clock": "realtime", "messages": {"fused": 0, "late_dropped": 5, "expired": 2}}
    text = _table(late)
    assert "late: dropped / expired / fused" in text and "5 / 2 / -" in text
    assert "NOTE: no collaborator's message was fused (7 came too late)" in text
    assert "--precision bf16" in text  # the run was in fp32: the faster precision is suggested
    assert "--precision" not in _table({**late, "config": {"precision": "bf16"}})
    assert "--late-policy compensate" in text  # the run dropped late messages: try fusing them
    compensated = _table({**late, "config": {"late_policy": "compensate"}})
    assert "--max-age-ms 1000" in compensated and "--late-policy" not in compensated
    assert "NOTE" not in _table({**late, "messages": {"fused": 3, "late_dropped": 5, "expired": 2}})
    assert "NOTE" not in _table({**late, "clock": "sim"})
    assert "NOTE" not in _table({**late, "messages": {"fused": 0}})  # nothing came at all: --method none


def test_slots_are_sticky_and_previews_change_nothing():
    slots = SlotMap(3)
    assert slots.assign(["a", "b", "c"]) == {"a": 0, "b": 1, "c": 2}
    assert slots.preview(["c", "d"]) == {"c": 2, "d": 0}
    assert slots.assign(["b", "c"]) == {"b": 1, "c": 2}  # kept their slots
    assert slots.assign(["a", "b", "c"]) == {"a": 0, "b": 1, "c": 2}  # a back in its old one
    assert slots.assign(["x", "y", "z", "w"]) == {"x": 0, "y": 1, "z": 2}  # at most 3


def test_a_launch_file_merges_over_the_replays_own(tmp_path):
    base = {
        "name": "replay",
        "nodes": [{"name": "ego", "node": "m:E", "params": {"a": 1, "b": {"c": 2}}, "restart": "never"}],
    }
    user = tmp_path / "l.yaml"
    user.write_text(
        "log_level: DEBUG\nnodes:\n  - {name: ego, params: {b: {d: 3}}, env: {X: '1'}}\n"
        "  - {name: extra, node: 'v2x.comm.demo_nodes:Listener'}\n"
    )
    out = merge_launch(base, user)
    ego = out["nodes"][0]
    assert ego["params"] == {"a": 1, "b": {"c": 2, "d": 3}} and ego["env"] == {"X": "1"}
    assert ego["node"] == "m:E" and out["log_level"] == "DEBUG" and out["nodes"][1]["name"] == "extra"


def test_boxes_survive_the_detections_file_bit_for_bit():
    rng = np.random.default_rng(0)
    b = Boxes(rng.normal(size=(5, 7)), labels=0, track_ids=np.arange(5), scores=rng.random(5))
    back = boxes_from_json(json.loads(json.dumps(boxes_to_json(b))))
    assert np.array_equal(back.xyzlwhy, b.xyzlwhy) and np.array_equal(back.scores, b.scores)
    assert np.array_equal(back.track_ids, b.track_ids) and boxes_from_json(None) is None
