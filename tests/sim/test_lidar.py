import numpy as np
import pytest

from v2x.core.geometry import pose_from_xyz_rpy
from v2x.sim.lidar import LidarConfig, Scene, cast_scan
from v2x.sim.meshes import BODY, GLASS, TYRE, object_mesh, object_parts, transform_mesh


def _wall(x=10.0, reflectivity=0.5, owner=42) -> Scene:
    scene = Scene()
    v = np.array([[x, -50, -5], [x, 50, -5], [x, 50, 20], [x, -50, 20]], dtype=np.float32)
    scene.add(v, np.array([[0, 1, 2], [0, 2, 3]]), owner=owner, reflectivity=reflectivity)
    return scene


EXACT = dict(channels=16, horizontal_steps=360, range_noise=0.0, dropout=0.0, intensity_noise=0.0)


def test_a_wall_is_seen_at_its_range_with_its_owner():
    pts, owner = cast_scan([_wall()], np.eye(4), LidarConfig(**EXACT), np.random.default_rng(0))
    front = np.abs(np.arctan2(pts[:, 1], pts[:, 0])) < 0.01
    assert front.sum() == 16  # one return per channel straight ahead
    assert np.allclose(pts[front, 0], 10.0, atol=1e-3)
    assert (owner == 42).all()
    assert pts.dtype == np.float32 and pts.shape[1] == 4


def test_more_channels_give_proportionally_more_points():
    rng = np.random.default_rng(0)
    p16, _ = cast_scan([_wall()], np.eye(4), LidarConfig(**EXACT), rng)
    p32, _ = cast_scan([_wall()], np.eye(4), LidarConfig(**(EXACT | {"channels": 32})), rng)
    assert 1.95 < len(p32) / len(p16) < 2.05


def test_pose_moves_points_into_the_sensor_frame():
    """A sensor 4 m closer to the wall and turned 90 degrees sees it 6 m off its left side."""
    pose = pose_from_xyz_rpy(4.0, 0.0, 0.0, 0.0, 0.0, -np.pi / 2)
    pts, _ = cast_scan([_wall()], pose, LidarConfig(**EXACT), np.random.default_rng(0))
    left = np.abs(np.arctan2(pts[:, 1], pts[:, 0]) - np.pi / 2) < 0.01
    assert left.any() and np.allclose(pts[left, 1], 6.0, atol=1e-3)


def test_range_noise_and_dropout_are_applied():
    cfg = LidarConfig(channels=16, horizontal_steps=360, range_noise=0.05, dropout=0.3)
    pts, _ = cast_scan([_wall()], np.eye(4), cfg, np.random.default_rng(1))
    exact, _ = cast_scan([_wall()], np.eye(4), LidarConfig(**EXACT), np.random.default_rng(1))
    assert 0.6 < len(pts) / len(exact) < 0.8
    front = np.abs(np.arctan2(pts[:, 1], pts[:, 0])) < 0.2
    assert 0.02 < np.std(pts[front, 0] / np.cos(np.arctan2(pts[front, 1], pts[front, 0])) - 10.0) < 0.2


def test_intensity_depends_on_material_and_stays_in_unit_range():
    rng = np.random.default_rng(0)
    dark, _ = cast_scan([_wall(reflectivity=0.1)], np.eye(4), LidarConfig(**EXACT), rng)
    bright, _ = cast_scan([_wall(reflectivity=0.8)], np.eye(4), LidarConfig(**EXACT), rng)
    assert np.median(bright[:, 3]) > 4 * np.median(dark[:, 3])
    noisy, _ = cast_scan([_wall(reflectivity=1.0)], np.eye(4), LidarConfig(channels=16), rng)
    assert noisy[:, 3].min() >= 0.0 and noisy[:, 3].max() <= 1.0
    carla, _ = cast_scan([_wall()], np.eye(4), LidarConfig(**EXACT, intensity="carla"), rng)
    d = np.linalg.norm(carla[:, :3], axis=1)
    assert np.allclose(carla[:, 3], np.exp(-0.004 * d), atol=1e-5)


def test_own_vehicle_is_not_returned():
    scene = _wall()
    v, t = transform_mesh(object_mesh("car", 4.5, 1.9, 1.5), 0.0, 0.0, 0.0, 0.0)
    scene.add(v, t, owner=7)
    pose = pose_from_xyz_rpy(0.0, 0.0, 1.9, 0.0, 0.0, 0.0)
    cfg = LidarConfig(**EXACT | {"channels": 64, "min_range": 0.1})
    _, owner_all = cast_scan([scene], pose, cfg, np.random.default_rng(0), ignore_owner=None)
    assert (owner_all == 7).any()  # the roof is in the way of the lowest beams...
    _, owner_mine = cast_scan([scene], pose, cfg, np.random.default_rng(0), ignore_owner=7)
    assert not (owner_mine == 7).any()  # ...but a car's LiDAR does not report its own car


@pytest.mark.parametrize(
    ("kind", "size"),
    [
        ("car", (4.5, 1.9, 1.5)),
        ("van", (5.2, 2.0, 2.2)),
        ("truck", (9.0, 2.4, 3.4)),
        ("pedestrian", (0.6, 0.6, 1.75)),
    ],
)
def test_object_meshes_fill_their_boxes_and_stay_low_poly(kind, size):
    v, t = object_mesh(kind, *size)
    lo, hi = v.min(axis=0), v.max(axis=0)
    assert np.all(hi[:2] <= np.array(size[:2]) / 2 + 1e-4) and np.all(
        lo[:2] >= -np.array(size[:2]) / 2 - 1e-4
    )
    assert lo[2] >= -1e-4 and abs(hi[2] - size[2]) < 1e-3  # from the ground to the box top
    assert np.all(hi[:2] - lo[:2] > 0.85 * np.array(size[:2]))  # and nearly as long and wide
    assert len(t) < 200
    parts = object_parts(kind, *size)
    assert len(parts) == len(t) and (parts == BODY).any()
    if kind == "car":  # a cabin with raked glass above the body, tyres at the corners
        assert (parts == GLASS).any() and (parts == TYRE).sum() >= 4 * 12


def test_a_car_is_not_a_box():
    """The windscreen is raked: the top of a car is shorter than its body."""
    v, _ = object_mesh("car", 4.5, 1.9, 1.5)
    top = v[v[:, 2] > 1.45]
    assert np.ptp(top[:, 0]) < 0.5 * 4.5


def test_bad_lidar_configs_are_refused():
    with pytest.raises(ValueError, match="FOV"):
        LidarConfig(fov_down_deg=5, fov_up_deg=2)
    with pytest.raises(ValueError, match="dropout"):
        LidarConfig(dropout=1.0)
    with pytest.raises(ValueError, match="intensity"):
        LidarConfig(intensity="magic")
