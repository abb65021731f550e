"""``v2x eval detection`` end to end on a small generated log, with the shipped weights."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from v2x.cli.main import cli

pytestmark = pytest.mark.slow


def test_eval_detection_writes_ap_bytes_and_paired_intervals(tmp_path, generate_log):
    log = generate_log(tmp_path / "log", frames=4, cavs=2, rsus=1, channels=32, seed=6)
    out = tmp_path / "detection.json"
    args = ["eval", "detection", "--data", str(log), "--split", "train", "--fusion", "none,late,intermediate"]
    res = CliRunner().invoke(cli, [*args, "--bootstrap", "200", "--bootstrap-block", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    for mode in ("none", "late", "intermediate"):
        r = results[mode]
        assert r["frames"] == 4 and set(r["ap_bev"]) == set(r["ap_3d"]) == {"0.3", "0.5", "0.7"}
        assert all(0 <= v <= 1 for v in r["ap_bev"].values())
    assert results["none"]["bytes_per_agent_frame"] == 0
    assert results["intermediate"]["bytes_per_agent_frame"] > results["late"]["bytes_per_agent_frame"] > 0
    pairs = results["paired_bootstrap"]
    assert set(pairs) == {"late - none", "intermediate - none", "intermediate - late"}
    for name, by_thr in pairs.items():
        a, b = name.split(" - ")
        for thr, d in by_thr.items():
            assert d["difference"] == pytest.approx(
                results[a]["ap_bev"][thr] - results[b]["ap_bev"][thr], abs=1e-5
            )
            assert d["low"] <= d["high"] and 0 <= d["share_ahead"] <= 1
    assert results["bootstrap"] == {"resamples": 200, "block": 2}
    assert "runs of 2 consecutive frames" in res.output and "intermediate - late" in res.output

    # without --bootstrap there is no interval, and one mode is written as itself
    res = CliRunner().invoke(cli, [*args[:-1], "intermediate", "--json", str(out)])
    assert res.exit_code == 0, res.output
    single = json.loads(out.read_text())
    assert "paired_bootstrap" not in single and single["fusion"] == "intermediate"

    # --frames 3 --pick spread: round(linspace(0, 3, 3)) = frames 0, 2 and 3 of the four
    res = CliRunner().invoke(
        cli, [*args[:-1], "none", "--frames", "3", "--pick", "spread", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["frames"] == 3


def test_box_merge_nms_is_plain_late_fusion_and_average_is_recorded(tmp_path, generate_log):
    log = generate_log(tmp_path / "log", frames=3, cavs=2, rsus=0, channels=32, seed=8)
    results = {}
    for merge in ("average", "nms"):
        out = tmp_path / f"{merge}.json"
        args = ["eval", "detection", "--data", str(log), "--split", "train", "--fusion", "late"]
        res = CliRunner().invoke(cli, [*args, "--box-merge", merge, "--json", str(out)])
        assert res.exit_code == 0, res.output
        results[merge] = json.loads(out.read_text())
    assert results["average"]["box_fusion_iou"] == pytest.approx(0.4)
    assert results["nms"]["box_fusion_iou"] is None
    bad = CliRunner().invoke(cli, ["eval", "detection", "--data", str(log), "--box-merge", "wbf"])
    assert bad.exit_code != 0 and "--box-merge" in bad.output
