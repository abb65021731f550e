"""Tracking other people's detections and scoring results from files: what ``v2x track`` and
``v2x eval tracking --gt/--tracks`` do, usable from Python too.

Files: AB3DMOT's per-sequence detection text and KITTI-tracking text are read and written by
:mod:`v2x.datasets.kitti_tracking` (the datasets team's module; V2V4Real's ``x, z, y`` column
order is its ``order="xzy"``, the default). Multi-agent detections are ``.npz`` records
(:mod:`v2x.tracking.records`). The tracking itself is :mod:`v2x.tracking.sequences`', on
detections in memory; this module only turns files into those and tracks back into files.

Per-agent detections (V2V4Real's no-fusion output, DMSTrack's input) are a folder with one
subfolder of AB3DMOT files per agent, every box already in the ego's LiDAR frame. They become
frames as DMSTrack builds them: agents in :func:`~v2x.datasets.kitti_tracking.agent_folders`'
order (``ego`` first, so it is the ego of every frame), frames ``0 .. last`` of the sequence
(the seqmap's last frame, else the last frame any agent has a box in) at the nominal 10 Hz, a
frame without lines giving that agent no boxes. The agents' poses are not in the files: every
agent's ``world_from_agent`` is the identity (the ego frame is the world).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v2x.core.boxes import VEHICLE_CLASSES, Boxes
from v2x.datasets.errors import DatasetError
from v2x.datasets.kitti_tracking import (
    agent_folders,
    agent_sequences,
    read_ab3dmot_detections,
    read_kitti_tracking,
    read_seqmap,
    write_kitti_tracking,
)
from v2x.tracking.config import TrackerConfig
from v2x.tracking.metrics import TrackingSequence
from v2x.tracking.records import AgentDetections, FrameDetections, load_sequence, record_files
from v2x.tracking.sequences import evaluate_runs, run_tracker, to_ego

__all__ = ["attach_labels", "evaluate_dirs", "read_agent_sequences", "seqmap_lengths", "track_dir"]

#: the nominal frame period of every text format here (V2V4Real and KITTI run at 10 Hz)
_PERIOD_NS = 100_000_000

#: no area restriction: results files hold every track, in the ego's frame
_EVERYWHERE = (-1e9, -1e9, 1e9, 1e9)


def _single_stream(frames: dict[int, Boxes], n: int) -> list[FrameDetections]:
    """Frames ``0 .. n-1`` of one detection stream (frames without a line get no boxes), at 10 Hz."""
    return [FrameDetections.of_boxes(f, f * _PERIOD_NS, frames.get(f, Boxes.empty(True))) for f in range(n)]


def seqmap_lengths(seqmap: Path | None) -> dict[str, int]:
    """Frames per sequence from a seqmap (``name empty first last``: frames ``0 .. last``)."""
    return {k: v[1] + 1 for k, v in read_seqmap(seqmap).items()} if seqmap else {}


def read_agent_sequences(
    folder: Path,
    order: str = "xzy",
    lengths: dict[str, int] | None = None,
    problems: list[DatasetError] | None = None,
    sequences: list[str] | None = None,
) -> list[tuple[str, list[FrameDetections]]]:
    """Every sequence of a per-agent folder as frames of every agent's detections (see the
    module doc). ``lengths`` (from a seqmap) fixes a sequence's frame count; boxes in frames
    beyond it are left out and reported. ``sequences`` keeps only those names. Bad lines go to
    ``problems`` (or raise without it); agents disagreeing on the sequences present raise a
    :class:`DatasetError` naming them."""
    folder = Path(folder)
    agents = agent_folders(folder)
    if not agents:
        raise DatasetError(folder, "agents", "no subfolder of AB3DMOT detection files (*.txt)")
    names = agent_sequences(folder, agents)
    if sequences is not None:
        unknown = sorted(set(sequences) - set(names))
        if unknown:
            raise DatasetError(folder, "sequences", f"not in every agent's folder: {', '.join(unknown)}")
        names = [n for n in names if n in set(sequences)]
    lengths = lengths or {}
    out = []
    for name in names:
        dets = {
            agent: read_ab3dmot_detections(path / f"{name}.txt", order, problems) for agent, path in agents
        }
        last = max((max(d) for d in dets.values() if d), default=-1)
        n = lengths.get(name, last + 1)
        if last >= n and problems is not None:
            problems.append(
                DatasetError(
                    folder, f"sequence {name}", f"boxes up to frame {last} beyond its {n} frames: left out"
                )
            )
        eye = np.eye(4)
        frames = [
            FrameDetections(
                k,
                k * _PERIOD_NS,
                [
                    AgentDetections(agent, "vehicle", eye, d.get(k, Boxes.empty(True)))
                    for agent, d in dets.items()
                ],
            )
            for k in range(n)
        ]
        out.append((name, frames))
    return out


def attach_labels(
    frames: list[FrameDetections],
    labels: Path,
    order: str = "xzy",
    problems: list[DatasetError] | None = None,
) -> None:
    """Set every frame's ground truth (cars, ego frame = world) from a KITTI-tracking file."""
    gt = read_kitti_tracking(labels, order, problems)
    for k, f in enumerate(frames):
        boxes = gt[k].boxes if k in gt else Boxes.empty()
        f.gt = boxes[boxes.of_classes(VEHICLE_CLASSES)]


def track_dir(
    detections: Path,
    out: Path,
    tracker: str = "ab3dmot",
    cfg: TrackerConfig | None = None,
    noise=None,
    order: str = "xzy",
    seqmap: Path | None = None,
    problems: list[DatasetError] | None = None,
) -> list[Path]:
    """Track every sequence of a folder and write KITTI-tracking text, one file per sequence.

    Inputs: AB3DMOT detection files (``NNNN.txt``, one stream, boxes in the ego frame), a
    folder of per-agent subfolders of them (see the module doc), or our ``.npz`` multi-agent
    records (results written in each frame's ego frame). ``seqmap`` gives sequence lengths
    (otherwise: up to the last frame with a detection). Bad lines go to ``problems`` and are
    skipped (without it, the first one raises).
    """
    detections, out = Path(detections), Path(out)
    lengths = seqmap_lengths(seqmap)
    written = []
    npz = record_files(detections)
    txt = sorted(detections.glob("*.txt"))
    if not npz and not txt and agent_folders(detections):
        for name, frames in read_agent_sequences(detections, order, lengths, problems):
            target = out / f"{name}.txt"
            write_kitti_tracking(target, run_tracker(tracker, frames, cfg, noise), order)
            written.append(target)
        return written
    if not npz and not txt:
        raise FileNotFoundError(
            f"no detection files (*.txt or *.npz, or per-agent subfolders of them) in {detections}"
        )
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
        dets = read_ab3dmot_detections(path, order, problems)
        n = lengths.get(path.stem, max(dets) + 1 if dets else 0)
        tracks = run_tracker(tracker, _single_stream(dets, n), cfg, noise)
        target = out / path.name
        write_kitti_tracking(target, tracks, order)
        written.append(target)
    return written


def evaluate_dirs(
    gt_dir: Path,
    tracks_dir: Path,
    seqmap: Path | None = None,
    order: str = "xzy",
    problems: list[DatasetError] | None = None,
) -> dict:
    """Evaluate KITTI-tracking results against ground truth (Car class), both modes.

    Sequences and lengths come from ``seqmap`` (``name empty first last``) or from the ground
    truth files; a missing result file counts as a sequence without tracks. Bad lines go to
    ``problems`` and are skipped (without it, the first one raises); so do a frame's repeated
    track ids (the later boxes are left out).
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
        gt = read_kitti_tracking(gt_dir / f"{name}.txt", order, problems)
        tpath = tracks_dir / f"{name}.txt"
        trk = read_kitti_tracking(tpath, order, problems) if tpath.is_file() else {}
        if problems is not None:
            gt, trk = _unique_ids(gt_dir / f"{name}.txt", gt, problems), _unique_ids(tpath, trk, problems)
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


def _unique_ids(path: Path, frames: dict, problems: list[DatasetError]) -> dict:
    """Frames with a track id repeated within the frame keep its first box; the rest are reported."""
    out = {}
    for f, t in frames.items():
        _, first = np.unique(t.boxes.track_ids, return_index=True)
        if len(first) < len(t.boxes):
            problems.append(
                DatasetError(
                    path, f"frame {f}", f"{len(t.boxes) - len(first)} box(es) repeat a track id: left out"
                )
            )
            keep = np.sort(first)
            t = type(t)(
                t.frame,
                t.boxes[keep],
                t.bbox2d[keep] if len(t.bbox2d) else t.bbox2d,
                t.alpha[keep] if len(t.alpha) else t.alpha,
            )
        out[f] = t
    return out
