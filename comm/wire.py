"""Wire format v1: every byte a cooperative-perception message puts on the link.

Layout (little-endian; the full specification with examples is ``docs/wire-format.md``)::

    header (64 bytes, fixed)
      0  4  magic "V2XM"
      4  1  version (1)
      5  1  message type (1 codebook features, 2 raw fp32 features, 3 raw fp16 features,
            4 detections, 5 demand, 6 offer)
      6  1  flags: bits 0-1 cell-index coding (0 none, 1 bitmap, 2 delta+varint, 3 run-length),
            bit 2 detections block follows, bit 3 detections carry variances
      7  1  bits per codebook index (0 when not codebook)
      8  4  sender id (int32)
     12  4  sequence number (uint32)
     16  8  capture time stamp, ns (int64)
     24  8  sender BEV pose x (float64, metres, world)
     32  8  sender BEV pose y (float64)
     40  4  sender BEV pose z (float32)
     44  4  sender BEV pose yaw (float32, radians)
     48  4  grid fingerprint (uint32)
     52  4  codebook identity (uint32; 0 if none)
     56  4  payload length in bytes (uint32)
     60  4  CRC-32 (zlib) of bytes 0..59 and the payload
    payload (type specific, see the document)

Decoding untrusted bytes never raises anything but :class:`WireError` subclasses and never
allocates more than the header declares, capped by the grid and the limits below.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

__all__ = [
    "HEADER",
    "MAX_DETECTIONS",
    "CellCoding",
    "DecodedMessage",
    "Header",
    "MessageType",
    "WireError",
    "decode",
    "decode_cells",
    "encode",
    "encode_cells",
    "pack_bits",
    "unpack_bits",
]

MAGIC = b"V2XM"
VERSION = 1
HEADER = struct.Struct("<4sBBBBiIqddffIIII")
assert HEADER.size == 64
MAX_DETECTIONS = 4096
MAX_PAYLOAD = 64 * 1024 * 1024
#: counters of refused messages by reason, readable by nodes and tests
REJECTED: Counter[str] = Counter()


class MessageType(IntEnum):
    CODEBOOK = 1
    RAW_FP32 = 2
    RAW_FP16 = 3
    DETECTIONS = 4
    DEMAND = 5
    OFFER = 6


class CellCoding(IntEnum):
    NONE = 0
    BITMAP = 1
    DELTA_VARINT = 2
    RUN_LENGTH = 3


class WireError(ValueError):
    """A message that cannot be decoded; ``reason`` is a short stable code (also counted)."""

    reason = "malformed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        REJECTED[self.reason] += 1


class TruncatedError(WireError):
    reason = "truncated"


class OversizedError(WireError):
    reason = "oversized"


class BadMagicError(WireError):
    reason = "bad_magic"


class VersionError(WireError):
    reason = "unsupported_version"


class ChecksumError(WireError):
    reason = "bad_checksum"


class CellIndexError(WireError):
    reason = "cell_outside_grid"


class CodeIndexError(WireError):
    reason = "code_out_of_range"


class CodebookMismatchError(WireError):
    reason = "codebook_mismatch"


class GridMismatchError(WireError):
    reason = "grid_mismatch"


@dataclass
class Header:
    type: MessageType
    sender: int
    seq: int
    stamp_ns: int
    pose: tuple[float, float, float, float]  # x, y, z, yaw of the sender's BEV frame in the world
    grid_id: int
    codebook_id: int = 0
    coding: CellCoding = CellCoding.NONE
    has_detections: bool = False
    has_variances: bool = False
    code_bits: int = 0


@dataclass
class DecodedMessage:
    header: Header
    cells: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # flat cell indices
    codes: np.ndarray | None = None  # (n, r*m) codebook indices
    features: np.ndarray | None = None  # (n, C) raw features
    levels: np.ndarray | None = None  # demand / offer: per-cell levels (uint8)
    detections: np.ndarray | None = None  # (n, 7) boxes in the sender's BEV frame
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    variances: np.ndarray | None = None  # (n, 7)


# -- varints and bit packing ------------------------------------------------------------------
def _varint_encode(values: np.ndarray) -> bytes:
    """LEB128 of non-negative integers, vectorised: 7 bits per byte, high bit = more follows."""
    v = np.asarray(values, dtype=np.uint64)
    if len(v) == 0:
        return b""
    nbytes = np.maximum(1, (np.floor(np.log2(np.maximum(v, 1).astype(np.float64)) / 7) + 1).astype(np.int64))
    nbytes[v == 0] = 1
    total = int(nbytes.sum())
    out = np.zeros(total, dtype=np.uint8)
    pos = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    rem = v.copy()
    for k in range(int(nbytes.max())):
        active = nbytes > k
        byte = (rem[active] & np.uint64(0x7F)).astype(np.uint8)
        more = nbytes[active] > k + 1
        out[pos[active] + k] = byte | (more.astype(np.uint8) << 7)
        rem[active] >>= np.uint64(7)
    return out.tobytes()


def _varint_decode(buf: memoryview, count: int, what: str) -> tuple[np.ndarray, int]:
    """``count`` LEB128 integers from ``buf``; returns the values and the bytes consumed."""
    data = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(data < 0x80)
    if len(ends) < count:
        raise TruncatedError(f"{what}: expected {count} varints, the payload holds {len(ends)}")
    ends = ends[:count]
    used = int(ends[-1]) + 1 if count else 0
    starts = np.concatenate([[0], ends[:-1] + 1]) if count else np.zeros(0, np.int64)
    lengths = ends - starts + 1
    if count and lengths.max() > 9:
        raise WireError(f"{what}: varint longer than 9 bytes")
    values = np.zeros(count, dtype=np.uint64)
    for k in range(int(lengths.max()) if count else 0):
        active = lengths > k
        values[active] |= (data[starts[active] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    return values.astype(np.int64), used


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers at ``bits`` bits each, most significant bit first, zero-padded to a byte."""
    v = np.asarray(values, dtype=np.uint32).ravel()
    if bits == 0 or len(v) == 0:
        return b""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bit_matrix = ((v[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.ravel()).tobytes()


def unpack_bits(buf: bytes | memoryview, count: int, bits: int) -> np.ndarray:
    need = (count * bits + 7) // 8
    if len(buf) < need:
        raise TruncatedError(f"bit-packed indices: need {need} bytes, have {len(buf)}")
    if count == 0 or bits == 0:
        return np.zeros(count, dtype=np.int64)
    flat = np.unpackbits(np.frombuffer(buf[:need], dtype=np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return flat.astype(np.int64) @ weights


# -- cell index coding ------------------------------------------------------------------------
def _cells_bitmap(cells: np.ndarray, num_cells: int) -> bytes:
    bitmap = np.zeros(num_cells, dtype=np.uint8)
    bitmap[cells] = 1
    return np.packbits(bitmap).tobytes()


def _cells_delta(cells: np.ndarray) -> bytes:
    return _varint_encode(np.diff(np.concatenate([[-1], cells])) - 1)


def _runs(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(cells) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    breaks = np.flatnonzero(np.diff(cells) != 1) + 1
    starts = cells[np.concatenate([[0], breaks])]
    ends = cells[np.concatenate([breaks - 1, [len(cells) - 1]])]
    return starts, ends - starts + 1


def _cells_rle(cells: np.ndarray) -> bytes:
    starts, lengths = _runs(cells)
    prev_end = np.concatenate([[0], starts[:-1] + lengths[:-1]]) if len(starts) else np.zeros(0, np.int64)
    gaps = starts - prev_end
    inter = np.empty(2 * len(starts), dtype=np.int64)
    inter[0::2], inter[1::2] = gaps, lengths - 1
    return _varint_encode(np.array([len(starts)])) + _varint_encode(inter)


def encode_cells(
    cells: np.ndarray, num_cells: int, coding: CellCoding | None = None
) -> tuple[CellCoding, bytes]:
    """The set of flat cell indices in the smallest coding (or the one asked for).

    Every coding is preceded by the cell count as a varint.
    """
    cells = np.unique(np.asarray(cells, dtype=np.int64))
    if len(cells) and (cells[0] < 0 or cells[-1] >= num_cells):
        raise ValueError(f"cell index outside the grid of {num_cells} cells")
    count = _varint_encode(np.array([len(cells)]))
    options = {
        CellCoding.BITMAP: lambda: _cells_bitmap(cells, num_cells),
        CellCoding.DELTA_VARINT: lambda: _cells_delta(cells),
        CellCoding.RUN_LENGTH: lambda: _cells_rle(cells),
    }
    if coding is not None:
        return coding, count + options[coding]()
    best = min(((c, f()) for c, f in options.items()), key=lambda cb: len(cb[1]))
    return best[0], count + best[1]


def decode_cells(buf: memoryview, coding: CellCoding, num_cells: int) -> tuple[np.ndarray, int]:
    """Cells and bytes consumed; refuses counts and indices that do not fit the grid."""
    (n,), used = _varint_decode(buf, 1, "cell count")
    n = int(n)
    if n > num_cells:
        raise CellIndexError(f"{n} cells declared, the grid has {num_cells}")
    rest = buf[used:]
    if coding == CellCoding.BITMAP:
        nbytes = (num_cells + 7) // 8
        if len(rest) < nbytes:
            raise TruncatedError(f"cell bitmap: need {nbytes} bytes, have {len(rest)}")
        bits = np.unpackbits(np.frombuffer(rest[:nbytes], dtype=np.uint8))
        if bits[num_cells:].any():
            raise CellIndexError("cell bitmap sets bits beyond the grid")
        cells = np.flatnonzero(bits[:num_cells])
        if len(cells) != n:
            raise WireError(f"cell bitmap holds {len(cells)} cells, the count says {n}")
        return cells.astype(np.int64), used + nbytes
    if coding == CellCoding.DELTA_VARINT:
        deltas, k = _varint_decode(rest, n, "cell deltas")
        cells = np.cumsum(deltas + 1) - 1
        if n and cells[-1] >= num_cells:
            raise CellIndexError(f"cell index {int(cells[-1])} outside the grid of {num_cells}")
        return cells, used + k
    if coding == CellCoding.RUN_LENGTH:
        (runs,), k1 = _varint_decode(rest, 1, "run count")
        runs = int(runs)
        if runs > n:
            raise WireError(f"{runs} runs for {n} cells")
        vals, k2 = _varint_decode(rest[k1:], 2 * runs, "runs")
        gaps, lengths = vals[0::2], vals[1::2] + 1
        if lengths.sum() != n:
            raise WireError(f"runs cover {int(lengths.sum())} cells, the count says {n}")
        starts = np.cumsum(gaps + np.concatenate([[0], lengths[:-1]]))
        if runs and starts[-1] + lengths[-1] > num_cells:
            raise CellIndexError("a run reaches beyond the grid")
        cells = np.repeat(starts, lengths) + (np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        return cells.astype(np.int64), used + k1 + k2
    if coding == CellCoding.NONE and n == 0:
        return np.zeros(0, np.int64), used
    raise WireError(f"unknown cell coding {int(coding)}")


# -- detections ---------------------------------------------------------------------------------
_DET = struct.Struct("<hhhHHHhBB")  # x, y, z (cm), l, w, h (cm), yaw (pi/32767), score (1/255), class
DETECTION_BYTES = _DET.size
VARIANCE_BYTES = 14  # 7 x float16


def _encode_detections(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, variances: np.ndarray | None
) -> bytes:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    n = len(b)
    if n > MAX_DETECTIONS:
        raise ValueError(f"at most {MAX_DETECTIONS} detections per message, got {n}")
    rec = np.zeros(
        n,
        dtype=[
            ("x", "<i2"),
            ("y", "<i2"),
            ("z", "<i2"),
            ("l", "<u2"),
            ("w", "<u2"),
            ("h", "<u2"),
            ("yaw", "<i2"),
            ("score", "u1"),
            ("cls", "u1"),
        ],
    )
    rec["x"], rec["y"], rec["z"] = (np.clip(np.round(b[:, k] * 100), -32767, 32767) for k in range(3))
    rec["l"], rec["w"], rec["h"] = (np.clip(np.round(b[:, k] * 100), 1, 65535) for k in range(3, 6))
    yaw = (b[:, 6] + np.pi) % (2 * np.pi) - np.pi
    rec["yaw"] = np.round(yaw / np.pi * 32767)
    rec["score"] = np.clip(np.round(np.asarray(scores, dtype=np.float64) * 255), 0, 255)
    rec["cls"] = np.clip(np.asarray(labels), 0, 255)
    out = struct.pack("<H", n) + rec.tobytes()
    if variances is not None:
        out += np.asarray(variances, dtype=np.float16).reshape(n, 7).tobytes()
    return out


def _decode_detections(
    buf: memoryview, with_var: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]:
    if len(buf) < 2:
        raise TruncatedError("detections: no count")
    (n,) = struct.unpack_from("<H", buf)
    if n > MAX_DETECTIONS:
        raise OversizedError(f"{n} detections declared, at most {MAX_DETECTIONS}")
    need = 2 + n * DETECTION_BYTES + (n * VARIANCE_BYTES if with_var else 0)
    if len(buf) < need:
        raise TruncatedError(f"detections: need {need} bytes, have {len(buf)}")
    rec = np.frombuffer(
        buf[2 : 2 + n * DETECTION_BYTES],
        dtype=[
            ("x", "<i2"),
            ("y", "<i2"),
            ("z", "<i2"),
            ("l", "<u2"),
            ("w", "<u2"),
            ("h", "<u2"),
            ("yaw", "<i2"),
            ("score", "u1"),
            ("cls", "u1"),
        ],
    )
    boxes = np.stack(
        [
            rec["x"] / 100,
            rec["y"] / 100,
            rec["z"] / 100,
            rec["l"] / 100,
            rec["w"] / 100,
            rec["h"] / 100,
            rec["yaw"] / 32767 * np.pi,
        ],
        axis=1,
    ).astype(np.float64)
    var = None
    if with_var:
        off = 2 + n * DETECTION_BYTES
        var = (
            np.frombuffer(buf[off : off + n * VARIANCE_BYTES], dtype=np.float16)
            .reshape(n, 7)
            .astype(np.float64)
        )
    return boxes, rec["score"].astype(np.float32) / 255, rec["cls"].astype(np.int16), var, need


# -- messages -----------------------------------------------------------------------------------
def encode(
    header: Header,
    num_cells: int = 0,
    cells: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    features: np.ndarray | None = None,
    levels: np.ndarray | None = None,
    detections: tuple | None = None,
    coding: CellCoding | None = None,
) -> bytes:
    """Bytes of one message. ``detections`` is ``(boxes (n, 7), scores, labels, variances or None)``."""
    body = b""
    t = header.type
    flags_coding = CellCoding.NONE
    if t in (
        MessageType.CODEBOOK,
        MessageType.RAW_FP32,
        MessageType.RAW_FP16,
        MessageType.DEMAND,
        MessageType.OFFER,
    ):
        cells = np.asarray(cells if cells is not None else np.zeros(0), dtype=np.int64)
        order = np.argsort(cells, kind="stable")
        cells = cells[order]
        if len(np.unique(cells)) != len(cells):
            raise ValueError("cells must be distinct")
        flags_coding, cell_bytes = encode_cells(cells, num_cells, coding)
        body += cell_bytes
        if t == MessageType.CODEBOOK:
            codes = np.asarray(codes)[order]
            if codes.ndim != 2:
                raise ValueError("codes must be (cells, indices per cell)")
            if header.code_bits < 1 or (codes.size and codes.max() >= (1 << header.code_bits)):
                raise ValueError(f"codes do not fit {header.code_bits} bits")
            body += struct.pack("<B", codes.shape[1]) + pack_bits(codes, header.code_bits)
        elif t in (MessageType.RAW_FP32, MessageType.RAW_FP16):
            dtype = "<f4" if t == MessageType.RAW_FP32 else "<f2"
            feats = np.asarray(features)[order]
            body += (
                struct.pack("<H", feats.shape[1] if feats.ndim == 2 else 0) + feats.astype(dtype).tobytes()
            )
        else:
            lv = (
                np.zeros(len(cells), np.uint8)
                if levels is None
                else np.asarray(levels, dtype=np.uint8)[order]
            )
            body += pack_bits(np.minimum(lv, 3), 2)
    has_det = detections is not None
    if has_det:
        boxes, scores, labels, variances = detections
        header.has_variances = variances is not None
        body += _encode_detections(boxes, scores, labels, variances)
    header.has_detections = has_det
    header.coding = flags_coding
    flags = int(flags_coding) | (4 if has_det else 0) | (8 if header.has_variances else 0)
    x, y, z, yaw = header.pose
    head = HEADER.pack(
        MAGIC,
        VERSION,
        int(t),
        flags,
        header.code_bits,
        header.sender,
        header.seq & 0xFFFFFFFF,
        header.stamp_ns,
        x,
        y,
        z,
        yaw,
        header.grid_id,
        header.codebook_id,
        len(body),
        0,
    )
    crc = zlib.crc32(head[:60] + body) & 0xFFFFFFFF
    return head[:60] + struct.pack("<I", crc) + body


def peek_header(data: bytes | memoryview) -> Header:
    """Only the header, checked (magic, version, sizes); the payload is not read."""
    buf = memoryview(data)
    if len(buf) < HEADER.size:
        raise TruncatedError(f"{len(buf)} bytes: shorter than the {HEADER.size}-byte header")
    magic, version, mtype, flags, bits, sender, seq, stamp, x, y, z, yaw, grid_id, cb_id, length, _crc = (
        HEADER.unpack_from(buf)
    )
    if magic != MAGIC:
        raise BadMagicError(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise VersionError(f"wire format version {version} is not supported (this decoder reads {VERSION})")
    try:
        mtype = MessageType(mtype)
    except ValueError:
        raise WireError(f"unknown message type {mtype}") from None
    if length > MAX_PAYLOAD:
        raise OversizedError(f"payload of {length} bytes declared, at most {MAX_PAYLOAD}")
    if len(buf) < HEADER.size + length:
        raise TruncatedError(f"payload of {length} bytes declared, {len(buf) - HEADER.size} present")
    if len(buf) > HEADER.size + length:
        raise OversizedError(f"{len(buf) - HEADER.size - length} bytes after the declared payload")
    if bits > 16:
        raise CodeIndexError(f"{bits} bits per codebook index (at most 16)")
    return Header(
        mtype,
        sender,
        seq,
        stamp,
        (x, y, z, yaw),
        grid_id,
        cb_id,
        CellCoding(flags & 3),
        bool(flags & 4),
        bool(flags & 8),
        bits,
    )


def decode(
    data: bytes | memoryview,
    num_cells: int,
    grid_id: int | None = None,
    codebook_id: int | None = None,
    codebook_size: int | None = None,
    max_channels: int = 1024,
) -> DecodedMessage:
    """Parse and validate one message. Raises only :class:`WireError` subclasses."""
    try:
        return _decode(memoryview(data), num_cells, grid_id, codebook_id, codebook_size, max_channels)
    except WireError:
        raise
    except (
        ValueError,
        struct.error,
        IndexError,
        OverflowError,
    ) as exc:  # defensive: never escape as anything else
        raise WireError(f"malformed message: {exc}") from exc


def _decode(buf, num_cells, grid_id, codebook_id, codebook_size, max_channels) -> DecodedMessage:
    h = peek_header(buf)
    crc = struct.unpack_from("<I", buf, 60)[0]
    if zlib.crc32(bytes(buf[:60]) + bytes(buf[HEADER.size :])) & 0xFFFFFFFF != crc:
        raise ChecksumError("CRC-32 mismatch")
    if grid_id is not None and h.type != MessageType.DETECTIONS and h.grid_id != grid_id:
        raise GridMismatchError(f"grid {h.grid_id:#010x} is not ours ({grid_id:#010x})")
    body = buf[HEADER.size :]
    msg = DecodedMessage(h)
    pos = 0
    if h.type != MessageType.DETECTIONS:
        cells, k = decode_cells(body, h.coding, num_cells)
        msg.cells = cells
        pos += k
        n = len(cells)
        if h.type == MessageType.CODEBOOK:
            if codebook_id is not None and h.codebook_id != codebook_id:
                raise CodebookMismatchError(
                    f"codebook {h.codebook_id:#010x} is not ours ({codebook_id:#010x})"
                )
            if pos >= len(body):
                raise TruncatedError("codebook message without its index count")
            per_cell = body[pos]
            pos += 1
            if per_cell == 0 or per_cell > 64:
                raise WireError(f"{per_cell} codebook indices per cell")
            codes = unpack_bits(body[pos:], n * per_cell, h.code_bits)
            pos += (n * per_cell * h.code_bits + 7) // 8
            if codebook_size is not None and codes.size and codes.max() >= codebook_size:
                raise CodeIndexError(f"codebook index {int(codes.max())} >= k = {codebook_size}")
            msg.codes = codes.reshape(n, per_cell)
        elif h.type in (MessageType.RAW_FP32, MessageType.RAW_FP16):
            if len(body) < pos + 2:
                raise TruncatedError("raw features without a channel count")
            (c,) = struct.unpack_from("<H", body, pos)
            pos += 2
            if c > max_channels:
                raise OversizedError(f"{c} channels declared, at most {max_channels}")
            width = 4 if h.type == MessageType.RAW_FP32 else 2
            need = n * c * width
            if len(body) < pos + need:
                raise TruncatedError(f"raw features: need {need} bytes, have {len(body) - pos}")
            dtype = "<f4" if width == 4 else "<f2"
            msg.features = np.frombuffer(body[pos : pos + need], dtype=dtype).reshape(n, c).astype(np.float32)
            pos += need
        else:
            need = (2 * n + 7) // 8
            msg.levels = unpack_bits(body[pos:], n, 2).astype(np.uint8)
            pos += need
    if h.has_detections:
        boxes, scores, labels, var, k = _decode_detections(body[pos:], h.has_variances)
        msg.detections, msg.scores, msg.labels, msg.variances = boxes, scores, labels, var
        pos += k
    if pos != len(body):
        raise WireError(f"{len(body) - pos} unexplained bytes at the end of the payload")
    return msg
