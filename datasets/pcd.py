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
import struct
from pathlib import Path

import numpy as np
from pypcd4 import Encoding, PointCloud

from v2x.datasets.errors import DatasetError
from v2x.datasets.files import stat_file

__all__ = ["read_pcd", "read_pcd_counted", "read_pcd_header", "write_pcd"]

_ENCODINGS = {
    "ascii": Encoding.ASCII,
    "binary": Encoding.BINARY,
    "binary_compressed": Encoding.BINARY_COMPRESSED,
}
#: the most points a file may declare, checked before anything is allocated from the header
#: (real scans hold 30k-260k points)
MAX_POINTS = 20_000_000
MAX_PCD_BYTES = 4 * 1024**3
_TYPE_SIZES = {"F": (4, 8), "U": (1, 2, 4, 8), "I": (1, 2, 4, 8)}
_MAX_ENTRIES = 10  # VERSION FIELDS SIZE TYPE COUNT WIDTH HEIGHT VIEWPOINT POINTS DATA (pypcd4 reads no more)


def _parse_header(path: str | Path) -> tuple[dict[str, str], int]:
    """Header entries (upper-case keys, raw values) up to DATA, and the byte offset of the data."""
    stat_file(path, MAX_PCD_BYTES)
    header: dict[str, str] = {}
    offset = 0
    try:
        with open(path, "rb") as fh:
            for _ in range(64):
                line = fh.readline(4096)
                if not line:
                    break
                offset += len(line)
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
    if len(header) > _MAX_ENTRIES:
        raise DatasetError(
            path, "header", f"{len(header)} entries before DATA; a PCD header has {_MAX_ENTRIES}"
        )
    return header, offset


def read_pcd_header(path: str | Path) -> dict[str, str]:
    """The header entries (upper-case keys, raw string values) up to and including DATA."""
    return _parse_header(path)[0]


def _ints(path: Path, header: dict[str, str], key: str, default: str, lo: int, hi: int) -> list[int]:
    try:
        values = [int(v) for v in header.get(key, default).split()]
    except ValueError:
        raise DatasetError(path, key, f"not an integer: {header.get(key)!r}") from None
    for v in values:
        if not lo <= v <= hi:
            raise DatasetError(path, key, f"{v} is outside {lo}..{hi}")
    return values


def _check_header(path: Path, header: dict[str, str], data_offset: int) -> int:
    """Header entries that contradict each other or the payload, checked before anything is read
    or allocated from them; returns the declared point count."""
    fields = header["FIELDS"].split()
    for key in ("SIZE", "TYPE"):
        if key not in header:
            raise DatasetError(path, key, "missing")
    for key in ("SIZE", "TYPE", "COUNT"):
        if key in header and len(header[key].split()) != len(fields):
            raise DatasetError(
                path, key, f"{len(header[key].split())} entries for {len(fields)} FIELDS ({header['FIELDS']})"
            )
    (width,) = _ints(path, header, "WIDTH", "-1", -1, MAX_POINTS)
    (height,) = _ints(path, header, "HEIGHT", "1", 0, MAX_POINTS)
    (declared,) = _ints(path, header, "POINTS", str(max(width, 0) * height), 0, MAX_POINTS)
    sizes = _ints(path, header, "SIZE", "", 1, 8)
    counts = _ints(path, header, "COUNT", " ".join("1" for _ in fields), 1, 1024)
    for t, size in zip(header["TYPE"].split(), sizes, strict=True):
        if size not in _TYPE_SIZES.get(t, ()):
            raise DatasetError(
                path, "TYPE", f"type {t!r} of {size} bytes: expected F (4, 8), U or I (1, 2, 4, 8)"
            )
    encoding = header["DATA"].lower()
    if encoding not in _ENCODINGS:
        raise DatasetError(
            path, "DATA", f"unknown encoding {header['DATA']!r}: expected {', '.join(_ENCODINGS)}"
        )
    if width >= 0 and declared != width * height:
        raise DatasetError(
            path, "POINTS", f"header says {declared} points but WIDTH x HEIGHT = {width * height}"
        )
    expected = declared * sum(s * c for s, c in zip(sizes, counts, strict=True))
    actual = os.path.getsize(path) - data_offset
    if encoding == "binary" and actual != expected:
        raise DatasetError(
            path,
            "POINTS",
            f"header says {declared} points ({expected} bytes) but the file holds {actual} data bytes",
        )
    if encoding == "binary_compressed" and (declared or actual):
        _check_compressed(path, data_offset, actual, declared, expected)
    if encoding == "ascii":
        rows = _ascii_rows(path, data_offset)
        if rows != declared:
            raise DatasetError(
                path, "POINTS", f"header says {declared} points but the file holds {rows} rows"
            )
    return declared


def _check_compressed(path: Path, offset: int, actual: int, declared: int, expected: int) -> None:
    """A binary_compressed payload opens with its compressed and uncompressed sizes: both must
    agree with the header and the file before the decompressor allocates from them."""
    if actual < 8:
        raise DatasetError(path, "data", f"{actual} data bytes: too short for a binary_compressed block")
    with open(path, "rb") as fh:
        fh.seek(offset)
        compressed, uncompressed = struct.unpack("<II", fh.read(8))
    if uncompressed != expected:
        raise DatasetError(
            path,
            "POINTS",
            f"header says {declared} points ({expected} bytes) but the compressed block holds {uncompressed} bytes",
        )
    if compressed > actual - 8:
        raise DatasetError(
            path, "data", f"compressed block of {compressed} bytes but only {actual - 8} bytes follow"
        )


def _ascii_rows(path: Path, offset: int) -> int:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return sum(1 for line in fh if line.strip())


def _intensity(pc_data: np.ndarray) -> np.ndarray:
    names = pc_data.dtype.names or ()
    if "intensity" in names:
        raw = pc_data["intensity"]
        if np.issubdtype(raw.dtype, np.integer):
            return (raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)).astype(np.float32)
        vals = raw.astype(np.float32)
        finite = vals[np.isfinite(vals)]
        if finite.size and finite.max() > 1.0:
            vals = vals / 255.0  # an 8-bit scale stored as float
        return vals
    if "rgb" in names:
        raw = np.ascontiguousarray(pc_data["rgb"])
        # Open3D/PCL pack the colour as a float32 whose bits are 0x00RRGGBB; some writers declare
        # it U4 instead. Either way the red byte is the intensity.
        bits = raw.astype(np.float32).view(np.uint32) if raw.dtype.kind == "f" else raw.astype(np.uint32)
        return (((bits >> 16) & 255).astype(np.float32) / 255.0).astype(np.float32)
    return np.zeros(len(pc_data), dtype=np.float32)


def read_pcd_counted(path: str | Path, drop_nonfinite: bool = False) -> tuple[np.ndarray, int]:
    """:func:`read_pcd` plus the number of non-finite points dropped (0 unless ``drop_nonfinite``)."""
    path = Path(path)
    header, offset = _parse_header(path)
    declared = _check_header(path, header, offset)
    try:
        data = PointCloud.from_path(path).pc_data
    except Exception as exc:  # pypcd4 raises ValueError/struct/zlib errors on truncated or corrupt data
        raise DatasetError(path, "data", f"unreadable point data ({type(exc).__name__}: {exc})") from exc
    if len(data) != declared:
        raise DatasetError(path, "POINTS", f"header says {declared} points but the data holds {len(data)}")
    names = data.dtype.names or ()
    for axis in ("x", "y", "z"):
        if axis not in names:
            raise DatasetError(path, "FIELDS", f"no {axis!r} field (fields: {' '.join(names)})")
    pts = np.empty((len(data), 4), dtype=np.float32)
    for j, axis in enumerate("xyz"):
        pts[:, j] = data[axis]
    pts[:, 3] = _intensity(data)
    finite = np.isfinite(pts)
    if not finite.all():
        bad = ~finite.all(axis=1)
        if not drop_nonfinite:
            columns = ["x", "y", "z", "intensity" if "intensity" in names else "rgb"]
            where = ", ".join(c for j, c in enumerate(columns) if not finite[:, j].all())
            raise DatasetError(path, where, f"{int(bad.sum())} of {len(pts)} points are NaN or infinite")
        return np.ascontiguousarray(pts[~bad]), int(bad.sum())
    return pts, 0


def read_pcd(path: str | Path, drop_nonfinite: bool = False) -> np.ndarray:
    """Points of a PCD file as (N, 4) float32 ``x, y, z, intensity`` (0..1).

    A header that contradicts itself or the data, or NaN/inf values, raise
    :class:`DatasetError` naming the file and the field; with ``drop_nonfinite`` points with a
    non-finite value are dropped instead (:func:`read_pcd_counted` says how many).
    """
    return read_pcd_counted(path, drop_nonfinite)[0]


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
