import json

from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.datasets.opv2v import OPV2VWriter


def test_info_json_on_real_samples(realdata, v2xset_log):
    r = CliRunner().invoke(cli, ["data", "info", str(v2xset_log), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["format"] == "opv2v" and info["frames"] == 1 and info["agents"] == 3
    assert info["boxes"] == 27 and info["points"] == 3 * 56443 and info["scenarios"] == 1
    assert info["boxes_per_class"] == {"car": 27}
    r = CliRunner().invoke(cli, ["data", "info", str(realdata / "dair-v2x-c" / "DAIR-V2X"), "--json"])
    info = json.loads(r.output)
    assert info["format"] == "dair-v2x-c" and info["agents"] == 2 and info["missing_frames"] == 520
    assert info["frames"] == 1 and info["points"] == 62199 + 53653
    assert info["boxes"] == 23 and info["gt_out_of_range"] == 1  # DAIR's evaluation range


def test_human_readable_info_and_check_on_real_samples(realdata, v2xset_log):
    r = CliRunner().invoke(cli, ["data", "info", str(v2xset_log)])
    assert r.exit_code == 0 and "opv2v" in r.output and "169,329" in r.output
    r = CliRunner().invoke(cli, ["data", "check", str(v2xset_log)])
    assert r.exit_code == 0 and "OK" in r.output
    # the DAIR sample's index lists 520 pairs whose files are not in the sample, and a cooperative
    # label the sample does not include: check says so
    r = CliRunner().invoke(cli, ["data", "check", str(realdata / "dair-v2x-c" / "DAIR-V2X"), "--json"])
    assert r.exit_code == 1
    problems = json.loads(r.output)["problems"]
    assert len(problems) == 521 and all(p["field"] == "file" for p in problems)
    assert sum("label_world/017314.json" in p["path"] for p in problems) == 1


def test_info_skip_bad_skips_and_counts_a_broken_frame(tmp_path, make_frame):
    w = OPV2VWriter(tmp_path, split=None)
    for index in (1, 2, 3):
        w.write(make_frame(index=index))
    yaml = tmp_path / "scene_a" / "110" / "000002.yaml"
    yaml.write_text(yaml.read_text().replace("lidar_pose", "lidar_pos"))
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path), "--json"])
    assert r.exit_code != 0 and "lidar_pose" in r.output and "000002.yaml" in r.output
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path), "--json", "--skip-bad"])
    info = json.loads(r.output)
    assert info["frames"] == 2 and info["skipped_frames"] == 1
    assert info["points"] == 2 * 3 * 500  # the two sound frames, every agent


def test_check_passes_a_sound_log_and_lists_problems(tmp_path, make_frame):
    w = OPV2VWriter(tmp_path, split=None)
    w.write(make_frame(index=1))
    w.write(make_frame(index=2))
    r = CliRunner().invoke(cli, ["data", "check", str(tmp_path)])
    assert r.exit_code == 0 and "OK" in r.output
    bad = tmp_path / "scene_a" / "110" / "000002.pcd"
    bad.write_bytes(bad.read_bytes()[:-7])
    (tmp_path / "scene_a" / "100" / ".000003.pcd.tmp").write_text("partial")
    r = CliRunner().invoke(cli, ["data", "check", str(tmp_path), "--json"])
    assert r.exit_code == 1
    problems = json.loads(r.output)["problems"]
    assert {p["path"] for p in problems} >= {str(bad), str(tmp_path / "scene_a" / "100" / ".000003.pcd.tmp")}


def test_info_on_unknown_folder_fails_cleanly(tmp_path):
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path)])
    assert r.exit_code != 0 and "not a known log" in r.output
