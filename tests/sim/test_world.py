"""The simulated world: traffic that never overlaps, headings that follow motion, smooth
10 Hz trajectories, agents placed as OPV2V readers expect, and hit counts that are true."""

import numpy as np
import pytest

from v2x.core.boxes import ObjectClass
from v2x.core.frame import AgentKind
from v2x.datasets.opv2v import protocol_order
from v2x.sim.realism import heading_errors, overlapping_pairs
from v2x.sim.town import TownConfig
from v2x.sim.world import SceneConfig, World


def test_no_two_participants_ever_overlap(busy_world_frames):
    _, frames = busy_world_frames
    for sf in frames:
        assert overlapping_pairs(sf.frame) == [], f"overlap in frame {sf.frame.index}"


def test_headings_follow_motion(busy_world_frames):
    _, frames = busy_world_frames
    err = heading_errors([sf.frame for sf in frames])
    assert len(err) > 300  # plenty of moving vehicles
    assert np.degrees(np.percentile(err, 99)) < 5.0
    assert np.degrees(err.max()) < 12.0


def test_trajectories_are_smooth_and_ids_persistent(busy_world_frames):
    """Same ids every frame; speeds and accelerations a real vehicle could have at 10 Hz."""
    _, frames = busy_world_frames
    ids0 = set(frames[0].frame.gt.track_ids.tolist())
    assert all(set(sf.frame.gt.track_ids.tolist()) == ids0 for sf in frames)
    pos = np.stack([sf.frame.gt.xyzlwhy[np.argsort(sf.frame.gt.track_ids), :2] for sf in frames])
    speed = np.linalg.norm(np.diff(pos, axis=0), axis=2) / 0.1
    assert speed.max() < 20.0  # m/s: a town speed limit
    acc = np.abs(np.diff(speed, axis=0)) / 0.1
    assert np.percentile(acc, 99.9) <= 8.5  # hard braking at most (plus numeric slack)
    assert (speed > 3.0).sum() > 0.3 * speed.size * (1 - 0.5)  # traffic moves (parked cars do not)


def test_vehicle_sizes_are_realistic(busy_world_frames):
    _, frames = busy_world_frames
    gt = frames[0].frame.gt
    sizes = {
        ObjectClass.CAR: ((4.0, 5.0), (1.7, 2.0), (1.35, 1.65)),
        ObjectClass.VAN: ((4.7, 5.7), (1.85, 2.15), (1.85, 2.45)),
        ObjectClass.TRUCK: ((7.0, 11.0), (2.2, 2.6), (2.9, 3.7)),
        ObjectClass.PEDESTRIAN: ((0.4, 0.8), (0.4, 0.8), (1.5, 1.9)),
    }
    for cls, ranges in sizes.items():
        b = gt.xyzlwhy[gt.labels == cls]
        assert len(b), f"no {cls.name} in the busy scene"
        for k, (lo, hi) in enumerate(ranges):
            assert (b[:, 3 + k] >= lo).all() and (b[:, 3 + k] <= hi).all(), cls.name
    # boxes stand on the ground (vehicles) or on the raised sidewalk (pedestrians)
    bottom = gt.xyzlwhy[:, 2] - gt.xyzlwhy[:, 5] / 2
    assert np.all((np.abs(bottom) < 1e-6) | (np.abs(bottom - 0.15) < 1e-6))


def test_agents_are_placed_as_readers_expect(busy_world_frames):
    _, frames = busy_world_frames
    f = frames[0].frame
    assert protocol_order(list(f.agents))[0] == f.ego_id  # OPV2V takes the first folder as ego
    kinds = [a.kind for a in f.agents.values()]
    assert kinds.count(AgentKind.VEHICLE) == 4 and kinds.count(AgentKind.RSU) == 1
    rsu = next(a for a in f.agents.values() if a.kind == AgentKind.RSU)
    assert rsu.agent_id.startswith("-") and 5.0 <= rsu.world_from_lidar[2, 3] <= 6.0
    assert rsu.mount_height == pytest.approx(rsu.world_from_lidar[2, 3])
    for sf in frames:  # the CAVs stay within communication range (70 m) and apart
        ego = sf.frame.ego.position[:2]
        cav = [a.position[:2] for a in sf.frame.agents.values() if a.kind == AgentKind.VEHICLE]
        assert all(np.hypot(*(p - ego)) < 70.0 for p in cav)
    xy = np.array([a.position[:2] for a in frames[0].frame.agents.values() if a.kind == AgentKind.VEHICLE])
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(xy), 1)].min() > 6.0
    # each CAV's LiDAR frame is its car's pose, lifted to the mount height
    for aid, a in f.agents.items():
        if a.kind == AgentKind.VEHICLE:
            j = int(np.flatnonzero(f.gt.track_ids == int(aid))[0])
            assert np.allclose(a.position[:2], f.gt.xyzlwhy[j, :2])
            assert np.isclose(
                np.arctan2(a.world_from_lidar[1, 0], a.world_from_lidar[0, 0]), f.gt.xyzlwhy[j, 6]
            )


def test_hit_counts_are_points_on_the_objects(busy_world_frames):
    """Every recorded hit lies in (or, by range noise, just at) its object's box."""
    _, frames = busy_world_frames
    sf = frames[3]
    for aid, scan in sf.frame.agents.items():
        scan_no_hits = type(scan)(scan.agent_id, scan.kind, scan.points, scan.world_from_lidar)
        frame = type(sf.frame)(sf.frame.scenario, 0, 0, {aid: scan_no_hits}, aid, sf.frame.gt)
        in_boxes = frame.points_per_gt_box(margin=0.1)[aid]
        by_id = dict(zip(sf.frame.gt.track_ids.tolist(), in_boxes.tolist(), strict=True))
        big = [t for t, n in sf.hits[aid].items() if n >= 20]
        assert big
        for t in big:
            assert by_id[t] >= 0.97 * sf.hits[aid][t]
        assert sum(sf.hits[aid].values()) <= len(scan.points)


def test_points_are_float32_in_the_sensor_frame(busy_world_frames):
    _, frames = busy_world_frames
    for scan in frames[0].frame.agents.values():
        assert scan.points.dtype == np.float32 and scan.points.shape[1] == 4
        ground = scan.points_in_world()[:, 2]
        assert abs(np.percentile(ground, 5)) < 0.2  # most low returns are on the ground, z = 0


def test_same_seed_same_world_and_more_cavs_than_cars_is_refused():
    a = next(World(SceneConfig(seed=4, frames=1, cavs=2, rsus=0, warmup_steps=2)).frames()).frame
    b = next(World(SceneConfig(seed=4, frames=1, cavs=2, rsus=0, warmup_steps=2)).frames()).frame
    assert np.array_equal(a.gt.xyzlwhy, b.gt.xyzlwhy)
    assert all(np.array_equal(a.agents[k].points, b.agents[k].points) for k in a.agents)
    small = TownConfig(blocks_x=1, blocks_y=1)
    with pytest.raises(ValueError, match="CAVs"):
        World(SceneConfig(seed=4, frames=1, cavs=7, rsus=0, vehicles=3, town=small, warmup_steps=0))
    with pytest.raises(ValueError, match="cavs"):
        SceneConfig(cavs=9)
    with pytest.raises(ValueError, match="intersections"):
        SceneConfig(rsus=4, town=TownConfig(blocks_x=1, blocks_y=0))
