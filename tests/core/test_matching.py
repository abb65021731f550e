"""v2x.core.matching: the one pairing of boxes by centre distance that every caller shares."""

from __future__ import annotations

import numpy as np

from v2x.core.matching import centre_distances, pairs_within


def test_pairs_are_one_to_one_of_least_total_distance_and_far_ones_are_dropped():
    a = np.array([[0.0, 0.0], [2.0, 0.0], [50.0, 0.0]])
    b = np.array([[1.9, 0.0], [0.9, 0.0], [80.0, 0.0]])
    d = centre_distances(a, b)
    assert d.shape == (3, 3) and d[0, 1] == 0.9
    rows, cols = pairs_within(d, max_distance=2.5)
    # greedy would give a[1] its nearest (b[0], 0.1 m) and leave a[0] with b[1]; the assignment
    # finds the same here, and drops the pair 30 m apart
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 1), (1, 0)]
    assert pairs_within(d, max_distance=0.5)[0].tolist() == [1]


def test_no_boxes_on_either_side_gives_no_pairs():
    d = centre_distances(np.zeros((0, 7)), np.ones((4, 7)))
    assert d.shape == (0, 4)
    rows, cols = pairs_within(d, 3.0)
    assert len(rows) == len(cols) == 0
