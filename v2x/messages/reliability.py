"""How far the confidence maps that demand and supply are made of can be read as probabilities.

Demand and supply (``selection.py``) and the fill's ranking (``filling.py``) multiply detection
confidences as if they were probabilities that a cell holds an object. This module checks that
reading: a reliability diagram (predicted confidence against the fraction of cells that truly
hold an object, binned), the expected calibration error, and a temperature fitted on logits
(``sigmoid(logit(p) / T)``), a Platt scaling (``sigmoid(a logit(p) + b)``) or a binned isotonic
map to apply where it is badly calibrated. Pure numpy, no detector:
``scripts/reliability.py`` runs the detector over a log and calls these.
"""

from __future__ import annotations

import numpy as np

from v2x.core.grid import BEVGrid

__all__ = [
    "cells_in_boxes",
    "expected_calibration_error",
    "fit_isotonic",
    "fit_platt",
    "fit_temperature",
    "nll",
    "reliability_bins",
    "with_isotonic",
    "with_platt",
    "with_temperature",
]

_EPS = 1e-6


def cells_in_boxes(grid: BEVGrid, xyzlwhy: np.ndarray) -> np.ndarray:
    """(H, W) bool: cells whose centre lies inside some box's BEV footprint (boxes in the map's frame)."""
    centres = grid.cell_centers().reshape(-1, 2)
    inside = np.zeros(len(centres), dtype=bool)
    for x, y, _, length, width, _, yaw in np.asarray(xyzlwhy, dtype=np.float64).reshape(-1, 7):
        d = centres - (x, y)
        c, s = np.cos(yaw), np.sin(yaw)
        along = d[:, 0] * c + d[:, 1] * s
        across = -d[:, 0] * s + d[:, 1] * c
        inside |= (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)
    return inside.reshape(grid.shape)


def _check(conf: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(conf, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if p.shape != y.shape:
        raise ValueError(f"confidences {p.shape} and labels {y.shape} differ in size")
    if len(p) and (np.nanmin(p) < 0 or np.nanmax(p) > 1 or np.isnan(p).any()):
        raise ValueError("confidences must lie in [0, 1]")
    return p, y.astype(bool)


def reliability_bins(conf: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Equal-width bins over [0, 1]: per bin the cell count, mean confidence and the fraction of
    cells holding an object (None where a bin is empty)."""
    p, y = _check(conf, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [None if np.isnan(v) else float(v) for v in mean_p],
        "positive_fraction": [None if np.isnan(v) else float(v) for v in frac],
    }


def expected_calibration_error(conf: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Cell-weighted mean of |mean confidence - positive fraction| over the bins."""
    r = reliability_bins(conf, labels, bins)
    n = sum(r["count"])
    if n == 0:
        return 0.0
    return float(
        sum(
            c * abs(p - f)
            for c, p, f in zip(r["count"], r["confidence"], r["positive_fraction"], strict=True)
            if c
        )
        / n
    )


def _logit(conf: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(conf, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def with_temperature(conf: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(conf) / T)``: T > 1 softens over-confident maps, T < 1 sharpens."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return 1.0 / (1.0 + np.exp(-_logit(conf) / temperature))


def with_platt(conf: np.ndarray, a: float, b: float) -> np.ndarray:
    """``sigmoid(a logit(conf) + b)``: a temperature (``a = 1 / T``) and a shift of the logits."""
    return 1.0 / (1.0 + np.exp(-(a * _logit(conf) + b)))


def fit_platt(conf: np.ndarray, labels: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """``(a, b)`` minimising the cross-entropy of ``with_platt`` (Newton's method on the two
    parameters of a logistic regression on the logit; a shift can fix what a temperature alone
    cannot: a map under-confident everywhere)."""
    p, y = _check(conf, labels)
    if len(p) == 0 or y.all() or not y.any():
        raise ValueError("fitting a calibration needs cells with and without objects")
    x = np.stack([_logit(p), np.ones(len(p))], axis=1)

    def loss(w: np.ndarray) -> float:
        s = x @ w  # cross-entropy from the logits, stable for large |s|
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    w = np.array([1.0, 0.0])
    for _ in range(iters):
        q = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (q - y) / len(p)
        hess = (x * (q * (1 - q))[:, None]).T @ x / len(p) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t, before = 1.0, loss(w)
        while t > 1e-6 and loss(w - t * step) > before:  # damped Newton: never a worse fit
            t /= 2
        w = w - t * step
        if np.abs(t * step).max() < 1e-7:
            break
    return float(w[0]), float(w[1])


def nll(conf: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of the confidences against the labels."""
    p, y = _check(conf, labels)
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def fit_temperature(conf: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature minimising the cross-entropy (golden-section search on log T; the loss is
    convex in 1 / T)."""
    p, y = _check(conf, labels)
    if len(p) == 0 or y.all() or not y.any():
        raise ValueError("fitting a temperature needs cells with and without objects")
    g = (np.sqrt(5) - 1) / 2
    a, b = np.log(lo), np.log(hi)
    for _ in range(60):
        c, d = b - g * (b - a), a + g * (b - a)
        if nll(with_temperature(p, np.exp(c)), y) <= nll(with_temperature(p, np.exp(d)), y):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def fit_isotonic(conf: np.ndarray, labels: np.ndarray, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A monotone map fitted on equal-width bins: knots at each non-empty bin's mean confidence,
    values its positive fraction pooled with neighbours until they rise (pool adjacent violators,
    weighted by cell count). A map of any shape, where a temperature or Platt cannot bend."""
    r = reliability_bins(conf, labels, bins)
    keep = [i for i, c in enumerate(r["count"]) if c]
    if not keep:
        raise ValueError("fitting a calibration needs cells")
    x = np.array([r["confidence"][i] for i in keep])
    blocks = [[r["positive_fraction"][i], float(r["count"][i]), 1] for i in keep]  # value, weight, knots
    merged: list[list[float]] = []
    for b in blocks:
        merged.append(b)
        while len(merged) > 1 and merged[-2][0] > merged[-1][0]:
            v2, w2, n2 = merged.pop()
            v1, w1, n1 = merged.pop()
            merged.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    y = np.concatenate([np.full(int(n), v) for v, _, n in merged])
    return x, y


def with_isotonic(conf: np.ndarray, knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The fitted monotone map, linear between knots and flat beyond them."""
    return np.interp(np.asarray(conf, dtype=np.float64), knots, values)
