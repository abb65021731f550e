"""Detections a tracker cannot use are dropped or repaired before they reach it, and counted.

A tracker runs inside the ego node, on data that crossed a network from other vehicles: it must
never raise on bad numbers and never let one into a track. Every repair is counted in a
:class:`Warnings` so the node can report it (diagnostics) and tests can hold it to account.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from v2x.core.boxes import Boxes, wrap_angle

__all__ = ["MAX_ABS_COORD", "MAX_SIZE", "Warnings", "sanitize_arrays", "sanitize_boxes", "sanitize_variances"]

#: beyond these a "box" is garbage, not a far object
MAX_ABS_COORD = 1e5
MAX_SIZE = 50.0


class Warnings(Counter):
    """Counts of repaired or rejected input, by reason."""

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self[reason] += int(n)


def sanitize_arrays(
    xyzlwhy: np.ndarray, scores: np.ndarray | None, warnings: Warnings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Usable boxes (M, 7, a new array), their float32 scores and the mask of kept rows: the
    same rules as :func:`sanitize_boxes` on bare arrays, for a tracker's per-frame hot path."""
    b = xyzlwhy
    finite = np.isfinite(b).all(axis=1)
    with np.errstate(invalid="ignore"):
        sane = (np.abs(b[:, :3]) < MAX_ABS_COORD).all(axis=1)
        sizes = b[:, 3:6]
        sane &= ((sizes > 0) & (sizes <= MAX_SIZE)).all(axis=1)
    ok = finite & sane
    if not ok.all():
        warnings.add("non_finite_box", int((~finite).sum()))
        warnings.add("bad_box", int((finite & ~sane).sum()))
    if scores is not None:
        finite_score = np.isfinite(scores)
        if not finite_score.all():
            warnings.add("non_finite_score", int((ok & ~finite_score).sum()))
            ok &= finite_score
    everything = bool(ok.all())
    out = b.copy() if everything else b[ok]
    out[:, 6] = wrap_angle(out[:, 6])
    if scores is None:
        return out, np.ones(len(out), np.float32), ok
    s = scores if everything else scores[ok]
    clipped = (s < 0) | (s > 1)
    if clipped.any():
        warnings.add("score_clipped", int(clipped.sum()))
    return out, np.clip(s, 0.0, 1.0).astype(np.float32), ok


def sanitize_boxes(boxes: Boxes, warnings: Warnings) -> tuple[Boxes, np.ndarray]:
    """Usable detections and the mask of kept rows.

    Dropped: non-finite values, sizes not in (0, 50] m, coordinates beyond 1e5 m, non-finite
    scores. Repaired: headings wrapped to [-pi, pi), scores clipped to 0..1 (missing: 1).
    """
    xyzlwhy, scores, ok = sanitize_arrays(boxes.xyzlwhy, boxes.scores, warnings)
    out = Boxes(xyzlwhy, boxes.labels[ok], boxes.track_ids[ok], scores)
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
