import hashlib
import itertools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from v2x.datasets import open_log
from v2x.datasets.check import check_log
from v2x.datasets.pcd import read_pcd
from v2x.iou import bev_iou_matrix
from v2x.sim.generate import GenerateConfig, SimError, generate
from v2x.sim.lidar import LidarConfig, Scene, cast_scan
from v2x.sim.town import TownConfig
from v2x.sim.world import SceneConfig, World

SMALL = dict(scenes=2, frames=3, vehicles=(20, 24), pedestrians=(4, 6), blocks=(2, 2), cavs=3, rsus=1)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "generation.json":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    generate(GenerateConfig(out=str(tmp_path / "a"), seed=3, workers=1, **SMALL), progress=False)
    generate(GenerateConfig(out=str(tmp_path / "b"), seed=3, workers=2, **SMALL), progress=False)
    generate(GenerateConfig(out=str(tmp_path / "c"), seed=4, workers=1, **SMALL), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("fmt", ["opv2v", "dair"])
def test_logs_load_through_the_readers_and_pass_check(tmp_path, fmt):
    summary = generate(
        GenerateConfig(out=str(tmp_path), seed=1, format=fmt, split=(0.5, 0.0, 0.5), **SMALL), progress=False
    )
    assert summary["frames"] == 6 and summary["splits"]["train"] == 3 and summary["splits"]["test"] == 3
    for split in ("train", "test"):
        assert check_log(tmp_path / split) == []
        log = open_log(tmp_path / split)
        assert log.format == ("opv2v" if fmt == "opv2v" else "dair-v2x-c")
        frame = log[0]
        expected = 4 if fmt == "opv2v" else 2  # DAIR-V2X-C pairs the ego with one roadside unit
        assert len(frame.agents) == expected
        assert any(a.kind.value == "rsu" for a in frame.agents.values())
        assert len(frame.gt) > 10


def _scene(**kw):
    base = dict(seed=11, frames=12, cavs=4, rsus=1, vehicles=70, parked_density=0.5, warmup_steps=20)
    base.update(kw)
    return SceneConfig(**base)


@pytest.fixture(scope="module")
def busy_frames():
    return list(World(_scene()).frames())


def test_scan_point_count_and_ranges_resemble_real_opv2v(busy_frames, realdata):
    real = read_pcd(realdata / "opv2v" / "000070.pcd")
    sim_counts = [
        len(a.points) for sf in busy_frames for a in sf.frame.agents.values() if a.kind.value == "vehicle"
    ]
    assert 0.75 * len(real) < np.mean(sim_counts) < 1.3 * len(real)
    bins = [0, 10, 20, 40, 80, 120]
    real_hist = np.histogram(np.linalg.norm(real[:, :3], axis=1), bins)[0] / len(real)
    sim = busy_frames[0].frame.ego.points
    sim_hist = np.histogram(np.linalg.norm(sim[:, :3], axis=1), bins)[0] / len(sim)
    assert np.abs(real_hist - sim_hist).max() < 0.15
    assert sim[:, 3].min() >= 0.0 and sim[:, 3].max() <= 1.0


def test_occlusion_many_vehicles_are_seen_only_by_others(busy_frames):
    near = hidden_helped = 0
    for sf in busy_frames:
        f = sf.frame
        gt = f.gt
        veh = np.isin(gt.labels, [0, 1, 2, 3]) & (gt.track_ids != int(f.ego_id))
        d = np.hypot(*(gt.xyzlwhy[:, :2] - f.ego.position[:2]).T)
        for tid in gt.track_ids[veh & (d < 50)]:
            near += 1
            if sf.hits[f.ego_id].get(int(tid), 0) == 0 and any(
                h.get(int(tid), 0) > 0 for a, h in sf.hits.items() if a != f.ego_id
            ):
                hidden_helped += 1
    assert near > 100
    assert hidden_helped / near > 0.05


def test_no_two_participants_intersect_and_headings_follow_motion():
    world = World(_scene(frames=40, seed=5))
    frames = [sf.frame for sf in world.frames()]
    for f in frames:
        iou = bev_iou_matrix(f.gt.xyzlwhy, f.gt.xyzlwhy)
        np.fill_diagonal(iou, 0)
        assert iou.max() == 0.0, f"overlap in frame {f.index}"
    moved = 0
    for a, b in itertools.pairwise(frames):
        ia = {int(t): i for i, t in enumerate(a.gt.track_ids)}
        for j, t in enumerate(b.gt.track_ids):
            i = ia[int(t)]
            d = b.gt.xyzlwhy[j, :2] - a.gt.xyzlwhy[i, :2]
            if np.hypot(*d) > 0.3 and b.gt.labels[j] != 4:  # vehicles and cyclists that moved
                moved += 1
                heading = np.arctan2(d[1], d[0])
                err = (heading - b.gt.xyzlwhy[j, 6] + np.pi) % (2 * np.pi) - np.pi
                assert abs(err) < np.radians(12)
    assert moved > 200


def test_per_agent_hit_counts_match_points_in_boxes(busy_frames):
    sf = busy_frames[3]
    counts = sf.frame.points_per_gt_box()
    for aid, hits in sf.hits.items():
        by_box = dict(zip(sf.frame.gt.track_ids.tolist(), counts[aid].tolist(), strict=True))
        big = [t for t, n in hits.items() if n >= 20]
        assert big
        for t in big:  # boxes bound the objects: every hit lies inside (up to 5 sigma of range noise)
            assert by_box[t] >= 0.98 * hits[t]


def test_lidar_sees_a_wall_at_the_right_range():
    scene = Scene()
    v = np.array([[10, -50, -5], [10, 50, -5], [10, 50, 20], [10, -50, 20]], dtype=np.float32)
    scene.add(v, np.array([[0, 1, 2], [0, 2, 3]]), owner=42)
    cfg = LidarConfig(channels=16, horizontal_steps=360, range_noise=0.0, dropout=0.0)
    pts, owner = cast_scan([scene], np.eye(4), cfg, np.random.default_rng(0))
    front = np.abs(np.arctan2(pts[:, 1], pts[:, 0])) < 0.01
    assert np.allclose(pts[front, 0], 10.0, atol=1e-3) and (owner == 42).all()
    pts32, _ = cast_scan(
        [scene],
        np.eye(4),
        LidarConfig(channels=32, horizontal_steps=360, dropout=0.0),
        np.random.default_rng(0),
    )
    assert len(pts32) > 1.8 * len(pts)


def test_impossible_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(SimError, match="--frames"):
        generate(GenerateConfig(out=str(tmp_path / "x"), frames=0), progress=False)
    with pytest.raises(SimError, match="CAVs need at least"):
        generate(GenerateConfig(out=str(tmp_path / "y"), cavs=7, vehicles=(10, 12)), progress=False)
    with pytest.raises(SimError, match="needs --rsus"):
        generate(GenerateConfig(out=str(tmp_path / "z"), format="dair", rsus=0), progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SimError, match=r"not writable|cannot be created"):
        generate(GenerateConfig(out=str(blocker / "out")), progress=False)
    assert not any((tmp_path / "y").rglob("*.pcd"))
    with pytest.raises(ValueError, match="cavs"):
        SceneConfig(cavs=9)
    with pytest.raises(ValueError, match="intersections"):
        SceneConfig(rsus=4, town=TownConfig(blocks_x=1, blocks_y=0))


@pytest.mark.slow
def test_interrupted_run_leaves_only_whole_frames(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "v2x.cli.main",
        "sim",
        "generate",
        "--out",
        str(out),
        "--scenes",
        "1",
        "--frames",
        "200",
        "--cavs",
        "3",
        "--rsus",
        "1",
        "--seed",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.yaml"))) < 12:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    problems = check_log(out / "train")
    assert all(p.message.startswith("leftover temporary file") for p in problems), problems
    log = open_log(out / "train", comm_range=1e9)  # all agents, however far apart they drove
    assert 1 <= len(log) < 200
    for frame in log:  # every indexed frame is whole: all four agents with their point clouds
        assert len(frame.agents) == 4 and all(len(a.points) > 1000 for a in frame.agents.values())
