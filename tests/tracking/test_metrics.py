"""AB3DMOT-protocol metrics: hand-computed cases, the comparable/strict split, real V2V4Real ground truth."""

import numpy as np
import pytest

from v2x.core.boxes import Boxes
from v2x.core.iou import iou3d_matrix
from v2x.tracking.metrics import TrackingSequence, evaluate_tracking, reference_geometry

CAR = [0.0, 0.0, 0.8, 4.5, 1.9, 1.5, 0.0]


def _boxes(rows, ids, scores=None):
    return Boxes(np.asarray(rows, float).reshape(-1, 7), labels=0, track_ids=ids, scores=scores)


def _car(x, y=0.0):
    return [x, y, *CAR[2:]]


def _seq(gt_ids_per_frame, trk_ids_per_frame, n_objects=1, far_fp=0, scores=None):
    """Object k moves along y = 10 k; tracks copy the GT box with the given ids (-1: missed)."""
    gt, tracks = {}, {}
    for f, (g_ids, t_ids) in enumerate(zip(gt_ids_per_frame, trk_ids_per_frame, strict=True)):
        rows = [_car(f * 1.0, 10.0 * k) for k in range(n_objects)]
        gt[f] = _boxes(rows, g_ids)
        keep = [k for k, t in enumerate(t_ids) if t >= 0]
        trows = [rows[k] for k in keep] + [_car(-50.0, -50.0 - 10 * j) for j in range(far_fp)]
        tids = [t_ids[k] for k in keep] + [1000 + j for j in range(far_fp)]
        s = np.ones(len(tids)) if scores is None else np.asarray(scores[f], float)
        tracks[f] = _boxes(trows, tids, s)
    return TrackingSequence("s", len(gt_ids_per_frame), gt, tracks)


def test_perfect_tracking_scores_100_in_both_modes():
    seq = _seq([[1, 2, 3]] * 30, [[7, 8, 9]] * 30, n_objects=3)
    for mode in ("comparable", "strict"):
        r = evaluate_tracking([seq], mode)
        assert r["amota"] == pytest.approx(100.0) and r["samota"] == pytest.approx(100.0)
        assert r["mota"] == 100.0 and r["motp"] == pytest.approx(100.0) and r["mt"] == 100.0
        assert r["ids"] == 0 and r["frag"] == 0 and r["recall_levels"] == 40


def test_id_switch_and_fragmentation_by_hand():
    # one object, 4 frames; the tracker changes id at frame 2 -> 1 IDS, 1 FRAG, MOTA 1 - 1/4
    r = evaluate_tracking([_seq([[1]] * 4, [[5], [5], [6], [6]])])
    assert (r["ids"], r["frag"], r["fn"], r["fp"]) == (1, 1, 0, 0)
    assert r["mota"] == pytest.approx(75.0) and r["mt"] == 100.0
    # a miss in the middle with the same id before and after: 1 FN, 1 FRAG, no IDS
    r = evaluate_tracking([_seq([[1]] * 5, [[5], [5], [-1], [5], [5]])])
    assert (r["ids"], r["frag"], r["fn"]) == (0, 1, 1)
    assert r["mota"] == pytest.approx(80.0)
    # a miss, then a new id: the switch is not counted (the frame before was missed), one fragment
    r = evaluate_tracking([_seq([[1]] * 5, [[5], [5], [-1], [6], [6]])])
    assert (r["ids"], r["frag"]) == (0, 1)


def test_mostly_lost_and_partial_recall():
    # object 1 tracked in all 10 frames, object 2 in 1 of 10: MT 50 %, ML 50 %, recall 55 %
    trk = [[1, 2 if f == 0 else -1] for f in range(10)]
    r = evaluate_tracking([_seq([[1, 2]] * 10, trk, n_objects=2)])
    assert r["mt"] == pytest.approx(50.0) and r["ml"] == pytest.approx(50.0)
    assert r["recall"] == pytest.approx(55.0) and r["mota"] == pytest.approx(55.0)


def test_amota_and_samota_at_half_recall_follow_the_reference_discretisation():
    # one object over 40 frames, tracked (equal scores) in the first 20: recall 0.5. Walking the 20
    # matched scores gives recall levels 0, 1/40, ..., 19/40; the zero level is dropped, so 19
    # levels each with MOTA 0.5 and sMOTA 1: AMOTA = 19 * 0.5 / 40, sAMOTA = 19 / 40.
    trk = [[3] if f < 20 else [-1] for f in range(40)]
    r = evaluate_tracking([_seq([[1]] * 40, trk)])
    assert r["recall_levels"] == 19
    assert r["amota"] == pytest.approx(100 * 19 * 0.5 / 40)
    assert r["samota"] == pytest.approx(100 * 19 / 40)
    assert r["mota"] == pytest.approx(50.0) and r["frag"] == 0


def test_false_positives_comparable_versus_strict():
    seq = _seq([[1]] * 20, [[3]] * 20, far_fp=2)  # two phantom tracks every frame, 2D boxes all zero
    comparable = evaluate_tracking([seq])
    strict = evaluate_tracking([seq], mode="strict")
    assert comparable["fp"] == 0 and comparable["mota"] == 100.0 and comparable["precision"] == 100.0
    assert comparable["ignored_tracker_boxes"] == 40
    assert strict["fp"] == 40 and strict["mota"] == pytest.approx(100.0 * (1 - 40 / 20))
    # with 2D boxes taller than 25 px the reference counts them too
    seq.track_heights_px = {f: np.array([100.0, 100.0, 100.0]) for f in range(20)}
    assert evaluate_tracking([seq])["fp"] == 40


def test_best_mota_search_starts_at_zero():
    # every threshold gives a negative MOTA (strict, many phantoms): the reference then reports the
    # pass that keeps every track (threshold -10000)
    seq = _seq([[1]] * 10, [[3]] * 10, far_fp=3)
    r = evaluate_tracking([seq], mode="strict")
    assert r["best_threshold"] == -10000.0 and r["mota"] == pytest.approx(100 * (1 - 30 / 10))


def test_a_box_matched_in_an_earlier_pass_is_no_longer_ignorable():
    # Frame 0 has a low-score track B (only there) overlapping the object better than the
    # high-score track A. With every track (the last threshold) B takes the object and A is left
    # over; A has a zero-height 2D box, yet it counts as a false positive because the pass at A's
    # score (B removed) matched it, and the reference never clears that flag.
    rows0 = [_car(0.0), [0.6, 0, 0.8, 4.5, 1.9, 1.5, 0]]
    gt = {f: _boxes([_car(f * 1.0)], [1]) for f in range(10)}
    tracks = {0: _boxes([rows0[1], rows0[0]], [10, 20], [0.9, 0.2])}
    for f in range(1, 10):
        tracks[f] = _boxes([_car(f * 1.0)], [10], [0.9])
    seq = TrackingSequence("sticky", 10, gt, tracks)
    r = evaluate_tracking([seq])
    last = r["curve"][-1]
    # (B then A on the object is also an id switch)
    assert last["fp"] == 1 and last["ids"] == 1 and last["mota"] == pytest.approx(1 - 2 / 10)
    assert r["curve"][0]["fp"] == 0  # B removed: A takes the object


def test_iou_threshold_is_a_quarter():
    seq = _seq([[1]] * 10, [[3]] * 10)
    for f in range(10):
        seq.tracks[f].xyzlwhy[:, 0] += 2.9  # IoU (4.5 - 2.9) / (4.5 + 2.9) = 0.216 < 0.25
    assert evaluate_tracking([seq])["tp"] == 0
    for f in range(10):
        seq.tracks[f].xyzlwhy[:, 0] -= 0.9  # IoU 2.5 / 6.5 = 0.385
    assert evaluate_tracking([seq])["tp"] == 10


def test_reference_geometry_mirrors_heading_and_hangs_boxes_below_their_centre():
    # same heading, offset along it: exact IoU (4.5 - 2) / (4.5 + 2); mirrored headings move the
    # offset off the boxes' axis, so the reference sees less overlap
    a = np.array([[0, 0, 0.75, 4.5, 1.9, 1.5, 0.5]])
    b = a.copy()
    b[0, :2] += 2.0 * np.array([np.cos(0.5), np.sin(0.5)])
    exact = iou3d_matrix(a, b)[0, 0]
    assert exact == pytest.approx(2.5 / 6.5)
    assert iou3d_matrix(reference_geometry(a), reference_geometry(b))[0, 0] < exact - 0.1
    # vertical: boxes [0, 1.5] and [1, 2] overlap 0.5 m; hung below their centres, [-0.75, 0.75]
    # and [0.5, 1.5] overlap 0.25 m
    c = np.array([[0, 0, 0.75, 4, 2, 1.5, 0.0]])
    d = np.array([[0, 0, 1.5, 4, 2, 1.0, 0.0]])
    assert iou3d_matrix(c, d)[0, 0] == pytest.approx(8 * 0.5 / (12 + 8 - 8 * 0.5))
    ref = iou3d_matrix(reference_geometry(c), reference_geometry(d))[0, 0]
    assert ref == pytest.approx(8 * 0.25 / (12 + 8 - 8 * 0.25))


def test_rejects_duplicate_track_ids():
    seq = _seq([[1]] * 2, [[3]] * 2)
    seq.tracks[1] = _boxes([_car(1.0), _car(1.0)], [3, 3], [1.0, 1.0])
    with pytest.raises(ValueError, match="not unique"):
        evaluate_tracking([seq])


def test_real_v2v4real_ground_truth_against_itself_and_a_perturbed_copy(realdata):
    from v2x.datasets.kitti_tracking import read_kitti_tracking, read_seqmap

    root = realdata / "v2v4real"
    seqs, noisy = [], []
    rng = np.random.default_rng(0)
    for name, (_, last) in list(read_seqmap(root / "train.seqmap").items())[:3]:
        frames = read_kitti_tracking(root / "train_label" / f"{name}.txt")
        gt = {f: t.boxes for f, t in frames.items()}
        exact = {f: Boxes(b.xyzlwhy, b.labels, b.track_ids + 100000, np.ones(len(b))) for f, b in gt.items()}
        seqs.append(TrackingSequence(name, last + 1, gt, exact))
        jitter = {}
        for f, b in gt.items():
            moved = b.xyzlwhy + rng.normal(0, [0.3, 0.3, 0.05, 0, 0, 0, 0.02], b.xyzlwhy.shape)
            keep = rng.random(len(b)) > 0.1  # 10 % missed
            jitter[f] = Boxes(
                moved[keep], b.labels[keep], b.track_ids[keep], rng.uniform(0.3, 1.0, keep.sum())
            )
        noisy.append(TrackingSequence(name, last + 1, gt, jitter))
    for mode in ("comparable", "strict"):
        perfect = evaluate_tracking(seqs, mode)
        assert perfect["amota"] == pytest.approx(100.0) and perfect["mota"] == 100.0
    r = evaluate_tracking(noisy)
    assert 80 < r["recall"] < 95 and r["motp"] < 95 and r["ids"] == 0
    assert 20 < r["amota"] < 80 and r["amota"] < r["samota"]
    assert evaluate_tracking(noisy, "strict")["fp"] > 0
