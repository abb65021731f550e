"""Motion compensation of late messages: what a collaborator saw ``age`` seconds ago, moved to now.

A message that arrives after its frame's deadline is either dropped or, with the ``compensate``
policy, fused into a later frame. The sender's pose in the message already places the static
world correctly; what moved since are the objects, so each tracked object's part of the message
is shifted by its velocity times the message's age. Velocities come from the ego's tracks (two
consecutive positions of one track id), so nothing here depends on the tracker's internals.

Objects the ego does not track yet are left where the sender saw them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from v2x.core.boxes import Boxes, points_in_boxes
from v2x.core.geometry import inverse
from v2x.core.grid import BEVGrid
from v2x.perception.cooperative import SharedBoxes, SharedFeatures

__all__ = ["MotionModel", "compensate_boxes", "compensate_features", "compensate_points"]


@dataclass
class MotionModel:
    """World-frame boxes of tracked objects at ``stamp_s`` with their velocities (m/s)."""

    boxes: np.ndarray  # (N, 7)
    velocity: np.ndarray  # (N, 2)
    stamp_s: float

    @classmethod
    def empty(cls) -> MotionModel:
        return cls(np.zeros((0, 7)), np.zeros((0, 2)), 0.0)

    @classmethod
    def from_tracks(cls, previous: Boxes, previous_s: float, current: Boxes, current_s: float) -> MotionModel:
        """Velocities from the positions of the same track ids in two consecutive outputs."""
        dt = current_s - previous_s
        if len(current) == 0 or dt <= 0:
            return cls(current.xyzlwhy.copy(), np.zeros((len(current), 2)), current_s)
        prev = {int(t): b for t, b in zip(previous.track_ids, previous.xyzlwhy, strict=True)}
        vel = np.zeros((len(current), 2))
        for i, (t, b) in enumerate(zip(current.track_ids, current.xyzlwhy, strict=True)):
            if int(t) in prev:
                vel[i] = (b[:2] - prev[int(t)][:2]) / dt
        return cls(current.xyzlwhy.copy(), vel, current_s)

    def at(self, t_s: float) -> np.ndarray:
        """The boxes moved (constant velocity) to time ``t_s``."""
        out = self.boxes.copy()
        out[:, :2] += self.velocity * (t_s - self.stamp_s)
        return out

    def moving(self, min_speed: float = 0.5) -> np.ndarray:
        return np.linalg.norm(self.velocity, axis=1) >= min_speed


def _local(model: MotionModel, world_from_frame: np.ndarray, seen_s: float, age_s: float):
    """Moving objects as the sender saw them (its frame) and their displacement since, in its frame."""
    keep = model.moving()
    if not keep.any():
        return np.zeros((0, 7)), np.zeros((0, 2))
    boxes = Boxes(model.at(seen_s)[keep]).transformed(inverse(world_from_frame)).xyzlwhy
    rot = world_from_frame[:2, :2].T
    shift = (rot @ (model.velocity[keep] * age_s).T).T
    return boxes, shift


def compensate_features(
    shared: SharedFeatures, model: MotionModel, seen_s: float, age_s: float, grid: BEVGrid
) -> SharedFeatures:
    """Cells under each moving object moved by its displacement (whole cells), the rest untouched."""
    boxes, shift = _local(model, shared.world_from_bev, seen_s, age_s)
    if len(boxes) == 0:
        return shared
    h, w = grid.shape
    centres = grid.cell_centers().reshape(-1, 2)
    valid = shared.valid.numpy().ravel()
    cells = np.flatnonzero(valid)
    inside = points_in_boxes(np.c_[centres[cells], np.zeros(len(cells))], _flat(boxes), margin=0.4)
    feats = shared.features.reshape(shared.features.shape[0], -1).clone()
    new_valid = torch.from_numpy(valid.copy())
    moved_from, moved_to = [], []
    for j in range(len(boxes)):
        src = cells[inside[:, j]]
        if len(src) == 0:
            continue
        dr, dc = round(float(shift[j, 1]) / grid.cell), round(float(shift[j, 0]) / grid.cell)
        if dr == 0 and dc == 0:
            continue
        r, c = src // w + dr, src % w + dc
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        moved_from.append(src)
        moved_to.append((src[ok], r[ok] * w + c[ok]))
    if not moved_from:
        return shared
    original = feats.clone()
    for src in moved_from:
        feats[:, src] = 0.0
        new_valid[src] = False
    for src, dst in moved_to:
        feats[:, dst] = original[:, src]
        new_valid[dst] = True
    return SharedFeatures(
        shared.agent_id,
        shared.world_from_bev,
        feats.reshape(shared.features.shape),
        new_valid.reshape(h, w),
        shared.timestamp_ns,
    )


def _flat(boxes: np.ndarray) -> np.ndarray:
    """Boxes made tall, so a cell centre at z = 0 tests only the footprint."""
    out = boxes.copy()
    out[:, 2] = 0.0
    out[:, 5] = 1e3
    return out


def compensate_boxes(shared: SharedBoxes, model: MotionModel, seen_s: float, age_s: float) -> SharedBoxes:
    """Each received box whose centre lies in a moving object's box moved by that object's displacement."""
    boxes, shift = _local(model, shared.world_from_bev, seen_s, age_s)
    if len(boxes) == 0 or len(shared.boxes) == 0:
        return shared
    inside = points_in_boxes(
        np.c_[shared.boxes.xyzlwhy[:, :2], np.zeros(len(shared.boxes))], _flat(boxes), margin=1.0
    )
    xyz = shared.boxes.xyzlwhy.copy()
    hit = inside.any(axis=1)
    xyz[hit, :2] += shift[inside[hit].argmax(axis=1)]
    b = shared.boxes
    return SharedBoxes(
        shared.agent_id, shared.world_from_bev, Boxes(xyz, b.labels, b.track_ids, b.scores), shared.variances
    )


def compensate_points(
    points: np.ndarray, world_from_lidar: np.ndarray, model: MotionModel, seen_s: float, age_s: float
) -> np.ndarray:
    """Points on moving objects (sensor frame) moved by each object's displacement."""
    keep = model.moving()
    if not keep.any() or len(points) == 0:
        return points
    lidar_from_world = inverse(world_from_lidar)
    boxes = Boxes(model.at(seen_s)[keep]).transformed(lidar_from_world).xyzlwhy
    rot = lidar_from_world[:3, :3]
    shift = (rot @ np.c_[model.velocity[keep] * age_s, np.zeros(keep.sum())].T).T
    inside = points_in_boxes(points[:, :3], boxes, margin=0.2)
    out = points.copy()
    hit = inside.any(axis=1)
    out[hit, :3] += shift[inside[hit].argmax(axis=1)].astype(out.dtype)
    return out
