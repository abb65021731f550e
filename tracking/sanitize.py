"""Detections a tracker cannot use are dropped or repaired before they reach it, and counted.

A tracker runs inside the ego node, on data that crossed a network from other vehicles: it must
never raise on bad numbers and never let one into a track. Every repair is counted in a
:class:`Warnings` so the node can report it (diagnostics) and tests can hold it to account.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from v2x.core.boxes import Boxes, wrap_angle

__all__ = ["MAX_ABS_COORD", "MAX_SIZE", "Warnings", "sanitize_boxes", "sanitize_variances"]

#: beyond these a "box" is garbage, not a far object
MAX_ABS_COORD = 1e5
MAX_SIZE = 50.0


class Warnings(Counter):
    """Counts of repaired or rejected input, by reason."""

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self[reason] += int(n)


def sanitize_boxes(boxes: Boxes, warnings: Warnings) -> tuple[Boxes, np.ndarray]:
    """Usable detections and the mask of kept rows.

    Dropped: non-finite values, sizes not in (0, 50] m, coordinates beyond 1e5 m, non-finite
    scores. Repaired: headings wrapped to [-pi, pi), scores clipped to 0..1 (missing: 1).
    """
    b = boxes.xyzlwhy
    finite = np.all(np.isfinite(b), axis=1)
    with np.errstate(invalid="ignore"):
        sane = np.all(np.abs(b[:, :3]) < MAX_ABS_COORD, axis=1)
        sane &= np.all((b[:, 3:6] > 0) & (b[:, 3:6] <= MAX_SIZE), axis=1)
    warnings.add("non_finite_box", int((~finite).sum()))
    warnings.add("bad_box", int((finite & ~sane).sum()))
    ok = finite & sane
    if boxes.scores is not None:
        finite_score = np.isfinite(boxes.scores)
        warnings.add("non_finite_score", int((ok & ~finite_score).sum()))
        ok &= finite_score
    out = boxes[ok]
    out.xyzlwhy[:, 6] = wrap_angle(out.xyzlwhy[:, 6])
    if out.scores is None:
        out.scores = np.ones(len(out), np.float32)
    else:
        clipped = (out.scores < 0) | (out.scores > 1)
        warnings.add("score_clipped", int(clipped.sum()))
        out.scores = np.clip(out.scores, 0.0, 1.0).astype(np.float32)
    return out, ok


def sanitize_variances(
    var: np.ndarray, prior: np.ndarray, floor: float, ceiling: float, warnings: Warnings
) -> np.ndarray:
    """(N, 7) measurement variances: entries that are not finite and positive (a covariance that
    is not positive definite) are replaced by the prior's, then all are kept in [floor, ceiling]."""
    var = np.array(var, dtype=np.float64, copy=True).reshape(-1, 7)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(var) | (var <= 0)
    warnings.add("bad_covariance", int(bad.any(axis=1).sum()))
    var = np.where(bad, np.broadcast_to(prior, var.shape), var)
    return np.clip(var, floor, ceiling)
