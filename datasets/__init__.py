"""Readers and writers for OPV2V / V2V4Real / DAIR-V2X-C logs and their validation (``v2x.datasets``).

``open_log(path)`` detects the format and returns a lazily loaded log of
:class:`v2x.frame.Frame` objects, all in the same right-handed conventions.
"""

from __future__ import annotations

from pathlib import Path

from v2x.datasets.errors import DatasetError

__all__ = ["FORMATS", "DatasetError", "detect_format", "open_log"]

FORMATS = ("opv2v", "v2v4real", "dair-v2x-c")


def detect_format(path: str | Path) -> str:
    """``"opv2v"``, ``"v2v4real"`` or ``"dair-v2x-c"``; a :class:`DatasetError` for anything else."""
    from v2x.datasets.dair import is_dair_root
    from v2x.datasets.opv2v import OPV2VLog, is_opv2v_root

    path = Path(path)
    if not path.is_dir():
        raise DatasetError(path, "folder", "missing or not a folder")
    if is_dair_root(path):
        return "dair-v2x-c"
    if is_opv2v_root(path):
        return OPV2VLog(path).format
    raise DatasetError(
        path,
        "format",
        "not a known log: expected OPV2V/V2V4Real scenario folders or a DAIR-V2X-C cooperative/data_info.json",
    )


def open_log(path: str | Path, max_cav: int = 5, comm_range: float | None = None, skip_bad: bool = False):
    """A lazily loaded log: ``len``, indexing and iteration give frames, ego first.

    ``max_cav`` caps the agents per frame (the papers use 5; DAIR-V2X-C has 2),
    ``comm_range`` drops agents farther from the ego (default 70 m for OPV2V, 100 m for
    DAIR-V2X-C, unlimited for V2V4Real), ``skip_bad`` skips and counts broken frames when
    iterating instead of raising.
    """
    from v2x.datasets.dair import DairLog
    from v2x.datasets.opv2v import OPV2VLog

    fmt = detect_format(path)
    if fmt == "dair-v2x-c":
        return DairLog(path, max_cav=min(max_cav, 2), comm_range=comm_range, skip_bad=skip_bad)
    return OPV2VLog(path, max_cav=max_cav, comm_range=comm_range, skip_bad=skip_bad)
