"""The run's scorer on ground truth with and without track ids (DAIR-V2X-C's labels have none):
plain boxes, no models."""

from __future__ import annotations

import numpy as np
import pytest

from v2x.core.boxes import Boxes
from v2x.pipeline.config import RunConfig
from v2x.pipeline.scoring import (
    DETECTION_ONLY,
    FULL,
    IDENTITY_METRICS,
    Scorer,
    has_track_ids,
    score_tracking,
)
from v2x.pipeline.stages import EgoOutput
from v2x.tracking import TrackingSequence

CAR = [10.0, 0.0, 0.0, 4.5, 1.8, 1.6, 0.0]
OTHER = [20.0, 5.0, 0.0, 4.5, 1.8, 1.6, 0.3]
XY_RANGE = (-70.4, -40.0, 70.4, 40.0)


def _boxes(rows, ids, scores=None) -> Boxes:
    return Boxes(np.array(rows, dtype=float), labels=0, track_ids=np.array(ids), scores=scores)


def _sequence(gt_ids, track_ids, name: str = "s") -> TrackingSequence:
    """Two cars seen exactly in every frame, with the given ids per frame."""
    seq = TrackingSequence(name, len(gt_ids))
    for f, (g, t) in enumerate(zip(gt_ids, track_ids, strict=True)):
        seq.gt[f] = _boxes([CAR, OTHER], g)
        seq.tracks[f] = _boxes([CAR, OTHER], t, scores=np.full(2, 0.9, np.float32))
    return seq


def test_ground_truth_without_ids_is_told_apart():
    assert has_track_ids(_boxes([CAR, OTHER], [3, 4])) and has_track_ids(Boxes.empty())
    assert not has_track_ids(_boxes([CAR, OTHER], [-1, -1]))  # DAIR-V2X-C: every id unknown
    assert not has_track_ids(_boxes([CAR, OTHER], [3, 3]))


def test_identity_errors_count_with_ids_and_not_without():
    # the tracker swaps the two cars' ids in the middle frame: two switches, then two more
    tracks = [[1, 2], [2, 1], [1, 2]]
    full = score_tracking([_sequence([[7, 8]] * 3, tracks)])
    assert full["scoring"] == FULL and full["ids"] == 4 and full["mota"] < 100
    # without ids (as DAIR's -1s would be, which the evaluator refuses) every box is its own
    # object: the same tracks match frame by frame, no identity error can be counted
    bare = score_tracking([_sequence([[-1, -1]] * 3, tracks)], [False])
    assert bare["scoring"] == DETECTION_ONLY and bare["mota"] == pytest.approx(100.0)
    assert bare["recall"] == pytest.approx(100.0) and bare["gt_objects"] == 6
    assert all(bare[k] is None for k in IDENTITY_METRICS) and bare["sequences_without_ids"] == ["s"]


def test_one_sequence_without_ids_makes_the_run_detection_only():
    tr = score_tracking(
        [_sequence([[7, 8]] * 2, [[1, 2]] * 2, "a"), _sequence([[-1, -1]] * 2, [[1, 2]] * 2, "b")],
        [True, False],
    )
    assert tr["scoring"] == DETECTION_ONLY and tr["sequences_without_ids"] == ["b"] and tr["sequences"] == 2


def _run(gt_ids_per_frame) -> dict:
    """A run through the Scorer, as run_frames and the ego node drive it."""
    cfg = RunConfig(method="none", tracker="ab3dmot")
    scorer = Scorer(cfg, XY_RANGE)
    scorer.new_sequence("scene")
    for ids in gt_ids_per_frame:
        out = EgoOutput(
            _boxes([CAR, OTHER], -1, scores=np.full(2, 0.9, np.float32)),
            _boxes([CAR, OTHER], [1, 2], scores=np.full(2, 0.9, np.float32)),
            fused=0,
            stale=0,
        )
        gt = _boxes([CAR, OTHER], ids)
        scorer.add(out, [], {}, gt, gt, np.eye(4))

    class _NoChannel:
        def totals(self):
            return {"sent": 0, "delivered": 0, "dropped_channel": 0, "dropped_budget": 0}

        def summary(self):
            return {}

    return scorer.summary(_NoChannel(), 0, 0, 0)


def test_the_scorer_scores_a_run_without_ids_detection_only_and_says_so():
    res = _run([[-1, -1]] * 3)
    assert res["tracking_scoring"] == DETECTION_ONLY and res["amota"] is not None
    assert res["tracking"]["ids"] is None and res["mota"] == pytest.approx(100.0)
    assert res["ap_bev"]["0.5"] == pytest.approx(1.0)
    full = _run([[5, 6]] * 3)
    assert full["tracking_scoring"] == FULL and full["tracking"]["ids"] == 0
    assert full["amota"] == pytest.approx(res["amota"])  # no identity error here: the same score
