"""Running trackers over whole sequences and scoring them: what ``v2x track`` and
``v2x eval tracking`` do, usable from Python too.

Files: AB3DMOT's per-sequence detection text and KITTI-tracking text are read and written by
:mod:`v2x.datasets.kitti_tracking` (the datasets team's module; V2V4Real's ``x, z, y`` column
order is its ``order="xzy"``, the default). Multi-agent detections are ``.npz`` records
(:mod:`v2x.tracking.records`). Scores and ground truth are compared in the ego's frame, ego being
the first agent of every frame, as V2V4Real evaluates in the ego LiDAR frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from v2x.core.boxes import VEHICLE_CLASSES, Boxes
from v2x.core.geometry import inverse
from v2x.tracking.ab3dmot import AB3DMOT
from v2x.tracking.config import TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.metrics import TrackingSequence, evaluate_tracking
from v2x.tracking.records import AgentDetections, FrameDetections, load_sequence, record_files

__all__ = [
    "EGO_RANGE",
    "evaluate_dirs",
    "evaluate_runs",
    "make_tracker",
    "run_tracker",
    "to_ego",
    "track_dir",
]

#: tracks and ground truth are scored within this ego-frame area (x0, y0, x1, y1), metres
EGO_RANGE = (-70.4, -40.0, 70.4, 40.0)
TRACKERS = ("ab3dmot", "ab3dmot-ego", "dmstrack")


def make_tracker(name: str, cfg: TrackerConfig | None = None, noise=None):
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
        if name == "dmstrack":
            out[f.frame] = tracker.step(f).boxes
        else:
            dets = f.agents[0].boxes if name == "ab3dmot-ego" and f.agents else f.fused()
            out[f.frame] = tracker.step(dets, f.frame, f.timestamp_ns)
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


# -- files ------------------------------------------------------------------------------------------


def _single_stream(frames: dict[int, Boxes], n: int) -> list[FrameDetections]:
    return [
        FrameDetections(
            f,
            f * 100_000_000,
            [AgentDetections("ego", "vehicle", np.eye(4), frames.get(f, Boxes.empty(True)))],
        )
        for f in range(n)
    ]


def track_dir(
    detections: Path,
    out: Path,
    tracker: str = "ab3dmot",
    cfg: TrackerConfig | None = None,
    noise=None,
    order: str = "xzy",
    seqmap: Path | None = None,
) -> list[Path]:
    """Track every sequence of a folder and write KITTI-tracking text, one file per sequence.

    Inputs: AB3DMOT detection files (``NNNN.txt``, one stream, boxes in the ego frame) or our
    ``.npz`` multi-agent records (results written in each frame's ego frame). ``seqmap`` gives
    sequence lengths (otherwise: up to the last frame with a detection).
    """
    from v2x.datasets.kitti_tracking import read_ab3dmot_detections, read_seqmap, write_kitti_tracking

    detections, out = Path(detections), Path(out)
    lengths = {k: v[1] + 1 for k, v in read_seqmap(seqmap).items()} if seqmap else {}
    written = []
    npz = record_files(detections)
    txt = sorted(detections.glob("*.txt"))
    if not npz and not txt:
        raise FileNotFoundError(f"no detection files (*.txt or *.npz) in {detections}")
    for path in npz:
        frames = load_sequence(path)
        tracks = run_tracker(tracker, frames, cfg, noise)
        local = {
            k: to_ego(
                tracks[f.frame],
                f.agents[0].world_from_agent if f.agents else np.eye(4),
                (-1e9, -1e9, 1e9, 1e9),
            )
            for k, f in enumerate(frames)
        }
        target = out / f"{path.stem}.txt"
        write_kitti_tracking(target, local, order)
        written.append(target)
    for path in txt:
        dets = read_ab3dmot_detections(path, order)
        n = lengths.get(path.stem, max(dets) + 1 if dets else 0)
        tracks = run_tracker(tracker, _single_stream(dets, n), cfg, noise)
        target = out / path.name
        write_kitti_tracking(target, tracks, order)
        written.append(target)
    return written


def evaluate_dirs(gt_dir: Path, tracks_dir: Path, seqmap: Path | None = None, order: str = "xzy") -> dict:
    """Evaluate KITTI-tracking results against ground truth (Car class), both modes.

    Sequences and lengths come from ``seqmap`` (``name empty first last``) or from the ground
    truth files; a missing result file counts as a sequence without tracks.
    """
    from v2x.datasets.kitti_tracking import read_kitti_tracking, read_seqmap

    gt_dir, tracks_dir = Path(gt_dir), Path(tracks_dir)
    if seqmap is not None:
        names = {k: v[1] + 1 for k, v in read_seqmap(seqmap).items()}
    else:
        names = {p.stem: None for p in sorted(gt_dir.glob("*.txt"))}
    if not names:
        raise FileNotFoundError(f"no ground-truth sequences (*.txt) in {gt_dir}")
    seqs = []
    for name, n_frames in names.items():
        gt = read_kitti_tracking(gt_dir / f"{name}.txt", order)
        tpath = tracks_dir / f"{name}.txt"
        trk = read_kitti_tracking(tpath, order) if tpath.is_file() else {}
        n = n_frames or max([*gt, *trk, -1]) + 1
        tracks, heights = {}, {}
        for f, t in trk.items():
            keep = t.boxes.of_classes(VEHICLE_CLASSES)
            tracks[f] = t.boxes[keep]
            if tracks[f].scores is None:
                tracks[f].scores = np.full(len(tracks[f]), -1.0, np.float32)
            heights[f] = (
                (t.bbox2d[:, 3] - t.bbox2d[:, 1])[keep] if len(t.bbox2d) else np.zeros(int(keep.sum()))
            )
        gts = {f: t.boxes[t.boxes.of_classes(VEHICLE_CLASSES)] for f, t in gt.items()}
        seqs.append(TrackingSequence(name, n, gts, tracks, heights))
    return evaluate_runs(seqs)
