"""Node parameters: YAML files plus ``key=value`` overrides from the command line.

Values in overrides are read as YAML (``rate_hz=20`` is an int, ``topics=[/a, /b]`` a list,
``name=ego`` a string); dotted keys reach into nested mappings (``channel.loss=0.1``). Later
sources win: the launch file's ``params``, then a ``params_file``, then ``--set`` overrides.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ParamError", "apply_overrides", "coerce", "load_params", "merge"]


class ParamError(ValueError):
    """A parameter file, override or value that cannot be used (names which one)."""


def load_params(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """Parameters from a YAML mapping; ``section`` picks one node's block (``{talker: {...}}``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ParamError(f"{path}: cannot read parameter file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML: {exc}") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ParamError(f"{path}: a parameter file is a mapping, not {type(data).__name__}")
    if section is not None and section in data and isinstance(data[section], dict):
        data = data[section]
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``; nested mappings merge key by key."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(params: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``params`` with ``key=value`` / ``a.b.c=value`` overrides applied (values read as YAML)."""
    out = copy.deepcopy(params)
    for ov in overrides:
        key, sep, text = ov.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ParamError(f"override {ov!r}: expected KEY=VALUE (KEY may be dotted: a.b=1)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ParamError(f"override {ov!r}: value is not valid YAML: {exc}") from exc
        *parents, leaf = key.split(".")
        target = out
        for p in parents:
            nxt = target.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ParamError(f"override {ov!r}: {p!r} is {type(nxt).__name__}, not a mapping")
            target = nxt
        target[leaf] = value
    return out


def coerce(node: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (ints widen to floats); :class:`ParamError` if not."""
    if default is None or value is None:
        return value
    where = f"node {node!r}: parameter {key!r}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ParamError(f"{where} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ParamError(f"{where} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ParamError(f"{where} must be a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ParamError(f"{where} must be a string, got {value!r}")
    if isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ParamError(f"{where} must be a list, got {value!r}")
    if isinstance(default, dict):
        if isinstance(value, dict):
            return value
        raise ParamError(f"{where} must be a mapping, got {value!r}")
    return value
