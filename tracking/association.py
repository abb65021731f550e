"""Track-to-detection association: 3D GIoU of upright boxes and Hungarian matching.

GIoU = IoU - (C - U) / C, with C the volume of the smallest enclosing shape: the convex hull of
both boxes' BEV corners times their joint height span. Unlike IoU it still ranks pairs that do
not overlap (it goes down to -1), which keeps fast or noisy targets associable.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment

from v2x.boxes import bev_corners
from v2x.iou import bev_intersection_area

__all__ = ["giou3d_matrix", "hungarian"]


def giou3d_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Na, Nb) generalised 3D IoU of upright boxes given as (N, 7) arrays."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 7)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 7)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter_bev = bev_intersection_area(a, b)
    za0, za1 = a[:, 2] - a[:, 5] / 2, a[:, 2] + a[:, 5] / 2
    zb0, zb1 = b[:, 2] - b[:, 5] / 2, b[:, 2] + b[:, 5] / 2
    overlap_z = np.clip(np.minimum(za1[:, None], zb1[None]) - np.maximum(za0[:, None], zb0[None]), 0, None)
    span_z = np.maximum(za1[:, None], zb1[None]) - np.minimum(za0[:, None], zb0[None])
    inter = inter_bev * overlap_z
    vol_a = np.prod(a[:, 3:6], axis=1)
    vol_b = np.prod(b[:, 3:6], axis=1)
    union = vol_a[:, None] + vol_b[None] - inter
    ca, cb = bev_corners(a), bev_corners(b)
    pts = np.concatenate(
        [
            np.broadcast_to(ca[:, None], (len(a), len(b), 4, 2)),
            np.broadcast_to(cb[None], (len(a), len(b), 4, 2)),
        ],
        axis=2,
    ).reshape(-1, 8, 2)
    hull_area = shapely.area(shapely.convex_hull(shapely.multipoints(pts))).reshape(len(a), len(b))
    enclose = hull_area * span_z
    return inter / np.maximum(union, 1e-9) - (enclose - union) / np.maximum(enclose, 1e-9)


def hungarian(score: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximise total ``score`` (rows x cols); pairs at or below ``threshold`` are not allowed.

    Returns matched (K, 2) index pairs, unmatched rows and unmatched columns.
    """
    n, m = score.shape
    if n == 0 or m == 0:
        return np.zeros((0, 2), dtype=np.int64), np.arange(n), np.arange(m)
    cost = np.where(score > threshold, -score, 1e6)
    rows, cols = linear_sum_assignment(cost)
    ok = cost[rows, cols] < 1e6
    pairs = np.stack([rows[ok], cols[ok]], axis=1).astype(np.int64)
    return pairs, np.setdiff1d(np.arange(n), pairs[:, 0]), np.setdiff1d(np.arange(m), pairs[:, 1])
