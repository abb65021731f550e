"""Running a tracker over sequences of files and evaluating the result: what ``v2x track`` and
``v2x eval tracking`` do, usable from Python too."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from v2x.boxes import VEHICLE_CLASSES, Boxes
from v2x.datasets.kitti_tracking import read_ab3dmot_detections, read_kitti_tracking, write_kitti_tracking
from v2x.tracking.ab3dmot import AB3DMOT
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.metrics import TrackingSequence, evaluate_tracking
from v2x.tracking.records import AgentDetections, FrameDetections

__all__ = ["evaluate_dirs", "make_tracker", "track_dir"]


def make_tracker(name: str, weights: str | Path | None = None):
    if name == "ab3dmot":
        return AB3DMOT()
    if name == "dmstrack":
        from v2x.tracking.train import load_noise_model

        return MultiSensorKF(noise=load_noise_model(weights) if weights else None)
    raise ValueError(f"unknown tracker {name!r}: use ab3dmot or dmstrack")


def _run(tracker, frames: dict[int, Boxes], n_frames: int) -> dict[int, Boxes]:
    out = {}
    for f in range(n_frames):
        dets = frames.get(f, Boxes.empty(with_scores=True))
        if isinstance(tracker, AB3DMOT):
            res = tracker.step(dets, f)
        else:
            res = tracker.step(
                FrameDetections(f, 0, [AgentDetections("ego", "vehicle", np.eye(4), dets)])
            ).boxes
        if len(res):
            out[f] = res
    return out


def track_dir(
    detections: Path, out: Path, tracker: str = "ab3dmot", weights: Path | None = None, order: str = "xzy"
) -> list[Path]:
    """Track every ``NNNN.txt`` AB3DMOT detection file of a folder into KITTI-tracking results."""
    written = []
    files = sorted(p for p in Path(detections).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no detection files (*.txt) in {detections}")
    for path in files:
        frames = read_ab3dmot_detections(path, order)
        n = max(frames) + 1 if frames else 0
        result = _run(make_tracker(tracker, weights), frames, n)
        target = Path(out) / path.name
        write_kitti_tracking(target, result, order)
        written.append(target)
    return written


def evaluate_dirs(
    gt_dir: Path, tracks_dir: Path, seqmap: Path | None = None, mode: str = "comparable", order: str = "xzy"
) -> dict:
    """Evaluate KITTI-tracking results against ground truth, sequence by sequence (Car class)."""
    from v2x.datasets.kitti_tracking import read_seqmap

    if seqmap is not None:
        names = {k: v[1] + 1 for k, v in read_seqmap(seqmap).items()}
    else:
        names = {p.stem: None for p in sorted(Path(gt_dir).glob("*.txt"))}
    if not names:
        raise FileNotFoundError(f"no ground-truth sequences (*.txt) in {gt_dir}")
    seqs = []
    for name, n_frames in names.items():
        gt = read_kitti_tracking(Path(gt_dir) / f"{name}.txt", order)
        tpath = Path(tracks_dir) / f"{name}.txt"
        trk = read_kitti_tracking(tpath, order) if tpath.is_file() else {}
        n = n_frames or max([*gt, *trk, -1]) + 1
        seqs.append(
            TrackingSequence(
                name,
                n,
                {f: t.boxes[t.boxes.of_classes(VEHICLE_CLASSES)] for f, t in gt.items()},
                {f: t.boxes[t.boxes.of_classes(VEHICLE_CLASSES)] for f, t in trk.items()},
                {
                    f: (t.bbox2d[:, 3] - t.bbox2d[:, 1])[t.boxes.of_classes(VEHICLE_CLASSES)]
                    for f, t in trk.items()
                },
            )
        )
    return evaluate_tracking(seqs, mode=mode)
