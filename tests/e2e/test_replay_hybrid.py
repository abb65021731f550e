"""The hybrid method (the sender's boxes and codebook codes in one message) through the pipeline:
what an agent stage sends, ``v2x replay --method hybrid`` in one process and as node processes
(the same detections), and the shipped launch file that runs it under ``v2x launch``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from v2x.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "comm" / "launch_files" / "replay_hybrid.yaml"
FRAMES = 3
OPTIONS = dict(method="hybrid", budget="40kbps", channel="ideal", tracker="none")


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory, generate_log) -> Path:
    """One scene, 3 frames, 3 CAVs and an RSU, 32-channel LiDAR (a few seconds to make)."""
    out = tmp_path_factory.mktemp("hybrid") / "log"
    return generate_log(out, frames=FRAMES, cavs=3, rsus=1, channels=32, seed=5)


def _messages(log: Path, method: str, budget: str = OPTIONS["budget"]) -> list:
    """Frame 0's collaborators' messages under ``method`` at OPTIONS' budget, decoded, with the
    allowance each had (the link's per-frame bytes less the demand, if the method sends one)."""
    from v2x.datasets import open_log
    from v2x.pipeline.config import RunConfig
    from v2x.pipeline.stages import AgentStage, EgoStage, Models

    cfg = RunConfig.from_options(**dict(OPTIONS, method=method, budget=budget))
    models = Models.load(cfg)
    frame = open_log(log)[0]
    ego = EgoStage(frame.ego_id, models, cfg)
    demand = ego.demand(ego.perceive(frame.ego))
    assert (demand is None) == (method == "hybrid")  # the hybrid has no demand round
    spent = len(demand) if demand is not None else 0
    out = []
    for scan in frame.collaborators:
        agent = AgentStage(scan.agent_id, models, cfg)
        if demand is not None:
            agent.take_demand(demand)
        data = agent.message(agent.perceive(scan, frame.ego.world_from_bev), scan, spent)
        out.append((models.codec.read_sparse(data), len(data), cfg.frame_bytes - spent))
    return out


@pytest.mark.slow
def test_a_hybrid_agent_sends_its_boxes_then_codes_outside_them(tiny_log):
    from v2x.messages.selection import cells_outside_boxes
    from v2x.perception.detector import load_detector

    # 200 kbit/s: 2.5 KB a frame, room for codes after the boxes
    hybrid, codebook = _messages(tiny_log, "hybrid", "200kbps"), _messages(tiny_log, "codebook", "200kbps")
    assert all(size <= allowance for _, size, allowance in hybrid)
    assert sum(len(got.boxes) for got, _, _ in hybrid if got.boxes is not None) > 0
    assert all(got.boxes is None for got, _, _ in codebook)
    grid = load_detector().cfg.grid
    for h, _, _ in hybrid:
        if h.boxes is not None and len(h.boxes):
            # no code where a box was sent: the codes describe what the boxes do not (the sender
            # grows footprints by 0.5 m; 0.3 here leaves room for the boxes' rounding on the wire)
            assert np.array_equal(cells_outside_boxes(h.cells, h.boxes.xyzlwhy, grid, margin=0.3), h.cells)
    assert sum(len(h.cells) for h, _, _ in hybrid) > 0


@pytest.mark.slow
def test_replay_hybrid_in_process(tiny_log, tmp_path):
    """``v2x replay --method hybrid --in-process``: the ego merges the received boxes, so its
    detections are not codebook's."""
    runs = {}
    for method in ("hybrid", "codebook"):
        out = tmp_path / method
        res = CliRunner().invoke(
            cli,
            ["replay", str(tiny_log), "--method", method, "--budget", OPTIONS["budget"]]
            + ["--tracker", "none", "--in-process", "--out", str(out)],
        )
        assert res.exit_code == 0, res.output
        runs[method] = json.loads((out / "results.json").read_text())
    hybrid = runs["hybrid"]
    assert hybrid["config"]["method"] == "hybrid" and hybrid["frames"] == FRAMES
    assert hybrid["messages"]["fused"] > 0 and hybrid["bytes_per_agent_frame"] <= 40e3 / 8 / 10
    assert hybrid["ap_bev"] != runs["codebook"]["ap_bev"]


@pytest.mark.slow
def test_replay_hybrid_through_processes_matches_in_process(tiny_log, tmp_path):
    from v2x.pipeline.config import RunConfig
    from v2x.pipeline.replay.results import load_run
    from v2x.pipeline.replay.run import ReplayOptions, run_replay
    from v2x.pipeline.runs import run_log

    results = run_replay(ReplayOptions(tiny_log, RunConfig.from_options(**OPTIONS), tmp_path / "run"))
    reference = run_log(tiny_log, RunConfig.from_options(**OPTIONS))
    for got, want in zip(load_run(tmp_path / "run").frames, reference["_detections"], strict=True):
        a, b = got["boxes"], want["boxes"]
        assert len(a) == len(b) and np.allclose(a.xyzlwhy, b.xyzlwhy, rtol=0, atol=1e-9)
    assert results["messages"] == reference["messages"]
    assert results["bytes_per_agent_frame"] == pytest.approx(reference["bytes_per_agent_frame"])


def test_the_shipped_launch_file_runs_the_hybrid_on_every_node():
    """``v2x launch comm/launch_files/replay_hybrid.yaml``: every node that reads the run's
    settings reads the hybrid, and the channel enforces the budget the agents size messages to."""
    from v2x.comm.launch import load_launch
    from v2x.pipeline.replay.protocol import config_from_dict

    spec = load_launch(LAUNCH)
    runs = {n.name: config_from_dict(n.params["run"]) for n in spec.nodes if "run" in n.params}
    assert set(runs) == {"player", "agent0", "agent1", "agent2", "ego"}
    assert all(cfg.spec.attaches_boxes and cfg.spec.needs_codebook for cfg in runs.values())
    [budget] = {cfg.budget_bps for cfg in runs.values()}
    assert spec.node("channel").params["budget"] == budget
    assert {n.params["slot"] for n in spec.nodes if "slot" in n.params} == set(range(3))
