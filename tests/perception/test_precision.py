"""The detector's neck and head in bfloat16 (``precision="bf16"``): close to fp32 on a trained
detector, fp32 outputs, training untouched, and never mixed with fp32 results in caches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from v2x.perception.cache import PerceptionCache
from v2x.perception.cooperative import Perception
from v2x.perception.detector import load_detector
from v2x.perception.settings import PRECISIONS, check_precision


def _confident(boxes, score: float = 0.3):
    return boxes[boxes.scores >= score]


def test_bf16_finds_the_same_objects_as_fp32(synthetic_frame):
    frame = synthetic_frame(12, n_boxes=16)
    fp32 = Perception(load_detector()).run_frame(frame, "intermediate").boxes
    bf16 = Perception(load_detector(precision="bf16")).run_frame(frame, "intermediate").boxes
    a, b = _confident(fp32), _confident(bf16)
    assert len(a) >= 8  # the trained detector finds the synthetic cars: a real comparison
    assert abs(len(a) - len(b)) <= 1
    # every confident fp32 box has a bf16 box within 0.2 m, with a close score
    d = np.linalg.norm(a.xyzlwhy[:, None, :2] - b.xyzlwhy[None, :, :2], axis=2)
    nearest = d.argmin(axis=1)
    matched = d[np.arange(len(a)), nearest] < 0.2
    assert matched.mean() >= 0.9
    assert np.abs(a.scores[matched] - b.scores[nearest[matched]]).max() < 0.05
    assert not np.array_equal(fp32.xyzlwhy, bf16.xyzlwhy)  # bf16 really ran


def test_outputs_stay_fp32_and_training_ignores_the_setting():
    model = load_detector(precision="bf16")
    with torch.no_grad():
        bev = model.encode([torch.zeros(0, 4)])
        out = model.detect(bev.features)
    assert out.heatmap.dtype == out.regression.dtype == torch.float32
    assert bev.features.dtype == torch.float32
    # with gradients (training), the neck and head run in fp32 whatever the setting
    x = torch.rand(1, model.cfg.bev_channels, *model.cfg.grid.shape)
    want = load_detector().detect(x)
    got = model.detect(x)
    assert got.heatmap.requires_grad and torch.equal(got.heatmap, want.heatmap)


def test_the_identity_and_the_perception_cache_tell_the_precisions_apart(synthetic_frame):
    frame = synthetic_frame(13)
    model = load_detector()
    fp32_id = model.identity()
    perception = Perception(model, PerceptionCache(1 << 30))
    first = perception.agent_step(frame.ego)
    model.set_precision("bf16")
    assert model.identity() != fp32_id
    second = perception.agent_step(frame.ego)  # not the cached fp32 result
    fresh = Perception(load_detector(precision="bf16")).agent_step(frame.ego)
    assert np.array_equal(second.confidence, fresh.confidence)
    assert not np.array_equal(second.confidence, first.confidence)
    model.set_precision("fp32")
    assert model.identity() == fp32_id
    assert np.array_equal(perception.agent_step(frame.ego).confidence, first.confidence)


def test_unknown_precisions_are_refused_by_name():
    with pytest.raises(ValueError, match="precision: use one of fp32, bf16"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="precision"):
        load_detector(precision="int8")
    from v2x.pipeline.config import PipelineError, RunConfig

    with pytest.raises(PipelineError, match="precision"):
        RunConfig(precision="half")


def test_the_command_line_offers_exactly_the_precisions():
    from v2x.cli.eval_detection import eval_detection
    from v2x.cli.replay import replay

    for command in (replay, eval_detection):
        [option] = [p for p in command.params if p.name == "precision"]
        assert tuple(option.type.choices) == PRECISIONS and option.default == "fp32"


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    import v2x.perception.detector as detector

    monkeypatch.setattr(detector, "native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        load_detector(precision="bf16")
    monkeypatch.setattr(detector, "native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_detector(precision="bf16")
