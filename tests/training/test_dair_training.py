"""The trainer's real DAIR-V2X-C data path: the example folder split by run, single-side frames,
run views for the evaluation, and ``v2x train detector`` on that folder for one step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.datasets import open_log
from v2x.datasets.dair import DairLog
from v2x.training.dair_data import dair_runs, dair_split, single_side_frame
from v2x.training.dair_views import write_run_view
from v2x.training.detector import _mix_in

CONFIG = Path(__file__).resolve().parents[2] / "v2x" / "configs" / "train_dair.yaml"


def _side_ids(root: Path, side: str) -> set[str]:
    return {Path(e["pointcloud_path"]).stem for e in json.loads((root / side / "data_info.json").read_text())}


def test_runs_of_the_real_example(dair_example):
    log = DairLog(dair_example)
    runs = dair_runs(log)
    assert [(r.name, r.first, r.last, len(r.pairs)) for r in runs] == [
        ("A", "015372", "015385", 14),
        ("B", "015400", "015414", 15),
    ]
    assert sorted(i for r in runs for i in r.pairs) == list(range(len(log)))
    # every frame of each side that is in no pair belongs to exactly one run
    pairs = json.loads((dair_example / "cooperative" / "data_info.json").read_text())
    for side, key in (
        ("vehicle-side", "vehicle_pointcloud_path"),
        ("infrastructure-side", "infrastructure_pointcloud_path"),
    ):
        paired = {Path(p[key]).stem for p in pairs}
        singles = [fid for r in runs for s, fid in r.singles if s == side]
        assert sorted(singles) == sorted(_side_ids(dair_example, side) - paired)
    # a single frame goes to the run nearest in time: the vehicle frames before run A to A
    a = {fid for s, fid in runs[0].singles if s == "vehicle-side"}
    assert "015344" in a and "015371" in a


def test_one_run_only_when_the_gap_is_wider_than_the_pause(dair_example):
    runs = dair_runs(DairLog(dair_example), gap_s=5.0)
    assert [len(r.pairs) for r in runs] == [29]


@pytest.mark.parametrize(
    ("side", "agent"), [("vehicle-side", "vehicle"), ("infrastructure-side", "infrastructure")]
)
def test_single_side_frame_has_its_own_labels(dair_example, side, agent):
    fid = "015344" if side == "vehicle-side" else "000009"
    frame = single_side_frame(dair_example, side, fid)
    assert list(frame.agents) == [agent] and frame.ego_id == agent
    scan = frame.agents[agent]
    assert len(scan.points) > 10_000
    assert len(frame.gt) > 0
    # labels are in the world frame of the pose: back in the sensor frame they lie near the sensor
    local = frame.gt.transformed(np.linalg.inv(scan.world_from_lidar))
    assert np.abs(local.xyzlwhy[:, :2]).max() < 200
    # and the scan's points cover some of them
    assert sum(frame.points_per_gt_box()[agent] > 0) > 0


def test_single_side_frame_refuses_an_unknown_side(dair_example):
    with pytest.raises(ValueError, match="side must be one of"):
        single_side_frame(dair_example, "cooperative", "015344")


def test_split_by_run(dair_example):
    split = dair_split(dair_example, ["B"])
    s = split.summary
    assert s["train_runs"] == ["A"] and s["val_runs"] == ["B"]
    assert len(split.validate) == 15 and s["val_pairs"] == 15
    assert all(n.rsplit("/", 1)[-1] >= "015400" for n in split.validate.names)
    a = s["runs"][0]
    assert s["train_frames"] == a["pairs"] + a["single_vehicle_frames"] + a["single_roadside_frames"]
    assert not any(n.rsplit("/", 1)[-1] >= "015400" for n in split.train.names if "/0154" in n)
    without = dair_split(dair_example, ["B"], single_side=False)
    assert len(without.train) == 14
    vehicle_singles = dair_split(dair_example, ["B"], single_side_kinds=["vehicle"])
    assert len(vehicle_singles.train) == a["pairs"] + a["single_vehicle_frames"]
    assert not any(n.startswith("infrastructure-side/") for n in vehicle_singles.train.names)
    assert vehicle_singles.summary["single_side_kinds"] == ["vehicle"]


@pytest.mark.parametrize(
    ("val", "train", "message"),
    [
        (["C"], None, "no run named"),
        (["A"], ["A"], "both trained and validated"),
        (["A", "B"], None, "nothing to train"),
    ],
)
def test_split_refuses_bad_runs(dair_example, val, train, message):
    with pytest.raises(ValueError, match=message):
        dair_split(dair_example, val, train)


def test_run_view_opens_as_a_log_of_that_run(dair_example, tmp_path):
    assert write_run_view(dair_example, ["B"], tmp_path / "b") == 15
    log = open_log(tmp_path / "b")
    assert log.format == "dair-v2x-c" and len(log) == 15
    assert log.frame_name(0).endswith("015400")
    assert len(log[0].agents) == 2
    with pytest.raises(ValueError, match="no run named"):
        write_run_view(dair_example, ["Z"], tmp_path / "z")


def _train_one_step(dair_example: Path, tmp_path: Path, **train) -> tuple[Path, dict]:
    """``v2x train detector`` on the real folder for one epoch of two frames, no stage 1; returns
    the output folder and its provenance."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw["train"].update(
        epochs=1, max_train_frames=2, batch_size=2, val_frames=1, threads=1, workers=0, init_weights=None
    )
    raw["train"].update(train)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["train", "detector", "--data", str(dair_example), "--config", str(config), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "provenance.json").read_text())


@pytest.mark.slow
def test_train_detector_on_the_real_folder_for_one_step(dair_example, tmp_path):
    out, prov = _train_one_step(dair_example, tmp_path)
    assert prov["train_frames"] == 2
    assert prov["validation_split"]["train_runs"] == ["A"]
    assert prov["validation_split"]["val_runs"] == ["B"]
    val = prov["final_val"]
    assert set(val) == {"none", "late", "intermediate"}
    assert val["intermediate"]["eval_range"] == [-100.8, -40.0, 100.8, 40.0]
    assert val["intermediate"]["frames"] == 1
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"]["total"])


@pytest.mark.slow
def test_train_detector_mixes_simulated_frames_into_the_real_ones(dair_example, tmp_path, generate_log):
    sim = generate_log(tmp_path / "sim", frames=3, cavs=1, rsus=1, channels=16, seed=4)
    _, prov = _train_one_step(
        dair_example, tmp_path, val_modes=["intermediate"], mix_data=str(sim), mix_frames=2
    )
    assert prov["train_frames"] == 4  # two real frames, two simulated ones
    assert prov["train_config"]["mix_data"] == str(sim) and prov["train_config"]["mix_frames"] == 2
    # the two appended indices are the simulated log's first and last frames, read through one log
    real = dair_split(dair_example, ["B"]).train
    both, indices = _mix_in(real, [0, 1], sim, 2)
    assert indices == [0, 1, len(real), len(real) + 2]
    assert both.format == real.format
    assert both[indices[1]].scenario.startswith("real/")
    assert both[indices[2]].scenario.startswith("mix/") and both[indices[3]].scenario.startswith("mix/")
    with pytest.raises(ValueError, match="no frames to mix in"):
        _mix_in(real, [0], sim, 0)
