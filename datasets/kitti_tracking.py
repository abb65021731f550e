"""KITTI-tracking text, as AB3DMOT and V2V4Real exchange ground truth and tracking results.

One line per object: ``frame track_id type truncated occluded alpha x1 y1 x2 y2 h w l X Y Z ry
[score]``. V2V4Real's files carry LiDAR-frame boxes with the coordinates written in
``x, z, y`` order (the second 3D column is the height), which is what ``order="xzy"`` (the
default) undoes; ``order="xyz"`` reads the columns as they stand.

Bad lines (a wrong number of fields, a value that is not a number or not finite, a size that is
not positive in a detection, a frame id outside ``0 .. MAX_FRAME``) raise a
:class:`DatasetError` naming the file, line and column, or, given a ``problems`` list, are
appended to it and skipped, so a command can report them and go on. Frame ids are bounded
before anything is allocated per frame: a stray ``100000000`` is one bad line, not a loop over
a hundred million empty frames. A detection line whose frame comes after a later frame's lines
is refused the same way (trackers take frames in order).

A folder of per-agent detections (V2V4Real's no-fusion output as DMSTrack reads it) holds one
subfolder of AB3DMOT detection files per agent; :func:`agent_folders` orders them as DMSTrack
does: ``ego`` first, then the others (numbers by value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from v2x.core.boxes import Boxes, ObjectClass, class_from_name
from v2x.datasets.errors import DatasetError

__all__ = [
    "MAX_FRAME",
    "TrackingFrame",
    "agent_folders",
    "agent_sequences",
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


#: the largest frame id a file may use (10 Hz: almost three hours); checked before allocating
MAX_FRAME = 100_000


class _LineError(Exception):
    """One line that cannot be used: the 1-based column at fault and why."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(message)
        self.column, self.message = column, message


def _problem(path: Path, n: int, exc: _LineError, problems: list | None) -> None:
    """Raise the bad line as a :class:`DatasetError`, or collect it when a list is given."""
    err = DatasetError(path, f"line {n}, column {exc.column}", exc.message)
    if problems is None:
        raise err
    problems.append(err)


def _numbers(parts: list[str], first: int, ints: tuple[int, ...] = ()) -> list[float]:
    """Fields from index ``first`` on as finite numbers (``ints``: indices that must be integers)."""
    out = []
    for i in range(first, len(parts)):
        text = parts[i]
        try:
            v = float(text)
        except ValueError:
            raise _LineError(i + 1, f"not a number: {text!r}") from None
        if not np.isfinite(v):
            raise _LineError(i + 1, f"not finite: {text!r}")
        if i in ints and v != int(v):
            raise _LineError(i + 1, f"not an integer: {text!r}")
        out.append(v)
    return out


def _frame_id(value: float, column: int) -> int:
    if not 0 <= value <= MAX_FRAME:
        raise _LineError(column, f"frame {value:g} outside 0..{MAX_FRAME}")
    return int(value)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError as exc:
        raise DatasetError(path, "file", "missing") from exc
    except OSError as exc:
        raise DatasetError(path, "file", f"unreadable: {exc.strerror or exc}") from exc


def read_kitti_tracking(
    path: str | Path, order: str = "xzy", problems: list[DatasetError] | None = None
) -> dict[int, TrackingFrame]:
    """All frames of one sequence file, keyed by frame number (frames without objects absent).

    A bad line raises a :class:`DatasetError`, or with ``problems`` is appended there and skipped.
    """
    path = Path(path)
    if order not in ("xzy", "xyz"):
        raise ValueError(f"order must be 'xzy' or 'xyz', got {order!r}")
    rows: dict[int, list[tuple]] = {}
    for n, line in enumerate(_read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) not in (17, 18):
                col = min(len(parts), 18) + 1
                raise _LineError(col, f"expected 17 or 18 fields, got {len(parts)}")
            head = _numbers(parts[:2], 0, ints=(0, 1))
            frame, tid = _frame_id(head[0], 1), int(head[1])
            nums = _numbers(parts, 3)
        except _LineError as exc:
            _problem(path, n, exc, problems)
            continue
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
    for n, line in enumerate(_read_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 4:
                raise _LineError(min(len(parts), 4) + 1, f"expected 4 fields, got {len(parts)}")
            first, last = _numbers(parts, 2, ints=(2, 3))
            first, last = _frame_id(first, 3), _frame_id(last, 4)
            if last < first:
                raise _LineError(4, f"last frame {last} before first frame {first}")
        except _LineError as exc:
            _problem(path, n, exc, None)
        out[parts[0]] = (first, last)
    return out


#: AB3DMOT's object type codes in its detection files
AB3DMOT_TYPES = {1: "Pedestrian", 2: "Car", 3: "Cyclist"}


def read_ab3dmot_detections(
    path: str | Path, order: str = "xzy", problems: list[DatasetError] | None = None
) -> dict[int, Boxes]:
    """AB3DMOT's per-sequence detection file: ``frame, type, x1, y1, x2, y2, score, h, w, l, x, y, z,
    ry, alpha`` (comma-separated). ``order="xzy"`` undoes V2V4Real's x, z, y column order.

    A bad line (see the module doc; sizes must be positive, frames in order) raises a
    :class:`DatasetError`, or with ``problems`` is appended there and skipped.
    """
    path = Path(path)
    rows: dict[int, list] = {}
    latest = -1
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != 15:
                col = min(len(parts), 15) + 1
                raise _LineError(col, f"expected 15 comma-separated fields, got {len(parts)}")
            v = _numbers(parts, 0, ints=(0, 1))
            frame = _frame_id(v[0], 1)
            for col, name in ((8, "h"), (9, "w"), (10, "l")):
                if v[col - 1] <= 0:
                    raise _LineError(col, f"size {name} must be positive, got {parts[col - 1]}")
            if frame < latest:
                raise _LineError(1, f"frame {frame} after frame {latest}: out of order, refused")
        except _LineError as exc:
            _problem(path, n, exc, problems)
            continue
        latest = frame
        typ, score, h, w, l, a, b, c, ry = int(v[1]), *v[6:14]
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


def agent_folders(folder: str | Path) -> list[tuple[str, Path]]:
    """The per-agent subfolders of a detections folder, in DMSTrack's order: ``ego`` first, then
    the others (numeric names by value, then the rest by name). Empty when ``folder`` holds
    detection files itself (one stream) or no subfolder holds any."""
    folder = Path(folder)
    subs = [p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.txt"))]

    def key(p: Path) -> tuple:
        name = p.name
        return (name != "ego", not name.isdigit(), int(name) if name.isdigit() else 0, name)

    return [(p.name, p) for p in sorted(subs, key=key)]


def agent_sequences(folder: str | Path, agents: list[tuple[str, Path]]) -> list[str]:
    """The sequence names (``NNNN`` of ``NNNN.txt``) every agent holds; a
    :class:`DatasetError` names the sequences an agent lacks when the agents disagree."""
    have = {name: {p.stem for p in path.glob("*.txt")} for name, path in agents}
    every = set().union(*have.values()) if have else set()
    missing = {name: sorted(every - seqs) for name, seqs in have.items() if every - seqs}
    if missing:
        detail = "; ".join(
            f"agent {name!r} lacks {', '.join(seqs[:8])}{' ...' if len(seqs) > 8 else ''}"
            for name, seqs in missing.items()
        )
        raise DatasetError(folder, "sequences", f"the agents disagree on the sequences present: {detail}")
    return sorted(every)


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
