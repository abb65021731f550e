"""Tracking other people's detections and scoring results from files: what ``v2x track`` and
``v2x eval tracking --gt/--tracks`` do, usable from Python too.

Files: AB3DMOT's per-sequence detection text and KITTI-tracking text are read and written by
:mod:`v2x.datasets.kitti_tracking` (the datasets team's module; V2V4Real's ``x, z, y`` column
order is its ``order="xzy"``, the default). Multi-agent detections are ``.npz`` records
(:mod:`v2x.tracking.records`). The tracking itself is :mod:`v2x.tracking.sequences`', on
detections in memory; this module only turns files into those and tracks back into files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v2x.core.boxes import VEHICLE_CLASSES, Boxes
from v2x.datasets.kitti_tracking import (
    read_ab3dmot_detections,
    read_kitti_tracking,
    read_seqmap,
    write_kitti_tracking,
)
from v2x.tracking.config import TrackerConfig
from v2x.tracking.metrics import TrackingSequence
from v2x.tracking.records import FrameDetections, load_sequence, record_files
from v2x.tracking.sequences import evaluate_runs, run_tracker, to_ego

__all__ = ["evaluate_dirs", "track_dir"]

#: no area restriction: results files hold every track, in the ego's frame
_EVERYWHERE = (-1e9, -1e9, 1e9, 1e9)


def _single_stream(frames: dict[int, Boxes], n: int) -> list[FrameDetections]:
    """Frames ``0 .. n-1`` of one detection stream (frames without a line get no boxes), at 10 Hz."""
    return [FrameDetections.of_boxes(f, f * 100_000_000, frames.get(f, Boxes.empty(True))) for f in range(n)]


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
            k: to_ego(tracks[f.frame], f.agents[0].world_from_agent if f.agents else np.eye(4), _EVERYWHERE)
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
