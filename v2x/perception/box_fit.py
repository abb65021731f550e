"""Boxes fitted to the points on the car after the network's decode: heading, then the faces seen.

Why: fine-tuned on a few real DAIR-V2X-C scans, the detector finds a new run's cars in the right
places and sizes but reads their headings from what it memorised (the roads it was shown, the
side of the car the rays met) and turns them by tens of degrees; a box turned by 30° misses
IoU 0.5, and one off by 0.3 m across misses 0.7. The outline of a car's points does not depend
on what the network remembers:

1. **Heading.** The points standing on a detected box (within its footprint circle, above the
   ground) are fitted with the rectangle whose edges they hug most closely (the closeness
   criterion of Zhang et al., "Efficient L-shape fitting for vehicle detection using laser
   scanners", IV 2017), searched over a quarter turn in steps of a degree. Which of its two
   edges is the car's length: the one the points spread clearly further along, where that
   spread is longer than a width can be; otherwise (a back, or a short piece of a flank) the
   one nearer the network's heading. The box keeps the network's direction of travel.
2. **Centre.** Along each of the box's axes, a face the sensor looks at has points on it: where
   the sensor lies beyond the points' extent on that axis, the nearer extreme is taken as the
   face and the centre put half the network's size behind it (moved at most
   ``MAX_SHIFT_M``, so a neighbour's points cannot drag a box far). The size is the network's.

Boxes with fewer than the given number of points keep what the network said.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from v2x.core.boxes import wrap_angle

__all__ = ["MAX_SHIFT_M", "fit_boxes", "quarter_turn_axis"]

#: candidate edge directions, one degree apart over a quarter turn (the rectangle repeats there)
_ANGLES = np.radians(np.arange(0.0, 90.0, 1.0))
_DIRECTIONS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)])  # (2, A)
_NORMALS = np.stack([-np.sin(_ANGLES), np.cos(_ANGLES)])
#: distances below this count as on the edge (metres; the criterion's floor, as in the paper)
_MIN_EDGE_DISTANCE = 0.05
#: metres around the box's footprint circle in which points count as the car's
_MARGIN = 0.3
#: points this far (metres) above the box's bottom and up to this far over its top are the car's
_ABOVE_GROUND = 0.3
#: a spread this much (metres) beyond the box's width can only be along the car's length ...
_LENGTH_EVIDENCE = 0.4
#: ... where it is also this much longer than the other side's (far cars' points spread across)
_CLEARLY_LONGER = 1.0
#: the most a box's centre moves onto the faces seen, along its length and across it (metres)
MAX_SHIFT_M = (0.6, 0.4)


def quarter_turn_axis(xy: np.ndarray) -> float:
    """The direction in [0, pi/2) of the rectangle whose edges the 2D points ``xy`` (N, 2) lie
    closest to (closeness criterion: each point scores 1 / its distance to the nearer edge)."""
    along = xy @ _DIRECTIONS  # (N, A)
    across = xy @ _NORMALS
    d_along = np.minimum(along.max(axis=0) - along, along - along.min(axis=0))
    d_across = np.minimum(across.max(axis=0) - across, across - across.min(axis=0))
    closeness = (1.0 / np.maximum(np.minimum(d_along, d_across), _MIN_EDGE_DISTANCE)).sum(axis=0)
    return float(_ANGLES[int(np.argmax(closeness))])


def _length_axis(xy: np.ndarray, axis: float, width: float, heading: float) -> float:
    """Of ``axis`` and ``axis + pi/2``, the car's length direction (modulo pi)."""
    candidates = np.array([axis, axis + np.pi / 2])
    spread = np.array([np.ptp(xy @ np.array([np.cos(c), np.sin(c)])) for c in candidates])
    longer = int(np.argmax(spread))
    if spread[longer] > width + _LENGTH_EVIDENCE and spread[longer] - spread[1 - longer] > _CLEARLY_LONGER:
        return float(candidates[longer])
    off = np.abs((candidates - heading + np.pi / 2) % np.pi - np.pi / 2)
    return float(candidates[int(np.argmin(off))])


def _face_shift(coords: np.ndarray, sensor: float, size: float, limit: float) -> float:
    """How far to move the centre (at 0) along one axis so that the face the sensor sees lies
    on the nearest points: ``coords`` are the points', ``sensor`` the sensor's coordinate."""
    if sensor < coords.min():
        shift = coords.min() + size / 2
    elif sensor > coords.max():
        shift = coords.max() - size / 2
    else:  # the sensor is level with the car on this axis: no face across it is seen
        return 0.0
    return float(np.clip(shift, -limit, limit))


def _sorted_by_x(points: np.ndarray) -> np.ndarray:
    """The points' x, y, z (float64), ordered by x: each box then reads only the slice of points
    level with it instead of the whole scan (tens of thousands of points for a few dozen boxes)."""
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    return pts[np.argsort(pts[:, 0], kind="stable")]


def _points_on(box: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The (x, y) of the points (sorted by x) standing on ``box``, relative to its centre: within
    its footprint circle (and a margin), above the ground, not far over its top."""
    x, y, z, length, width, height = box[:6]
    radius = np.hypot(length, width) / 2 + _MARGIN
    lo, hi = np.searchsorted(pts[:, 0], (x - radius, x + radius))
    level = pts[lo:hi]
    near = np.abs(level[:, 1] - y) < radius
    near &= (level[:, 2] > z - height / 2 + _ABOVE_GROUND) & (level[:, 2] < z + height / 2 + _ABOVE_GROUND)
    xy = level[near, :2] - (x, y)
    return xy[np.hypot(xy[:, 0], xy[:, 1]) < radius]


def fit_boxes(
    xyzlwhy: np.ndarray,
    points: np.ndarray,
    min_points: int,
    sensor_xy: Sequence[float] = (0.0, 0.0),
    centres: bool = True,
) -> np.ndarray:
    """``xyzlwhy`` (N, 7) fitted to ``points`` (M, >= 3, same frame; the sensor at
    ``sensor_xy``) where at least ``min_points`` of them stand on a box: heading, then (with
    ``centres``) the centre on the faces seen. Sizes and heights are not changed."""
    boxes = np.array(xyzlwhy, dtype=np.float64).reshape(-1, 7)
    if not len(boxes) or min_points <= 0:
        return boxes
    pts = _sorted_by_x(points)
    sensor = np.asarray(sensor_xy, dtype=np.float64)[:2]
    for k, (x, y, _z, length, width, _height, heading) in enumerate(boxes):
        xy = _points_on(boxes[k], pts)
        if len(xy) < min_points:
            continue
        length_dir = _length_axis(xy, quarter_turn_axis(xy), width, heading)
        heading = float(wrap_angle(heading + (length_dir - heading + np.pi / 2) % np.pi - np.pi / 2))
        boxes[k, 6] = heading
        if not centres:
            continue
        along = np.array([np.cos(heading), np.sin(heading)])
        across = np.array([-along[1], along[0]])
        seen_from = sensor - (x, y)
        du = _face_shift(xy @ along, seen_from @ along, length, MAX_SHIFT_M[0])
        dv = _face_shift(xy @ across, seen_from @ across, width, MAX_SHIFT_M[1])
        boxes[k, :2] += du * along + dv * across
    return boxes
