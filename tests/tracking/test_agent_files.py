"""Per-agent detection folders (V2V4Real's layout, DMSTrack's input): reading, bad lines, the
commands on real files, and the training and comparison on them."""

import json
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.datasets.errors import DatasetError
from v2x.datasets.kitti_tracking import (
    MAX_FRAME,
    agent_folders,
    agent_sequences,
    read_ab3dmot_detections,
    read_kitti_tracking,
    read_seqmap,
)
from v2x.experiments.tracker_training import labelled_agent_sequences, train_on_agent_folders
from v2x.experiments.tracking_files import read_agent_sequences
from v2x.tracking.train import NoiseTrainConfig, load_tracker

GOOD = "0,2,0,0,0,0,0.5,1.6,1.9,4.5,10.0,-1.0,2.0,0.1,0\n"


def _copy_agents(realdata, dst, names=("0000",), frames=None):
    """A per-agent folder and labels holding the real sequences ``names`` (optionally cut to
    their first ``frames`` frames)."""
    src = realdata / "v2v4real"
    for agent in ("ego", "1"):
        (dst / "det" / agent).mkdir(parents=True)
        for n in names:
            lines = (src / "per_agent_detections_train" / agent / f"{n}.txt").read_text().splitlines()
            if frames is not None:
                lines = [ln for ln in lines if int(ln.split(",")[0]) < frames]
            (dst / "det" / agent / f"{n}.txt").write_text("\n".join(lines) + "\n")
    (dst / "gt").mkdir()
    for n in names:
        lines = (src / "train_label" / f"{n}.txt").read_text().splitlines()
        if frames is not None:
            lines = [ln for ln in lines if int(ln.split()[0]) < frames]
        (dst / "gt" / f"{n}.txt").write_text("\n".join(lines) + "\n")
    seqmap = read_seqmap(src / "train.seqmap")
    (dst / "seqmap").write_text(
        "".join(
            f"{n} empty 000000 {(min(seqmap[n][1], frames - 1) if frames else seqmap[n][1]):06d}\n"
            for n in names
        )
    )


# -- the reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "column", "what"),
    [
        ("0,2,0,0,0,0,0.5,1.6,1.9\n", 10, "expected 15"),
        ("0,2,0,0,0,0,high,1.6,1.9,4.5,10.0,-1.0,2.0,0.1,0\n", 7, "not a number"),
        ("0,2,0,0,0,0,0.5,1.6,-1.9,4.5,10.0,-1.0,2.0,0.1,0\n", 9, "size w"),
        ("0,2,0,0,0,0,0.5,1.6,1.9,4.5,nan,-1.0,2.0,0.1,0\n", 11, "not finite"),
        ("100000000,2,0,0,0,0,0.5,1.6,1.9,4.5,10.0,-1.0,2.0,0.1,0\n", 1, "outside"),
        ("0.5,2,0,0,0,0,0.5,1.6,1.9,4.5,10.0,-1.0,2.0,0.1,0\n", 1, "not an integer"),
    ],
)
def test_a_bad_detection_line_is_named_and_skipped(tmp_path, line, column, what):
    path = tmp_path / "0000.txt"
    path.write_text(GOOD + line + GOOD.replace("0,", "1,", 1))
    with pytest.raises(DatasetError, match=f"line 2, column {column}: .*{what}"):
        read_ab3dmot_detections(path)
    problems = []
    frames = read_ab3dmot_detections(path, problems=problems)
    assert [str(p) for p in problems] == [str(problems[0])] and f"line 2, column {column}" in str(problems[0])
    assert str(path) in str(problems[0])
    assert sorted(frames) == [0, 1] and len(frames[0]) == 1


def test_a_huge_frame_id_neither_hangs_nor_allocates(tmp_path):
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "0000.txt").write_text(
        GOOD + f"{10 * MAX_FRAME},2,0,0,0,0,0.5,1.6,1.9,4.5,1,1,1,0,0\n"
    )
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "0000.txt").write_text(
        "0 1 Car 0 0 0 0 0 0 0 1.6 1.9 4.5 10.0 -1.0 2.0 0.1\n100000000 1 Car 0 0 0 0 0 0 0 1.6 1.9 4.5 1 1 1 0\n"
    )
    start = time.perf_counter()
    r = CliRunner().invoke(
        cli, ["track", "--detections", str(tmp_path / "det"), "--out", str(tmp_path / "trk")]
    )
    assert r.exit_code == 0, r.output
    assert "line 2, column 1" in r.output and "outside 0..100000" in r.output
    r = CliRunner().invoke(
        cli, ["eval", "tracking", "--gt", str(tmp_path / "gt"), "--tracks", str(tmp_path / "trk")]
    )
    assert r.exit_code == 0, r.output
    assert "line 2, column 1" in r.output and "Traceback" not in r.output
    assert time.perf_counter() - start < 10


def test_a_frame_out_of_order_is_refused_and_counted(tmp_path):
    path = tmp_path / "0000.txt"
    path.write_text(GOOD.replace("0,", "3,", 1) + GOOD + GOOD.replace("0,", "4,", 1))
    problems = []
    frames = read_ab3dmot_detections(path, problems=problems)
    assert sorted(frames) == [3, 4] and len(problems) == 1 and "out of order" in str(problems[0])


def test_kitti_tracking_bad_lines_are_named(tmp_path):
    path = tmp_path / "0000.txt"
    path.write_text(
        "0 1 Car 0 0 0 0 0 0 0 1.6 1.9 4.5 10 -1 2 0.1\n"
        "1 1 Car 0 0 0 0 0 0 0 1.6 1.9 4.5 inf -1 2 0.1\n"
        "2 x Car 0 0 0 0 0 0 0 1.6 1.9 4.5 10 -1 2 0.1\n"
        "3 1 Car 0 0\n"
    )
    problems = []
    frames = read_kitti_tracking(path, problems=problems)
    assert sorted(frames) == [0]
    assert [p.field for p in problems] == ["line 2, column 14", "line 3, column 2", "line 4, column 6"]


def test_agent_order_and_disagreeing_agents(tmp_path):
    for agent in ("2", "ego", "10", "1"):
        (tmp_path / agent).mkdir()
        (tmp_path / agent / "0000.txt").write_text(GOOD)
    (tmp_path / "notes").mkdir()  # no detection files: not an agent
    agents = agent_folders(tmp_path)
    assert [a for a, _ in agents] == ["ego", "1", "2", "10"]
    assert agent_sequences(tmp_path, agents) == ["0000"]
    (tmp_path / "ego" / "0003.txt").write_text(GOOD)
    with pytest.raises(DatasetError, match="agent '1' lacks 0003"):
        agent_sequences(tmp_path, agents)
    r = CliRunner().invoke(cli, ["track", "--detections", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "lacks 0003" in r.output and "Traceback" not in r.output


def test_frames_follow_dmstracks_clock_and_agent_order(tmp_path):
    for agent, line in (("ego", GOOD), ("1", GOOD.replace("0,", "4,", 1))):
        (tmp_path / agent).mkdir()
        (tmp_path / agent / "0007.txt").write_text(line)
    ((name, frames),) = read_agent_sequences(tmp_path)
    assert name == "0007" and [f.frame for f in frames] == [0, 1, 2, 3, 4]
    assert [f.timestamp_ns for f in frames][-1] == 400_000_000
    assert [a.agent_id for a in frames[4].agents] == ["ego", "1"]
    assert len(frames[4].agents[0]) == 0 and len(frames[4].agents[1]) == 1
    # x, z, y columns: the box's height coordinate is the 12th column
    assert frames[0].agents[0].boxes.xyzlwhy[0, :3] == pytest.approx([10.0, 2.0, -1.0])
    ((_, longer),) = read_agent_sequences(tmp_path, lengths={"0007": 8})
    assert len(longer) == 8


# -- the commands on real files -----------------------------------------------------------------


def test_track_and_evaluate_real_per_agent_detections(realdata, tmp_path):
    _copy_agents(realdata, tmp_path, ("0000",), frames=80)
    run = CliRunner()
    scores = {}
    for tracker in ("ab3dmot-ego", "ab3dmot", "dmstrack"):
        out = tmp_path / tracker
        r = run.invoke(
            cli,
            ["track", "--detections", str(tmp_path / "det"), "--tracker", tracker, "--out", str(out)]
            + ["--seqmap", str(tmp_path / "seqmap")],
        )
        assert r.exit_code == 0, r.output
        r = run.invoke(
            cli,
            ["eval", "tracking", "--gt", str(tmp_path / "gt"), "--tracks", str(out)]
            + ["--seqmap", str(tmp_path / "seqmap"), "--json", str(tmp_path / f"{tracker}.json")],
        )
        assert r.exit_code == 0, r.output
        scores[tracker] = json.loads((tmp_path / f"{tracker}.json").read_text())
    # the second agent's view raises recall over the ego's alone, for both ways of using it
    assert scores["dmstrack"]["recall"] > scores["ab3dmot-ego"]["recall"] + 10
    assert scores["ab3dmot"]["recall"] > scores["ab3dmot-ego"]["recall"] + 10


def test_bad_lines_in_real_files_give_warnings_not_tracebacks(realdata, tmp_path):
    _copy_agents(realdata, tmp_path, ("0000",), frames=30)
    ego = tmp_path / "det" / "ego" / "0000.txt"
    lines = ego.read_text().splitlines()
    lines.insert(3, "5,2,0,0,0,0,0.9,1.5,nan,4.2,3,1,2,0,0")
    lines.insert(5, "5,2,0,0")
    ego.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(
        cli,
        [
            "track",
            "--detections",
            str(tmp_path / "det"),
            "--tracker",
            "dmstrack",
            "--out",
            str(tmp_path / "t"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "line 4, column 9" in r.output and "line 6, column 5" in r.output and "Traceback" not in r.output
    trk = tmp_path / "t" / "0000.txt"
    trk.write_text(trk.read_text() + "7 3 Car 0 0 0 0 0 0 0 1.6 1.9 four 1 1 1 0 0.5\n")
    r = CliRunner().invoke(
        cli, ["eval", "tracking", "--gt", str(tmp_path / "gt"), "--tracks", str(tmp_path / "t")]
    )
    assert r.exit_code == 0, r.output
    assert "column 13" in r.output and "Traceback" not in r.output


def test_train_tune_and_compare_on_real_per_agent_detections(realdata, tmp_path):
    names = ("0000", "0010")
    _copy_agents(realdata, tmp_path, names, frames=100)
    seqs = labelled_agent_sequences(tmp_path / "det", tmp_path / "gt")
    assert [n for n, _ in seqs] == list(names)
    cfg = NoiseTrainConfig(epochs=1, nll_epochs=2, agent_slots=2, seed=0)
    search = {"affinity": ("giou", "giou_bev"), "noise_scale": (1.0,)}
    summary = train_on_agent_folders(seqs, ["0010"], tmp_path / "w", cfg, search=search, progress=False)
    assert summary["validation_sequences"] == ["0010"] and summary["training_sequences"] == ["0000"]
    for mode in ("fixed", "learned"):
        trials = summary["tuning"][mode]
        assert len(trials) == 2 and sum(t["chosen"] for t in trials) == 1
    learned_cfg, net = load_tracker(tmp_path / "w" / "noise.pt")
    fixed_cfg, none = load_tracker(tmp_path / "w" / "noise.pt", fixed=True)
    assert none is None and net.agent_slots == 2
    # the two modes share the prior: only the learned part (and the searched settings) differ
    assert fixed_cfg.measurement_var == learned_cfg.measurement_var
    # the fixed noise's prior is one per agent by default: the collaborator's boxes are further off
    assert summary["fixed_prior"] == "per-agent" and len(fixed_cfg.measurement_var_by_slot) == 2
    ego, collab = (np.asarray(fixed_cfg.prior_for_slot(k)) for k in (0, 1))
    assert collab[0] > ego[0] and collab[2] > ego[2]
    run = CliRunner()
    for extra in ([], ["--fixed-noise"]):
        r = run.invoke(
            cli,
            ["track", "--detections", str(tmp_path / "det"), "--tracker", "dmstrack"]
            + [
                "--weights",
                str(tmp_path / "w" / "noise.pt"),
                "--out",
                str(tmp_path / f"t{len(extra)}"),
                *extra,
            ],
        )
        assert r.exit_code == 0, r.output
    assert (tmp_path / "t0" / "0010.txt").read_text() != (tmp_path / "t1" / "0010.txt").read_text()
    r = run.invoke(
        cli,
        ["eval", "tracking", "--detections", str(tmp_path / "det"), "--gt", str(tmp_path / "gt")]
        + [
            "--weights",
            str(tmp_path / "w" / "noise.pt"),
            "--sequences",
            "0010",
            "--json",
            str(tmp_path / "c.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    table = json.loads((tmp_path / "c.json").read_text())
    rows = ("ab3dmot-ego", "ab3dmot/late", "dmstrack/fixed", "dmstrack/learned")
    assert set(rows) <= set(table) and table["sequences"] == ["0010"]
    oracle, perfect = table["oracle/ground-truth-ids"], table["perfect/ground-truth"]
    # every oracle box is a ground-truth match in the true geometry: no false track, no duplicate
    assert oracle["strict"]["fp"] == 0 and oracle["duplicate_boxes"] == 0
    assert perfect["amota"] >= oracle["amota"]
    assert all(table[k]["amota"] <= perfect["amota"] for k in rows)
    assert "| dmstrack/learned |" in (tmp_path / "c.md").read_text()


def test_fixed_noise_needs_weights_and_a_bad_checkpoint_is_one_line(tmp_path):
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "0000.txt").write_text(GOOD)
    r = CliRunner().invoke(
        cli, ["track", "--detections", str(tmp_path / "det"), "--fixed-noise", "--out", str(tmp_path / "o")]
    )
    assert r.exit_code != 0 and "--weights" in r.output
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(
        cli,
        ["track", "--detections", str(tmp_path / "det"), "--tracker", "dmstrack"]
        + ["--weights", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "o")],
    )
    assert r.exit_code != 0 and "bad.pt" in r.output and "Traceback" not in r.output


def test_an_old_checkpoint_without_fixed_settings_still_loads(repo_root):
    cfg, net = load_tracker(repo_root / "v2x" / "weights" / "noise.pt")
    fixed, none = load_tracker(repo_root / "v2x" / "weights" / "noise.pt", fixed=True)
    assert none is None and fixed == cfg and net.agent_slots == 0
    with torch.no_grad():
        out = net(torch.zeros(3, 14), None, slot=5)
    assert out.shape == (3, 7) and np.isfinite(out.numpy()).all()
