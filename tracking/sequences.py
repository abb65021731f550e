"""Running trackers over whole sequences and scoring them, on detections already in memory
(reading and writing files is :mod:`v2x.experiments.tracking_files`'s job).

Scores and ground truth are compared in the ego's frame, ego being the first agent of every
frame, as V2V4Real evaluates in the ego LiDAR frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

from v2x.core.boxes import VEHICLE_CLASSES, Boxes
from v2x.core.geometry import inverse
from v2x.core.grid import DEFAULT_XY_RANGE
from v2x.tracking.ab3dmot import AB3DMOT
from v2x.tracking.config import TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.metrics import TrackingSequence, evaluate_tracking
from v2x.tracking.records import FrameDetections
from v2x.tracking.tracker import Tracker

__all__ = [
    "EGO_RANGE",
    "TRACKERS",
    "ego_sequence",
    "evaluate_runs",
    "make_tracker",
    "run_tracker",
    "to_ego",
]

#: tracks and ground truth are scored within this ego-frame area (x0, y0, x1, y1), metres
EGO_RANGE = DEFAULT_XY_RANGE
TRACKERS = ("ab3dmot", "ab3dmot-ego", "dmstrack")


def make_tracker(name: str, cfg: TrackerConfig | None = None, noise=None) -> Tracker:
    """``ab3dmot`` (all agents' boxes as one stream), ``ab3dmot-ego`` (the ego's boxes only) or
    ``dmstrack`` (agents one after another, per-detection noise)."""
    if name in ("ab3dmot", "ab3dmot-ego"):
        return AB3DMOT(cfg)
    if name == "dmstrack":
        return MultiSensorKF(cfg, noise=noise)
    raise ValueError(f"unknown tracker {name!r}: use one of {TRACKERS}")


def _timing_for(frames: list[FrameDetections], cfg: TrackerConfig) -> TrackerConfig:
    """The configuration with ``timing="timestamps"`` when the frames' time stamps contradict the
    nominal frame period (a log recorded at another rate), else unchanged."""
    if cfg.timing == "timestamps" or len(frames) < 2:
        return cfg
    t = np.array([f.timestamp_ns for f in frames], dtype=np.float64)
    n = np.array([f.frame for f in frames], dtype=np.float64)
    if (t < 0).any() or (np.diff(t) <= 0).any() or (np.diff(n) <= 0).any():
        return cfg
    measured = np.median(np.diff(t) / np.diff(n)) * 1e-9
    if abs(measured - cfg.dt) > 0.2 * cfg.dt:
        warnings.warn(
            f"frames are {measured:.3f} s apart, not {cfg.dt} s: tracking on their time stamps", stacklevel=3
        )
        return cfg.with_(timing="timestamps")
    return cfg


def run_tracker(name: str, frames: Iterable[FrameDetections], cfg=None, noise=None) -> dict[int, Boxes]:
    """World-frame tracks per frame number (time steps from the frame numbers at the nominal
    10 Hz, or from the time stamps when those say otherwise)."""
    frames = list(frames)
    if cfg is None and noise is not None and name == "dmstrack":
        cfg = TrackerConfig()
    cfg = _timing_for(frames, cfg or TrackerConfig())
    tracker = make_tracker(name, cfg, noise)
    out = {}
    for f in frames:
        out[f.frame] = tracker.step(f.ego_only() if name == "ab3dmot-ego" else f).boxes
    return out


def to_ego(boxes_world: Boxes, world_from_ego: np.ndarray, xy_range=EGO_RANGE) -> Boxes:
    """Boxes written in the ego's frame, restricted to the evaluation area."""
    local = boxes_world.transformed(inverse(world_from_ego))
    return local[local.in_range(xy_range)]


def ego_sequence(name: str, frames: list[FrameDetections], tracks: dict[int, Boxes], xy_range=EGO_RANGE):
    """A :class:`TrackingSequence` in the ego frame (frames renumbered from 0)."""
    gt, trk = {}, {}
    for k, f in enumerate(frames):
        pose = f.agents[0].world_from_agent if f.agents else np.eye(4)
        if f.gt is not None:
            g = f.gt[f.gt.of_classes(VEHICLE_CLASSES)]
            gt[k] = to_ego(g, pose, xy_range)
        trk[k] = to_ego(tracks.get(f.frame, Boxes.empty(with_scores=True)), pose, xy_range)
    return TrackingSequence(name, len(frames), gt, trk)


def evaluate_runs(sequences: list[TrackingSequence]) -> dict:
    """Both modes: the comparable figures at the top level, the strict ones under ``"strict"``."""
    out = evaluate_tracking(sequences, mode="comparable")
    out["strict"] = evaluate_tracking(sequences, mode="strict")
    return out
