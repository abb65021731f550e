"""Measures of how believable the simulated logs are, shared by the generator's summary, the
tests and ``bench/bench_sim.py``: point counts and range histograms against real scans, the
share of vehicles only collaborators see (occlusion), overlaps between objects, and whether
headings follow motion.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from v2x.core.boxes import VEHICLE_CLASSES, ObjectClass, wrap_angle
from v2x.core.frame import AgentKind, Frame
from v2x.core.iou import bev_iou_matrix

__all__ = [
    "RANGE_BINS",
    "Occlusion",
    "heading_errors",
    "occlusion",
    "overlapping_pairs",
    "range_histogram",
]

#: range bins (m) for comparing scans with the real OPV2V samples
RANGE_BINS = np.array([0, 5, 10, 15, 20, 30, 40, 60, 80, 100, 120], dtype=np.float64)


def range_histogram(points: np.ndarray, bins: np.ndarray = RANGE_BINS) -> np.ndarray:
    """Share of a scan's points per range bin (distance from the sensor)."""
    d = np.linalg.norm(np.asarray(points)[:, :3], axis=1)
    counts = np.histogram(d, bins)[0]
    return counts / max(len(d), 1)


@dataclass
class Occlusion:
    """Ground-truth vehicles within ``radius`` of the ego (the ego itself left out)."""

    near: int = 0
    #: of those, how many have no point of the ego's LiDAR
    hidden: int = 0
    #: of the hidden ones, how many have a point of another agent's LiDAR
    seen_by_others: int = 0

    def __add__(self, other: Occlusion) -> Occlusion:
        return Occlusion(
            self.near + other.near,
            self.hidden + other.hidden,
            self.seen_by_others + other.seen_by_others,
        )

    @property
    def share_seen_only_by_others(self) -> float:
        return self.seen_by_others / max(self.near, 1)

    @property
    def share_hidden(self) -> float:
        return self.hidden / max(self.near, 1)


def occlusion(frame: Frame, radius: float = 50.0) -> Occlusion:
    """What cooperation can add in one frame: vehicles near the ego that its LiDAR misses
    but another agent's hits (hit counts from the log when recorded, else points in boxes)."""
    gt = frame.gt
    if len(gt) == 0:
        return Occlusion()
    vehicle = np.isin(gt.labels, [int(c) for c in VEHICLE_CLASSES])
    if frame.ego.kind == AgentKind.VEHICLE and frame.ego_id.lstrip("-").isdigit():
        vehicle &= gt.track_ids != int(frame.ego_id)
    d = np.hypot(*(gt.xyzlwhy[:, :2] - frame.ego.position[:2]).T)
    near = vehicle & (d < radius)
    counts = frame.points_per_gt_box()
    ego_hits = counts[frame.ego_id][near]
    others = [c[near] for a, c in counts.items() if a != frame.ego_id]
    other_hits = np.sum(others, axis=0) if others else np.zeros_like(ego_hits)
    hidden = ego_hits == 0
    return Occlusion(int(near.sum()), int(hidden.sum()), int((hidden & (other_hits > 0)).sum()))


def overlapping_pairs(frame: Frame) -> list[tuple[int, int, float]]:
    """Pairs of ground-truth objects whose footprints overlap: (track id, track id, BEV IoU)."""
    b = frame.gt.xyzlwhy
    if len(b) < 2:
        return []
    iou = bev_iou_matrix(b, b)
    i, j = np.nonzero(np.triu(iou, k=1) > 0)
    ids = frame.gt.track_ids
    return [(int(ids[a]), int(ids[c]), float(iou[a, c])) for a, c in zip(i, j, strict=True)]


def heading_errors(frames: Iterable[Frame], min_move: float = 0.3) -> np.ndarray:
    """Angle (rad) between each object's heading and its direction of motion between
    consecutive frames, for every non-pedestrian that moved more than ``min_move`` metres."""
    out = []
    for a, b in itertools.pairwise(frames):
        index = {int(t): i for i, t in enumerate(a.gt.track_ids)}
        for j, t in enumerate(b.gt.track_ids):
            i = index.get(int(t))
            if i is None or b.gt.labels[j] == ObjectClass.PEDESTRIAN:
                continue
            d = b.gt.xyzlwhy[j, :2] - a.gt.xyzlwhy[i, :2]
            if np.hypot(*d) <= min_move:
                continue
            # the heading at the middle of the step: the mean of the two (through the short way)
            mid = a.gt.xyzlwhy[i, 6] + wrap_angle(b.gt.xyzlwhy[j, 6] - a.gt.xyzlwhy[i, 6]) / 2
            out.append(float(wrap_angle(np.arctan2(d[1], d[0]) - mid)))
    return np.abs(np.array(out))
