"""The real DAIR-V2X-C example (29 cooperative pairs in the data set's own layout), taken as it is
(issue 22, item 1). Expected values are recomputed here from the files, not copied from a run."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.core.boxes import box_corners
from v2x.core.geometry import inverse
from v2x.core.grid import DEFAULT_XY_RANGE
from v2x.datasets import open_log
from v2x.datasets.dair import DairLog
from v2x.datasets.dair_labels import DAIR_GT_RANGE, parse_labels


@pytest.fixture(scope="module")
def example(dair_example) -> Path:
    return dair_example


def _pairs(example: Path) -> list[tuple[str, str]]:
    entries = json.loads((example / "cooperative" / "data_info.json").read_text())
    return [
        (Path(e["vehicle_pointcloud_path"]).stem, Path(e["infrastructure_pointcloud_path"]).stem)
        for e in entries
    ]


def _camera_only(path: Path) -> int:
    """Objects with all-zero 3D size and location (annotated in the camera only)."""
    items = json.loads(path.read_text())
    return sum(
        not any(float(o["3d_dimensions"][k]) for k in "lwh")
        and not any(float(o["3d_location"][k]) for k in "xyz")
        for o in items
    )


def _light_copy(example: Path, dst: Path, pairs: int) -> Path:
    """The example's first ``pairs`` pairs: point-cloud folders linked, the rest copied, writable."""
    shutil.copytree(example, dst, ignore=shutil.ignore_patterns("velodyne"), copy_function=shutil.copyfile)
    for side in ("vehicle-side", "infrastructure-side"):
        (dst / side / "velodyne").symlink_to(example / side / "velodyne")
    for p in [dst, *dst.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    index = dst / "cooperative" / "data_info.json"
    index.write_text(json.dumps(json.loads(index.read_text())[:pairs]))
    return dst


def _offsets_ms(example: Path) -> list[float]:
    ts = {}
    for side in ("vehicle-side", "infrastructure-side"):
        for it in json.loads((example / side / "data_info.json").read_text()):
            ts[(side, Path(it["pointcloud_path"]).stem)] = int(it["pointcloud_timestamp"])
    return [(ts[("infrastructure-side", i)] - ts[("vehicle-side", v)]) / 1000 for v, i in _pairs(example)]


@pytest.fixture(scope="module")
def loaded(example):
    """The example read once, as ``v2x data info`` reads it."""
    log = open_log(example)
    return log, list(log)  # no skip_bad: nothing is refused


def test_every_pair_loads_and_objects_without_a_3d_box_are_counted(example, loaded):
    log, frames = loaded
    pairs = _pairs(example)
    assert len(frames) == len(pairs) == 29 and not log.skipped
    expected = sum(
        _camera_only(example / "vehicle-side" / "label" / "lidar" / f"{v}.json")
        + _camera_only(example / "infrastructure-side" / "label" / "virtuallidar" / f"{i}.json")
        for v, i in pairs
    )
    assert expected > 0 and log.dropped_objects == {"no_3d_box": expected}
    for f in frames:  # each agent keeps exactly the objects that have a box
        vid = f.agents["vehicle"].labels
        path = example / "vehicle-side" / "label" / "lidar" / f"{log.frame_name(f.index).split('/')[1]}.json"
        assert len(vid) == len(json.loads(path.read_text())) - _camera_only(path)
        assert (vid.xyzlwhy[:, 3:6] > 0).all()
    assert sum(sum(d.values()) for d in log.dropped_per_frame.values()) == expected


def test_ground_truth_is_dairs_cooperative_label_moved_into_the_vehicle_frame(example):
    """``label_world`` through novatel_to_world . lidar_to_novatel lands on DAIR's own
    vehicle-frame cooperative label (``cooperative/label/lidar``, which the loader never reads)."""
    log = DairLog(example, gt_range=None)
    for i in range(len(log)):
        f = log[i]
        gt = f.gt.transformed(inverse(f.ego.world_from_lidar))
        ref = parse_labels(example / "cooperative" / "label" / "lidar" / f"{log._entries[i]['_vid']}.json")
        assert len(gt) == len(ref)
        d = np.linalg.norm(gt.xyzlwhy[:, None, :3] - ref.xyzlwhy[None, :, :3], axis=2)
        match = d.argmin(axis=1)
        assert d.min(axis=1).max() < 0.01  # metres
        # corners know no front: the longer side is the length
        size = np.sort(gt.xyzlwhy[:, 3:5], axis=1), gt.xyzlwhy[:, 5]
        want = np.sort(ref.xyzlwhy[match, 3:5], axis=1), ref.xyzlwhy[match, 5]
        assert np.allclose(size[0], want[0], atol=1e-3) and np.allclose(size[1], want[1], atol=1e-3)


def test_evaluation_range_keeps_the_boxes_with_every_corner_inside(example, loaded):
    log, frames = loaded
    lo, hi = np.array(DAIR_GT_RANGE[:3]), np.array(DAIR_GT_RANGE[3:])
    kept = beyond_grid = 0
    for i, f in enumerate(frames):
        ref = json.loads(
            (example / "cooperative" / "label" / "lidar" / f"{log._entries[i]['_vid']}.json").read_text()
        )
        corners = np.array([o["world_8_points"] for o in ref])  # DAIR's corners, vehicle LiDAR frame
        inside = ((corners >= lo) & (corners <= hi)).all(axis=(1, 2))
        assert (
            len(f.gt) == inside.sum() and log.gt_out_of_range_per_frame[log.frame_name(i)] == (~inside).sum()
        )
        local = f.gt.transformed(inverse(f.ego.world_from_lidar))
        assert ((box_corners(local.xyzlwhy) >= lo) & (box_corners(local.xyzlwhy) <= hi)).all()
        kept += len(f.gt)
        beyond_grid += int((~local.in_range(DEFAULT_XY_RANGE)).sum())
    assert log.gt_out_of_range > 0 and kept > 0
    # DAIR's range is wider than the shipped BEV grid's: the grid is not widened for it
    assert beyond_grid > 0


def test_time_offsets_are_read_and_the_ones_beyond_the_limit_reported(example, tmp_path):
    offsets = _offsets_ms(example)
    log = open_log(example, max_time_offset_ms=20)  # offsets come from the indexes: no frame read
    assert sorted(log.time_offsets_ms.values()) == pytest.approx(sorted(offsets), abs=1e-9)
    assert len(log.offsets_over_limit) == sum(abs(o) > 20 for o in offsets) > 0
    assert open_log(example).offsets_over_limit == []  # real pairs are within a 10 Hz period
    few = offsets[:6]
    root = _light_copy(example, tmp_path / "dair", pairs=len(few))
    info = json.loads(CliRunner().invoke(cli, ["data", "info", str(root), "--json"]).output)
    assert info["time_offset_ms"] == {
        "pairs": len(few),
        "min": round(min(few), 3),
        "mean": round(sum(few) / len(few), 3),
        "max": round(max(few), 3),
    }
    assert info["time_offsets_over_limit"] == 0
    over = sum(abs(o) > 20 for o in few)
    assert 0 < over < len(few)
    r = CliRunner().invoke(cli, ["data", "info", str(root), "--json", "--max-offset-ms", "20"])
    assert json.loads(r.output)["time_offsets_over_limit"] == over
    r = CliRunner().invoke(cli, ["data", "check", str(root), "--json", "--max-offset-ms", "20"])
    report = json.loads(r.output)
    assert r.exit_code == 0 and report["problems"] == []
    assert sum(w["field"] == "pointcloud_timestamp" for w in report["warnings"]) == over


def test_a_batch_is_cut_into_runs_at_time_gaps_so_tracks_do_not_jump_across(example):
    """The example's one batch holds two runs of consecutive scans, 1.5 s apart: two scenarios."""
    side = json.loads((example / "vehicle-side" / "data_info.json").read_text())
    stamp = {Path(e["pointcloud_path"]).stem: int(e["pointcloud_timestamp"]) for e in side}
    vids = sorted(v for v, _ in _pairs(example))
    cuts = [b for a, b in itertools.pairwise(vids) if stamp[b] - stamp[a] > 500_000]
    assert len(cuts) == 1  # the files' own gap: recomputed, not copied
    log = open_log(example)
    first, second = log.scenarios()
    assert (first, second) == ("0", "0-1")
    names = [log.frame_name(i) for i in log.scenario_indices(second)]
    assert names[0] == f"0-1/{cuts[0]}" and len(names) == sum(v >= cuts[0] for v in vids)
    assert len(log.scenario_indices(first)) + len(names) == len(vids)


def test_check_lists_the_objects_dropped_and_passes(example, loaded):
    r = CliRunner().invoke(cli, ["data", "check", str(example), "--json"])
    report = json.loads(r.output)
    assert r.exit_code == 0 and report["ok"] and report["problems"] == []
    listed = sum(
        len(w["field"].split(", ")) for w in report["warnings"] if "without a 3D box" in w["message"]
    )
    assert listed == loaded[0].dropped_objects["no_3d_box"]


@pytest.mark.parametrize(
    "damage, field",
    [("missing", "file"), ("rotation", "novatel_to_world"), ("json", "json")],
)
def test_a_pair_with_broken_calibration_is_named_and_skipped(example, tmp_path, damage, field):
    root = _light_copy(example, tmp_path / "dair", pairs=3)  # 015404 is the index's first pair
    calib = root / "vehicle-side" / "calib" / "novatel_to_world" / "015404.json"
    if damage == "missing":  # no silent fallback into the lidar_i2v frame
        calib.unlink()
    elif damage == "rotation":
        calib.write_text(json.dumps({**json.loads(calib.read_text()), "rotation": "many"}))
    else:
        calib.write_text(calib.read_text()[:40])
    r = CliRunner().invoke(cli, ["data", "info", str(root), "--json"])
    assert (
        r.exit_code == 1
        and f"Error: {calib}: {field}: " in r.output
        and len(r.output.strip().splitlines()) == 1
    )
    r = CliRunner().invoke(cli, ["data", "info", str(root), "--json", "--skip-bad"])
    info = json.loads(r.output)
    assert info["frames"] == 2 and info["skipped_frames"] == 1
    assert info["skipped"][0]["reason"].startswith(f"{calib}: {field}: ")
    r = CliRunner().invoke(cli, ["data", "check", str(root), "--json"])
    assert r.exit_code == 1
    assert [(p["path"], p["field"]) for p in json.loads(r.output)["problems"]] == [(str(calib), field)]
