"""One-to-one pairing of boxes by the distance between their centres on the ground.

Why one place: evaluation scripts, the tracker's training and oracle, and the hybrid's ego all
pair two sets of boxes the same way (scipy's assignment on BEV centre distance, pairs beyond a
distance dropped); written once, the rule cannot drift between them.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["centre_distances", "pairs_within"]

#: the cost that keeps the assignment away from pairs beyond the distance
_FAR = 1e6


def centre_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) distances in the BEV between the centres (columns x, y) of rows of
    ``a`` and ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])


def pairs_within(distances: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one pairs of least total distance (scipy's assignment),
    each pair at most ``max_distance`` apart."""
    if distances.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(np.where(distances <= max_distance, distances, _FAR))
    keep = distances[rows, cols] <= max_distance
    return rows[keep], cols[keep]
