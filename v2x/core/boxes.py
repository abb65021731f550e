"""Oriented 3D boxes ``(x, y, z, l, w, h, yaw)`` with class, track id and score beside them.

(x, y, z) is the geometric centre; l runs along the heading, w across it, h up. Yaw is CCW
from +x in the frame the boxes are written in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from v2x.core.geometry import transform_points

__all__ = [
    "VEHICLE_CLASSES",
    "Boxes",
    "ObjectClass",
    "bev_corners",
    "box_corners",
    "class_from_name",
    "points_in_boxes",
    "wrap_angle",
]


class ObjectClass(IntEnum):
    """One taxonomy for every data set; loaders map their names onto it."""

    CAR = 0
    VAN = 1
    TRUCK = 2
    BUS = 3
    PEDESTRIAN = 4
    CYCLIST = 5
    OTHER = 6


#: The papers evaluate "vehicle" detection: these classes count as vehicles.
VEHICLE_CLASSES = frozenset({ObjectClass.CAR, ObjectClass.VAN, ObjectClass.TRUCK, ObjectClass.BUS})

_NAME_TO_CLASS = {
    "car": ObjectClass.CAR,
    "vehicle": ObjectClass.CAR,
    "van": ObjectClass.VAN,
    "truck": ObjectClass.TRUCK,
    "bus": ObjectClass.BUS,
    "pedestrian": ObjectClass.PEDESTRIAN,
    "cyclist": ObjectClass.CYCLIST,
    "bicycle": ObjectClass.CYCLIST,
    "motorcyclist": ObjectClass.CYCLIST,
    "tricyclist": ObjectClass.CYCLIST,
}


def class_from_name(name: str) -> ObjectClass:
    """Map a data set's class name (any case) to :class:`ObjectClass`; unknown names are OTHER."""
    return _NAME_TO_CLASS.get(str(name).strip().lower(), ObjectClass.OTHER)


def wrap_angle(a: np.ndarray | float) -> np.ndarray | float:
    """Wrap to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


@dataclass
class Boxes:
    """A set of N boxes. Arrays share the first dimension; ``scores`` is None for ground truth."""

    xyzlwhy: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyzlwhy = np.asarray(self.xyzlwhy, dtype=np.float64).reshape(-1, 7)
        n = len(self.xyzlwhy)
        # boxes given without classes or track ids are OTHER, with unknown (-1) ids
        if self.labels is None or (np.size(self.labels) == 0 and n):
            self.labels = np.full(n, int(ObjectClass.OTHER), dtype=np.int16)
        self.labels = np.broadcast_to(np.asarray(self.labels, dtype=np.int16), (n,)).copy()
        if self.track_ids is None or (np.size(self.track_ids) == 0 and n):
            self.track_ids = np.full(n, -1, dtype=np.int64)
        self.track_ids = np.broadcast_to(np.asarray(self.track_ids, dtype=np.int64), (n,)).copy()
        if self.scores is not None:
            self.scores = np.broadcast_to(np.asarray(self.scores, dtype=np.float32), (n,)).copy()

    @classmethod
    def empty(cls, with_scores: bool = False) -> Boxes:
        return cls(scores=np.zeros(0, np.float32) if with_scores else None)

    @classmethod
    def concat(cls, parts: Iterable[Boxes]) -> Boxes:
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls.empty()
        with_scores = all(p.scores is not None for p in parts)
        return cls(
            np.concatenate([p.xyzlwhy for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.track_ids for p in parts]),
            np.concatenate([p.scores for p in parts]) if with_scores else None,
        )

    def __len__(self) -> int:
        return len(self.xyzlwhy)

    def __getitem__(self, idx) -> Boxes:
        return Boxes(
            self.xyzlwhy[idx],
            self.labels[idx],
            self.track_ids[idx],
            None if self.scores is None else self.scores[idx],
        )

    @property
    def centers(self) -> np.ndarray:
        return self.xyzlwhy[:, :3]

    @property
    def sizes(self) -> np.ndarray:
        return self.xyzlwhy[:, 3:6]

    @property
    def yaws(self) -> np.ndarray:
        return self.xyzlwhy[:, 6]

    def transformed(self, T: np.ndarray) -> Boxes:
        """The same boxes written in another frame: ``T`` maps the current frame into the new one.

        Boxes stay upright: the heading change is the rotation's yaw, which is exact for
        transforms about z and the usual approximation for small roll and pitch.
        """
        out = self.copy()
        if len(self) == 0:
            return out
        out.xyzlwhy[:, :3] = transform_points(T, self.xyzlwhy[:, :3])
        out.xyzlwhy[:, 6] = wrap_angle(self.xyzlwhy[:, 6] + np.arctan2(T[1, 0], T[0, 0]))
        return out

    def copy(self) -> Boxes:
        return Boxes(
            self.xyzlwhy.copy(),
            self.labels.copy(),
            self.track_ids.copy(),
            None if self.scores is None else self.scores.copy(),
        )

    def in_range(self, xy_range: tuple[float, float, float, float]) -> np.ndarray:
        """Mask of boxes whose centre lies in ``(x_min, y_min, x_max, y_max)``."""
        x0, y0, x1, y1 = xy_range
        c = self.xyzlwhy
        return (c[:, 0] >= x0) & (c[:, 0] <= x1) & (c[:, 1] >= y0) & (c[:, 1] <= y1)

    def of_classes(self, classes: Iterable[int]) -> np.ndarray:
        return np.isin(self.labels, np.fromiter((int(c) for c in classes), dtype=np.int16))

    def finite(self) -> np.ndarray:
        """Mask of boxes with finite values and positive sizes."""
        return np.all(np.isfinite(self.xyzlwhy), axis=1) & np.all(self.xyzlwhy[:, 3:6] > 0, axis=1)


def bev_corners(xyzlwhy: np.ndarray) -> np.ndarray:
    """(N, 4, 2) BEV corners in counter-clockwise order: front-left, rear-left, rear-right, front-right."""
    b = np.asarray(xyzlwhy, dtype=np.float64).reshape(-1, 7)
    half_l, half_w = b[:, 3:4] / 2, b[:, 4:5] / 2
    # local corners CCW: front-left, rear-left, rear-right, front-right
    lx = np.concatenate([half_l, -half_l, -half_l, half_l], axis=1)
    ly = np.concatenate([half_w, half_w, -half_w, -half_w], axis=1)
    c, s = np.cos(b[:, 6:7]), np.sin(b[:, 6:7])
    x = b[:, 0:1] + c * lx - s * ly
    y = b[:, 1:2] + s * lx + c * ly
    return np.stack([x, y], axis=-1)


def box_corners(xyzlwhy: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners: the 4 BEV corners at the bottom, then the same 4 at the top."""
    b = np.asarray(xyzlwhy, dtype=np.float64).reshape(-1, 7)
    xy = bev_corners(b)
    zb = (b[:, 2] - b[:, 5] / 2)[:, None, None]
    zt = (b[:, 2] + b[:, 5] / 2)[:, None, None]
    bottom = np.concatenate([xy, np.broadcast_to(zb, (len(b), 4, 1))], axis=2)
    top = np.concatenate([xy, np.broadcast_to(zt, (len(b), 4, 1))], axis=2)
    return np.concatenate([bottom, top], axis=1)


def points_in_boxes(points: np.ndarray, xyzlwhy: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(N_points, N_boxes) bool: which points lie inside which (upright) box.

    Points are first culled per box by a circle around the box, so this stays cheap
    for a full LiDAR scan against tens of boxes.
    """
    pts = np.asarray(points)[:, :3].astype(np.float64)
    b = np.asarray(xyzlwhy, dtype=np.float64).reshape(-1, 7)
    out = np.zeros((len(pts), len(b)), dtype=bool)
    if len(pts) == 0 or len(b) == 0:
        return out
    radius = np.hypot(b[:, 3], b[:, 4]) / 2 + margin
    for j in range(len(b)):
        d = pts[:, :2] - b[j, :2]
        near = np.flatnonzero((np.abs(d[:, 0]) <= radius[j]) & (np.abs(d[:, 1]) <= radius[j]))
        if near.size == 0:
            continue
        c, s = np.cos(b[j, 6]), np.sin(b[j, 6])
        local_x = c * d[near, 0] + s * d[near, 1]
        local_y = -s * d[near, 0] + c * d[near, 1]
        dz = pts[near, 2] - b[j, 2]
        inside = (
            (np.abs(local_x) <= b[j, 3] / 2 + margin)
            & (np.abs(local_y) <= b[j, 4] / 2 + margin)
            & (np.abs(dz) <= b[j, 5] / 2 + margin)
        )
        out[near[inside], j] = True
    return out
