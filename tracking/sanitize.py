"""Detections a tracker cannot use are removed before they reach it, and counted.

NaN or infinite values and non-positive sizes are dropped; scores outside 0..1 are clipped.
"""

from __future__ import annotations

import numpy as np

from v2x.boxes import Boxes

__all__ = ["sanitize_covariances", "sanitize_detections"]


def sanitize_detections(dets: Boxes) -> tuple[Boxes, int]:
    """Usable detections and the number dropped."""
    ok = dets.finite()
    if dets.scores is not None:
        ok &= np.isfinite(dets.scores)
    out = dets[ok]
    if out.scores is not None:
        out.scores = np.clip(out.scores, 0.0, 1.0)
    return out, int((~ok).sum())


def sanitize_covariances(
    var: np.ndarray, floor: float = 1e-4, ceiling: float = 1e4
) -> tuple[np.ndarray, int]:
    """Diagonal measurement variances (N, 7): non-finite or non-positive entries are repaired.

    Returns the repaired variances and the number of detections that needed repair.
    """
    var = np.asarray(var, dtype=np.float64)
    bad = ~np.isfinite(var) | (var <= 0)
    fixed = np.where(bad, 1.0, var)
    return np.clip(fixed, floor, ceiling), int(bad.any(axis=1).sum())
