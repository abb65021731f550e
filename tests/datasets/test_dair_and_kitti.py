import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from v2x.core.geometry import inverse
from v2x.datasets import DatasetError, open_log
from v2x.datasets.dair import DairLog, DairWriter
from v2x.datasets.kitti_tracking import read_kitti_tracking, read_seqmap, write_kitti_tracking


def test_real_dair_pair_labels_agree_through_lidar_i2v(realdata):
    log = open_log(realdata / "dair-v2x-c" / "DAIR-V2X")
    assert log.format == "dair-v2x-c" and len(log) == 1 and len(log.missing) == 520
    f = log[0]
    assert list(f.agents) == ["vehicle", "infrastructure"]
    # no world calibrations in the sample: the vehicle LiDAR is the world, the RSU sits at lidar_i2v
    assert np.allclose(f.ego.world_from_lidar, np.eye(4))
    veh = f.agents["vehicle"].labels.transformed(inverse(f.ego.world_from_lidar))
    inf = f.agents["infrastructure"].labels.transformed(inverse(f.ego.world_from_lidar))
    assert (len(veh), len(inf)) == (23, 8)
    d = np.hypot(*(inf.xyzlwhy[:, None, :2] - veh.xyzlwhy[None, :, :2]).transpose(2, 0, 1))
    rows, cols = linear_sum_assignment(d)
    matched = d[rows, cols] < 3.0  # objects labelled on both sides (one-to-one)
    # measured: 7 pairs, BEV centre residuals 0.09 .. 0.29 m
    assert matched.sum() == 7
    assert d[rows, cols][matched].max() < 0.5
    # without lidar_i2v (identity) the same objects would be ~13 m apart: the test can fail
    assert np.hypot(*(f.agents["infrastructure"].world_from_lidar[:2, 3])) > 10
    # ground truth: the vehicle's 23 labels plus the infrastructure's one object it did not label,
    # of which one lies outside DAIR's evaluation range (all corners in |x| <= 100.8, |y| <= 40 m)
    assert len(DairLog(realdata / "dair-v2x-c" / "DAIR-V2X", gt_range=None)[0].gt) == 24
    assert len(f.gt) == 23 and log.gt_out_of_range == 1


def test_string_numbers_parse_and_bad_strings_name_the_field(realdata, tmp_path):
    import shutil

    root = tmp_path / "dair"
    shutil.copytree(realdata / "dair-v2x-c" / "DAIR-V2X", root)
    label = root / "infrastructure-side" / "label" / "virtuallidar" / "001366.json"
    items = json.loads(label.read_text())
    assert isinstance(items[0]["3d_location"]["x"], float) or isinstance(items[0]["alpha"], str)
    items[0]["3d_location"]["x"] = "12.5"
    label.write_text(json.dumps(items))
    assert len(open_log(root)[0].agents) == 2
    items[0]["3d_location"]["x"] = "twelve"
    label.write_text(json.dumps(items))
    with pytest.raises(DatasetError) as err:
        open_log(root)[0]
    assert err.value.field == "[0].3d_location.x" and err.value.path == str(label)


def test_dair_round_trip(tmp_path, make_frame):
    frame = make_frame(n_agents=3, rsu=True)
    with DairWriter(tmp_path) as w:
        w.write(frame)
        w.write(make_frame(n_agents=3, rsu=True, index=8))
    log = open_log(tmp_path)
    assert log.format == "dair-v2x-c" and len(log) == 2
    back = log[0]
    assert list(back.agents) == ["vehicle", "infrastructure"]
    assert np.allclose(back.ego.world_from_lidar, frame.ego.world_from_lidar, atol=1e-9)
    assert np.allclose(
        back.agents["infrastructure"].world_from_lidar, frame.agents["-1"].world_from_lidar, atol=1e-9
    )
    assert np.allclose(back.ego.points[:, :3], frame.ego.points[:, :3])
    assert back.timestamp_ns == frame.timestamp_ns
    assert np.allclose(back.gt.xyzlwhy[:, :6], frame.gt.xyzlwhy[:, :6], atol=1e-6)
    dyaw = (back.gt.xyzlwhy[:, 6] - frame.gt.xyzlwhy[:, 6] + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(dyaw).max() < 1e-9
    # the per-side labels agree with the cooperative ones once moved into the world
    assert np.allclose(back.ego.labels.xyzlwhy[:, :3], frame.gt.xyzlwhy[:, :3], atol=1e-6)
    assert np.allclose(
        back.agents["infrastructure"].labels.xyzlwhy[:, :3], frame.gt.xyzlwhy[:, :3], atol=1e-6
    )
    assert np.allclose(back.ego.points[:, 3], frame.ego.points[:, 3], atol=0.5 / 255 + 1e-7)
    assert np.allclose(back.agents["infrastructure"].points, frame.agents["-1"].points)
    assert [f.index for f in log.iter_scenario("scene_a")] == [0, 1]


def test_dair_writer_keeps_the_vehicle_out_of_its_own_labels(tmp_path, make_frame):
    from v2x.core.boxes import Boxes

    frame = make_frame(n_agents=3, rsu=True)
    ego_box = Boxes([[*frame.ego.position[:2], 0.8, 4.5, 1.9, 1.6, 0.3]], labels=[0], track_ids=[100])
    frame.gt = Boxes.concat([frame.gt, ego_box])
    frame.agents["-1"].timestamp_ns = frame.timestamp_ns + 30_000_000  # the RSU scanned 30 ms later
    DairWriter(tmp_path).write(frame)
    back = open_log(tmp_path)[0]
    assert len(back.gt) == 7 and len(back.ego.labels) == 6 and len(back.agents["infrastructure"].labels) == 7
    assert back.agents["infrastructure"].timestamp_ns - back.ego.timestamp_ns == 30_000_000


def test_dair_world_labels_are_ignored_without_world_calibration(tmp_path, make_frame):
    import shutil

    DairWriter(tmp_path).write(make_frame(n_agents=3, rsu=True))
    shutil.rmtree(tmp_path / "vehicle-side" / "calib" / "novatel_to_world")
    shutil.rmtree(tmp_path / "infrastructure-side" / "calib" / "virtuallidar_to_world")
    f = open_log(tmp_path)[0]
    assert np.allclose(f.ego.world_from_lidar, np.eye(4))  # fell back to lidar_i2v
    # ground truth now comes from the side labels, in the vehicle frame
    assert np.allclose(np.sort(f.gt.xyzlwhy[:, 3]), np.sort(f.ego.labels.xyzlwhy[:, 3]))
    assert np.allclose(f.gt.xyzlwhy[:, :3], f.ego.labels.xyzlwhy[:, :3])


def test_dair_world_labels_from_corners_only(tmp_path, make_frame):
    """Real label_world files are valid only in ``world_8_points``: boxes come from the corners."""
    frame = make_frame(n_agents=3, rsu=True)
    DairWriter(tmp_path).write(frame)
    path = tmp_path / "cooperative" / "label_world" / "000000.json"
    items = json.loads(path.read_text())
    for item in items:
        item["3d_location"] = {"x": 0, "y": 0, "z": 0}  # present but meaningless, as in DAIR
    path.write_text(json.dumps(items))
    gt = open_log(tmp_path)[0].gt
    want = frame.gt.xyzlwhy.copy()
    swap = want[:, 4] > want[:, 3]  # corners know no front: the long side is the length
    want[swap, 3], want[swap, 4], want[swap, 6] = want[swap, 4], want[swap, 3], want[swap, 6] + np.pi / 2
    assert np.allclose(gt.xyzlwhy[:, :6], want[:, :6], atol=1e-9)
    dyaw = (gt.xyzlwhy[:, 6] - want[:, 6] + np.pi / 2) % np.pi - np.pi / 2
    assert np.abs(dyaw).max() < 1e-9


def test_dair_writer_needs_an_rsu(tmp_path, make_frame):
    with pytest.raises(ValueError, match="roadside unit"):
        DairWriter(tmp_path).write(make_frame(rsu=False))


def test_real_v2v4real_tracking_labels_load(realdata):
    root = realdata / "v2v4real"
    seqmap = read_seqmap(root / "train.seqmap")
    assert len(seqmap) == 32
    seq = read_kitti_tracking(root / "train_label" / "0000.txt")
    assert max(seq) <= seqmap["0000"][1]
    total = sum(len(f.boxes) for f in seq.values())
    assert total == 595
    first = seq[0].boxes
    assert first.track_ids.tolist() == [1, 107]
    # x, z, y order: the lateral coordinate is the last column, the height the middle one
    assert first.xyzlwhy[0, :3] == pytest.approx([-20.500578, -0.10612263, -0.978255])
    assert first.xyzlwhy[0, 3:6] == pytest.approx([3.9799347, 2.0622315, 1.6980522])


def test_kitti_tracking_round_trip_with_scores(tmp_path, make_frame):
    gt = make_frame().gt
    gt.scores = np.linspace(0.1, 0.9, len(gt)).astype(np.float32)
    write_kitti_tracking(tmp_path / "0000.txt", {3: gt})
    back = read_kitti_tracking(tmp_path / "0000.txt")[3].boxes
    assert np.allclose(back.xyzlwhy, gt.xyzlwhy, atol=1e-5)
    assert np.allclose(back.scores, gt.scores, atol=1e-6)
    assert np.array_equal(back.track_ids, gt.track_ids)


def test_kitti_bad_line_is_named(tmp_path):
    (tmp_path / "0001.txt").write_text("0 1 Car 0 0 0\n")
    with pytest.raises(DatasetError, match="line 1"):
        read_kitti_tracking(tmp_path / "0001.txt")


def test_dair_check_lists_every_broken_file_of_a_frame(tmp_path, make_frame):
    from v2x.datasets.check import check_log

    with DairWriter(tmp_path) as w:
        w.write(make_frame(n_agents=3, rsu=True))
        w.write(make_frame(n_agents=3, rsu=True, index=8))
    assert check_log(tmp_path) == []
    label = tmp_path / "infrastructure-side" / "label" / "virtuallidar" / "000003.json"
    items = json.loads(label.read_text())
    items[2]["rotation"] = "north"
    label.write_text(json.dumps(items))
    (tmp_path / "vehicle-side" / "velodyne" / "000002.pcd").write_bytes(b"VERSION 0.7\n")
    problems = check_log(tmp_path)
    assert {(p.path, p.field) for p in problems} == {
        (str(label), "[2].rotation"),
        (str(tmp_path / "vehicle-side" / "velodyne" / "000002.pcd"), "header"),
    }
    log = open_log(tmp_path, skip_bad=True)
    assert [f.timestamp_ns for f in log] == [700_000_000] and len(log.skipped) == 1
