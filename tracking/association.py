"""Track-to-detection affinity (3D IoU and GIoU of upright boxes) and Hungarian matching.

GIoU = IoU - (C - U) / C, with C the convex hull of both boxes' BEV corners times their joint
height span (AB3DMOT's definition). Unlike IoU it still ranks pairs that do not overlap (down
to -1), which keeps fast or noisy targets associable.

Speed: pairs that provably cannot reach ``floor`` are not computed. For boxes whose
circumscribed circles are apart, the BEV intersection is empty and the hull holds the trapezoid
spanned by the two centre chords perpendicular to the centre line (each at least the box's
shorter side) as well as both boxes, which bounds C from below and so GIoU from above. Skipped
pairs read -1. The rest are computed together (:mod:`v2x.tracking.polygons`: intersections by
clipping, hulls by shapely, one call each for all pairs).

``giou_bev`` is the same on the ground plane alone (areas, no heights). Agents can disagree on
a car's height by metres (a collaborator's pitch error moves its boxes up or down at range,
up to 2 m on V2V4Real) while agreeing on its footprint; cars do not stack, so the footprint
is what decides which track a box belongs to.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from v2x.core.boxes import bev_corners
from v2x.core.iou import iou3d_matrix
from v2x.tracking.polygons import convex_hull_area, intersection_area

__all__ = ["affinity_matrix", "giou3d_matrix", "giou3d_upper_bound", "hungarian"]

#: the affinities :func:`affinity_matrix` computes
AFFINITIES = ("giou", "giou_bev", "iou")

_FORBIDDEN = 1e6


def _as_boxes(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1, 7)


def giou3d_upper_bound(a: np.ndarray, b: np.ndarray, bev: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(Na, Nb) upper bound of GIoU (``bev``: on the ground plane) and the mask of pairs whose
    BEV circles overlap (bound = 1)."""
    a, b = _as_boxes(a), _as_boxes(b)
    d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    ra = np.hypot(a[:, 3], a[:, 4]) / 2
    rb = np.hypot(b[:, 3], b[:, 4]) / 2
    near = d <= ra[:, None] + rb[None, :] + 1e-6
    area_a, area_b = a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]
    ma, mb = np.minimum(a[:, 3], a[:, 4]), np.minimum(b[:, 3], b[:, 4])
    hull_lb = np.maximum(d * (ma[:, None] + mb[None]) / 2, area_a[:, None] + area_b[None])
    if bev:
        bound = (area_a[:, None] + area_b[None]) / np.maximum(hull_lb, 1e-12) - 1.0
    else:
        za0, za1 = a[:, 2] - a[:, 5] / 2, a[:, 2] + a[:, 5] / 2
        zb0, zb1 = b[:, 2] - b[:, 5] / 2, b[:, 2] + b[:, 5] / 2
        span = np.maximum(za1[:, None], zb1[None]) - np.minimum(za0[:, None], zb0[None])
        union = (area_a * a[:, 5])[:, None] + (area_b * b[:, 5])[None]
        bound = union / np.maximum(hull_lb * span, 1e-12) - 1.0
    return np.where(near, 1.0, np.minimum(bound, 1.0)), near


def giou3d_matrix(a: np.ndarray, b: np.ndarray, floor: float | None = None, bev: bool = False) -> np.ndarray:
    """(Na, Nb) generalised 3D IoU of upright boxes given as (N, 7) arrays (``bev``: the
    generalised IoU of their ground-plane footprints instead).

    With ``floor``, pairs whose GIoU is provably below it are skipped and read -1.
    """
    a, b = _as_boxes(a), _as_boxes(b)
    out = np.full((len(a), len(b)), -1.0)
    if len(a) == 0 or len(b) == 0:
        return out
    bound, near = giou3d_upper_bound(a, b, bev)
    todo = np.ones_like(near) if floor is None else bound >= floor
    ia, ib = np.nonzero(todo)
    if len(ia) == 0:
        return out
    corners = bev_corners(np.concatenate([a, b]))  # each box once, however many pairs it is in
    ca, cb = corners[: len(a)][ia], corners[len(a) :][ib]
    inter_bev = np.zeros(len(ia))
    ov = near[ia, ib]
    if ov.any():
        inter_bev[ov] = intersection_area(ca[ov], cb[ov])
    hull = convex_hull_area(np.concatenate([ca, cb], axis=1))
    if bev:
        union = (a[:, 3] * a[:, 4])[ia] + (b[:, 3] * b[:, 4])[ib] - inter_bev
        out[ia, ib] = inter_bev / np.maximum(union, 1e-12) - (hull - union) / np.maximum(hull, 1e-12)
        return out
    A, B = a[ia], b[ib]
    za0, za1 = A[:, 2] - A[:, 5] / 2, A[:, 2] + A[:, 5] / 2
    zb0, zb1 = B[:, 2] - B[:, 5] / 2, B[:, 2] + B[:, 5] / 2
    inter = inter_bev * np.clip(np.minimum(za1, zb1) - np.maximum(za0, zb0), 0, None)
    union = np.prod(A[:, 3:6], axis=1) + np.prod(B[:, 3:6], axis=1) - inter
    span = np.maximum(za1, zb1) - np.minimum(za0, zb0)
    enclose = hull * span
    out[ia, ib] = inter / np.maximum(union, 1e-12) - (enclose - union) / np.maximum(enclose, 1e-12)
    return out


def affinity_matrix(
    kind: str, tracks: np.ndarray, dets: np.ndarray, floor: float | None = None
) -> np.ndarray:
    """(tracks, detections) affinity: ``"giou"`` or ``"iou"`` (3D), ``"giou_bev"`` (ground plane)."""
    if kind in ("giou", "giou_bev"):
        return giou3d_matrix(tracks, dets, floor, bev=kind == "giou_bev")
    if kind == "iou":
        return iou3d_matrix(_as_boxes(tracks), _as_boxes(dets))
    raise ValueError(f"unknown affinity {kind!r}")


def hungarian(
    score: np.ndarray, threshold: float, gate_first: bool = False, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximise the total ``score`` (rows x cols); a kept pair has score >= ``threshold``.

    ``gate_first=False`` is AB3DMOT's order: assign over every pair, then drop the pairs under
    the threshold. ``gate_first=True`` forbids them before assigning, which can only keep more
    pairs. ``allowed`` (bool, same shape) forbids pairs outright, e.g. a Mahalanobis gate.
    Returns matched (K, 2) index pairs, unmatched rows and unmatched columns.
    """
    score = np.asarray(score, dtype=np.float64)
    n, m = score.shape
    if n == 0 or m == 0:
        return np.zeros((0, 2), dtype=np.int64), np.arange(n), np.arange(m)
    ok = np.ones((n, m), dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
    if gate_first:
        ok = ok & (score >= threshold)
    cost = np.where(ok, -score, _FORBIDDEN)
    rows, cols = linear_sum_assignment(cost)
    keep = ok[rows, cols] & (score[rows, cols] >= threshold)
    pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
    free_rows, free_cols = np.ones(n, dtype=bool), np.ones(m, dtype=bool)
    free_rows[pairs[:, 0]] = False
    free_cols[pairs[:, 1]] = False
    return pairs, np.flatnonzero(free_rows), np.flatnonzero(free_cols)
