"""``v2x train messages`` end to end on a tiny generated log with the shipped detector: outputs,
provenance, what trains and what stays frozen, resume, determinism, and the weights it writes
used by ``v2x eval comm`` (and refused with another detector)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.messages.codebook import load_codebook
from v2x.messages.message_weights import (
    MessageWeightsMismatchError,
    clone_detector,
    load_message_weights,
)
from v2x.perception.detector import DEFAULT_WEIGHTS, load_detector
from v2x.pipeline.config import RunConfig
from v2x.pipeline.stages import Models
from v2x.training.messages import MessageTrainConfig, draw_budget

pytestmark = pytest.mark.slow

CODEBOOK = DEFAULT_WEIGHTS.parent / "codebook.pt"


@pytest.fixture(scope="module")
def log(tmp_path_factory, generate_log) -> Path:
    """Two scenes of two frames: one to train on, one to validate on."""
    root = tmp_path_factory.mktemp("messages") / "log"
    generate_log(root, scenes=2, frames=2, cavs=2, rsus=1, channels=32, seed=2)
    (root / "validate").mkdir()
    shutil.move(str(root / "train" / "scene_2_0001"), root / "validate" / "scene_2_0001")
    return root


def _config(tmp_path: Path, **over) -> Path:
    raw = {
        "messages": dict(
            steps=2,
            batch_size=1,
            threads=1,
            val_frames=1,
            val_budgets=[1024],
            val_methods=["codefilling"],
            val_every=2,
            checkpoint_every=1,
            **over,
        )
    }
    path = tmp_path / "messages.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(log: Path, config: Path, out: Path, *extra: str):
    args = ["train", "messages", "--data", str(log), "--codebook", str(CODEBOOK), "--config", str(config)]
    return CliRunner().invoke(cli, [*args, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(log, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    res = _train(log, _config(tmp), tmp / "a")
    assert res.exit_code == 0, res.output
    return tmp / "a"


def test_training_writes_weights_with_provenance_and_only_the_message_path_moves(trained):
    for name in ("messages.pt", "last.pt", "history.jsonl", "training.png", "provenance.json"):
        assert (trained / name).stat().st_size > 0, name
    prov = json.loads((trained / "provenance.json").read_text())
    detector = load_detector(DEFAULT_WEIGHTS)
    assert prov["seed"] == 0 and prov["detector"] == detector.identity()
    assert prov["cpu"] and prov["cpu_capability"] and prov["torch"] == torch.__version__
    assert prov["command"].startswith("v2x train messages") and prov["init_codebook"] == str(CODEBOOK)
    history = [json.loads(x) for x in (trained / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2]  # before training, then at the end
    assert set(history[-1]["val"]) == {"late@1024", "codefilling@1024"}
    mw = load_message_weights(trained / "messages.pt", detector)
    # the codewords and the decoder moved; the detector (encoder included) did not
    assert not torch.equal(mw.codebook.codewords, load_codebook(CODEBOOK).codewords)
    before, after = detector.state_dict(), mw.decoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("head."))
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("encoder."))
    assert load_detector(DEFAULT_WEIGHTS).identity() == detector.identity()


def test_same_seed_same_weights_and_resume_continues(log, trained, tmp_path):
    res = _train(log, _config(tmp_path), tmp_path / "b")
    assert res.exit_code == 0, res.output
    a = torch.load(trained / "messages.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "messages.pt", weights_only=True)
    assert torch.equal(a["codebook"]["codewords"], b["codebook"]["codewords"])
    assert all(torch.equal(a["decoder"][k], b["decoder"][k]) for k in a["decoder"])
    res = _train(log, _config(tmp_path), tmp_path / "b", "--resume", "--steps", "3")
    assert res.exit_code == 0, res.output
    assert "resuming from" in res.output
    history = [json.loads(x) for x in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2, 3]


def test_weights_of_another_detector_are_refused_naming_both(trained):
    other = clone_detector(load_detector(DEFAULT_WEIGHTS))
    with torch.no_grad():
        other.head.parameters().__next__().add_(1.0)
    with pytest.raises(MessageWeightsMismatchError) as err:
        load_message_weights(trained / "messages.pt", other)
    made_for = json.loads((trained / "provenance.json").read_text())["detector"]
    assert made_for in str(err.value) and other.identity() in str(err.value)


def test_eval_comm_and_the_pipeline_decode_codes_with_the_message_weights(log, trained, tmp_path):
    outs = {}
    for name, extra in (("trained", ["--message-weights", str(trained / "messages.pt")]), ("none", [])):
        out = tmp_path / f"{name}.json"
        res = CliRunner().invoke(
            cli,
            ["eval", "comm", "--data", str(log / "validate"), "--methods", "codefilling", "--budgets", "1024"]
            + ["--json", str(out), *extra, *(["--message-weights", "none"] if name == "none" else [])],
        )
        assert res.exit_code == 0, res.output
        outs[name] = json.loads(out.read_text())
    assert (
        "message weights"
        in CliRunner()
        .invoke(
            cli,
            ["eval", "comm", "--data", str(log / "validate"), "--methods", "codefilling", "--budgets", "1024"]
            + ["--json", str(tmp_path / "x.json"), "--message-weights", str(trained / "messages.pt")],
        )
        .output
    )
    # the pipeline's models: the message weights' codebook and identity on the wire, their decoder
    models = Models.load(RunConfig(method="codefilling", message_weights=str(trained / "messages.pt")))
    mw = load_message_weights(trained / "messages.pt", models.perception.model)
    assert models.decoder is not None and models.codec.codebook_id() == mw.identity()
    assert models.codec.codebook_id() != mw.codebook.identity()
    plain = Models.load(RunConfig(method="codefilling", message_weights="none"))
    assert plain.decoder is None and plain.codec.codebook_id() == load_codebook(CODEBOOK).identity()


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="late"):
        MessageTrainConfig.from_dict({"methods": ["late"]})
    with pytest.raises(ValueError, match="unknown message-training keys"):
        MessageTrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="budget_min"):
        MessageTrainConfig.from_dict({"budget_min": 5000, "budget_max": 4096})
    import numpy as np

    rng = np.random.default_rng(0)
    drawn = [draw_budget(rng, 256, 4096) for _ in range(2000)]
    assert min(drawn) >= 256 and max(drawn) <= 4096
    # log-uniform: as many draws below 1 KB as above it
    assert abs(np.mean(np.array(drawn) < 1024) - 0.5) < 0.05


def test_a_step_whose_loss_has_no_gradient_changes_nothing():
    """``--train codewords``: a sample with no code sent leaves the loss without a gradient; the
    step is skipped instead of raising (it did, 2026-12-06), and a real loss still descends."""
    from v2x.training.messages import _descend

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    assert not _descend(torch.tensor(1.5), opt, [w], 10.0)
    assert torch.equal(w.detach(), torch.ones(3))
    assert _descend((w**2).sum(), opt, [w], 10.0)
    assert (w.detach() < 1).all()
