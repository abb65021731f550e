import numpy as np
import pytest

from v2x.core.boxes import Boxes, ObjectClass, box_corners, class_from_name, points_in_boxes, wrap_angle
from v2x.core.frame import AgentKind, AgentScan, Frame
from v2x.core.geometry import (
    NotRigidError,
    check_rigid,
    inverse,
    pose_from_xyz_rpy,
    pose_from_xyz_yaw,
    relative_pose,
    transform_points,
    xyz_rpy_from_pose,
    yaw_of,
)
from v2x.core.grid import BEVGrid


def test_pose_round_trip_and_inverse():
    T = pose_from_xyz_rpy(1.0, -2.0, 0.5, 0.1, -0.2, 2.5)
    assert np.allclose(xyz_rpy_from_pose(T), (1.0, -2.0, 0.5, 0.1, -0.2, 2.5))
    assert np.allclose(inverse(T) @ T, np.eye(4))
    assert np.isclose(yaw_of(T), 2.5)


def test_relative_pose_maps_b_into_a():
    wa = pose_from_xyz_yaw(10, 0, 0, np.pi / 2)
    wb = pose_from_xyz_yaw(0, 5, 0, 0.0)
    p_b = np.array([[1.0, 0.0, 0.0]])
    p_world = transform_points(wb, p_b)
    p_a = transform_points(relative_pose(wa, wb), p_b)
    assert np.allclose(transform_points(wa, p_a), p_world)


def test_check_rigid_rejects_scale_and_nan():
    T = np.eye(4)
    T[0, 0] = 2
    with pytest.raises(NotRigidError, match="lidar_pose"):
        check_rigid(T, "lidar_pose")
    T = np.eye(4)
    T[1, 3] = np.nan
    with pytest.raises(NotRigidError):
        check_rigid(T)


def test_transform_points_keeps_extra_columns():
    pts = np.array([[1, 0, 0, 0.7]], dtype=np.float32)
    out = transform_points(pose_from_xyz_yaw(0, 0, 1, np.pi / 2), pts)
    assert out.dtype == np.float32
    assert np.allclose(out, [[0, 1, 1, 0.7]], atol=1e-6)


def test_boxes_transform_moves_centre_and_yaw():
    b = Boxes([[1, 0, 0, 4, 2, 1.5, 0.0]], labels=[ObjectClass.CAR], track_ids=[7])
    out = b.transformed(pose_from_xyz_yaw(0, 0, 0, np.pi / 2))
    assert np.allclose(out.xyzlwhy[0], [0, 1, 0, 4, 2, 1.5, np.pi / 2])
    assert out.track_ids[0] == 7
    assert np.allclose(b.xyzlwhy[0, :2], [1, 0])  # original untouched


def test_corners_and_points_in_boxes():
    b = np.array([[0, 0, 1, 4, 2, 2, np.pi / 2]])
    c = box_corners(b)[0]
    assert np.allclose(sorted(c[:4, 0]), [-1, -1, 1, 1])
    assert np.allclose(sorted(c[:4, 1]), [-2, -2, 2, 2])
    pts = np.array([[0, 1.9, 1], [1.5, 0, 1], [0, 0, 2.1], [0, -1.5, 0.1]])
    assert points_in_boxes(pts, b)[:, 0].tolist() == [True, False, False, True]


def test_class_names_and_wrap():
    assert class_from_name("Car") is ObjectClass.CAR
    assert class_from_name("Tricyclist") is ObjectClass.CYCLIST
    assert class_from_name("TrafficCone") is ObjectClass.OTHER
    assert np.isclose(wrap_angle(3 * np.pi / 2), -np.pi / 2)


def test_grid_shapes_and_fingerprint():
    g = BEVGrid()
    assert g.voxel_shape == (200, 352)
    assert g.shape == (100, 176)
    row, col, ok = g.cell_of(np.array([[-70.4, -40.0], [70.39, 39.99], [71.0, 0.0]]))
    assert ok.tolist() == [True, True, False]
    assert (row[1], col[1]) == (99, 175)
    assert g.fingerprint() == BEVGrid().fingerprint()
    assert g.fingerprint() != BEVGrid(voxel=0.2, stride=4).fingerprint()
    with pytest.raises(ValueError):
        BEVGrid(x_min=0, x_max=1.0)


def test_frame_orders_ego_first_and_bev_frame_is_level():
    tilted = pose_from_xyz_rpy(5, 5, 6.0, 0.0, 0.3, 1.0)
    rsu = AgentScan("-1", AgentKind.RSU, np.zeros((0, 4)), tilted, mount_height=6.0)
    car = AgentScan("10", "vehicle", np.zeros((0, 4)), pose_from_xyz_yaw(0, 0, 1.8, 0), mount_height=1.8)
    f = Frame("s", 0, 0, {"-1": rsu, "10": car}, ego_id="10")
    assert list(f.agents) == ["10", "-1"]
    wb = rsu.world_from_bev
    assert np.allclose(wb[:3, 3], [5, 5, 0])
    assert np.allclose(wb[2, :3], [0, 0, 1])
    with pytest.raises(ValueError, match="ego"):
        Frame("s", 0, 0, {"10": car}, ego_id="3")
