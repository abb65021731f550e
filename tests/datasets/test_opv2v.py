import shutil

import numpy as np
import pytest

from v2x.core.boxes import ObjectClass
from v2x.core.iou import bev_iou_matrix
from v2x.datasets import DatasetError, detect_format, open_log
from v2x.datasets.opv2v import OPV2VWriter, carla_pose_to_matrix, matrix_to_carla_pose
from v2x.datasets.yamlio import dump_yaml, load_yaml


def test_real_v2xset_frame_loads_with_three_agents_and_ground_truth(v2xset_log):
    log = open_log(v2xset_log)
    assert log.format == "opv2v" and len(log) == 1
    f = log[0]
    assert list(f.agents) == ["4279", "4288", "4297"] and f.ego_id == "4279"
    # 27 distinct vehicles over the three CAVs' lists; as in OpenCOOD the ego's own car (listed
    # by 4288) is one of them, and every box is in the world frame near some CAV
    assert len(f.gt) == 27 and 4279 in f.gt.track_ids and len(set(f.gt.track_ids)) == 27
    ego_box = f.gt.xyzlwhy[list(f.gt.track_ids).index(4279)]
    assert np.hypot(*(ego_box[:2] - f.ego.position[:2])) < 1.0  # the ego's box sits under its LiDAR
    assert [len(a.labels) for a in f.agents.values()] == [21, 22, 15]
    assert all(len(a.points) == 56443 for a in f.agents.values())
    assert set(f.gt.labels) == {int(ObjectClass.CAR)}
    # every CAV sits near the ground-truth road and ~1.9 m above its own wheels
    assert all(abs(a.mount_height - 1.9) < 0.05 for a in f.agents.values())


def test_known_carla_pose_maps_to_right_handed_matrix(v2xset_log):
    f = open_log(v2xset_log)[0]
    # ego lidar_pose: x -275.6085, y -19.8083, z 1.9314, roll -0.00293, yaw 89.7075, pitch 0.1355 (CARLA)
    T = f.ego.world_from_lidar
    assert np.allclose(T[:3, 3], [-275.6085205078125, 19.80833625793457, 1.9313920736312866])
    yaw = np.degrees(np.arctan2(T[1, 0], T[0, 0]))
    assert yaw == pytest.approx(-89.70753479003906, abs=1e-4)
    assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)
    # CARLA's forward (+x) at yaw 89.7 points to +y (right-handed: -y); left in RH is CARLA's -y
    assert np.allclose(
        T[:3, 0], [np.cos(np.radians(-89.7075)), np.sin(np.radians(-89.7075)), T[2, 0]], atol=1e-3
    )


def test_hand_computed_carla_pose_to_right_handed():
    # CARLA yaw 90 deg faces CARLA +y, which is to the right: in our frame that is -y
    lh = carla_pose_to_matrix([10.0, 20.0, 1.5, 0.0, 90.0, 0.0])
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    rh = flip @ lh @ flip
    expected = np.array([[0, 1, 0, 10], [-1, 0, 0, -20], [0, 0, 1, 1.5], [0, 0, 0, 1.0]])
    assert np.allclose(rh, expected, atol=1e-12)
    ahead = rh @ np.array([5.0, 0, 0, 1])
    assert np.allclose(ahead[:3], [10, -25, 1.5])
    # pitch up 10 deg (CARLA) lifts the nose: in our frame a rotation of -10 deg about y
    rh = flip @ carla_pose_to_matrix([0, 0, 0, 0, 0, 10.0]) @ flip
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    assert np.allclose(rh[:3, :3], [[c, 0, -s], [0, 1, 0], [s, 0, c]])


def test_carla_pose_round_trip():
    pose = [1.0, -2.0, 3.0, 4.0, -120.0, 7.5]
    assert np.allclose(matrix_to_carla_pose(carla_pose_to_matrix(pose)), pose)


@pytest.mark.parametrize("variant", ["opv2v", "v2v4real"])
@pytest.mark.parametrize("encoding", ["ascii", "binary_compressed"])
def test_write_read_round_trip(tmp_path, make_frame, variant, encoding):
    frame = make_frame()
    with OPV2VWriter(tmp_path, split="train", pcd_encoding=encoding, variant=variant) as w:
        w.write(frame)
    log = open_log(tmp_path / "train", max_cav=5)
    assert log.format == variant
    back = log[0]
    assert list(back.agents) == list(frame.agents) and back.ego_id == frame.ego_id
    assert back.timestamp_ns == frame.timestamp_ns and back.index == frame.index
    for aid, a in frame.agents.items():
        b = back.agents[aid]
        assert b.kind == a.kind
        assert np.allclose(b.world_from_lidar, a.world_from_lidar, atol=1e-9)
        assert np.allclose(b.points[:, :3], a.points[:, :3], atol=1e-6)
        assert np.allclose(b.points[:, 3], a.points[:, 3], atol=0.5 / 255 + 1e-7)
        assert b.mount_height == pytest.approx(a.mount_height)
    order = np.argsort(back.gt.track_ids)
    assert np.array_equal(back.gt.track_ids[order], frame.gt.track_ids)
    assert np.allclose(back.gt.xyzlwhy[order, :6], frame.gt.xyzlwhy[:, :6], atol=1e-9)
    dyaw = (back.gt.xyzlwhy[order, 6] - frame.gt.xyzlwhy[:, 6] + np.pi) % (2 * np.pi) - np.pi
    # V2V4Real stores boxes in the (slightly tilted) LiDAR frame; an upright box's heading
    # through a tilted transform and back agrees only to the tilt's second order
    assert np.abs(dyaw).max() < (1e-9 if variant == "opv2v" else 1e-3)
    assert np.array_equal(back.gt.labels[order], frame.gt.labels)


def test_protocol_ego_choice_rsu_last_max_cav_and_range(tmp_path, make_frame):
    frame = make_frame(n_agents=4, rsu=True)
    # move one CAV 200 m away: dropped by the 70 m communication range
    far = frame.agents["120"]
    far.world_from_lidar[0, 3] += 200.0
    OPV2VWriter(tmp_path, split=None).write(frame)
    f = open_log(tmp_path)[0]
    assert f.ego_id == "100" and list(f.agents) == ["100", "110", "-1"]
    assert open_log(tmp_path, comm_range=1000)[0].agents.keys() == {"100", "110", "120", "-1"}
    assert list(open_log(tmp_path, max_cav=2)[0].agents) == ["100", "110"]


def test_additional_yaml_files_are_skipped(tmp_path, make_frame):
    OPV2VWriter(tmp_path, split=None).write(make_frame())
    ego_dir = tmp_path / "scene_a" / "100"
    shutil.copy(ego_dir / "000007.yaml", ego_dir / "000007_additional.yaml")
    assert len(open_log(tmp_path)) == 1


def test_yaml_without_lidar_pose_names_file_and_field(tmp_path, make_frame):
    OPV2VWriter(tmp_path, split=None).write(make_frame())
    path = tmp_path / "scene_a" / "100" / "000007.yaml"
    meta = load_yaml(path)
    del meta["lidar_pose"]
    dump_yaml(path, meta)
    with pytest.raises(DatasetError) as err:
        open_log(tmp_path)[0]
    assert err.value.field == "lidar_pose" and err.value.path == str(path)


def test_broken_collaborator_skips_the_whole_frame(tmp_path, make_frame):
    w = OPV2VWriter(tmp_path, split=None)
    for index in (7, 8):
        w.write(make_frame(index=index))
    (tmp_path / "scene_a" / "110" / "000007.pcd").write_text("not a point cloud\n")
    log = open_log(tmp_path, skip_bad=True)
    assert [f.index for f in log] == [8] and log.skipped[0][0] == "scene_a/000007"
    assert "110/000007.pcd" in log.skipped[0][1]


def test_nan_points_dropped_and_counted_with_skip_bad(tmp_path, make_frame):
    frame = make_frame()
    frame.agents["110"].points[[3, 9], 0] = np.nan
    OPV2VWriter(tmp_path, split=None, pcd_encoding="binary").write(frame)
    with pytest.raises(DatasetError) as err:
        open_log(tmp_path)[0]
    assert err.value.field == "x" and err.value.path.endswith("110/000007.pcd")
    log = open_log(tmp_path, skip_bad=True)
    f = next(iter(log))
    assert len(f.agents["110"].points) == 498 and log.dropped_points == 2 and not log.skipped


def test_interrupted_write_leaves_no_frame_that_reads_or_checks(tmp_path, make_frame, monkeypatch):
    from v2x.datasets import opv2v
    from v2x.datasets.check import check_log

    w = OPV2VWriter(tmp_path, split=None)
    w.write(make_frame(index=1))
    real_replace, calls = opv2v.os.replace, []

    def dying_replace(src, dst):
        if not str(dst).endswith(".tmp"):  # a final name: the commit phase
            calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is stopped half-way through committing
        real_replace(src, dst)

    monkeypatch.setattr(opv2v.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        w.write(make_frame(index=2))
    monkeypatch.undo()
    assert [f.index for f in open_log(tmp_path)] == [1]  # the reader never sees the partial frame
    problems = check_log(tmp_path)
    assert problems and all("000002" in p.path for p in problems), problems
    assert not list(tmp_path.rglob("*.tmp"))  # temporary files were cleaned up


def test_v2v4real_ids_deduplicate_by_ass_id(tmp_path, make_frame):
    OPV2VWriter(tmp_path, split=None, variant="v2v4real").write(make_frame(n_agents=2, rsu=False))
    a, b = (tmp_path / "scene_a" / cav / "000007.yaml" for cav in ("100", "110"))
    meta_a, meta_b = load_yaml(a), load_yaml(b)
    # V2V4Real numbers objects per CAV: give CAV 110 its own local ids, linked by ass_id
    meta_b["vehicles"] = {k - 400: dict(v, ass_id=k) for k, v in meta_b["vehicles"].items()}
    first = next(iter(meta_b["vehicles"]))
    meta_b["vehicles"][first]["ass_id"] = -1  # an object without an association
    dump_yaml(b, meta_b)
    f = open_log(tmp_path)[0]
    assert len(meta_a["vehicles"]) == 6
    assert sorted(f.gt.track_ids) == sorted([500, 501, 502, 503, 504, 505, first + 100 * 110])


def test_iterate_one_scenario_in_order(tmp_path, make_frame):
    w = OPV2VWriter(tmp_path, split=None)
    for index in (12, 10, 11):
        w.write(make_frame(index=index))
    other = make_frame(index=3)
    other.scenario = "scene_b"
    w.write(other)
    log = open_log(tmp_path)
    assert log.scenarios() == ["scene_a", "scene_b"]
    frames = list(log.iter_scenario("scene_a"))
    assert [f.index for f in frames] == [10, 11, 12]
    assert np.diff([f.timestamp_ns for f in frames]).tolist() == [100_000_000, 100_000_000]


def test_writer_checks_ids_warns_on_ego_order_and_writes_a_protocol(tmp_path, make_frame):
    from v2x.core.frame import AgentKind

    frame = make_frame()
    frame.agents["-1"].kind = AgentKind.VEHICLE
    with pytest.raises(ValueError, match="negative ids"):
        OPV2VWriter(tmp_path, split=None).write(frame)
    frame = make_frame()
    frame.ego_id = "110"
    with pytest.warns(UserWarning, match="readers will take 100 as the ego"):
        OPV2VWriter(tmp_path, split=None).write(frame)
    assert load_yaml(tmp_path / "scene_a" / "data_protocol.yaml")["writer"] == "v2x-coop"
    assert open_log(tmp_path)[0].ego_id == "100"


def test_python_tags_other_than_numpy_are_refused(tmp_path, make_frame):
    OPV2VWriter(tmp_path, split=None).write(make_frame())
    path = tmp_path / "scene_a" / "100" / "000007.yaml"
    marker = tmp_path / "pwned"
    path.write_text(path.read_text() + f"evil: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(DatasetError) as err:
        open_log(tmp_path)[0]
    assert err.value.field == "yaml" and "os.system" in err.value.message and not marker.exists()


def test_missing_point_cloud_and_skip_bad(tmp_path, make_frame):
    w = OPV2VWriter(tmp_path, split=None)
    for index in (7, 8, 9):
        w.write(make_frame(index=index))
    (tmp_path / "scene_a" / "100" / "000008.pcd").unlink()
    with pytest.raises(DatasetError, match=r"000008\.pcd: file: missing"):
        list(open_log(tmp_path))
    log = open_log(tmp_path, skip_bad=True)
    frames = list(log)
    assert [f.index for f in frames] == [7, 9]
    assert len(log.skipped) == 1 and "000008" in log.skipped[0][0]


def test_missing_collaborator_degrades_to_fewer_agents(tmp_path, make_frame):
    OPV2VWriter(tmp_path, split=None).write(make_frame())
    for suffix in ("yaml", "pcd"):
        (tmp_path / "scene_a" / "110" / f"000007.{suffix}").unlink()
    log = open_log(tmp_path)
    f = log[0]
    assert "110" not in f.agents and f.ego_id == "100" and log.dropped_agents == 1


def test_unknown_folder_is_a_clear_error(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(DatasetError, match="not a known log"):
        detect_format(tmp_path)


def test_non_rigid_pose_is_refused(tmp_path, make_frame):
    OPV2VWriter(tmp_path, split=None, variant="v2v4real").write(make_frame())
    path = tmp_path / "scene_a" / "100" / "000007.yaml"
    meta = load_yaml(path)
    meta["lidar_pose"][0][0] = 3.0
    dump_yaml(path, meta)
    with pytest.raises(DatasetError) as err:
        open_log(tmp_path)[0]
    assert err.value.field == "lidar_pose"


def test_v2v4real_numpy_tagged_pose_loads(tmp_path, make_frame):
    import yaml

    OPV2VWriter(tmp_path, split=None, variant="v2v4real").write(make_frame())
    path = tmp_path / "scene_a" / "100" / "000007.yaml"
    meta = load_yaml(path)
    expected = np.asarray(meta["lidar_pose"])
    meta["lidar_pose"] = expected
    text = yaml.dump(meta, Dumper=yaml.Dumper).replace("numpy._core", "numpy.core")
    assert "!!python/object/apply:numpy.core.multiarray._reconstruct" in text
    path.write_text(text)
    f = open_log(tmp_path)[0]
    assert np.allclose(f.ego.world_from_lidar, expected)
    assert bev_iou_matrix(f.gt.xyzlwhy, make_frame().gt.xyzlwhy).max(axis=1).min() > 0.999


def test_parsed_yaml_cache_follows_file_changes_and_callers_cannot_corrupt_it(tmp_path, make_frame):
    OPV2VWriter(tmp_path, split=None).write(make_frame())
    log = open_log(tmp_path)
    first = log[0]
    first.ego.world_from_lidar[0, 3] += 50.0  # callers may move poses in place (augmentation)
    first.gt.xyzlwhy[:, 0] += 50.0
    again = log[0]
    assert again.ego.world_from_lidar[0, 3] == pytest.approx(first.ego.world_from_lidar[0, 3] - 50.0)
    assert np.allclose(again.gt.xyzlwhy[:, 0], first.gt.xyzlwhy[:, 0] - 50.0)
    path = tmp_path / "scene_a" / "100" / "000007.yaml"
    meta = load_yaml(path)
    meta["lidar_pose"][0] += 1.25
    dump_yaml(path, meta)
    assert log[0].ego.world_from_lidar[0, 3] == pytest.approx(again.ego.world_from_lidar[0, 3] + 1.25)
