"""Readers and writers for OPV2V / V2V4Real / DAIR-V2X-C logs and their validation (``v2x.datasets``).

``open_log(path)`` detects the format and returns a lazily loaded log of
:class:`v2x.core.frame.Frame` objects, all in the same right-handed conventions.
"""

from __future__ import annotations

from pathlib import Path

from v2x.datasets.errors import DatasetError

__all__ = ["FORMATS", "ConcatLog", "DatasetError", "detect_format", "open_log"]

FORMATS = ("opv2v", "v2v4real", "dair-v2x-c")


def detect_format(path: str | Path) -> str:
    """``"opv2v"``, ``"v2v4real"`` or ``"dair-v2x-c"``; a :class:`DatasetError` for anything else."""
    from v2x.datasets.dair import is_dair_root
    from v2x.datasets.opv2v import OPV2VLog, is_opv2v_root

    path = Path(path)
    if not path.is_dir():
        raise DatasetError(path, "folder", "missing or not a folder")
    if is_dair_root(path) or _dair_roots(path):
        return "dair-v2x-c"
    if is_opv2v_root(path):
        return OPV2VLog(path).format
    raise _unknown_format(path)


def _unknown_format(path: Path) -> DatasetError:
    return DatasetError(
        path,
        "format",
        "not a known log: expected OPV2V/V2V4Real scenario folders or a DAIR-V2X-C cooperative/data_info.json",
    )


def open_log(
    path: str | Path,
    max_cav: int = 5,
    comm_range: float | None = None,
    skip_bad: bool = False,
    max_time_offset_ms: float | None = None,
):
    """A lazily loaded log: ``len``, indexing and iteration give frames, ego first.

    ``max_cav`` caps the agents per frame (the papers use 5; DAIR-V2X-C has 2),
    ``comm_range`` drops agents farther from the ego in BEV (default: 70 m for OPV2V, V2XSet
    and V2V4Real, 100 m for DAIR-V2X-C, as the reference loaders do). With ``skip_bad``,
    iteration skips frames with a broken file and lists them in ``log.skipped``, and NaN/inf
    points are dropped and counted in ``log.dropped_points``; without it both raise
    :class:`DatasetError`. Point clouds are read when a frame is accessed, never up front.
    ``max_time_offset_ms`` (DAIR-V2X-C; default 100 ms) is the vehicle/roadside scan time
    offset beyond which a pair is listed in ``log.offsets_over_limit``.
    """
    from v2x.datasets.dair import DairLog, is_dair_root
    from v2x.datasets.opv2v import OPV2VLog, is_opv2v_root

    path = Path(path)
    if not path.is_dir():
        raise DatasetError(path, "folder", "missing or not a folder")
    dair = {"max_cav": min(max_cav, 2), "comm_range": comm_range, "skip_bad": skip_bad}
    dair["max_time_offset_ms"] = max_time_offset_ms
    if is_dair_root(path):
        return DairLog(path, **dair)
    roots = _dair_roots(path)
    if roots:
        parts = [DairLog(r, **dair) for r in roots]
        return ConcatLog(parts, [r.relative_to(path).as_posix() for r in roots])
    if is_opv2v_root(path):
        return OPV2VLog(path, max_cav=max_cav, comm_range=comm_range, skip_bad=skip_bad)
    raise _unknown_format(path)


def _dair_roots(path: Path) -> list[Path]:
    """DAIR-V2X-C trees one or two levels below ``path`` (our simulator writes one per scene)."""
    from v2x.datasets.dair import is_dair_root
    from v2x.datasets.opv2v import _subdirs

    found = []
    for child in _subdirs(path):
        if is_dair_root(child):
            found.append(child)
        else:
            found.extend(g for g in _subdirs(child) if is_dair_root(g))
    return found


class ConcatLog:
    """Several logs of one format read as one; scenario names are prefixed by their folder."""

    def __init__(self, parts: list, names: list[str]) -> None:
        self.parts = parts
        self.names = names
        self.format = parts[0].format if parts else "dair-v2x-c"
        self._index = [(p, i) for p, log in enumerate(parts) for i in range(len(log))]
        self.skipped: list[tuple[str, str]] = []

    @property
    def missing(self) -> list:
        return [m for log in self.parts for m in getattr(log, "missing", [])]

    @property
    def dropped_agents(self) -> int:
        return sum(getattr(log, "dropped_agents", 0) for log in self.parts)

    @property
    def out_of_range_agents(self) -> int:
        return sum(getattr(log, "out_of_range_agents", 0) for log in self.parts)

    @property
    def dropped_points(self) -> int:
        return sum(getattr(log, "dropped_points", 0) for log in self.parts)

    @property
    def dropped_objects(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for log in self.parts:
            for reason, count in getattr(log, "dropped_objects", {}).items():
                out[reason] = out.get(reason, 0) + count
        return out

    @property
    def gt_out_of_range(self) -> int:
        return sum(getattr(log, "gt_out_of_range", 0) for log in self.parts)

    @property
    def ignored(self) -> list:
        return [x for log in self.parts for x in getattr(log, "ignored", [])]

    @property
    def time_offsets_ms(self) -> dict[str, float]:
        return {
            f"{n}/{k}": v
            for n, log in zip(self.names, self.parts, strict=True)
            for k, v in getattr(log, "time_offsets_ms", {}).items()
        }

    @property
    def offsets_over_limit(self) -> list[tuple[str, float]]:
        return [
            (f"{n}/{k}", v)
            for n, log in zip(self.names, self.parts, strict=True)
            for k, v in getattr(log, "offsets_over_limit", [])
        ]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int):
        p, j = self._index[i]
        frame = self.parts[p][j]
        frame.scenario = f"{self.names[p]}/{frame.scenario}"
        return frame

    def __iter__(self):
        yield from self._iter(range(len(self)))

    def iter_scenario(self, scenario: str):
        """One scenario's frames in time order (``skip_bad`` applies as in iteration)."""
        yield from self._iter(self.scenario_indices(scenario))

    def _iter(self, indices):
        for i in indices:
            try:
                yield self[i]
            except DatasetError as exc:
                if not getattr(self.parts[self._index[i][0]], "skip_bad", False):
                    raise
                self.skipped.append((self.frame_name(i), str(exc)))

    def frame_name(self, i: int) -> str:
        p, j = self._index[i]
        return f"{self.names[p]}/{self.parts[p].frame_name(j)}"

    def scenarios(self) -> list[str]:
        return [f"{n}/{s}" for n, log in zip(self.names, self.parts, strict=True) for s in log.scenarios()]

    def scenario_indices(self, scenario: str) -> list[int]:
        return [i for i in range(len(self)) if self.frame_name(i).startswith(scenario + "/")]
