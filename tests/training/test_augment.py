"""Sensor-frame rotation augmentation: how far it turns is the training config's choice.

A roadside scan reaches the ego's grid turned by whatever angle the ego drives at; the DAIR
detector is trained with ``rotation_deg: 180`` for that (docs/perception.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from v2x.core.boxes import Boxes, ObjectClass, wrap_angle
from v2x.core.frame import AgentKind, AgentScan, Frame
from v2x.core.geometry import inverse, pose_from_xyz_yaw, yaw_of
from v2x.perception.config import DetectorConfig
from v2x.training.augment import augment_frame, mirror_frame, turn_objects
from v2x.training.data import CooperativeTrainingSet
from v2x.training.detector import TrainConfig


def _frame() -> Frame:
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-30, 30, (400, 3)), rng.uniform(0, 1, 400)].astype(np.float32)
    agents = {
        "1": AgentScan("1", AgentKind.VEHICLE, pts, pose_from_xyz_yaw(0, 0, 1.8, 0.3), 1, 1.8),
        "-1": AgentScan("-1", AgentKind.RSU, pts.copy(), pose_from_xyz_yaw(20, 5, 5.0, 2.0), 1, 5.0),
    }
    gt = Boxes(np.array([[5.0, 2.0, 0.8, 4.5, 1.9, 1.6, 0.4]]))
    return Frame("s", 0, 1, agents, "1", gt)


def _turns(frame: Frame, max_rotation: float, draws: int = 200) -> np.ndarray:
    """How far augmentation turned the first agent's sensor frame (degrees), over many draws."""
    out = []
    for seed in range(draws):
        mirrored = np.random.default_rng(seed).random() < 0.5  # augment_frame's first draw
        base = mirror_frame(frame) if mirrored else frame
        aug = augment_frame(frame, np.random.default_rng(seed), max_rotation)
        rel = inverse(base.agents["1"].world_from_lidar) @ aug.agents["1"].world_from_lidar
        out.append(abs(math.degrees(yaw_of(rel))))
        # the scan itself is the same in the world: only the frame it is written in turned
        assert np.allclose(
            aug.agents["1"].points_in(np.eye(4)), base.agents["1"].points_in(np.eye(4)), atol=1e-3
        )
    return np.array(out)


def test_the_turn_reaches_the_configured_angle_and_no_further():
    frame = _frame()
    small, full = _turns(frame, math.radians(45)), _turns(frame, math.pi)
    assert small.max() <= 45.0 + 1e-6
    assert full.max() > 60.0


def test_rotation_deg_reaches_the_training_samples():
    assert TrainConfig().rotation_deg == 45.0
    ds = CooperativeTrainingSet([_frame()], DetectorConfig(), max_rotation=math.radians(180))
    assert ds.max_rotation == math.pi


def _turn_of(frame: Frame, aug: Frame, agent: str, seed: int) -> float:
    mirrored = np.random.default_rng(seed).random() < 0.5  # augment_frame's first draw
    base = mirror_frame(frame) if mirrored else frame
    rel = inverse(base.agents[agent].world_from_lidar) @ aug.agents[agent].world_from_lidar
    return abs(math.degrees(yaw_of(rel)))


def test_roadside_units_take_their_own_turn_range():
    """``rotation_deg_rsu``: the roadside unit's frame turns up to 180 degrees, the vehicle's
    still up to 45; without it both take ``rotation_deg`` and draw the same random stream."""
    frame = _frame()
    vehicle, rsu = [], []
    for seed in range(200):
        aug = augment_frame(frame, np.random.default_rng(seed), math.radians(45), math.pi)
        vehicle.append(_turn_of(frame, aug, "1", seed))
        rsu.append(_turn_of(frame, aug, "-1", seed))
        same = augment_frame(frame, np.random.default_rng(seed), math.radians(45), None)
        plain = augment_frame(frame, np.random.default_rng(seed), math.radians(45))
        assert np.array_equal(same.agents["-1"].points, plain.agents["-1"].points)
    assert max(vehicle) <= 45.0 + 1e-6
    assert max(rsu) > 90.0
    assert TrainConfig().rotation_deg_rsu is None
    ds = CooperativeTrainingSet([_frame()], DetectorConfig(), max_rotation_rsu=math.pi)
    assert ds.max_rotation_rsu == math.pi


def test_ego_kinds_keeps_the_roadside_unit_out_of_the_ego_seat():
    """``ego_kinds: [vehicle]``: the head is never trained in the pole's frame; without it both
    agents take the ego's seat."""
    frames = [_frame()] * 40
    any_ego = CooperativeTrainingSet(frames, DetectorConfig())
    vehicle_ego = CooperativeTrainingSet(frames, DetectorConfig(), ego_kinds=["vehicle"])
    egos_any = {any_ego[i].key.split("/")[2] for i in range(40)}
    egos_vehicle = {vehicle_ego[i].key.split("/")[2] for i in range(40)}
    assert egos_any == {"1", "-1"}
    assert egos_vehicle == {"1"}
    # a frame with no agent of an allowed kind still gives a sample, with one of its agents as ego
    only_rsu = CooperativeTrainingSet([_frame()], DetectorConfig(), ego_kinds=["rsu"])
    assert only_rsu[0].key.split("/")[2] == "-1"


@pytest.mark.parametrize("kinds", [[], ["truck"]])
def test_ego_kinds_refuses_unknown_kinds(kinds):
    with pytest.raises(ValueError, match="ego_kinds"):
        TrainConfig.from_dict({"ego_kinds": kinds})


def _two_car_frame() -> Frame:
    """Two cars far apart, each a cloud of points in its box, seen by a vehicle and a pole."""
    rng = np.random.default_rng(1)
    gt = Boxes(
        np.array([[10.0, 4.0, 0.8, 4.5, 1.9, 1.6, 0.3], [-12.0, -6.0, 0.8, 4.2, 1.8, 1.5, 2.0]]),
        labels=int(ObjectClass.CAR),
    )
    clouds = []
    for b in gt.xyzlwhy:
        local = rng.uniform(-0.5, 0.5, (300, 3)) * b[3:6]
        c, s = np.cos(b[6]), np.sin(b[6])
        clouds.append(
            np.c_[
                b[0] + c * local[:, 0] - s * local[:, 1],
                b[1] + s * local[:, 0] + c * local[:, 1],
                b[2] + local[:, 2],
            ]
        )
    ground = np.c_[rng.uniform(-40, 40, (500, 2)), np.full(500, -0.5)]
    world = np.concatenate([*clouds, ground])
    agents = {}
    for aid, kind, pose in (
        ("1", AgentKind.VEHICLE, pose_from_xyz_yaw(0, 0, 1.8, 0.3)),
        ("-1", AgentKind.RSU, pose_from_xyz_yaw(20, 5, 5.0, 2.0)),
    ):
        local = (inverse(pose) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
        pts = np.c_[local, np.zeros(len(local))].astype(np.float32)
        agents[aid] = AgentScan(aid, kind, pts, pose, 1, 1.8, gt.copy())
    return Frame("s", 0, 1, agents, "1", gt)


def test_turn_objects_turns_each_car_with_its_points_in_every_scan():
    frame = _two_car_frame()
    out = turn_objects(frame, np.random.default_rng(3), math.radians(45))
    turn = np.degrees(wrap_angle(out.gt.yaws - frame.gt.yaws))
    assert np.all(np.abs(turn) <= 45.0 + 1e-9) and np.all(np.abs(turn) > 1.0)
    assert np.allclose(out.gt.centers, frame.gt.centers)
    for aid, scan in out.agents.items():
        # every car point is still inside its (turned) box, in every agent's scan
        assert np.array_equal(out.points_per_gt_box(0.0)[aid], frame.points_per_gt_box(0.0)[aid])
        assert np.array_equal(out.points_per_gt_box(0.0)[aid], [300, 300])
        assert np.allclose(scan.labels.xyzlwhy, out.gt.xyzlwhy)
        # the ground stays where it was
        assert np.allclose(scan.points[600:], frame.agents[aid].points[600:])
    # the original frame is untouched
    assert np.array_equal(frame.points_per_gt_box(0.0)["1"], [300, 300])


def test_turn_objects_leaves_a_car_that_would_touch_another():
    frame = _two_car_frame()
    close = frame.gt.copy()
    close.xyzlwhy[1] = [10.0, 6.2, 0.8, 4.2, 1.8, 1.5, 0.3]  # parked beside the first
    frame = Frame(frame.scenario, 0, 1, frame.agents, "1", close)
    turned = [
        np.abs(
            wrap_angle(turn_objects(frame, np.random.default_rng(s), math.radians(45)).gt.yaws - close.yaws)
        )
        for s in range(20)
    ]
    assert all(t.max() < 1e-9 or t.min() < 1e-9 for t in turned)  # never both turned into each other
    assert any(t.max() > 0 for t in turned)


def test_object_turn_reaches_the_training_samples_only_when_asked():
    assert TrainConfig().object_turn_deg == 0.0
    frame = _two_car_frame()
    plain = CooperativeTrainingSet([frame], DetectorConfig())
    turned = CooperativeTrainingSet([frame], DetectorConfig(), max_object_turn=math.radians(45))
    same = CooperativeTrainingSet([frame], DetectorConfig(), max_object_turn=0.0)
    assert np.array_equal(plain[0].boxes, same[0].boxes)
    assert not np.allclose(plain[0].boxes[:, 6], turned[0].boxes[:, 6])
