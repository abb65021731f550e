"""Validation of a whole log: every file is opened and checked, and every problem is listed.

``check_log(path)`` returns :class:`Problem` records (file, field, message, level); an empty
list means the log is sound. Level ``"error"`` is a file a reader refuses; ``"warning"`` is
something readers accept but count: label objects without a 3D box (normal in real DAIR-V2X
labels) or with impossible boxes, index entries left out, scan time offsets beyond the limit.
Nothing damaged passes without a record. It reads every point cloud, so it takes as long as
reading the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from v2x.datasets import detect_format
from v2x.datasets.errors import DatasetError

__all__ = ["Problem", "check_log"]


@dataclass(frozen=True)
class Problem:
    path: str
    field: str
    message: str
    level: str = "error"  # or "warning"

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


def _from_error(exc: DatasetError) -> Problem:
    return Problem(exc.path, exc.field, exc.message)


def _warning(path: str | Path, field: str, message: str) -> Problem:
    return Problem(str(path), field, message, "warning")


def _drop_warnings(path: Path, drops: dict[str, list[int]]) -> list[Problem]:
    from v2x.datasets.dair_labels import DROP_REASONS

    return [
        _warning(
            path, ", ".join(f"[{i}]" for i in idx), f"{len(idx)} object(s) {DROP_REASONS[reason]}: dropped"
        )
        for reason, idx in drops.items()
    ]


def _stray_temp_files(root: Path) -> list[Problem]:
    return [
        Problem(str(p), "file", "leftover temporary file of an interrupted write")
        for p in root.rglob("*.tmp")
        if p.is_file()
    ]


def _check_opv2v(root: Path, progress: Callable[[Iterable], Iterable]) -> list[Problem]:
    from v2x.datasets.files import exists, list_dir
    from v2x.datasets.opv2v import OPV2VLog, _cav_order, _frame_names, _scenario_dirs

    try:
        log = OPV2VLog(root)
        scenario_dirs = _scenario_dirs(root)
    except DatasetError as exc:
        return [_from_error(exc)]
    problems = [Problem(*item) for item in log.ignored]
    for sdir in scenario_dirs:
        try:
            cavs = _cav_order(sdir)
            ego_frames = set(_frame_names(sdir / cavs[0])) if cavs else set()
        except DatasetError as exc:
            problems.append(_from_error(exc))
            continue
        for cav in cavs:
            cdir = sdir / cav
            try:
                frames = set(_frame_names(cdir))
                pcds = [p for p in list_dir(cdir) if p.suffix == ".pcd"]
            except DatasetError as exc:
                problems.append(_from_error(exc))
                continue
            for name in sorted(frames - ego_frames, key=int):
                problems.append(
                    Problem(str(cdir / f"{name}.yaml"), "frame", f"frame not present for the ego {cavs[0]}")
                )
            for name in sorted(ego_frames - frames, key=int):
                problems.append(
                    Problem(str(cdir / f"{name}.yaml"), "file", f"missing (the ego {cavs[0]} has this frame)")
                )
            for pcd in pcds:
                if pcd.stem not in frames:
                    problems.append(Problem(str(pcd), "file", "point cloud without a YAML file"))
    for key in progress(log._keys):
        for cav in log._scenario_cavs[key.scenario_dir]:
            try:
                if exists(key.scenario_dir / cav / f"{key.name}.yaml"):
                    log._load_agent(key, cav)
            except DatasetError as exc:
                problems.append(_from_error(exc))
    return problems


def _check_dair(
    root: Path, progress: Callable[[Iterable], Iterable], max_time_offset_ms: float | None
) -> list[Problem]:
    from v2x.datasets.dair import DairLog
    from v2x.datasets.dair_labels import parse_labels_counted, world_label_boxes
    from v2x.datasets.pcd import read_pcd

    try:
        log = DairLog(root, max_time_offset_ms=max_time_offset_ms)
    except DatasetError as exc:
        return [_from_error(exc)]
    problems = [Problem(str(root / p), "file", why) for p, why in log.missing]
    problems += [_warning(*item) for item in log.ignored]
    for name, offset in log.offsets_over_limit:
        problems.append(
            _warning(
                root / "infrastructure-side" / "data_info.json",
                "pointcloud_timestamp",
                f"pair {name}: the roadside scan is {offset:+.1f} ms from the vehicle's,"
                f" beyond the {log.max_time_offset_ms:g} ms limit",
            )
        )

    def labels(path: Path, world: bool = False) -> None:
        _, drops = (world_label_boxes if world else parse_labels_counted)(path)
        problems.extend(_drop_warnings(path, drops))

    for i in progress(range(len(log))):
        e = log._entries[i]
        if e["_error"] is not None:
            problems.append(_from_error(e["_error"]))
            continue
        checks = [
            lambda e=e: read_pcd(root / e["_vpath"]),
            lambda e=e: read_pcd(root / e["_ipath"]),
            lambda e=e: labels(root / "vehicle-side" / "label" / "lidar" / f"{e['_vid']}.json"),
            lambda e=e: labels(root / "infrastructure-side" / "label" / "virtuallidar" / f"{e['_iid']}.json"),
            lambda e=e: log._poses(e),
        ]
        if e["_label"]:
            checks.append(lambda e=e: labels(root / e["_label"], world=True))
        for check in checks:  # each file on its own, so one broken file does not hide another
            try:
                check()
            except DatasetError as exc:
                problems.append(_from_error(exc))
    return problems


def check_log(
    path: str | Path,
    progress: Callable[[Iterable], Iterable] | None = None,
    max_time_offset_ms: float | None = None,
) -> list[Problem]:
    """Every problem (and warning) found in the log at ``path`` (an unknown format is one
    problem). ``max_time_offset_ms``: see :func:`v2x.datasets.open_log`."""
    root = Path(path)
    progress = progress or (lambda it: it)
    try:
        fmt = detect_format(root)
    except DatasetError as exc:
        return [_from_error(exc)]
    problems = _stray_temp_files(root)
    if fmt == "dair-v2x-c":
        from v2x.datasets import _dair_roots
        from v2x.datasets.dair import is_dair_root

        try:
            roots = [root] if is_dair_root(root) else _dair_roots(root)
        except DatasetError as exc:
            return problems + [_from_error(exc)]
        for r in roots:
            problems += _check_dair(r, progress, max_time_offset_ms)
    else:
        problems += _check_opv2v(root, progress)
    return problems
