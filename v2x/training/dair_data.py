"""Real DAIR-V2X-C training data: the cooperative pairs split into runs, and each side's single frames.

A real DAIR-V2X-C folder has no train/validate split, and its frames come in runs: stretches of
consecutive 10 Hz scans of one intersection. Consecutive scans are near copies, so a validation
set drawn frame by frame from the same run measures memory, not detection; the split here is by
run. A run is a stretch of cooperative pairs whose vehicle time stamps are no more than
``gap_s`` apart; runs are named ``A``, ``B``, ... in time order.

Besides the pairs, each side's ``data_info.json`` may list frames that are in no pair (the
example folder has 32 vehicle-side and 22 roadside ones). They are single-agent training frames
for each real sensor, with their own side's labels; each belongs to the run of the pair nearest
to it in time, so leaving a run out leaves out its single frames too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from v2x.core.frame import AgentKind, AgentScan, Frame, estimate_mount_height
from v2x.datasets.dair import DairLog, is_dair_root, pose_from_rt
from v2x.datasets.dair_labels import parse_labels_counted
from v2x.datasets.errors import DatasetError
from v2x.datasets.files import exists, read_json
from v2x.datasets.pcd import read_pcd_counted

__all__ = [
    "DairRun",
    "DairSplit",
    "FrameList",
    "dair_runs",
    "dair_split",
    "is_dair_root",
    "single_side_frame",
]

#: (side folder, agent id, agent kind, label folder, pose calibrations, outermost first)
_SIDES: dict[str, tuple[str, AgentKind, str, tuple[str, ...]]] = {
    "vehicle-side": ("vehicle", AgentKind.VEHICLE, "lidar", ("novatel_to_world", "lidar_to_novatel")),
    "infrastructure-side": ("infrastructure", AgentKind.RSU, "virtuallidar", ("virtuallidar_to_world",)),
}


@dataclass
class DairRun:
    """One run: its pairs (indices of the :class:`DairLog`) and its single-side frames."""

    name: str
    pairs: list[int]
    #: (side folder, frame id) of the frames in no pair that belong to this run
    singles: list[tuple[str, str]] = field(default_factory=list)
    #: vehicle frame ids of its first and last pair
    first: str = ""
    last: str = ""

    def describe(self) -> dict[str, Any]:
        sides = {s: sum(1 for side, _ in self.singles if side == s) for s in _SIDES}
        return {
            "run": self.name,
            "pairs": len(self.pairs),
            "vehicle_frames": f"{self.first}-{self.last}",
            "single_vehicle_frames": sides["vehicle-side"],
            "single_roadside_frames": sides["infrastructure-side"],
        }


class FrameList:
    """A log-like sequence of frames made by loaders (``len`` and indexing, as the trainer uses;
    ``format`` as a log's, for the settings that follow the log's format)."""

    def __init__(
        self, loaders: Sequence[Callable[[], Frame]], names: Sequence[str], log_format: str | None = None
    ) -> None:
        self._loaders = list(loaders)
        self.names = list(names)
        self.format = log_format

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, i: int) -> Frame:
        return self._loaders[i]()


class _PairLoader:
    """Picklable loader of one pair of a log (DataLoader workers receive the dataset by pickle)."""

    def __init__(self, log: DairLog, index: int) -> None:
        self.log, self.index = log, index

    def __call__(self) -> Frame:
        return self.log[self.index]


class _SingleLoader:
    def __init__(self, root: Path, side: str, frame_id: str, index: int) -> None:
        self.root, self.side, self.frame_id, self.index = root, side, frame_id, index

    def __call__(self) -> Frame:
        return single_side_frame(self.root, self.side, self.frame_id, self.index)


def _pose(path: Path, name: str) -> np.ndarray:
    """4x4 from a DAIR calibration file (``rotation`` 3x3, ``translation`` 3; ``lidar_to_novatel``
    nests them under ``transform``), with the file and field named when it is not one."""
    d = read_json(path)
    if isinstance(d, dict) and "transform" in d:
        d = d["transform"]
    return pose_from_rt(d, path, name)


def single_side_frame(root: str | Path, side: str, frame_id: str, index: int = 0) -> Frame:
    """One side's scan with its own labels, as a one-agent frame (that agent is the ego).

    The pose is the side's world calibration when the folder has it (as :class:`DairLog` poses
    the pairs, so a roadside scan is levelled the same way), else the identity."""
    if side not in _SIDES:
        raise ValueError(f"side must be one of {sorted(_SIDES)}, got {side!r}")
    root = Path(root)
    agent_id, kind, label_dir, calibs = _SIDES[side]
    base = root / side
    pose = np.eye(4)
    paths = [base / "calib" / c / f"{frame_id}.json" for c in calibs]
    if all(exists(p) for p in paths):
        for p, c in zip(paths, calibs, strict=True):
            pose = pose @ _pose(p, c)
    points, _ = read_pcd_counted(base / "velodyne" / f"{frame_id}.pcd")
    labels, _ = parse_labels_counted(base / "label" / label_dir / f"{frame_id}.json")
    labels = labels.transformed(pose)
    scan = AgentScan(agent_id, kind, points, pose, 0, estimate_mount_height(points), labels)
    return Frame(f"single/{side}", index, 0, {agent_id: scan}, agent_id, labels)


def _side_index(root: Path, side: str) -> dict[str, int]:
    """{frame id: point-cloud time stamp in microseconds} of a side's ``data_info.json``."""
    path = root / side / "data_info.json"
    if not exists(path):
        return {}
    items = read_json(path)
    if not isinstance(items, list):
        raise DatasetError(path, "entries", "expected a list")
    out = {}
    for j, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("pointcloud_path"), str):
            continue
        try:
            ts = int(it.get("pointcloud_timestamp") or 0)
        except (TypeError, ValueError) as exc:
            raise DatasetError(path, f"[{j}].pointcloud_timestamp", f"not a time stamp: {exc}") from exc
        out[PurePosixPath(it["pointcloud_path"]).stem] = ts
    return out


def dair_runs(log: DairLog, gap_s: float = 0.5, singles: bool = True) -> list[DairRun]:
    """The log's pairs cut into runs at gaps of more than ``gap_s`` between vehicle time stamps,
    with the single-side frames (those in no pair) given to the run of the nearest pair."""
    root = log.root
    vts = _side_index(root, "vehicle-side")
    its = _side_index(root, "infrastructure-side")
    entries = read_json(log.info_path)
    paired = {"vehicle-side": set(), "infrastructure-side": set()}
    for e in entries:
        if isinstance(e, dict):
            for side, key in (
                ("vehicle-side", "vehicle_pointcloud_path"),
                ("infrastructure-side", "infrastructure_pointcloud_path"),
            ):
                if isinstance(e.get(key), str):
                    paired[side].add(PurePosixPath(e[key]).stem)
    pairs = []
    for i in range(len(log)):
        vid = log.frame_name(i).rsplit("/", 1)[-1]
        if vid not in vts:
            raise DatasetError(
                root / "vehicle-side" / "data_info.json", vid, "pair's vehicle frame not listed"
            )
        pairs.append((vts[vid], i, vid))
    if not pairs:
        raise DatasetError(log.info_path, "entries", "no pairs to split into runs")
    pairs.sort()
    runs: list[DairRun] = []
    prev = None
    for ts, i, vid in pairs:
        if prev is None or ts - prev > gap_s * 1e6:
            runs.append(
                DairRun(chr(ord("A") + len(runs)) if len(runs) < 26 else f"R{len(runs)}", [], first=vid)
            )
        runs[-1].pairs.append(i)
        runs[-1].last = vid
        prev = ts
    if singles:
        run_of = np.array([k for k, r in enumerate(runs) for _ in r.pairs])
        stamps = np.array([ts for ts, _, _ in pairs], dtype=np.float64)
        for side, index in (("vehicle-side", vts), ("infrastructure-side", its)):
            for fid, ts in sorted(index.items()):
                if fid in paired[side] or ts <= 0:
                    continue
                runs[int(run_of[np.abs(stamps - ts).argmin()])].singles.append((side, fid))
    return runs


@dataclass
class DairSplit:
    """Training and validation frames of a real DAIR-V2X-C folder, split by run."""

    train: FrameList
    validate: FrameList
    #: what went where, for the provenance
    summary: dict[str, Any]


def dair_split(
    root: str | Path,
    val_runs: Sequence[str],
    train_runs: Sequence[str] | None = None,
    single_side: bool = True,
    gap_s: float = 0.5,
    single_side_kinds: Sequence[str] | None = None,
) -> DairSplit:
    """Train on ``train_runs`` (default: every run not validated on), pairs and single-side
    frames (only the sides whose agent kind is in ``single_side_kinds``, when given); validate
    on the pairs of ``val_runs`` (vehicle as ego, as the evaluation does)."""
    root = Path(root)
    log = DairLog(root)
    runs = dair_runs(log, gap_s, singles=single_side)
    names = [r.name for r in runs]
    unknown = sorted((set(val_runs) | set(train_runs or ())) - set(names))
    if unknown:
        raise ValueError(f"{root}: no run named {unknown}; its runs are {names}")
    train_names = list(train_runs) if train_runs else [n for n in names if n not in val_runs]
    both = set(train_names) & set(val_runs)
    if both:
        raise ValueError(f"runs {sorted(both)} are both trained and validated on")
    if not train_names:
        raise ValueError(f"{root}: validating on every run ({names}) leaves nothing to train on")
    loaders: list[Callable[[], Frame]] = []
    labels: list[str] = []
    for r in runs:
        if r.name not in train_names:
            continue
        for i in r.pairs:
            loaders.append(_PairLoader(log, i))
            labels.append(log.frame_name(i))
        for side, fid in r.singles:
            if single_side_kinds is not None and _SIDES[side][1].value not in single_side_kinds:
                continue
            loaders.append(_SingleLoader(root, side, fid, len(loaders)))
            labels.append(f"{side}/{fid}")
    val = [i for r in runs if r.name in val_runs for i in r.pairs]
    validate = FrameList(
        [_PairLoader(log, i) for i in val], [log.frame_name(i) for i in val], getattr(log, "format", None)
    )
    summary = {
        "kind": "dair-v2x-c runs (leave runs out)",
        "gap_s": gap_s,
        "runs": [r.describe() for r in runs],
        "train_runs": train_names,
        "val_runs": list(val_runs),
        "train_frames": len(loaders),
        "val_pairs": len(val),
        "single_side": single_side,
        "single_side_kinds": None if single_side_kinds is None else list(single_side_kinds),
    }
    return DairSplit(FrameList(loaders, labels, getattr(log, "format", None)), validate, summary)
