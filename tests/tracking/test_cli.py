"""``v2x track``, ``v2x eval tracking`` and ``v2x train tracker`` on real files in real formats."""

import json

import numpy as np
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.datasets.kitti_tracking import write_ab3dmot_detections, write_kitti_tracking
from v2x.tracking.records import save_sequence
from v2x.tracking.sequences import EGO_RANGE, to_ego
from v2x.tracking.synth import synthetic_sequence

KEYS = ("amota", "amotp", "samota", "mota", "motp", "mt", "ml", "ids", "frag")


def _write_sequences(root, n=2, frames=40):
    """Ground truth (ego frame, V2V4Real's x z y text), the ego's detections in AB3DMOT's format,
    and the multi-agent records, for ``n`` synthetic sequences."""
    for d in ("gt", "det", "npz"):
        (root / d).mkdir()
    for s in range(n):
        seq = synthetic_sequence(20 + s, frames)
        name = f"{s:04d}"
        gt, det = {}, {}
        for k, f in enumerate(seq):
            pose = f.agents[0].world_from_agent
            gt[k] = to_ego(f.gt, pose, EGO_RANGE)
            det[k] = to_ego(f.agents[0].boxes, pose, (-1e9, -1e9, 1e9, 1e9))
        write_kitti_tracking(root / "gt" / f"{name}.txt", gt)
        write_ab3dmot_detections(root / "det" / f"{name}.txt", det)
        save_sequence(root / "npz" / f"{name}.npz", seq)
    (root / "seqmap").write_text("".join(f"{s:04d} empty 000000 {frames - 1:06d}\n" for s in range(n)))


def test_track_then_evaluate_files_from_the_command_line(tmp_path):
    _write_sequences(tmp_path)
    run = CliRunner()
    r = run.invoke(
        cli,
        [
            "track",
            "--detections",
            str(tmp_path / "det"),
            "--out",
            str(tmp_path / "trk"),
            "--seqmap",
            str(tmp_path / "seqmap"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "trk").iterdir()) == ["0000.txt", "0001.txt"]
    line = (tmp_path / "trk" / "0000.txt").read_text().splitlines()[0].split()
    assert len(line) == 18 and line[2] == "Car"  # frame id Car 0 0 alpha x1 y1 x2 y2 h w l x y z ry score
    out = tmp_path / "res.json"
    args = [
        "eval",
        "tracking",
        "--gt",
        str(tmp_path / "gt"),
        "--tracks",
        str(tmp_path / "trk"),
        "--json",
        str(out),
    ]
    r = run.invoke(cli, [*args, "--seqmap", str(tmp_path / "seqmap")])
    assert r.exit_code == 0, r.output
    assert "comparable" in r.output and "strict" in r.output
    res = json.loads(out.read_text())
    for k in KEYS:
        assert k in res and k in res["strict"]
    assert 0 < res["amota"] <= 100 and res["samota"] >= res["amota"] and res["strict"]["fp"] >= res["fp"]
    # the multi-agent filter on the records sees more than the ego alone
    r = run.invoke(
        cli,
        [
            "track",
            "--detections",
            str(tmp_path / "npz"),
            "--tracker",
            "dmstrack",
            "--out",
            str(tmp_path / "ms"),
        ],
    )
    assert r.exit_code == 0, r.output
    r = run.invoke(
        cli,
        [
            "eval",
            "tracking",
            "--gt",
            str(tmp_path / "gt"),
            "--tracks",
            str(tmp_path / "ms"),
            "--json",
            str(tmp_path / "ms.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    multi = json.loads((tmp_path / "ms.json").read_text())
    assert multi["recall"] > res["recall"]


def test_eval_refuses_missing_inputs(tmp_path):
    r = CliRunner().invoke(cli, ["eval", "tracking", "--gt", str(tmp_path)])
    assert r.exit_code != 0 and "--tracks" in r.output
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "0000.txt").write_text("0 1 Car 0 0 0 0 0 0 0 1.5 1.9 4.5 nan 0.8 0\n")
    r = CliRunner().invoke(cli, ["eval", "tracking", "--gt", str(tmp_path / "gt"), "--tracks", str(tmp_path)])
    # the bad line is named (file, line, column) and skipped; no traceback
    assert r.exit_code == 0 and "0000.txt: line 1, column 17: expected 17 or 18 fields" in r.output
    r = CliRunner().invoke(
        cli, ["eval", "tracking", "--gt", str(tmp_path / "nowhere"), "--tracks", str(tmp_path)]
    )
    assert r.exit_code == 2 and "does not exist" in r.output


def test_train_tracker_on_records(tmp_path):
    for split, seeds in (("train", (1, 2)), ("validate", (3,))):
        (tmp_path / "data" / split).mkdir(parents=True)
        for s in seeds:
            save_sequence(tmp_path / "data" / split / f"{s}.npz", synthetic_sequence(s, 20, patch_channels=2))
    r = CliRunner().invoke(
        cli,
        [
            "train",
            "tracker",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--epochs",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "out" / "noise_training.json").read_text())
    assert summary["config"]["feature_channels"] == 2 and np.isfinite(summary["best_val_loss"])
    r = CliRunner().invoke(
        cli,
        [
            "track",
            "--detections",
            str(tmp_path / "data" / "validate"),
            "--tracker",
            "dmstrack",
            "--weights",
            str(tmp_path / "out" / "noise.pt"),
            "--out",
            str(tmp_path / "trk"),
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli, ["train", "tracker", "--data", str(tmp_path / "out"), "--out", str(tmp_path / "x")]
    )
    assert r.exit_code != 0 and "train/" in r.output
