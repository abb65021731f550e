"""Sensors like DAIR-V2X-C's: an explicit beam table, a forward-looking scanner without rings,
a sensor response, a "virtual LiDAR" frame; the ``dair`` preset's sensors checked against the
real files (skipped when absent) and its logs read back through the DAIR-V2X-C reader."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from v2x.datasets import open_log
from v2x.datasets.check import check_log
from v2x.datasets.pcd import read_pcd, read_pcd_header
from v2x.sim.generate import GenerateConfig, SimError, generate, preset_configs, validate
from v2x.sim.lidar import LidarConfig, Scene, cast_scan, ray_directions, scan_directions
from v2x.sim.realism import compare_scans, ground_height, ring_elevations, rings, wasserstein
from v2x.sim.sensors import DAIR_RSU_LIDAR, DAIR_VEHICLE_LIDAR, lines_from_density

EXACT = dict(range_noise=0.0, dropout=0.0, intensity_noise=0.0)


def _room(half=30.0, height=40.0, reflectivity=0.5) -> Scene:
    """A closed box round the sensor: every ray hits a wall, the floor or the ceiling."""
    from v2x.sim.meshes import box_mesh

    scene = Scene()
    v, t = box_mesh(-half, half, -half, half, -height / 2, height / 2)
    scene.add(v, t, owner=-1, reflectivity=reflectivity)
    return scene


def _elevations(points):
    return np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))


def test_default_sensor_rays_are_the_even_spread_and_draw_nothing():
    cfg = LidarConfig()
    el = np.radians(np.linspace(-25.0, 2.0, 64))
    az = np.linspace(-np.pi, np.pi, 1024, endpoint=False)
    E, A = np.meshgrid(el, az, indexing="ij")
    expected = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], axis=-1).reshape(-1, 3)
    assert np.array_equal(ray_directions(cfg), expected)
    rng = np.random.default_rng(5)
    assert scan_directions(cfg, rng) is ray_directions(cfg)
    assert rng.random() == np.random.default_rng(5).random()  # the noise stream is untouched


def test_a_beam_table_gives_its_rings_and_the_fov_its_azimuths():
    table = (-20.0, -7.5, -1.0, -0.5, 0.0, 6.0)
    cfg = LidarConfig(
        elevations_deg=table[::-1], horizontal_steps=360, azimuth_fov_deg=(-45.0, 45.0), **EXACT
    )
    assert cfg.channels == 6 and (cfg.fov_down_deg, cfg.fov_up_deg) == (-20.0, 6.0)
    pts, _ = cast_scan([_room()], np.eye(4), cfg, np.random.default_rng(0))
    assert len(pts) == 6 * 360  # the closed room answers every ray
    assert np.allclose(np.unique(np.round(_elevations(pts), 3)), table, atol=1e-3)
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    assert az.min() > -45.0 and az.max() < 45.0 and az.max() - az.min() > 89.0
    assert rings(pts, min_points=20) == (6, pytest.approx(1.0))


def test_a_non_repetitive_scanner_moves_its_rays_and_forms_no_rings():
    cfg = LidarConfig(
        elevations_deg=lines_from_density(((-20.0, 1.0), (10.0, 3.0)), 60),
        horizontal_steps=300,
        azimuth_fov_deg=(-50.0, 50.0),
        pattern="non_repetitive",
        **EXACT,
    )
    rng = np.random.default_rng(0)
    a, b = scan_directions(cfg, rng), scan_directions(cfg, rng)
    assert a.shape == b.shape == (60 * 300, 3) and not np.allclose(a, b)
    el = _elevations(a)
    assert el.min() > -20.5 and el.max() < 10.5
    # denser where the density is higher: the upper half holds more rays than the lower
    assert (el > -5).sum() > 1.5 * (el < -5).sum()
    pts, _ = cast_scan([_room()], np.eye(4), cfg, rng)
    beams, on_ring = rings(pts)
    assert beams == 0 and on_ring < 0.6
    spinning, _ = cast_scan([_room()], np.eye(4), replace(cfg, pattern="spinning"), rng)
    assert rings(spinning)[0] == 60


def test_lines_follow_the_density():
    lines = np.array(lines_from_density(((0.0, 1.0), (10.0, 1.0)), 10))
    assert np.allclose(lines, np.arange(10) + 0.5, atol=1e-3)  # even weight: evenly spread
    steep = np.array(lines_from_density(((0.0, 1.0), (10.0, 4.0)), 50))
    assert np.diff(steep)[-1] < 0.5 * np.diff(steep)[0]
    with pytest.raises(ValueError, match="density"):
        lines_from_density(((0.0, 1.0), (0.0, 2.0)), 10)


def test_intensity_response_and_bad_settings():
    room = [_room(reflectivity=0.4)]
    plain, _ = cast_scan(room, np.eye(4), LidarConfig(channels=8, **EXACT), np.random.default_rng(0))
    curved, _ = cast_scan(
        room,
        np.eye(4),
        LidarConfig(channels=8, intensity_gain=2.0, intensity_gamma=0.5, **EXACT),
        np.random.default_rng(0),
    )
    assert np.allclose(curved[:, 3], np.clip(2.0 * np.sqrt(plain[:, 3]), 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="distinct"):
        LidarConfig(elevations_deg=(1.0, 1.0))
    with pytest.raises(ValueError, match="azimuth"):
        LidarConfig(azimuth_fov_deg=(10.0, -10.0))
    with pytest.raises(ValueError, match="pattern"):
        LidarConfig(pattern="rosette")
    with pytest.raises(ValueError, match="frame height"):
        LidarConfig(mount_height=2.0, frame_height=3.0)


def test_dair_sensors_are_refused_with_channels_and_unknown_town_settings(tmp_path):
    with pytest.raises(SimError) as err:
        validate(GenerateConfig(out=str(tmp_path), sensors="dair", channels=32, town={"towers": 3}))
    assert "--channels applies to the opv2v sensors only" in str(err.value)
    assert "towers" in str(err.value)
    with pytest.raises(SimError, match="--sensors"):
        validate(GenerateConfig(out=str(tmp_path), sensors="kitti"))


# -- the dair preset ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dair_scene(tmp_path_factory) -> Path:
    """One scene of the ``dair`` preset's training part, 3 frames 1 s apart, as the CLI writes it."""
    out = tmp_path_factory.mktemp("dair")
    part = preset_configs("dair", str(out), scenes=1, frames=3, frame_step=10)[0]
    generate(part, progress=False)
    return out


def test_a_dair_preset_scene_loads_through_the_dair_reader(dair_scene):
    split = dair_scene / "train"
    assert check_log(split) == []
    log = open_log(split)
    assert log.format == "dair-v2x-c" and len(log) == 3
    frame = log[0]
    veh, inf = frame.ego, next(a for a in frame.agents.values() if a.kind.value == "rsu")
    # the files look like the real ones: the vehicle PCD carries a timestamp field, uint8 intensity
    vpcd = next((split).rglob("vehicle-side/velodyne/*.pcd"))
    header = read_pcd_header(vpcd)
    assert header["FIELDS"].split() == ["x", "y", "z", "intensity", "timestamp"]
    assert header["TYPE"].split()[3] == "U"
    # the reader estimates each sensor's height from its ground: 1.96 m, and 1.7 m for the
    # roadside unit's level "virtual LiDAR" frame (its sensor is 7 m up)
    assert veh.mount_height == pytest.approx(DAIR_VEHICLE_LIDAR.mount_height, abs=0.1)
    assert inf.mount_height == pytest.approx(DAIR_RSU_LIDAR.frame_height, abs=0.1)
    assert np.allclose(inf.world_from_lidar[2, :3], [0, 0, 1], atol=1e-6)  # level, as DAIR's
    # the roadside unit looks forward only, the vehicle all round
    az = np.degrees(np.arctan2(inf.points[:, 1], inf.points[:, 0]))
    assert az.min() > -51 and az.max() < 51
    assert np.ptp(np.degrees(np.arctan2(veh.points[:, 1], veh.points[:, 0]))) > 350
    assert len(frame.gt) > 10
    info = json.loads((next(split.iterdir()) / "cooperative" / "data_info.json").read_text())
    assert len(info) == 3


@pytest.fixture(scope="module")
def real_dair(dair_example) -> Path:
    return dair_example


def _scans(root: Path, side: str, step: int = 1) -> list[np.ndarray]:
    return [
        read_pcd(p, drop_nonfinite=True) for p in sorted(root.rglob(f"{side}-side/velodyne/*.pcd"))[::step]
    ]


def test_dair_vehicle_lidar_has_the_real_sensors_beams_and_height(real_dair):
    real = _scans(real_dair, "vehicle", 6)
    assert np.median([rings(s)[0] for s in real]) == DAIR_VEHICLE_LIDAR.channels == 40
    peaks = ring_elevations(real)
    assert max(np.abs(peaks - e).min() for e in DAIR_VEHICLE_LIDAR.elevations_deg) <= 0.05
    assert np.nanmedian([ground_height(s) for s in real]) == pytest.approx(
        -DAIR_VEHICLE_LIDAR.mount_height, abs=0.1
    )
    assert (
        np.percentile(np.linalg.norm(np.concatenate(real)[:, :3], axis=1), 99.9)
        < DAIR_VEHICLE_LIDAR.max_range
    )


def test_dair_roadside_lidar_has_the_real_sensors_field_of_view_and_mounting(real_dair):
    real = _scans(real_dair, "infrastructure", 6)
    assert rings(real[0])[0] == 0 and DAIR_RSU_LIDAR.pattern == "non_repetitive"
    pts = np.concatenate(real)
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    lo, hi = DAIR_RSU_LIDAR.azimuth_fov_deg
    assert lo - 1 < np.percentile(az, 0.05) < lo + 5 and hi - 5 < np.percentile(az, 99.95) < hi + 1
    # seen from the sensor (mount - frame height above the frame's origin) the returns fill the
    # table's vertical field of view
    drop = DAIR_RSU_LIDAR.mount_height - DAIR_RSU_LIDAR.frame_height
    el = _elevations(pts - np.array([0, 0, drop, 0], np.float32))
    assert DAIR_RSU_LIDAR.fov_down_deg - 1 < np.percentile(el, 0.05) < DAIR_RSU_LIDAR.fov_down_deg + 1
    assert DAIR_RSU_LIDAR.fov_up_deg - 2 < np.percentile(el, 99.99) < DAIR_RSU_LIDAR.fov_up_deg + 1
    assert np.nanmedian([ground_height(s) for s in real]) == pytest.approx(
        -DAIR_RSU_LIDAR.frame_height, abs=0.1
    )
    # the real "virtual LiDAR" frame is level, as we mount ours
    calib = next(real_dair.glob("infrastructure-side/calib/virtuallidar_to_world/*.json"))
    R = np.array(json.loads(calib.read_text())["rotation"])
    assert np.degrees(np.arccos(R[2, 2])) < 1.0


def test_dair_preset_scans_resemble_the_real_ones(dair_scene, real_dair):
    for side, sim_beams in (("vehicle", (38, 40)), ("infrastructure", (0, 0))):
        c = compare_scans(_scans(real_dair, side, 4), _scans(dair_scene, side))
        assert 0.85 < c["points_ratio"] < 1.15, (side, c["points_ratio"])
        assert sim_beams[0] <= c["sim"]["beams"] <= sim_beams[1]
        assert abs(c["sim"]["ground_z"] - c["real"]["ground_z"]) < 0.15
        assert c["range_overlap"] > 0.7 and c["elevation_overlap"] > 0.75, (side, c)
        assert c["intensity_emd"] < 0.06, (side, c["intensity_emd"])


def test_realism_measures_by_hand():
    rng = np.random.default_rng(0)
    assert wasserstein(np.zeros(1000), np.full(1000, 3.0)) == pytest.approx(3.0)
    assert wasserstein(rng.normal(0, 1, 5000), rng.normal(0, 1, 5000)) < 0.1
    flat = np.c_[rng.uniform(-30, 30, (5000, 2)), np.full(5000, -1.7), np.zeros(5000)]
    assert ground_height(flat) == pytest.approx(-1.7, abs=1e-6)
    scans = [np.c_[rng.uniform(5, 50, (3000, 3)), rng.uniform(0, 1, 3000)] for _ in range(2)]
    c = compare_scans(scans, scans)
    assert c["points_ratio"] == 1.0 and c["range_overlap"] == pytest.approx(1.0)
    assert c["range_emd_m"] == 0.0 and c["intensity_emd"] == 0.0


def test_realism_command_prints_both_sides(dair_scene, tmp_path):
    from v2x.cli.main import cli

    res = CliRunner().invoke(
        cli, ["sim", "realism", "--real", str(dair_scene), "--sim", str(dair_scene), "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"vehicle", "infrastructure"}
    assert out["vehicle"]["range_overlap"] == pytest.approx(1.0) and out["vehicle"]["sim"]["scans"] == 3
    res = CliRunner().invoke(cli, ["sim", "realism", "--real", str(tmp_path), "--sim", str(dair_scene)])
    assert res.exit_code != 0 and "no vehicle-side" in res.output
