"""YAML reading and writing for the OPV2V-family logs.

Real OPV2V files load with a safe loader. V2V4Real stores ``lidar_pose`` as a numpy array
serialised with Python tags (``!!python/object/apply:numpy...``); those tags are rebuilt here
by a loader that knows how to make numpy arrays, dtypes, scalars and tuples from plain data
and nothing else, so a log can never run code on the reader's machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from v2x.datasets.errors import DatasetError
from v2x.datasets.files import read_regular

__all__ = ["dump_yaml", "load_yaml"]

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NumpyLoader(_Base):  # type: ignore[misc, valid-type]
    """Safe loader plus numpy's array/dtype/scalar tags rebuilt from data."""


def _construct_tuple(loader, node):
    return tuple(loader.construct_sequence(node, deep=True))


def _construct_name(loader, suffix, node):
    if suffix in ("numpy.ndarray", "numpy.core.multiarray.ndarray"):
        return np.ndarray
    raise yaml.constructor.ConstructorError(None, None, f"refusing python name {suffix!r}", node.start_mark)


def _construct_apply(loader, suffix, node):
    value = (
        loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.MappingNode)
        else {"args": loader.construct_sequence(node, deep=True)}
    )
    args = list(value.get("args", []))
    state = value.get("state")
    if suffix == "numpy.dtype":
        dt = np.dtype(args[0])
        if state and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            dt = dt.newbyteorder(state[1]) if state[1] != "|" else dt
        return dt
    if suffix.endswith("multiarray._reconstruct"):
        if not state or len(state) < 5:
            raise yaml.constructor.ConstructorError(None, None, "numpy array without state", node.start_mark)
        _, shape, dtype, fortran, raw = state[:5]
        arr = np.frombuffer(raw if isinstance(raw, bytes) else bytes(raw), dtype=np.dtype(dtype))
        return arr.reshape(tuple(shape), order="F" if fortran else "C").copy()
    if suffix.endswith("multiarray.scalar"):
        dtype, raw = args[0], args[1]
        return np.frombuffer(raw, dtype=np.dtype(dtype))[0].item()
    raise yaml.constructor.ConstructorError(None, None, f"refusing python object {suffix!r}", node.start_mark)


_NumpyLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)
_NumpyLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", _construct_name)
_NumpyLoader.add_multi_constructor("tag:yaml.org,2002:python/object/apply:", _construct_apply)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping; a file that is not one (or not a regular file, or too large) is a
    :class:`DatasetError`."""
    path = Path(path)
    text = read_regular(path)
    try:
        data = yaml.load(text, Loader=_NumpyLoader)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise DatasetError(path, "yaml", f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(path, "yaml", "top level is not a mapping")
    return data


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def dump_yaml(path: str | Path, data: dict[str, Any]) -> None:
    """Write plain YAML (numpy values become lists and numbers)."""
    Path(path).write_text(yaml.dump(_plain(data), Dumper=_Dumper, sort_keys=False, default_flow_style=None))
