"""The shipped V2V4Real noise model: what it says it is, and both of its modes track real files."""

from __future__ import annotations

import hashlib
import json

from click.testing import CliRunner

from v2x import WEIGHTS
from v2x.cli.main import cli
from v2x.tracking.train import load_tracker

SHIPPED = WEIGHTS / "noise_v2v4real.pt"


def test_provenance_names_the_command_seed_split_and_file():
    note = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert note["command"].startswith("v2x train tracker --detections") and "--seed 0" in note["command"]
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest()[:16] == note["sha256_16"]
    # the validation sequences are the ones the command held out, and only train-split names
    held = note["command"].split("--val-sequences ")[1].split()[0].split(",")
    assert held == note["validation_sequences"] and all(int(s) < 32 for s in held)
    assert SHIPPED.stat().st_size < 1 << 20


def test_learned_and_fixed_share_the_prior_and_differ_in_the_network_only():
    learned, net = load_tracker(SHIPPED)
    fixed, none = load_tracker(SHIPPED, fixed=True)
    assert none is None and net is not None and net.agent_slots == 2
    for field in ("measurement_var", "process_var", "initial_var", "min_hits", "max_age"):
        assert getattr(learned, field) == getattr(fixed, field), field


def test_both_modes_track_a_real_sequence(realdata, tmp_path):
    det = realdata / "v2v4real" / "per_agent_detections_train"
    # one validation sequence, copied so the run stays short
    for agent in ("ego", "1"):
        (tmp_path / "det" / agent).mkdir(parents=True)
        lines = (det / agent / "0004.txt").read_text().splitlines()
        keep = [ln for ln in lines if ln and int(ln.split(",")[0]) < 60]
        (tmp_path / "det" / agent / "0004.txt").write_text("\n".join(keep) + "\n")
    outputs = {}
    for extra in ([], ["--fixed-noise"]):
        out = tmp_path / ("fixed" if extra else "learned")
        r = CliRunner().invoke(
            cli,
            ["track", "--detections", str(tmp_path / "det"), "--tracker", "dmstrack"]
            + ["--weights", str(SHIPPED), "--out", str(out), *extra],
        )
        assert r.exit_code == 0, r.output
        outputs[out.name] = (out / "0004.txt").read_text()
    assert outputs["learned"] and outputs["fixed"] and outputs["learned"] != outputs["fixed"]
