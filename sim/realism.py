"""Measures of how believable the simulated logs are, shared by the generator's summary, the
tests and ``bench/bench_sim.py``: point counts and range histograms against real scans, the
share of vehicles only collaborators see (occlusion), overlaps between objects, and whether
headings follow motion. :func:`compare_scans` sets simulated scans beside real ones (points per
scan, beams from the ring structure, elevations, height of the ground, ranges, intensity), as
``v2x sim realism`` prints it for DAIR-V2X-C.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from v2x.core.boxes import VEHICLE_CLASSES, ObjectClass, wrap_angle
from v2x.core.frame import AgentKind, Frame
from v2x.core.iou import bev_iou_matrix

__all__ = [
    "LONG_RANGE_BINS",
    "RANGE_BINS",
    "Occlusion",
    "compare_scans",
    "ground_height",
    "heading_errors",
    "occlusion",
    "overlapping_pairs",
    "range_histogram",
    "ring_elevations",
    "rings",
    "scan_stats",
    "wasserstein",
]

#: range bins (m) for comparing scans with the real OPV2V samples
RANGE_BINS = np.array([0, 5, 10, 15, 20, 30, 40, 60, 80, 100, 120], dtype=np.float64)
#: range bins (m) for DAIR-V2X-C's longer-reaching sensors (200 and 300 m)
LONG_RANGE_BINS = np.array([0, 5, 10, 15, 20, 30, 40, 60, 80, 100, 120, 150, 200, 300], dtype=np.float64)
#: elevation bins (degrees, 1 degree wide) for comparing the vertical spread of scans
ELEVATION_BINS = np.arange(-30.0, 21.0, 1.0)
QUANTILES = (5, 25, 50, 75, 95)


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


def _elevation_deg(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points)
    return np.degrees(np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1])))


def _peaks(values: np.ndarray, resolution: float, window: float, min_count: int) -> np.ndarray:
    """Centres of the histogram bins that are the largest within +-``window`` and hold at
    least ``min_count`` values."""
    bins = np.arange(-90.0, 90.0 + resolution, resolution)
    h = np.histogram(values, bins)[0]
    w = round(window / resolution)
    padded = np.pad(h, w)
    local_max = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1).max(axis=1)
    return bins[:-1][(h == local_max) & (h >= min_count)] + resolution / 2


def rings(points: np.ndarray, sector_deg: float = 20.0, min_points: int = 200) -> tuple[int, float]:
    """A scan's beams from its ring structure: (beams, share of points on a ring).

    Elevations are histogrammed per azimuth sector (0.02 degree bins; within a narrow sector a
    ring stays sharp even where motion compensation bends it over a sweep), the peaks counted,
    and ``beams`` is the median count over the sectors holding points. The share of points
    within 0.04 degrees of a peak tells rings from none: near 1 for a spinning LiDAR, under
    about 0.5 for a scanner without rings, whose peaks are noise — ``beams`` is 0 then.
    """
    p = np.asarray(points)
    el = _elevation_deg(p)
    az = np.degrees(np.arctan2(p[:, 1], p[:, 0]))
    counts, on_ring, total = [], 0, 0
    for lo in np.arange(-180.0, 180.0, sector_deg):
        m = (az >= lo) & (az < lo + sector_deg)
        if m.sum() < min_points:
            continue
        pk = _peaks(el[m], 0.02, 0.1, 5)
        counts.append(len(pk))
        if len(pk):
            on_ring += int((np.abs(el[m][:, None] - pk[None, :]).min(axis=1) <= 0.04).sum())
        total += int(m.sum())
    share = on_ring / max(total, 1)
    return (int(np.median(counts)) if counts and share >= 0.75 else 0), float(share)


def ring_elevations(scans: Sequence[np.ndarray], min_range: float = 3.0) -> np.ndarray:
    """Elevations (degrees) where the points of ``scans`` beyond ``min_range`` metres pile up:
    the peaks of their 0.02 degree histogram (each the largest within +-0.1 degrees, holding
    at least 0.01 % of the points). A spinning LiDAR's beams are among them; lower beams may
    show satellites where motion compensation bends a ring at short range."""
    p = np.concatenate([np.asarray(s)[:, :3] for s in scans])
    p = p[np.linalg.norm(p, axis=1) > min_range]
    return _peaks(_elevation_deg(p), 0.02, 0.1, max(5, len(p) // 10_000))


def ground_height(points: np.ndarray, near: tuple[float, float] = (5.0, 20.0)) -> float:
    """Height (z) of the ground in a scan's frame: the most common z, in 5 cm bins, of the points
    ``near[0]..near[1]`` metres away horizontally, refined by their median within 15 cm.
    NaN when none are that near."""
    p = np.asarray(points)
    d = np.hypot(p[:, 0], p[:, 1])
    z = p[(d >= near[0]) & (d <= near[1]), 2]
    if len(z) < 50:
        return float("nan")
    bins = np.arange(np.floor(z.min() * 20) / 20, z.max() + 0.1, 0.05)
    h = np.histogram(z, bins)[0]
    mode = bins[int(np.argmax(h))] + 0.025
    return float(np.median(z[np.abs(z - mode) <= 0.15]))


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between two 1-D samples: the mean gap between their quantile
    functions (999 quantiles)."""
    u = np.linspace(0.05, 99.95, 999)
    return float(np.mean(np.abs(np.percentile(a, u) - np.percentile(b, u))))


def _share(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    return np.histogram(values, bins)[0] / max(len(values), 1)


def scan_stats(scans: Sequence[np.ndarray]) -> dict:
    """What :func:`compare_scans` compares, for one set of (N, 4) scans in their sensor's frame."""
    if not scans:
        raise ValueError("no scans to measure")
    pts = np.concatenate([np.asarray(s)[:, :4] for s in scans])
    n = np.array([len(s) for s in scans])
    ring = [rings(s) for s in scans]
    rng = np.linalg.norm(pts[:, :3], axis=1)
    el = _elevation_deg(pts)
    ground = np.array([ground_height(s) for s in scans])
    return {
        "scans": len(scans),
        "points_per_scan": {"mean": float(n.mean()), "min": int(n.min()), "max": int(n.max())},
        "beams": int(np.median([b for b, _ in ring])),
        "on_ring_share": float(np.mean([r for _, r in ring])),
        "elevation_deg": {
            f"p{q}": float(v) for q, v in zip((1, 50, 99), np.percentile(el, (1, 50, 99)), strict=True)
        },
        "elevation_hist": _share(el, ELEVATION_BINS).tolist(),
        "ground_z": float(np.nanmedian(ground)) if np.isfinite(ground).any() else float("nan"),
        "range_m": {f"p{q}": float(v) for q, v in zip(QUANTILES, np.percentile(rng, QUANTILES), strict=True)},
        "range_hist": _share(rng, LONG_RANGE_BINS).tolist(),
        "intensity": {
            f"p{q}": float(v) for q, v in zip(QUANTILES, np.percentile(pts[:, 3], QUANTILES), strict=True)
        },
    }


def compare_scans(real: Sequence[np.ndarray], sim: Sequence[np.ndarray]) -> dict:
    """Real and simulated scans side by side, plus how far apart they are: points per scan
    (sim / real), the overlap of their range and elevation histograms (the shared share, 1 =
    identical), and earth mover's distances of range (m), elevation (degrees) and intensity."""
    r, s = scan_stats(real), scan_stats(sim)

    def pooled(scans, f, cap=400_000):
        v = np.concatenate([f(np.asarray(x)) for x in scans])
        return v[:: max(1, len(v) // cap)]

    def ranges(p):
        return np.linalg.norm(p[:, :3], axis=1)

    def overlap(key):
        return float(np.minimum(r[key], s[key]).sum())

    return {
        "real": r,
        "sim": s,
        "points_ratio": s["points_per_scan"]["mean"] / r["points_per_scan"]["mean"],
        "range_overlap": overlap("range_hist"),
        "elevation_overlap": overlap("elevation_hist"),
        "range_emd_m": wasserstein(pooled(real, ranges), pooled(sim, ranges)),
        "elevation_emd_deg": wasserstein(pooled(real, _elevation_deg), pooled(sim, _elevation_deg)),
        "intensity_emd": wasserstein(pooled(real, lambda p: p[:, 3]), pooled(sim, lambda p: p[:, 3])),
    }
