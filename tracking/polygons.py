"""Areas the association needs for many box pairs at once, with no per-pair Python and no sort.

Intersection, by Green's theorem: the outline of A inside B plus the outline of B inside A,
each edge cut to the part inside the other box (Cyrus-Beck: the parameter interval left by the
other box's four edge lines), integrated in closed form. Every pair and every edge at once, a
few dozen array operations in all. An edge lying exactly on the other box's edge line is
counted once if the two run the same way (A's copy) and not at all if they run opposite ways
(boxes touching), so shared and touching sides come out right. An edge within ``_NEAR`` of a
line without lying on it makes the cut ill-conditioned; those few pairs are redone by clipping.

Clipping (the robust fallback): box A is clipped by each of box B's four edge lines in turn, and
a vertex outside a line is moved onto it instead of dropped. That map is the nearest-point
projection onto the half-plane; it is affine on either side, so the clipped polygon is exactly
the image of A's outline, and the projection keeps the winding number of every point inside
the half-plane and zeroes it outside. The shoelace area of the result is therefore the area of
A inside B, whatever the degeneracy: the collinear spikes the projection leaves add nothing. No
vertex is dropped, so every pair keeps the same vertex count (4, 8, 16, 32, 64 after each line)
and the whole batch stays one array.

Convex hull of the eight corners: shapely's vectorised hull, one call for all pairs.
"""

from __future__ import annotations

import numpy as np
import shapely

__all__ = ["convex_hull_area", "intersection_area"]

#: cyclic index shifts for the vertex counts the clipping goes through
_PREV = {v: (np.arange(v) - 1) % v for v in (4, 8, 16, 32, 64)}
_NEXT = {v: (np.arange(v) + 1) % v for v in (4, 8, 16, 32, 64)}
_EDGE_END = np.array([1, 2, 3, 0])
#: which outline is B's: an edge of B on a line of A is never counted (A's copy is)
_IS_B = np.array([False, True])[None, :, None, None]
#: metres: an edge this close to a line of the other box, both ends, but not on it, is clipped
_NEAR = 1e-7


def intersection_area(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """(P,) area of ``qa[i]`` inside ``qb[i]`` for counter-clockwise convex quads (P, 4, 2)."""
    qa = np.asarray(qa, dtype=np.float64)
    qb = np.asarray(qb, dtype=np.float64)
    n = len(qa)
    if n == 0:
        return np.zeros(0)
    # complex points; u[:, 0] is A and u[:, 1] is B, each cut by the other (w), relative to B
    u = np.empty((n, 2, 4), dtype=complex)
    u.real[:, 0], u.imag[:, 0] = qa[..., 0], qa[..., 1]
    u.real[:, 1], u.imag[:, 1] = qb[..., 0], qb[..., 1]
    u -= u[:, 1:, :1]
    w = u[:, ::-1]
    d = u[:, :, _EDGE_END] - u  # the edges being cut
    ec = (w[:, :, _EDGE_END] - w).conj()  # the cutting lines' directions, conjugated
    # side[p, k, i, l] >= 0: vertex i of outline k is inside line l of the other box
    side = (ec[:, :, None, :] * u[:, :, :, None]).imag - (ec * w).imag[:, :, None, :]
    side1 = side[:, :, _EDGE_END]  # the same for each edge's far end
    rate = side1 - side
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -side / rate
    t_in = np.where(rate > 0, t, 0.0).max(axis=3)
    t_out = np.where(rate < 0, t, 1.0).min(axis=3)
    flat = rate == 0
    on = flat & (side == 0)
    opposite = (d.conj()[:, :, :, None] * ec.conj()[:, :, None, :]).real < 0
    gone = ((flat & (side < 0)) | (on & (_IS_B | opposite))).any(axis=3)
    kept = np.where(gone, 0.0, np.maximum(t_out - t_in, 0.0))
    area = 0.5 * (kept * (u.conj() * d).imag).sum(axis=(1, 2))
    near = _NEAR * np.abs(ec)[:, :, None, :]
    shaky = ((np.abs(side) <= near) & (np.abs(side1) <= near) & ~on).any(axis=(1, 2, 3))
    if shaky.any():
        area[shaky] = _clipped_area(qa[shaky], qb[shaky])
    return np.maximum(area, 0.0)


def _clipped_area(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """(P,) area of ``qa[i]`` inside ``qb[i]`` by clipping (robust to every degeneracy)."""
    qa = np.asarray(qa, dtype=np.float64)
    qb = np.asarray(qb, dtype=np.float64)
    n = len(qa)
    if n == 0:
        return np.zeros(0)
    # complex points (x + iy): half the array operations; coordinates relative to a corner of B
    q = qb[..., 0] + 1j * qb[..., 1]
    ref = q[:, :1]
    v = qa[..., 0] + 1j * qa[..., 1] - ref
    q = q - ref
    d = q[:, _EDGE_END] - q  # B's edges
    dc = d.conj()
    c = (dc * q).imag  # a point p is inside edge e when Im(conj(d_e) p) - c_e >= 0
    to_line = 1j * d / (d.real**2 + d.imag**2)  # times the (negative) side: onto the line
    with np.errstate(divide="ignore", invalid="ignore"):
        for e in range(4):
            side = (v * dc[:, e : e + 1]).imag - c[:, e : e + 1]
            moved = v - to_line[:, e : e + 1] * np.minimum(side, 0.0)
            prv = _PREV[v.shape[1]]
            p_side, p_v = side[:, prv], v[:, prv]
            crosses = (p_side >= 0) != (side >= 0)
            # before each vertex: where the edge into it crosses the line, else the previous output
            before = np.where(crosses, p_v + (p_side / (p_side - side)) * (v - p_v), moved[:, prv])
            v = np.empty((n, 2 * v.shape[1]), dtype=complex)
            v[:, 0::2], v[:, 1::2] = before, moved
    area = 0.5 * (v.conj() * v[:, _NEXT[v.shape[1]]]).imag.sum(axis=1)
    return np.maximum(area, 0.0)


def convex_hull_area(points: np.ndarray) -> np.ndarray:
    """(P,) area of the convex hull of each set of points (P, M, 2), by shapely's vectorised
    hull (faster here than any numpy formulation we tried for eight corners)."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) == 0:
        return np.zeros(0)
    return shapely.area(shapely.convex_hull(shapely.multipoints(pts)))
