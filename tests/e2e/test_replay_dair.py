"""DAIR-V2X-C logs through ``v2x replay`` with the default tracker: their labels carry no track ids,
so tracking is scored detection-only (``v2x.pipeline.scoring.score_tracking``), and the run ends
with results, through the node processes and in one process alike. A simulated DAIR log (the
simulator's DAIR writer), and the real example pairs when ``../shared/realdata`` has them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.pipeline.config import RunConfig
from v2x.pipeline.replay.results import load_run
from v2x.pipeline.replay.run import ReplayOptions, run_in_process, run_replay
from v2x.pipeline.scoring import DETECTION_ONLY, IDENTITY_METRICS

FRAMES = 3


@pytest.fixture(scope="module")
def dair_log(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dair") / "log"
    args = ["sim", "generate", "--format", "dair", "--scenes", "1", "--frames", str(FRAMES), "--cavs", "1"]
    res = CliRunner().invoke(
        cli, [*args, "--rsus", "1", "--channels", "32", "--seed", "3", "--out", str(out), "--quiet"]
    )
    assert res.exit_code == 0, res.output
    return out


def _detection_only(results: dict, frames: int) -> None:
    assert results["partial"] is False and results["frames"] == frames
    assert results["config"]["tracker"] == "dmstrack"  # the default
    assert results["tracking_scoring"] == results["tracking"]["scoring"] == DETECTION_ONLY
    assert results["amota"] is not None and results["mota"] is not None
    assert all(results["tracking"][k] is None for k in IDENTITY_METRICS)


def test_a_simulated_dair_log_replays_with_the_default_tracker_in_processes_and_in_one(dair_log, tmp_path):
    procs = run_replay(ReplayOptions(dair_log, RunConfig(), tmp_path / "procs"))
    one = run_in_process(ReplayOptions(dair_log, RunConfig(), tmp_path / "one"))
    _detection_only(procs, FRAMES)
    _detection_only(one, FRAMES)
    assert procs["clock"] == "sim" and one["clock"] == "in-process"
    # the same decisions either way (one torch thread each): the same scores
    assert procs["ap_bev"] == one["ap_bev"] and procs["amota"] == pytest.approx(one["amota"])
    assert procs["messages"]["fused"] == one["messages"]["fused"] == FRAMES
    assert len(load_run(tmp_path / "procs").frames) == FRAMES


def test_real_dair_pairs_replay_in_one_process_with_the_default_tracker(realdata, tmp_path):
    data = realdata / "dair-v2x-c-example"
    if not data.is_dir():
        pytest.skip(f"{data}: not in the real data samples")
    results = run_in_process(ReplayOptions(data, RunConfig(frames=6), tmp_path / "one"))
    _detection_only(results, 6)
    assert results["tracking"]["gt_objects"] > 0 and results["messages"]["fused"] == 6
