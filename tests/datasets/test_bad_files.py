"""Every bad file named, never a traceback, never a hang (issue 23, item 5).

Each variant of ``bad_corpus`` (one damaged file or folder in an otherwise valid OPV2V or
real DAIR-V2X-C log) goes through ``v2x data info --json``, ``info --json --skip-bad`` and
``check --json`` in a child process with a time limit. Each run must end in time without a
traceback, and either refuse with one line ``Error: <path>: <field>: <message>`` naming the
damaged file (or the folder that hides it), or accept with a counter above the clean log's
(``info``) or a problem or warning naming the file (``check``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bad_corpus as bc
import pytest

REALDATA = Path(os.environ.get("V2X_REALDATA", Path(__file__).resolve().parents[3] / "shared" / "realdata"))
#: one variant of each kind of damage runs in the quick suite (``-m "not slow"``); all in ``make test``
QUICK = {
    "opv2v/timestamp-1e30",
    "opv2v/num_lidar_points-many",
    "opv2v/vehicle-id-not-integer",
    "opv2v/yaml-syntax",
    "opv2v/yaml-fifo",
    "opv2v/agent-folder-unreadable",
    "opv2v/frame-number-huge",
    "opv2v/pcd-points-0-ascii",
    "opv2v/pcd-truncated",
    "dair/data_info-truncated",
    "dair/side-info-timestamp-1e30",
    "dair/novatel_to_world-missing",
    "dair/lidar_to_novatel-list",
    "dair/label-size-negative",
    "dair/vehicle-pcd-points-0",
    "dair/label-fifo",
}
DAMAGES = [
    pytest.param(d, id=d.name, marks=() if d.name in QUICK else pytest.mark.slow) for d in bc.damages()
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> bc.Corpus:
    return bc.Corpus(tmp_path_factory.mktemp("bad-corpus"), REALDATA if REALDATA.is_dir() else None)


def test_the_clean_sources_pass(corpus):
    """The judge compares with the clean logs: they must load and check without a problem."""
    for name, src in corpus.sources.items():
        assert corpus.baselines[name]["frames"] >= 1, name
        out = bc.run_cli(["data", "check", "--json", str(src)])
        assert out.exit_code == 0 and json.loads(out.output)["problems"] == [], out.output


def test_the_judge_catches_what_it_should():
    """A traceback, a hang, a silent exit 0 and an error naming another file are all failures."""
    dmg = bc.Damage("x", "opv2v", "a/b.yaml", lambda p: None)
    root, info = Path("/r"), ("data", "info", "--json")
    ok_error = bc.Outcome(1, "Error: /r/a/b.yaml: lidar_pose: missing (use --skip-bad)\n", None, False, 0.1)
    assert bc.judge(dmg, info, ok_error, root, {}).kind == "ok"
    other = bc.Outcome(1, "Error: /r/a/c.yaml: lidar_pose: missing\n", None, False, 0.1)
    assert bc.judge(dmg, info, other, root, {}).kind == "unnamed"
    two_lines = bc.Outcome(1, "Error: /r/a/b.yaml: yaml: bad\n  in line 2\n", None, False, 0.1)
    assert bc.judge(dmg, info, two_lines, root, {}).kind == "unnamed"
    assert bc.judge(dmg, info, bc.Outcome(1, "", "ValueError: x", False, 0.1), root, {}).kind == "traceback"
    assert bc.judge(dmg, info, bc.Outcome(None, "", None, True, 20.0), root, {}).kind == "hang"
    same = bc.Outcome(0, json.dumps({"skipped_frames": 0}), None, False, 0.1)
    assert bc.judge(dmg, info, same, root, {"skipped_frames": 0}).kind == "silent"
    more = bc.Outcome(0, json.dumps({"skipped_frames": 1}), None, False, 0.1)
    assert bc.judge(dmg, info, more, root, {"skipped_frames": 0}).kind == "ok"
    check = ("data", "check", "--json")
    quiet = bc.Outcome(0, json.dumps({"problems": [], "warnings": []}), None, False, 0.1)
    assert bc.judge(dmg, check, quiet, root, {}).kind == "silent"


def test_a_hang_is_stopped_at_the_time_limit():
    """The harness itself: a child that blocks is killed at the limit, one that raises reports it."""
    import time

    out = bc.run_in_child(lambda: time.sleep(60) or {}, timeout=1.0)
    assert out.timed_out and out.seconds < 30
    out = bc.run_in_child(lambda: {"exit": 0, "output": "fine", "traceback": None}, timeout=30.0)
    assert not out.timed_out and out.output == "fine"
    out = bc.run_in_child(lambda: 1 / 0, timeout=30.0)
    assert "ZeroDivisionError" in out.traceback


def test_the_quick_variants_exist():
    assert QUICK.issubset(d.name for d in bc.damages())


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_file_is_named_or_counted(corpus, damage):
    if damage.source not in corpus.sources:
        pytest.skip(f"real DAIR example not found under {REALDATA}")
    if damage.unreadable and not corpus.modes_apply:
        pytest.skip("this process cannot make a child obey file modes (root without capset)")
    bad = [v for v in corpus.run(damage) if v.kind != "ok"]
    assert not bad, "\n".join(f"{v.kind}: {v.command}: {v.detail}" for v in bad)
