"""The paired bootstrap of AP differences (v2x.metrics.bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest

from v2x.core.boxes import Boxes, ObjectClass
from v2x.metrics.bootstrap import bootstrap_ap, paired_ap_difference, resample_counts
from v2x.metrics.detection import DetectionEvaluator


def _scene(rng: np.random.Generator, n_gt: int, jitter: float, n_false: int):
    """Ground-truth cars and predictions: a jittered copy of each (some missed) plus false ones."""
    gt = np.c_[
        rng.uniform(-60, 60, (n_gt, 2)),
        np.zeros(n_gt),
        np.tile([4.5, 1.9, 1.6], (n_gt, 1)),
        rng.uniform(-3, 3, n_gt),
    ]
    keep = rng.random(n_gt) < 0.85
    pred = gt[keep].copy()
    pred[:, :2] += rng.normal(0, jitter, (len(pred), 2))
    false = np.c_[
        rng.uniform(-60, 60, (n_false, 2)),
        np.zeros(n_false),
        np.tile([4.5, 1.9, 1.6], (n_false, 1)),
        np.zeros(n_false),
    ]
    rows = np.vstack([pred, false])
    scores = np.r_[rng.uniform(0.3, 1.0, len(pred)), rng.uniform(0.1, 0.8, n_false)]
    car = int(ObjectClass.CAR)
    return Boxes(rows, labels=car, scores=scores), Boxes(gt, labels=car)


def _evaluators(jitters: tuple[float, ...], frames: int = 30, seed: int = 0) -> list[DetectionEvaluator]:
    rng = np.random.default_rng(seed)
    scenes = [
        (int(rng.integers(0, 12)), int(rng.integers(0, 4)), int(rng.integers(1 << 30))) for _ in range(frames)
    ]
    out = []
    for jitter in jitters:
        ev = DetectionEvaluator()
        for n_gt, n_false, s in scenes:  # the same scenes for every "mode"
            pred, gt = _scene(np.random.default_rng(s), n_gt, jitter, n_false)
            ev.add(pred, gt)
        out.append(ev)
    return out


def test_one_draw_of_every_frame_is_the_evaluators_own_ap():
    (ev,) = _evaluators((0.4,))
    ones = np.ones((1, ev.frames), dtype=int)
    for thr in (0.3, 0.5, 0.7):
        assert bootstrap_ap(ev, ones, "bev", thr)[0] == pytest.approx(ev.ap("bev", thr), abs=1e-12)


def test_a_frame_drawn_twice_counts_like_the_frame_added_twice():
    rng = np.random.default_rng(5)
    scenes = [_scene(np.random.default_rng(s), 6, 0.5, 2) for s in range(8)]
    counts = rng.integers(0, 3, 8)
    once, repeated = DetectionEvaluator(), DetectionEvaluator()
    for (pred, gt), k in zip(scenes, counts, strict=True):
        once.add(pred, gt)
        for _ in range(k):
            repeated.add(pred, gt)
    for thr in (0.3, 0.5, 0.7):
        assert bootstrap_ap(once, counts[None], "bev", thr)[0] == pytest.approx(
            repeated.ap("bev", thr), abs=1e-12
        )


def test_paired_differences_separate_a_better_mode_and_not_an_equal_one():
    tight, loose, same = _evaluators((0.1, 0.9, 0.1))
    better = paired_ap_difference(loose, tight, resamples=300)
    assert (
        better["0.7"]["difference"] > 0 and better["0.7"]["low"] > 0 and better["0.7"]["share_ahead"] > 0.97
    )
    equal = paired_ap_difference(tight, same, resamples=300)
    for thr in ("0.3", "0.5", "0.7"):
        assert equal[thr]["difference"] == 0 and equal[thr]["low"] == 0 and equal[thr]["high"] == 0


def test_the_two_evaluations_must_cover_the_same_frames():
    a, b = _evaluators((0.2, 0.2))
    b.add(*_scene(np.random.default_rng(1), 3, 0.2, 0))
    with pytest.raises(ValueError, match="same frames"):
        paired_ap_difference(a, b)


def test_resamples_computed_a_few_at_a_time_give_the_same_aps(monkeypatch):
    import v2x.metrics.bootstrap as boot

    (ev,) = _evaluators((0.5,))
    counts = np.random.default_rng(2).multinomial(ev.frames, np.full(ev.frames, 1 / ev.frames), size=50)
    whole = bootstrap_ap(ev, counts)
    monkeypatch.setattr(boot, "_CHUNK_ELEMENTS", 7)  # one resample per chunk
    assert np.allclose(bootstrap_ap(ev, counts), whole, rtol=0, atol=1e-12)  # summation order only


def test_block_resamples_draw_runs_of_consecutive_frames():
    rng = np.random.default_rng(0)
    single = resample_counts(25, 40, np.random.default_rng(3))
    assert np.array_equal(single, np.random.default_rng(3).multinomial(25, np.full(25, 1 / 25), size=40))
    for block in (2, 5, 7, 25, 100):
        counts = resample_counts(25, 40, rng, block)
        assert counts.shape == (40, 25) and (counts.sum(axis=1) == 25).all()
    assert (resample_counts(25, 5, rng, 25) == 1).all()  # one run: every frame once
    # a run of 5 starting at frame s draws s..s+4: two runs cover at most 10 distinct frames
    two = resample_counts(10, 200, rng, 5)
    drawn = two > 0
    starts = np.argmax(drawn, axis=1)
    assert all(drawn[i, starts[i] : starts[i] + 5].all() for i in range(200))


def test_runs_of_alike_frames_widen_the_interval():
    """Which mode is better changes every 10 frames: frames drawn one by one average that out
    more than it deserves; runs of 10 keep each stretch together and give a wider interval."""
    frames, stretch = 60, 10
    a, b = DetectionEvaluator(), DetectionEvaluator()
    for f in range(frames):
        good, bad = (0.1, 0.9) if (f // stretch) % 2 == 0 else (0.9, 0.1)
        s = 1000 + f
        a.add(*_scene(np.random.default_rng(s), 8, good, 2))
        b.add(*_scene(np.random.default_rng(s), 8, bad, 2))
    one = paired_ap_difference(a, b, resamples=400)["0.7"]
    runs = paired_ap_difference(a, b, resamples=400, block=stretch)["0.7"]
    assert one["difference"] == runs["difference"]
    assert runs["high"] - runs["low"] > 1.3 * (one["high"] - one["low"])
