"""Numbers read from log files, checked where they are read.

YAML and JSON give whatever the file holds: strings (DAIR writes numbers as strings), booleans
(YAML reads ``yes`` as true), ``.inf``, ``1e30``. A value that is not the number a field needs is
a :class:`DatasetError` naming the file and the field, and a whole number is bounded before it
becomes an index, a time stamp or an array size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from v2x.datasets.errors import DatasetError

__all__ = ["any_float", "number", "whole"]


def any_float(value: Any, path: str | Path, field: str) -> float:
    """A float, NaN and infinities included (callers that drop such values count them)."""
    if isinstance(value, bool):
        raise DatasetError(path, field, f"not a number: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DatasetError(path, field, f"not a number: {value!r}") from exc


def number(value: Any, path: str | Path, field: str) -> float:
    """A finite float."""
    v = any_float(value, path, field)
    if not math.isfinite(v):
        raise DatasetError(path, field, f"not finite: {value!r}")
    return v


def whole(value: Any, path: str | Path, field: str, lo: int, hi: int) -> int:
    """A whole number within ``lo..hi``: an int, or a float or string holding one (strings of
    digits are read exactly, whatever their length)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        v = int(value)
    else:
        try:
            v = int(value.strip()) if isinstance(value, str) else None
        except ValueError:
            v = None
        if v is None:
            f = number(value, path, field)
            if f != int(f):
                raise DatasetError(path, field, f"not a whole number: {value!r}")
            v = int(f)
    if not lo <= v <= hi:
        raise DatasetError(path, field, f"{value!r} is outside {lo}..{hi}")
    return v
