"""3D GIoU against shapely, the pruning bound, and the two Hungarian orders."""

import numpy as np
import pytest
import shapely

from v2x.core.boxes import bev_corners
from v2x.tracking.association import giou3d_matrix, giou3d_upper_bound, hungarian


def _shapely_giou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = shapely.Polygon(bev_corners(a)[0]), shapely.Polygon(bev_corners(b)[0])
    za0, za1 = a[0, 2] - a[0, 5] / 2, a[0, 2] + a[0, 5] / 2
    zb0, zb1 = b[0, 2] - b[0, 5] / 2, b[0, 2] + b[0, 5] / 2
    inter = pa.intersection(pb).area * max(0.0, min(za1, zb1) - max(za0, zb0))
    union = a[0, 3] * a[0, 4] * a[0, 5] + b[0, 3] * b[0, 4] * b[0, 5] - inter
    hull = shapely.union(pa, pb).convex_hull.area * (max(za1, zb1) - min(za0, zb0))
    return inter / union - (hull - union) / hull


def _random_boxes(rng, n, spread):
    return np.c_[
        rng.uniform(-spread, spread, (n, 2)),
        rng.uniform(0.5, 1.2, n),
        rng.uniform(3.5, 12.0, n),
        rng.uniform(1.5, 2.6, n),
        rng.uniform(1.3, 3.5, n),
        rng.uniform(-np.pi, np.pi, n),
    ]


def test_giou_matches_shapely_and_pruning_only_skips_pairs_below_the_floor():
    rng = np.random.default_rng(3)
    a, b = _random_boxes(rng, 25, 15.0), _random_boxes(rng, 20, 15.0)
    full = giou3d_matrix(a, b)
    for i in range(len(a)):
        for j in range(len(b)):
            assert full[i, j] == pytest.approx(_shapely_giou(a[i : i + 1], b[j : j + 1]), abs=1e-9)
    bound, _ = giou3d_upper_bound(a, b)
    assert np.all(full <= bound + 1e-9)
    pruned = giou3d_matrix(a, b, floor=-0.2)
    skipped = pruned == -1.0
    assert skipped.any() and (~skipped).any()
    assert np.all(full[skipped] < -0.2)
    assert np.allclose(pruned[~skipped], full[~skipped])


def test_giou_by_hand():
    a = np.array([[0, 0, 0, 2, 2, 2, 0.0]])
    b = np.array([[3, 0, 0, 2, 2, 2, 0.0]])  # 1 m gap: hull 5 x 2 x 2 = 20, union 16
    assert giou3d_matrix(a, b)[0, 0] == pytest.approx(0 - (20 - 16) / 20)
    assert giou3d_matrix(a, a)[0, 0] == pytest.approx(1.0)
    assert giou3d_matrix(a, np.zeros((0, 7))).shape == (1, 0)


def test_hungarian_orders():
    score = np.array([[0.5, -0.5], [-0.3, -0.1]])
    pairs, rows, cols = hungarian(score, -0.2)
    assert pairs.tolist() == [[0, 0], [1, 1]] and rows.size == 0 and cols.size == 0
    # AB3DMOT's order assigns over all pairs first: (0,1) + (1,0) totals 0.65 against 0.35 for
    # (0,0) + (1,1); (0,1) is then under the threshold and dropped, leaving one pair
    score = np.array([[0.5, -0.25], [0.9, -0.15]])
    pairs, rows, cols = hungarian(score, -0.2, gate_first=False)
    assert pairs.tolist() == [[1, 0]] and rows.tolist() == [0] and cols.tolist() == [1]
    # gating first forbids (0,1) before assigning, and keeps both rows matched
    pairs, _, _ = hungarian(score, -0.2, gate_first=True)
    assert pairs.tolist() == [[0, 0], [1, 1]]
    # an explicit mask (e.g. a Mahalanobis gate) forbids a pair outright
    pairs, rows, _ = hungarian(np.array([[0.9, 0.1]]), -0.2, allowed=np.array([[False, True]]))
    assert pairs.tolist() == [[0, 1]]
