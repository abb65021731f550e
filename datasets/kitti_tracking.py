"""KITTI-tracking text, as AB3DMOT and V2V4Real exchange ground truth and tracking results.

One line per object: ``frame track_id type truncated occluded alpha x1 y1 x2 y2 h w l X Y Z ry
[score]``. V2V4Real's files carry LiDAR-frame boxes with the coordinates written in
``x, z, y`` order (the second 3D column is the height), which is what ``order="xzy"`` (the
default) undoes; ``order="xyz"`` reads the columns as they stand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from v2x.core.boxes import Boxes, ObjectClass, class_from_name
from v2x.datasets.errors import DatasetError

__all__ = [
    "TrackingFrame",
    "read_ab3dmot_detections",
    "read_kitti_tracking",
    "read_seqmap",
    "write_ab3dmot_detections",
    "write_kitti_tracking",
]


@dataclass
class TrackingFrame:
    """Objects of one frame: 3D boxes (with track ids, scores for results) and their 2D boxes."""

    frame: int
    boxes: Boxes
    bbox2d: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    alpha: np.ndarray = field(default_factory=lambda: np.zeros(0))


def read_kitti_tracking(path: str | Path, order: str = "xzy") -> dict[int, TrackingFrame]:
    """All frames of one sequence file, keyed by frame number (frames without objects absent)."""
    path = Path(path)
    if order not in ("xzy", "xyz"):
        raise ValueError(f"order must be 'xzy' or 'xyz', got {order!r}")
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise DatasetError(path, "file", "missing") from exc
    rows: dict[int, list[tuple]] = {}
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (17, 18):
            raise DatasetError(path, f"line {n}", f"expected 17 or 18 fields, got {len(parts)}")
        try:
            frame, tid = int(parts[0]), int(parts[1])
            nums = [float(v) for v in parts[3:]]
        except ValueError as exc:
            raise DatasetError(path, f"line {n}", f"not a number: {exc}") from exc
        if not np.all(np.isfinite(nums)):
            raise DatasetError(path, f"line {n}", "non-finite value")
        _trunc, _occ, alpha, x1, y1, x2, y2, h, w, l, a, b, c, ry = nums[:14]
        score = nums[14] if len(nums) > 14 else None
        x, y, z = (a, c, b) if order == "xzy" else (a, b, c)
        rows.setdefault(frame, []).append(
            ((x, y, z, l, w, h, ry), class_from_name(parts[2]), tid, score, (x1, y1, x2, y2), alpha)
        )
    out = {}
    for frame, objs in sorted(rows.items()):
        has_score = all(o[3] is not None for o in objs)
        boxes = Boxes(
            np.array([o[0] for o in objs]),
            labels=[int(o[1]) for o in objs],
            track_ids=[o[2] for o in objs],
            scores=[o[3] for o in objs] if has_score else None,
        )
        out[frame] = TrackingFrame(
            frame, boxes, np.array([o[4] for o in objs]), np.array([o[5] for o in objs])
        )
    return out


def write_kitti_tracking(
    path: str | Path, frames: dict[int, TrackingFrame] | dict[int, Boxes], order: str = "xzy"
) -> None:
    """Write a sequence; scores are written when the boxes carry them (tracking results)."""
    lines = []
    for frame in sorted(frames):
        item = frames[frame]
        tf = item if isinstance(item, TrackingFrame) else TrackingFrame(frame, item)
        b = tf.boxes
        for i in range(len(b)):
            x, y, z, length, width, height, ry = b.xyzlwhy[i]
            a, bb, c = (x, z, y) if order == "xzy" else (x, y, z)
            x1, y1, x2, y2 = tf.bbox2d[i] if len(tf.bbox2d) else (0, 0, 0, 0)
            alpha = tf.alpha[i] if len(tf.alpha) else 0
            name = (
                "Car"
                if int(b.labels[i]) in (ObjectClass.CAR, ObjectClass.VAN)
                else ObjectClass(int(b.labels[i])).name.capitalize()
            )
            fields = [
                frame,
                int(b.track_ids[i]),
                name,
                0,
                0,
                alpha,
                x1,
                y1,
                x2,
                y2,
                height,
                width,
                length,
                a,
                bb,
                c,
                ry,
            ]
            if b.scores is not None:
                fields.append(float(b.scores[i]))
            lines.append(
                " ".join(f"{v:.6f}" if isinstance(v, float | np.floating) else str(v) for v in fields)
            )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""))


def read_seqmap(path: str | Path) -> dict[str, tuple[int, int]]:
    """``seq empty first last`` lines -> {sequence: (first frame, last frame)}."""
    path = Path(path)
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise DatasetError(path, f"line {n}", f"expected 4 fields, got {len(parts)}")
        out[parts[0]] = (int(parts[2]), int(parts[3]))
    return out


#: AB3DMOT's object type codes in its detection files
AB3DMOT_TYPES = {1: "Pedestrian", 2: "Car", 3: "Cyclist"}


def read_ab3dmot_detections(path: str | Path, order: str = "xzy") -> dict[int, Boxes]:
    """AB3DMOT's per-sequence detection file: ``frame, type, x1, y1, x2, y2, score, h, w, l, x, y, z,
    ry, alpha`` (comma-separated). ``order="xzy"`` undoes V2V4Real's x, z, y column order."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise DatasetError(path, "file", "missing") from exc
    rows: dict[int, list] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 15:
            raise DatasetError(path, f"line {n}", f"expected 15 comma-separated fields, got {len(parts)}")
        try:
            v = [float(p) for p in parts]
        except ValueError as exc:
            raise DatasetError(path, f"line {n}", f"not a number: {exc}") from exc
        frame, typ, score, h, w, l, a, b, c, ry = (
            int(v[0]),
            int(v[1]),
            v[6],
            v[7],
            v[8],
            v[9],
            v[10],
            v[11],
            v[12],
            v[13],
        )
        x, y, z = (a, c, b) if order == "xzy" else (a, b, c)
        rows.setdefault(frame, []).append(
            ([x, y, z, l, w, h, ry], class_from_name(AB3DMOT_TYPES.get(typ, "other")), score)
        )
    return {
        f: Boxes(
            np.array([r[0] for r in objs]), labels=[int(r[1]) for r in objs], scores=[r[2] for r in objs]
        )
        for f, objs in sorted(rows.items())
    }


def write_ab3dmot_detections(path: str | Path, frames: dict[int, Boxes], order: str = "xzy") -> None:
    codes = {ObjectClass.PEDESTRIAN: 1, ObjectClass.CYCLIST: 3}
    lines = []
    for f in sorted(frames):
        b = frames[f]
        scores = b.scores if b.scores is not None else np.ones(len(b))
        for i in range(len(b)):
            x, y, z, length, width, height, ry = b.xyzlwhy[i]
            a, bb, c = (x, z, y) if order == "xzy" else (x, y, z)
            typ = codes.get(ObjectClass(int(b.labels[i])), 2)
            vals = [f, typ, 0, 0, 0, 0, float(scores[i]), height, width, length, a, bb, c, ry, 0]
            lines.append(",".join(f"{v:.6f}" if isinstance(v, float | np.floating) else str(v) for v in vals))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""))
