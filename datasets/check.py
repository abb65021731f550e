"""Validation of a whole log: every file is opened and checked, and every problem is listed.

``check_log(path)`` returns :class:`Problem` records (file, field, message); an empty list
means the log is sound. It reads every point cloud, so it takes as long as reading the log.
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

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


def _from_error(exc: DatasetError) -> Problem:
    return Problem(exc.path, exc.field, exc.message)


def _stray_temp_files(root: Path) -> list[Problem]:
    return [
        Problem(str(p), "file", "leftover temporary file of an interrupted write")
        for p in root.rglob("*.tmp")
        if p.is_file()
    ]


def _check_opv2v(root: Path, progress: Callable[[Iterable], Iterable]) -> list[Problem]:
    from v2x.datasets.opv2v import OPV2VLog, _cav_order, _frame_names, _scenario_dirs

    problems: list[Problem] = []
    log = OPV2VLog(root)
    for sdir in _scenario_dirs(root):
        cavs = _cav_order(sdir)
        ego_frames = set(_frame_names(sdir / cavs[0])) if cavs else set()
        for cav in cavs:
            cdir = sdir / cav
            frames = set(_frame_names(cdir))
            for name in sorted(frames - ego_frames):
                problems.append(
                    Problem(str(cdir / f"{name}.yaml"), "frame", f"frame not present for the ego {cavs[0]}")
                )
            for name in sorted(ego_frames - frames):
                problems.append(
                    Problem(str(cdir / f"{name}.yaml"), "file", f"missing (the ego {cavs[0]} has this frame)")
                )
            for pcd in sorted(cdir.glob("*.pcd")):
                if pcd.stem not in frames:
                    problems.append(Problem(str(pcd), "file", "point cloud without a YAML file"))
    keys = log._keys
    for key in progress(keys):
        for cav in log._scenario_cavs[key.scenario_dir]:
            ypath = key.scenario_dir / cav / f"{key.name}.yaml"
            if not ypath.is_file():
                continue
            try:
                log._load_agent(key, cav)
            except DatasetError as exc:
                problems.append(_from_error(exc))
    return problems


def _check_dair(root: Path, progress: Callable[[Iterable], Iterable]) -> list[Problem]:
    from v2x.datasets.dair import DairLog, _world_label_boxes, parse_labels
    from v2x.datasets.pcd import read_pcd

    log = DairLog(root)
    problems = [Problem(str(root / p), "file", why) for p, why in log.missing]
    for i in progress(range(len(log))):
        e = log._entries[i]
        checks = [
            lambda e=e: read_pcd(root / e["vehicle_pointcloud_path"]),
            lambda e=e: read_pcd(root / e["infrastructure_pointcloud_path"]),
            lambda e=e: parse_labels(root / "vehicle-side" / "label" / "lidar" / f"{e['_vid']}.json"),
            lambda e=e: parse_labels(
                root / "infrastructure-side" / "label" / "virtuallidar" / f"{e['_iid']}.json"
            ),
            lambda e=e: log._poses(e),
        ]
        if e.get("cooperative_label_path"):
            checks.append(lambda e=e: _world_label_boxes(root / e["cooperative_label_path"]))
        for check in checks:  # each file on its own, so one broken file does not hide another
            try:
                check()
            except DatasetError as exc:
                problems.append(_from_error(exc))
    return problems


def check_log(path: str | Path, progress: Callable[[Iterable], Iterable] | None = None) -> list[Problem]:
    """Every problem found in the log at ``path`` (an unknown format is one problem)."""
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

        for r in [root] if is_dair_root(root) else _dair_roots(root):
            problems += _check_dair(r, progress)
    else:
        problems += _check_opv2v(root, progress)
    return problems
