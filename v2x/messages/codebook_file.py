"""The codebook as a language-neutral file: safetensors with the identity in its metadata.

A foreign receiver rebuilds features from this file alone (``docs/wire-format.md``, The
codebook file). Layout, as safetensors defines it:

* 8 bytes: ``N``, the header's length, little-endian u64;
* ``N`` bytes: a UTF-8 JSON header, padded with spaces so the data starts 8-byte aligned:
  ``{"__metadata__": {...strings...}, "codewords": {"dtype": "F32", "shape": [r, m, k, C/m],
  "data_offsets": [0, 4 r m k C/m]}}``;
* the data: ``codewords[stage][sub][code][dim]``, float32 little-endian, C order.

The metadata repeats the shape (``channels``, ``m``, ``r``, ``k``, ``bits``) and carries the
``identity`` a codebook message's header holds. Reading recomputes the identity and refuses a
file whose tensors or shape do not match it. Only numpy and the standard library are used:
the format needs no torch and no safetensors package.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CodebookFileError",
    "identity_hex",
    "identity_text",
    "read_codebook_file",
    "write_codebook_file",
]

FORMAT = "v2x-codebook"
FORMAT_VERSION = "1"
#: the configuration fields, in the (sorted) order the identity hashes them
CONFIG_KEYS = ("channels", "k", "m", "r")
_MAX_HEADER = 1 << 20  # the header is a few hundred bytes; anything near this is not ours


class CodebookFileError(ValueError):
    """A codebook file that cannot be read, or whose identity does not match its contents."""


def identity_text(config: dict[str, int]) -> str:
    """The text the identity hashes first: ``[('channels', 64), ('k', 64), ('m', 2), ('r', 2)]``."""
    return "[" + ", ".join(f"('{key}', {int(config[key])})" for key in CONFIG_KEYS) + "]"


def identity_hex(config: dict[str, int], codewords: np.ndarray) -> str:
    """SHA-256 (hex) of :func:`identity_text` then the codewords as little-endian float32, C order.
    Its first 8 hex digits, read as a number, are the identity in codebook messages."""
    h = hashlib.sha256(identity_text(config).encode("ascii"))
    h.update(np.ascontiguousarray(codewords, dtype="<f4").tobytes())
    return h.hexdigest()


def _check_shape(config: dict[str, int], shape: tuple[int, ...]) -> None:
    r, m, k, c = (int(config[key]) for key in ("r", "m", "k", "channels"))
    if m < 1 or c % m or tuple(shape) != (r, m, k, c // m):
        raise CodebookFileError(f"codewords of shape {tuple(shape)} do not fit r={r} m={m} k={k} C={c}")


def write_codebook_file(path: str | Path, config: dict[str, int], codewords: np.ndarray, **extra: str) -> str:
    """Write ``codewords`` (r, m, k, C/m) with ``config`` (channels, m, r, k); returns the
    identity's full hex. ``extra``: more metadata strings (provenance: command, detector)."""
    cfg = {key: int(config[key]) for key in CONFIG_KEYS}
    data = np.ascontiguousarray(codewords, dtype="<f4")
    _check_shape(cfg, data.shape)
    digest = identity_hex(cfg, data)
    meta = {str(k): str(v) for k, v in extra.items()}
    meta |= {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "identity": f"{int(digest[:8], 16):#010x}",
        "identity_sha256": digest,
        "bits": str(max(1, math.ceil(math.log2(cfg["k"])))),
        **{key: str(v) for key, v in cfg.items()},
    }
    header = {
        "__metadata__": dict(sorted(meta.items())),
        "codewords": {"dtype": "F32", "shape": list(data.shape), "data_offsets": [0, data.nbytes]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + data.tobytes())
    return digest


def read_codebook_file(path: str | Path) -> tuple[dict[str, int], np.ndarray, dict[str, str]]:
    """(config, codewords (r, m, k, C/m) float32, metadata) of a file :func:`write_codebook_file`
    wrote; :class:`CodebookFileError` if it is not one, or its identity does not match."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise CodebookFileError(f"{path}: {len(raw)} bytes, not a safetensors file")
    (n,) = struct.unpack_from("<Q", raw)
    if n > min(_MAX_HEADER, len(raw) - 8):
        raise CodebookFileError(f"{path}: header length {n} does not fit the file")
    try:
        header = json.loads(raw[8 : 8 + n].decode())
        meta = header.pop("__metadata__")
        if not isinstance(meta, dict):
            raise TypeError("__metadata__ is not a mapping")
        (name, spec), *more = header.items()
        dtype, shape, (begin, end) = spec["dtype"], tuple(spec["shape"]), spec["data_offsets"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CodebookFileError(f"{path}: not a v2x codebook file ({exc!r})") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CodebookFileError(f"{path}: format {meta.get('format')!r} {meta.get('format_version')!r}")
    if name != "codewords" or more or dtype != "F32":
        raise CodebookFileError(f"{path}: expected one F32 tensor 'codewords', got {name!r} ({dtype})")
    try:
        config = {key: int(meta[key]) for key in CONFIG_KEYS}
    except (KeyError, ValueError) as exc:
        raise CodebookFileError(f"{path}: metadata lacks {exc}") from exc
    _check_shape(config, shape)
    data = raw[8 + n :]
    if begin != 0 or end != 4 * math.prod(shape) or end != len(data):
        raise CodebookFileError(f"{path}: data offsets {begin}..{end} for {len(data)} bytes of data")
    codewords = np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)
    digest = identity_hex(config, codewords)
    if digest != meta.get("identity_sha256") or f"{int(digest[:8], 16):#010x}" != meta.get("identity"):
        raise CodebookFileError(
            f"{path}: contents hash to {digest[:8]}, the file says {meta.get('identity')}"
        )
    return config, codewords, meta
