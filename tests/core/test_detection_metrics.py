import numpy as np
import pytest
from shapely.geometry import Polygon

from v2x.core.boxes import Boxes, ObjectClass, bev_corners
from v2x.metrics.detection import DetectionEvaluator, voc_ap


def _boxes(rows, scores=None, labels=ObjectClass.CAR):
    return Boxes(np.asarray(rows, dtype=float).reshape(-1, 7), labels=labels, scores=scores)


GT = [[10, 0, 0, 4, 2, 1.5, 0.0], [20, 5, 0, 4, 2, 1.5, 0.5]]


def test_perfect_predictions_give_ap_one():
    ev = DetectionEvaluator()
    ev.add(_boxes(GT, scores=[0.9, 0.8]), _boxes(GT))
    res = ev.result()
    assert res["ap_bev"] == {"0.3": 1.0, "0.5": 1.0, "0.7": 1.0}
    assert res["ap_3d"]["0.7"] == 1.0
    assert res["num_gt"] == 2


def test_all_wrong_gives_zero():
    ev = DetectionEvaluator()
    ev.add(_boxes([[-30, -20, 0, 4, 2, 1.5, 0]], scores=[0.9]), _boxes(GT))
    assert ev.result()["ap_bev"]["0.3"] == 0.0


def test_mixed_scores_hand_computed():
    # p1 (0.9) hits g1, p2 (0.8) is a false positive, p3 (0.7) hits g2:
    # precision/recall = (1, .5), (.5, .5), (2/3, 1) -> envelope AP = .5 * 1 + .5 * 2/3
    preds = _boxes([GT[0], [40, -10, 0, 4, 2, 1.5, 0], GT[1]], scores=[0.9, 0.8, 0.7])
    ev = DetectionEvaluator()
    ev.add(preds, _boxes(GT))
    assert ev.ap("bev", 0.5) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_scores_are_sorted_across_frames():
    # frame 1 has a low-scored TP, frame 2 a high-scored FP: global order is FP first.
    ev = DetectionEvaluator()
    ev.add(_boxes([GT[0]], scores=[0.2]), _boxes([GT[0]]))
    ev.add(_boxes([[40, 10, 0, 4, 2, 1.5, 0]], scores=[0.9]), _boxes([]))
    # recall 1 is reached at precision 1/2 -> AP 0.5 (per-frame order would give 1.0)
    assert ev.ap("bev", 0.5) == pytest.approx(0.5)


def test_duplicate_detection_is_false_positive_and_gt_used_once():
    ev = DetectionEvaluator()
    ev.add(_boxes([GT[0], GT[0]], scores=[0.9, 0.8]), _boxes([GT[0]]))
    assert ev.ap("bev", 0.5) == pytest.approx(1.0)  # recall 1 reached at precision 1
    ev2 = DetectionEvaluator()
    ev2.add(_boxes([GT[0], GT[0]], scores=[0.8, 0.9]), _boxes([GT[0], [50, 0, 0, 4, 2, 1.5, 0]]))
    assert ev2.ap("bev", 0.5) == pytest.approx(0.5)


def test_rotated_boxes_threshold_behaviour():
    gt = _boxes([[10, 0, 0, 4, 2, 1.5, 0.0]])
    pred = _boxes([[10, 0, 0, 4, 2, 1.5, np.pi / 2]], scores=[0.9])  # IoU = 4 / 12 = 1/3
    ev = DetectionEvaluator()
    ev.add(pred, gt)
    assert ev.ap("bev", 0.3) == pytest.approx(1.0)
    assert ev.ap("bev", 0.5) == 0.0


def test_range_class_and_distance_bins():
    gt = _boxes([[10, 0, 0, 4, 2, 1.5, 0], [100, 0, 0, 4, 2, 1.5, 0], [40, 0, 0, 4, 2, 1.5, 0]])
    gt.labels[2] = ObjectClass.PEDESTRIAN
    ev = DetectionEvaluator()
    ev.add(_boxes([[10, 0, 0, 4, 2, 1.5, 0]], scores=[0.5]), gt)
    res = ev.result()
    assert res["num_gt"] == 1  # out-of-range car and the pedestrian are not evaluated
    assert res["distance_bins"]["0-30m"]["ap_bev"]["0.5"] == 1.0
    assert res["distance_bins"]["30-50m"]["ap_bev"]["0.5"] is None  # no GT there
    assert "BEV@0.5" in ev.table()


def _reference_ap(frames, thr):
    """Straightforward shapely re-implementation of the protocol."""
    records, num_gt = [], 0
    for pred, scores, gt in frames:
        num_gt += len(gt)
        gt_polys = [Polygon(c) for c in bev_corners(gt)]
        for i in np.argsort(-scores, kind="stable"):
            p = Polygon(bev_corners(pred[i])[0])
            ious = [p.intersection(g).area / p.union(g).area for g in gt_polys]
            if gt_polys and max(ious) >= thr:
                gt_polys.pop(int(np.argmax(ious)))
                records.append((scores[i], 1))
            else:
                records.append((scores[i], 0))
    records.sort(key=lambda r: -r[0])
    tp = np.cumsum([r[1] for r in records])
    fp = np.cumsum([1 - r[1] for r in records])
    return voc_ap(tp / num_gt, tp / (tp + fp))


def test_matches_shapely_reference_on_random_scenes():
    rng = np.random.default_rng(3)
    frames = []
    ev = DetectionEvaluator()
    for _ in range(8):
        n = rng.integers(3, 10)
        gt = np.c_[
            rng.uniform(-30, 30, (n, 2)),
            np.zeros(n),
            rng.uniform(3.5, 5, n),
            rng.uniform(1.6, 2.1, n),
            np.full(n, 1.5),
            rng.uniform(-np.pi, np.pi, n),
        ]
        pred = gt + rng.normal(0, [0.4, 0.4, 0.05, 0.2, 0.1, 0.05, 0.15], gt.shape)
        pred = np.vstack(
            [
                pred,
                np.c_[rng.uniform(-30, 30, (3, 2)), np.zeros(3), np.full((3, 3), [4, 2, 1.5]), np.zeros(3)],
            ]
        )
        scores = rng.uniform(0, 1, len(pred))
        frames.append((pred, scores, gt))
        ev.add(_boxes(pred, scores=scores), _boxes(gt))
    for thr in (0.3, 0.5, 0.7):
        assert ev.ap("bev", thr) == pytest.approx(_reference_ap(frames, thr), abs=1e-12)
