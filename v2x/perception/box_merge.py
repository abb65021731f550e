"""Late fusion's merge of several agents' boxes: rotated NMS whose kept boxes absorb their duplicates.

Two agents that see one car each send a box for it, placed with independent errors. Plain NMS
(OpenCOOD's late fusion) keeps the higher-scored box and throws the other's information away;
averaging the two where they clearly describe one object (BEV IoU above ``fusion_iou``) places
the car better. On the simulator's validation frames this lifts late fusion's AP@0.7 by about
1.8 points at the same AP@0.5 (docs/perception.md, "Merging boxes"). Boxes that NMS suppresses
with a lower overlap (a neighbour, a poorer guess) are dropped as before.

Headings are averaged too, each member's taken modulo pi next to the kept box's: a box that
points backwards has the same footprint, and the kept box keeps its direction.
"""

from __future__ import annotations

import numpy as np

from v2x.core.boxes import wrap_angle
from v2x.core.iou import bev_iou_matrix
from v2x.core.matching import centre_distances, pairs_within

__all__ = ["BOX_FUSION_IOU", "NEW_OBJECT_IOU", "agents_disagreement", "merge_duplicates", "not_overlapping"]

#: BEV IoU above which a suppressed box is averaged into the box that suppressed it (chosen on
#: the simulator's validation split: 0.2-0.5 tried, docs/perception.md); None: plain NMS
BOX_FUSION_IOU: float | None = 0.4
#: a box overlapping a placed one by more than this BEV IoU is the same object, not a new one
#: (the hybrid's ego; chosen on the simulator's validation split from 0.1 to 0.5, docs/messages.md)
NEW_OBJECT_IOU = 0.3


def merge_duplicates(
    xyzlwhy: np.ndarray, scores: np.ndarray, nms_iou: float, fusion_iou: float | None = BOX_FUSION_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy rotated NMS at ``nms_iou``; returns the kept indices (decreasing score) and their
    boxes, each kept box's centre, size and heading the score-weighted mean over itself and the
    boxes it suppressed with BEV IoU above ``fusion_iou`` (headings modulo pi next to the kept
    box's, the result wrapped to [-pi, pi)); its score stays its own. ``fusion_iou`` None: the
    kept boxes unchanged."""
    if fusion_iou is not None and not 0.0 < fusion_iou < 1.0:
        raise ValueError(f"fusion_iou: need a BEV IoU in (0, 1) or None, got {fusion_iou}")
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(xyzlwhy, dtype=np.float64)
    if len(order) == 0:
        return order.astype(np.int64), boxes[:0].copy()
    iou = bev_iou_matrix(boxes[order], boxes[order])
    taken = np.zeros(len(order), dtype=bool)
    kept: list[int] = []  # positions in ``order``
    averaged: list[tuple[int, np.ndarray]] = []  # (position in ``kept``, positions averaged)
    for i in range(len(order)):
        if taken[i]:
            continue
        if fusion_iou is not None:  # of those it suppresses, the ones that overlap it closely
            same = ~taken & (iou[i] > max(nms_iou, fusion_iou))
            same[i] = True
            if same.sum() > 1:
                averaged.append((len(kept), np.flatnonzero(same)))
        kept.append(i)
        taken |= iou[i] > nms_iou
    keep = order[kept].astype(np.int64)
    placed = boxes[keep].copy()
    if averaged:
        weight = np.clip(np.asarray(scores, dtype=np.float64)[order], 1e-6, None)
        for k, same in averaged:
            w = weight[same][:, None]
            members = boxes[order[same]]
            placed[k, :6] = (members[:, :6] * w).sum(axis=0) / w.sum()
            placed[k, 6] = _mean_heading(members[:, 6], w[:, 0], placed[k, 6])
    return keep, placed


def _mean_heading(yaws: np.ndarray, weights: np.ndarray, reference: float) -> float:
    """Weighted mean of ``yaws``, each first moved by a multiple of pi to within pi/2 of
    ``reference`` (the kept box's heading: a box turned by pi covers the same ground), wrapped to
    [-pi, pi)."""
    near = reference + (yaws - reference + np.pi / 2) % np.pi - np.pi / 2
    return float(wrap_angle((near * weights).sum() / weights.sum()))


def not_overlapping(
    xyzlwhy: np.ndarray, placed: np.ndarray, iou: float = NEW_OBJECT_IOU, min_apart: float = 0.0
) -> np.ndarray:
    """Mask of the rows of ``xyzlwhy`` that are new objects beside ``placed``: BEV IoU with every
    placed box at most ``iou``, and the centre at least ``min_apart`` metres from every placed
    box's centre (two agents' boxes of one car a metre apart, as on DAIR-V2X-C with its
    calibration error, can overlap less than ``iou`` and still be one car)."""
    if len(xyzlwhy) == 0 or len(placed) == 0:
        return np.ones(len(xyzlwhy), dtype=bool)
    boxes, others = np.asarray(xyzlwhy, np.float64), np.asarray(placed, np.float64)
    apart = centre_distances(boxes, others).min(axis=1)
    return (bev_iou_matrix(boxes, others).max(axis=1) <= iou) & (apart >= min_apart)


def agents_disagreement(a: np.ndarray, b: np.ndarray, max_distance: float = 3.0, min_pairs: int = 2) -> float:
    """How far apart two agents place the cars both see, this frame: the median centre distance
    of the one-to-one pairs (scipy's assignment) of boxes ``a`` and ``b`` (rows x, y, ...) closer
    than ``max_distance``; 0 with fewer than ``min_pairs`` pairs. Measured with the shipped
    detectors: 0.33 m at the median over the simulator's test frames (0.88 m at the 90th
    percentile), 1.38 m on DAIR-V2X-C's run B (the real pairs' calibration error)."""
    if len(a) < min_pairs or len(b) < min_pairs:
        return 0.0
    dist = centre_distances(a, b)
    rows, cols = pairs_within(dist, max_distance)
    return float(np.median(dist[rows, cols])) if len(rows) >= min_pairs else 0.0
