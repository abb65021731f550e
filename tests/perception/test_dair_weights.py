"""Every command that runs the detector picks the DAIR-V2X-C weights for a DAIR-V2X-C log by
itself (one rule: ``resolve_weights``), and ``--weights`` overrides it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from v2x.datasets import detect_format, open_log
from v2x.experiments.detection_eval import evaluate_fusion_modes
from v2x.perception.detector import DAIR_WEIGHTS, DEFAULT_WEIGHTS, load_detector, resolve_weights
from v2x.pipeline.config import RunConfig
from v2x.pipeline.frames import FrameSelection
from v2x.pipeline.stages import Models, for_log_format

#: DAIR-V2X-C's evaluation range in OpenCOOD's DAIR configs: x -100.8..100.8, y -40..40
DAIR_RANGE = (-100.8, -40.0, 100.8, 40.0)


def test_the_rule():
    assert resolve_weights(None, "dair-v2x-c") == DAIR_WEIGHTS
    for fmt in ("opv2v", "v2v4real", None):
        assert resolve_weights(None, fmt) == DEFAULT_WEIGHTS
    assert resolve_weights("x/mine.pt", "dair-v2x-c") == Path("x/mine.pt")


def test_shipped_dair_weights_cover_the_dair_evaluation_range():
    assert DAIR_WEIGHTS.is_file(), "v2x/weights/detector_dair.pt is shipped"
    assert DAIR_WEIGHTS.stat().st_size < 8 << 20
    model = load_detector(log_format="dair-v2x-c")
    assert tuple(model.cfg.grid.xy_range) == DAIR_RANGE
    note = json.loads(DAIR_WEIGHTS.with_suffix(".json").read_text())
    for key in ("command", "seed", "validation_split"):
        assert key in json.dumps(note), key


def test_real_example_gets_the_dair_weights(dair_example):
    fmt = detect_format(dair_example)
    assert fmt == "dair-v2x-c" == open_log(dair_example).format
    assert resolve_weights(None, fmt) == DAIR_WEIGHTS
    cfg = for_log_format(RunConfig(), fmt)
    assert cfg.weights == str(DAIR_WEIGHTS)
    assert for_log_format(RunConfig(weights="mine.pt"), fmt).weights == "mine.pt"
    assert for_log_format(RunConfig(), "opv2v").weights is None  # OPV2V runs as before
    models = Models.load(RunConfig(method="late"), fmt)
    assert tuple(models.codec.grid.xy_range) == DAIR_RANGE


@pytest.mark.slow
def test_eval_detection_picks_and_weights_override(dair_example):
    one = FrameSelection(1, "first")
    auto = evaluate_fusion_modes(dair_example, ["intermediate"], frames=one)["intermediate"]
    dair_id = load_detector(DAIR_WEIGHTS).identity()
    assert auto["model_identity"] == dair_id
    assert auto["eval_range"] == list(DAIR_RANGE)
    assert DAIR_WEIGHTS.name in auto["weights"]
    given = evaluate_fusion_modes(dair_example, ["intermediate"], weights=DEFAULT_WEIGHTS, frames=one)
    assert given["intermediate"]["model_identity"] == load_detector(DEFAULT_WEIGHTS).identity() != dair_id
