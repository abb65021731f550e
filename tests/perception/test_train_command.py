"""``v2x train detector`` end to end on a tiny generated log: outputs, determinism for a seed,
resume, and fine-tuning one module (attention fusion) from trained weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from v2x.cli.main import cli

pytestmark = pytest.mark.slow

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "v2x" / "configs" / "train.yaml"


@pytest.fixture(scope="module")
def log(tmp_path_factory, generate_log) -> Path:
    """Two scenes of two frames: one to train on, one to validate on."""
    root = tmp_path_factory.mktemp("train") / "log"
    generate_log(root, scenes=2, frames=2, cavs=2, rsus=0, channels=16, seed=1)
    (root / "validate").mkdir()
    shutil.move(str(root / "train" / "scene_1_0001"), root / "validate" / "scene_1_0001")
    return root


def _config(tmp_path: Path, name: str, detector: dict | None = None, **train) -> Path:
    raw = yaml.safe_load(SHIPPED_CONFIG.read_text())
    raw["detector"].update(detector or {})
    raw["train"].update(
        dict(epochs=1, max_train_frames=2, batch_size=1, val_frames=1, threads=1, workers=0), **train
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(log: Path, config: Path, out: Path, *extra: str):
    return CliRunner().invoke(
        cli, ["train", "detector", "--data", str(log), "--config", str(config), "--out", str(out), *extra]
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_training_writes_its_outputs_is_deterministic_and_resumes(log, tmp_path):
    config = _config(tmp_path, "tiny")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        res = _train(log, config, out)
        assert res.exit_code == 0, res.output
    for name in ("detector.pt", "last.pt", "best.pt", "history.jsonl", "training.png", "provenance.json"):
        assert (a / name).stat().st_size > 0, name
    provenance = json.loads((a / "provenance.json").read_text())
    assert provenance["seed"] == 0 and provenance["train_frames"] == 2
    assert provenance["cpu"] and provenance["cpu_capability"] and provenance["blas"]  # the machine, too
    val = provenance["final_val"]
    assert set(val) == {"none", "intermediate"} and set(val["none"]["ap_bev"]) == {"0.3", "0.5", "0.7"}
    wa, wb = _weights(a / "detector.pt"), _weights(b / "detector.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights

    res = _train(log, config, a, "--resume", "--epochs", "2")
    assert res.exit_code == 0, res.output
    history = [json.loads(x) for x in (a / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert any(not torch.equal(wa[k], v) for k, v in _weights(a / "detector.pt").items())


@pytest.fixture(scope="module")
def base_weights(log, tmp_path_factory) -> Path:
    """A tiny trained detector that the fine-tuning tests start from."""
    tmp = tmp_path_factory.mktemp("base")
    assert _train(log, _config(tmp, "base"), tmp / "base").exit_code == 0
    return tmp / "base" / "detector.pt"


def _fine_tune(log, tmp_path, base: Path, prefix: str, detector: dict, **train) -> tuple[dict, Path]:
    """Fine-tune only ``prefix`` from ``base``; check that only ``prefix`` weights are new and
    that every weight and batch-norm statistic of the base stays. Returns the weights and run."""
    start = _weights(base)
    name = prefix.rstrip(".")
    config = _config(tmp_path, name, detector, init_weights=str(base), train_only=[prefix], **train)
    out = tmp_path / name
    res = _train(log, config, out)
    assert res.exit_code == 0, res.output
    tuned = _weights(out / "detector.pt")
    assert set(tuned) - set(start) and all(k.startswith(prefix) for k in set(tuned) - set(start))
    for k, v in start.items():
        assert torch.equal(tuned[k], v), k
    return tuned, out


def test_fine_tuning_trains_only_the_named_module_from_given_weights(log, tmp_path, base_weights):
    _fine_tune(log, tmp_path, base_weights, "fusion.", {"fusion": "attention"}, early_probability=0.0)

    # a checkpoint without the attention module cannot fine-tune a model that freezes it
    frozen = _config(
        tmp_path, "frozen", {"fusion": "attention"}, init_weights=str(base_weights), train_only=["head."]
    )
    res = _train(log, frozen, tmp_path / "frozen")
    assert res.exit_code != 0 and "lacks" in str(res.exception or res.output)


def test_fine_tuning_the_warp_alignment_alone(log, tmp_path, base_weights):
    """Only ``align.`` learns; batches without a collaborator give it nothing to learn from and
    are counted, not crashed on."""
    tuned, out = _fine_tune(
        log,
        tmp_path,
        base_weights,
        "align.",
        {"warp_alignment": True},
        early_probability=0.0,
        max_agents=2,
        seed=1,
    )
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    # with seed 1 one of the two samples has its collaborator and one has none
    assert history[0]["steps_without_gradient"] == 1
    assert tuned["align.out.weight"].abs().sum() > 0  # the zero-initialised output layer learned
