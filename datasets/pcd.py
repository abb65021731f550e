"""PCD point clouds: ascii, binary and binary_compressed, via pypcd4.

Everything leaves here as (N, 4) float32 ``x, y, z, intensity`` with intensity in 0..1,
decoded as each data set stores it:

* ``rgb`` (OPV2V / Open3D): the float32 field's bits as uint32, intensity = red byte / 255
  (the values are subnormal floats: they are reinterpreted, never converted or clamped);
* ``intensity`` as an unsigned integer (DAIR-V2X vehicle side, U1): divided by its type's maximum;
* ``intensity`` as a float (DAIR-V2X infrastructure side, 0..1): taken as is, or divided by
  255 when the file's values exceed 1 (8-bit scale stored as float);
* no intensity field: zeros.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pypcd4 import Encoding, PointCloud

from v2x.datasets.errors import DatasetError

__all__ = ["read_pcd", "read_pcd_header", "write_pcd"]

_ENCODINGS = {
    "ascii": Encoding.ASCII,
    "binary": Encoding.BINARY,
    "binary_compressed": Encoding.BINARY_COMPRESSED,
}


def read_pcd_header(path: str | Path) -> dict[str, str]:
    """The header entries (upper-case keys, raw string values) up to and including DATA."""
    header: dict[str, str] = {}
    try:
        with open(path, "rb") as fh:
            for _ in range(32):
                line = fh.readline()
                if not line:
                    break
                text = line.decode("ascii", errors="replace").strip()
                if not text or text.startswith("#"):
                    continue
                key, _, value = text.partition(" ")
                header[key.upper()] = value.strip()
                if key.upper() == "DATA":
                    break
    except OSError as exc:
        raise DatasetError(path, "file", f"cannot read: {exc.strerror or exc}") from exc
    if "DATA" not in header or "FIELDS" not in header:
        raise DatasetError(path, "header", "not a PCD file (no FIELDS/DATA entries)")
    return header


def _intensity(pc_data: np.ndarray) -> np.ndarray:
    names = pc_data.dtype.names or ()
    if "intensity" in names:
        raw = pc_data["intensity"]
        if np.issubdtype(raw.dtype, np.integer):
            return (raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)).astype(np.float32)
        vals = raw.astype(np.float32)
        finite = vals[np.isfinite(vals)]
        if finite.size and finite.max() > 1.0:
            vals = vals / 255.0
        return vals
    if "rgb" in names:
        bits = np.ascontiguousarray(pc_data["rgb"]).astype(np.float32).view(np.uint32)
        return (((bits >> 16) & 255).astype(np.float32) / 255.0).astype(np.float32)
    return np.zeros(len(pc_data), dtype=np.float32)


def read_pcd(path: str | Path, drop_nonfinite: bool = False) -> np.ndarray:
    """Points of a PCD file as (N, 4) float32 ``x, y, z, intensity`` (0..1).

    A header that disagrees with the data, or NaN/inf coordinates, raise
    :class:`DatasetError`; with ``drop_nonfinite`` non-finite points are dropped instead.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file", "missing")
    header = read_pcd_header(path)
    try:
        declared = int(header.get("POINTS", "-1"))
        width = int(header.get("WIDTH", "-1"))
        height = int(header.get("HEIGHT", "1"))
    except ValueError as exc:
        raise DatasetError(path, "header", f"non-numeric size entry: {exc}") from exc
    if declared >= 0 and width >= 0 and declared != width * height:
        raise DatasetError(
            path, "POINTS", f"header says {declared} points but WIDTH x HEIGHT = {width * height}"
        )
    try:
        pc = PointCloud.from_path(path)
        data = pc.pc_data
    except Exception as exc:  # pypcd4 raises ValueError/struct errors on truncated or corrupt data
        raise DatasetError(path, "data", f"unreadable point data ({type(exc).__name__}: {exc})") from exc
    if declared >= 0 and len(data) != declared:
        raise DatasetError(path, "POINTS", f"header says {declared} points but the data holds {len(data)}")
    names = data.dtype.names or ()
    for axis in ("x", "y", "z"):
        if axis not in names:
            raise DatasetError(path, "FIELDS", f"no {axis!r} field (fields: {' '.join(names)})")
    xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32)
    pts = np.concatenate([xyz, _intensity(data)[:, None]], axis=1)
    bad = ~np.isfinite(pts[:, :3]).all(axis=1)
    if bad.any():
        if not drop_nonfinite:
            raise DatasetError(path, "x/y/z", f"{int(bad.sum())} of {len(pts)} points are NaN or infinite")
        pts = pts[~bad]
    return np.ascontiguousarray(pts, dtype=np.float32)


def write_pcd(
    path: str | Path,
    points: np.ndarray,
    encoding: str = "binary_compressed",
    intensity: str = "float",
    extra_fields: dict[str, np.ndarray] | None = None,
) -> None:
    """Write (N, 4) points; ``intensity`` is stored as ``"float"`` (F4 0..1), ``"uint8"`` (U1
    0..255) or ``"rgb"`` (OPV2V's packed red channel). Atomic: a temp file renamed into place.
    """
    if encoding not in _ENCODINGS:
        raise ValueError(f"unknown PCD encoding {encoding!r}: use {', '.join(_ENCODINGS)}")
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 4)
    cols: list[np.ndarray] = [pts[:, 0], pts[:, 1], pts[:, 2]]
    names: list[str] = ["x", "y", "z"]
    types: list[type] = [np.float32] * 3
    inten = np.clip(pts[:, 3], 0.0, 1.0)
    if intensity == "float":
        cols.append(inten)
        names.append("intensity")
        types.append(np.float32)
    elif intensity == "uint8":
        cols.append(np.round(inten * 255).astype(np.uint8))
        names.append("intensity")
        types.append(np.uint8)
    elif intensity == "rgb":
        red = np.round(inten * 255).astype(np.uint32)
        cols.append((red << 16).view(np.float32))
        names.append("rgb")
        types.append(np.float32)
    else:
        raise ValueError(f"unknown intensity storage {intensity!r}: use float, uint8 or rgb")
    for name, values in (extra_fields or {}).items():
        cols.append(np.asarray(values))
        names.append(name)
        types.append(np.asarray(values).dtype.type)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if encoding == "ascii":
            _write_ascii(tmp, cols, names, types)
        else:
            PointCloud.from_points(cols, names, types).save(tmp, encoding=_ENCODINGS[encoding])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_ascii(path: Path, cols: list[np.ndarray], names: list[str], types: list[type]) -> None:
    """ASCII PCD with 9 significant digits, so every float32 (subnormal ``rgb`` values included)
    reads back bit-exact; pypcd4's own ascii writer rounds those to zero."""
    n = len(cols[0])
    sizes = [np.dtype(t).itemsize for t in types]
    kinds = [
        "F" if np.issubdtype(t, np.floating) else ("U" if np.issubdtype(t, np.unsignedinteger) else "I")
        for t in types
    ]
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(names)}\nSIZE {' '.join(map(str, sizes))}\nTYPE {' '.join(kinds)}\n"
        f"COUNT {' '.join('1' for _ in names)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\nDATA ascii\n"
    )
    fmts = ["%.9g" if k == "F" else "%d" for k in kinds]
    table = np.empty((n, len(cols)), dtype=object) if n else np.zeros((0, len(cols)))
    with open(path, "w") as fh:
        fh.write(header)
        if n:
            for j, c in enumerate(cols):
                table[:, j] = c.astype(np.float64) if kinds[j] == "F" else c.astype(np.int64)
            np.savetxt(fh, table, fmt=fmts, delimiter=" ")
