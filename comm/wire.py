"""Wire format v1: every byte a cooperative-perception message puts on the link.

Layout (little-endian; the full specification with hex examples is ``docs/wire-format.md``)::

    header (64 bytes, fixed)
      0  4  magic "V2XM"
      4  1  version (1)
      5  1  message type (1 codebook features, 2 raw fp32 features, 3 raw fp16 features,
            4 detections, 5 demand, 6 offer)
      6  1  flags: bits 0-1 cell-set coding (0 Golomb-Rice, 1 bitmap, 2 delta+varint, 3 run-length),
            bit 2 detections block follows, bit 3 detections carry variances,
            bit 4 2-bit levels follow the cell set, bit 5 the cell set is a complement;
            bits 6-7 reserved (0)
      7  1  unit: bits per codebook index (codebook), block edge in cells (demand, offer), else 0
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
     60  4  CRC-32 (zlib) of bytes 0..59 followed by the payload
    payload (type specific)

Decoding untrusted bytes raises nothing but :class:`WireError` subclasses (each counted in
:data:`REJECTED`, each with one of the :data:`REASONS`; a :class:`~v2x.comm.errors.DecodeError`)
and never allocates more than a small multiple of the bytes actually present plus a multiple of
the grid's cell count: every declared count is checked against the grid, the caps below and the
remaining payload before anything is allocated.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from v2x.comm.errors import DecodeError

__all__ = [
    "DETECTION_BYTES",
    "HEADER",
    "MAGIC",
    "MAX_CHANNELS",
    "MAX_DETECTIONS",
    "MAX_PAYLOAD",
    "REASONS",
    "REJECTED",
    "VARIANCE_BYTES",
    "VERSION",
    "BadMagicError",
    "CellCoding",
    "CellIndexError",
    "ChecksumError",
    "CodeIndexError",
    "CodebookMismatchError",
    "DecodedMessage",
    "GridMismatchError",
    "Header",
    "LimitError",
    "MalformedError",
    "MessageType",
    "OversizedError",
    "TrailingBytesError",
    "TruncatedError",
    "UnexpectedTypeError",
    "VersionError",
    "WireError",
    "cell_count",
    "decode",
    "decode_cells",
    "encode",
    "encode_cells",
    "encoded_size",
    "pack_bits",
    "peek_header",
    "rejections",
    "unpack_bits",
]

MAGIC = b"V2XM"
VERSION = 1
HEADER = struct.Struct("<4sBBBBiIqddffIIII")
assert HEADER.size == 64
#: caps on declared sizes (a message declaring more is refused before anything is allocated)
MAX_PAYLOAD = 64 * 1024 * 1024
MAX_DETECTIONS = 4096
MAX_CHANNELS = 1024
MAX_INDICES_PER_CELL = 64
MAX_CODE_BITS = 16

#: counters of refused messages by reason (``WireError.reason``), readable by nodes and tests
REJECTED: Counter[str] = Counter()

_FLAG_DETECTIONS = 0x04
_FLAG_VARIANCES = 0x08
_FLAG_LEVELS = 0x10
_FLAG_COMPLEMENT = 0x20
_FLAG_RESERVED = 0xC0


class MessageType(IntEnum):
    CODEBOOK = 1
    RAW_FP32 = 2
    RAW_FP16 = 3
    DETECTIONS = 4
    DEMAND = 5
    OFFER = 6


#: message types whose payload starts with a cell set
CELL_TYPES = frozenset(
    {MessageType.CODEBOOK, MessageType.RAW_FP32, MessageType.RAW_FP16, MessageType.DEMAND, MessageType.OFFER}
)
#: message types whose cells are coordination blocks of ``unit x unit`` feature cells
BLOCK_TYPES = frozenset({MessageType.DEMAND, MessageType.OFFER})
#: message types whose header ``unit`` means something (0 on every other type)
_UNIT_TYPES = BLOCK_TYPES | {MessageType.CODEBOOK}


class CellCoding(IntEnum):
    RICE = 0  # Golomb-Rice coded gaps: unary quotients, then k-bit remainders
    BITMAP = 1
    DELTA_VARINT = 2
    RUN_LENGTH = 3


# -- errors ------------------------------------------------------------------------------------
class WireError(DecodeError):
    """A message that cannot be decoded; ``reason`` is a short stable code, counted in ``REJECTED``."""

    decoder = "wire"
    reason = "malformed"

    def __init__(self, message: str, *, stage: str = "") -> None:
        super().__init__(message, stage=stage)
        REJECTED[self.reason] += 1


class MalformedError(WireError):
    """A field outside its legal values, or counts that disagree (docs/wire-format.md lists each)."""

    reason = "malformed"


class TruncatedError(WireError):
    """The frame or the payload ends before a field the message declares or needs."""

    reason = "truncated"


class OversizedError(WireError):
    """The frame is longer than the 64-byte header plus its declared payload length."""

    reason = "oversized"


class TrailingBytesError(WireError):
    """The payload's fields end before the declared payload does."""

    reason = "trailing_bytes"


class LimitError(WireError):
    """A declared size above its cap: payload length, channels, detections."""

    reason = "over_limit"


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


class UnexpectedTypeError(WireError):
    """A valid message of a type the reader did not ask for (a demand where features were expected)."""

    reason = "unexpected_type"


#: every ``WireError.reason`` the decoder and the codec's readers raise (docs/wire-format.md)
REASONS = frozenset(
    c.reason
    for c in (
        MalformedError,
        TruncatedError,
        OversizedError,
        TrailingBytesError,
        LimitError,
        BadMagicError,
        VersionError,
        ChecksumError,
        CellIndexError,
        CodeIndexError,
        CodebookMismatchError,
        GridMismatchError,
        UnexpectedTypeError,
    )
)


def rejections() -> dict[str, int]:
    """A snapshot of the refusal counters (reason -> count) for diagnostics."""
    return dict(REJECTED)


# -- header and decoded message ----------------------------------------------------------------
@dataclass
class Header:
    type: MessageType
    sender: int
    seq: int
    stamp_ns: int
    pose: tuple[float, float, float, float]  # x, y, z, yaw of the sender's BEV frame in the world
    grid_id: int
    codebook_id: int = 0
    #: bits per codebook index (codebook messages) or block edge in cells (demand / offer)
    unit: int = 0
    # filled in by the decoder from the flags byte (the encoder derives them from the payload)
    coding: CellCoding = CellCoding.RICE
    has_detections: bool = False
    has_variances: bool = False
    has_levels: bool = False
    complement: bool = False


@dataclass
class DecodedMessage:
    header: Header
    cells: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted flat indices
    codes: np.ndarray | None = None  # (n, indices per cell) codebook indices
    features: np.ndarray | None = None  # (n, C) float32 raw features
    levels: np.ndarray | None = None  # (n,) uint8 0..3, demand / offer levels
    detections: np.ndarray | None = None  # (d, 7) boxes in the sender's BEV frame
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    variances: np.ndarray | None = None  # (d, 7)


def cell_count(grid_shape: tuple[int, int], block: int = 1) -> int:
    """Cells of the (H, W) feature grid, or of its grid of ``block x block`` coordination blocks."""
    h, w = grid_shape
    if block <= 1:
        return h * w
    return (-(-h // block)) * (-(-w // block))


# -- varints and bit packing -------------------------------------------------------------------
_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _varint_encode(values: np.ndarray) -> bytes:
    """LEB128 of non-negative integers, vectorised: 7 bits per byte, low group first, high bit = more."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if len(v) == 0:
        return b""
    nbytes = 1 + np.searchsorted(_VARINT_LIMITS, v, side="right")
    out = np.zeros(int(nbytes.sum()), dtype=np.uint8)
    pos = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    rem = v.copy()
    for k in range(int(nbytes.max())):
        active = nbytes > k
        byte = (rem[active] & np.uint64(0x7F)).astype(np.uint8)
        more = (nbytes[active] > k + 1).astype(np.uint8) << 7
        out[pos[active] + k] = byte | more
        rem[active] >>= np.uint64(7)
    return out.tobytes()


def varint_size(values: np.ndarray) -> int:
    """Bytes :func:`_varint_encode` would write, without writing them."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    return int(len(v) + np.searchsorted(_VARINT_LIMITS, v, side="right").sum())


def _varint_decode(
    buf: memoryview, count: int, what: str, limit: int, out_of_range: type[WireError] = CellIndexError
) -> tuple[np.ndarray, int]:
    """``count`` LEB128 integers, each ``< limit``; returns values and bytes consumed.

    Checked in this order, each with one reason: the bytes hold ``count`` varints (``truncated``);
    no varint is longer than ``limit - 1`` needs (``out_of_range``); no varint of two or more
    bytes ends in a zero byte, so every value has one encoding (``malformed``); every value is
    below ``limit`` (``out_of_range``).
    """
    if count == 0:
        return np.zeros(0, np.int64), 0
    # a varint is at least one byte: a count larger than the bytes left cannot be honest
    if count > len(buf):
        raise TruncatedError(f"{what}: {count} varints declared, only {len(buf)} bytes left")
    max_len = max(1, (int(limit - 1).bit_length() + 6) // 7)
    if count == 1:  # counts: the same checks without numpy's per-call cost
        return _one_varint(buf, what, limit, max_len, out_of_range)
    # the first count terminators of a valid run lie within count * max_len bytes: look there
    # first (the cell count would otherwise scan the whole payload), everywhere only if need be
    data = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(data[: count * max_len] < 0x80)
    if len(ends) < count and len(data) > count * max_len:
        ends = np.flatnonzero(data < 0x80)
    if len(ends) < count:
        raise TruncatedError(f"{what}: expected {count} varints, the payload holds {len(ends)}")
    ends = ends[:count]
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > max_len:  # a number far too large, however its bytes read
        raise out_of_range(f"{what}: a varint of {longest} bytes cannot be below {limit}")
    if longest > 1 and np.any((lengths > 1) & (data[ends] == 0)):
        raise MalformedError(f"{what}: a varint with a zero last byte (not its shortest encoding)")
    values = np.zeros(count, dtype=np.int64)
    for k in range(longest):
        active = lengths > k
        values[active] |= (data[starts[active] + k] & 0x7F).astype(np.int64) << (7 * k)
    if values.max() >= limit:
        raise out_of_range(f"{what}: value {int(values.max())} is not below {limit}")
    return values, int(ends[-1]) + 1


def _one_varint(
    buf: memoryview, what: str, limit: int, max_len: int, out_of_range: type[WireError]
) -> tuple[np.ndarray, int]:
    """:func:`_varint_decode` of a single varint, in the same order of checks."""
    value = 0
    for k in range(min(len(buf), max_len)):
        byte = buf[k]
        value |= (byte & 0x7F) << (7 * k)
        if byte < 0x80:
            if k and byte == 0:
                raise MalformedError(f"{what}: a varint with a zero last byte (not its shortest encoding)")
            if value >= limit:
                raise out_of_range(f"{what}: value {value} is not below {limit}")
            return np.array([value], dtype=np.int64), k + 1
    if len(buf) <= max_len or not (np.frombuffer(buf[max_len:], dtype=np.uint8) < 0x80).any():
        raise TruncatedError(f"{what}: expected 1 varint, the payload holds none")
    raise out_of_range(f"{what}: a varint of more than {max_len} bytes cannot be below {limit}")


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers at ``bits`` bits each, most significant bit first, zero-padded to a byte."""
    v = np.asarray(values, dtype=np.uint32).ravel()
    if bits == 0 or len(v) == 0:
        return b""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bit_matrix = ((v[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.ravel()).tobytes()


def unpack_bits(buf: bytes | memoryview, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`; checks the bytes are there before allocating."""
    need = (count * bits + 7) // 8
    if len(buf) < need:
        raise TruncatedError(f"bit-packed values: need {need} bytes, have {len(buf)}")
    if count == 0 or bits == 0:
        return np.zeros(count, dtype=np.int64)
    flat = np.unpackbits(np.frombuffer(buf[:need], dtype=np.uint8))[: count * bits].reshape(count, bits)
    return _bits_to_ints(flat)


def _bits_to_ints(flat: np.ndarray) -> np.ndarray:
    """(count, bits) 0/1 rows, most significant first, as int64; a column at a time, so no
    (count, bits) int64 matrix: memory stays near the output's size."""
    values = np.zeros(len(flat), dtype=np.int64)
    for j in range(flat.shape[1]):
        values <<= 1
        values |= flat[:, j]
    return values


def _check_padding(buf: bytes | memoryview, used_bits: int, what: str) -> None:
    """The bits after ``used_bits`` up to the next byte boundary must be 0 (as the encoder writes)."""
    spare = -used_bits % 8
    if spare and buf[used_bits // 8] & ((1 << spare) - 1):
        raise MalformedError(f"{what}: padding bits are not zero")


# -- cell sets ---------------------------------------------------------------------------------
def _cells_bitmap(cells: np.ndarray, num_cells: int) -> bytes:
    bitmap = np.zeros(num_cells, dtype=np.uint8)
    bitmap[cells] = 1
    return np.packbits(bitmap).tobytes()


def _deltas(cells: np.ndarray) -> np.ndarray:
    return np.diff(cells, prepend=-1) - 1


_RICE_MAX_K = 24


def _rice_k(deltas: np.ndarray) -> tuple[int, int]:
    """The Rice parameter k minimising the coded bits of ``deltas``, and those bits."""
    n = len(deltas)
    ks = np.arange(0, 17)
    bits = (deltas[None, :] >> ks[:, None]).sum(axis=1) + n * (1 + ks)
    k = int(bits.argmin())
    return k, int(bits[k])


def _cells_rice(cells: np.ndarray) -> bytes:
    """u8 k, then one bit stream: every gap's quotient ``d >> k`` in unary (that many 1s and a 0),
    then every gap's k-bit remainder; zero-padded to a byte. Nothing at all for an empty set."""
    if len(cells) == 0:
        return b""
    d = _deltas(cells)
    k, _ = _rice_k(d)
    q = d >> k
    unary = np.ones(int(q.sum()) + len(d), dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    if k:
        shifts = np.arange(k - 1, -1, -1)
        rem = (((d & ((1 << k) - 1))[:, None] >> shifts[None, :]) & 1).astype(np.uint8).ravel()
        unary = np.concatenate([unary, rem])
    return bytes([k]) + np.packbits(unary).tobytes()


def _rice_size(cells: np.ndarray) -> int:
    if len(cells) == 0:
        return 0
    return 1 + (_rice_k(_deltas(cells))[1] + 7) // 8


def _decode_rice(rest: memoryview, n: int, num_cells: int) -> tuple[np.ndarray, int]:
    if n == 0:
        return np.zeros(0, np.int64), 0
    if len(rest) < 1:
        raise TruncatedError("Rice-coded cells without their parameter")
    k = rest[0]
    if k > _RICE_MAX_K:
        raise MalformedError(f"Rice parameter {k} (at most {_RICE_MAX_K})")
    # the gaps add up to less than the grid, so a valid unary part is at most (N >> k) + n bits
    # long: zeros are looked for there only, and the stream is never read past its longest length
    window = (num_cells >> k) + n
    max_bits = window + n * k
    data = np.frombuffer(rest[1 : 1 + (max_bits + 7) // 8], dtype=np.uint8)
    bits = np.unpackbits(data)
    ends = np.flatnonzero(bits[:window] == 0)[:n]
    if len(ends) < n:
        if len(bits) >= window:
            raise CellIndexError(f"Rice-coded gaps run beyond a grid of {num_cells} cells")
        raise TruncatedError(f"Rice-coded cells: {len(ends)} of {n} unary terminators present")
    unary_bits = int(ends[-1]) + 1
    need = unary_bits + n * k  # <= max_bits: only a stream cut short can lack them
    if need > len(bits):
        raise TruncatedError(f"Rice-coded cells: need {need} bits, have {len(bits)}")
    d = np.diff(ends, prepend=-1)  # in place from here on: the gaps' arrays are n long, few of them
    d -= 1  # the quotients
    if k:
        d <<= k
        d |= _bits_to_ints(bits[unary_bits:need].reshape(n, k))
    if d.max() >= num_cells:
        raise CellIndexError(f"a cell gap of {int(d.max())} in a grid of {num_cells}")
    nbytes = (need + 7) // 8
    if bits[need : 8 * nbytes].any():
        raise MalformedError("Rice-coded cells: padding bits are not zero")
    d += 1
    cells = np.cumsum(d, out=d)
    cells -= 1
    if cells[-1] >= num_cells:
        raise CellIndexError(f"cell index {int(cells[-1])} outside the grid of {num_cells}")
    return cells, 1 + nbytes


def _runs(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the maximal runs of consecutive indices of a sorted set."""
    if len(cells) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    breaks = np.flatnonzero(np.diff(cells) != 1) + 1
    starts = cells[np.concatenate([[0], breaks])]
    ends = cells[np.concatenate([breaks - 1, [len(cells) - 1]])]
    return starts, ends - starts + 1


def _rle_values(cells: np.ndarray) -> np.ndarray:
    """Run count, then (gap since the previous run's end, length - 1) per run."""
    starts, lengths = _runs(cells)
    prev_end = np.concatenate([[0], starts[:-1] + lengths[:-1]])
    inter = np.empty(2 * len(starts), dtype=np.int64)
    inter[0::2], inter[1::2] = starts - prev_end, lengths - 1
    return np.concatenate([[len(starts)], inter])


def cell_set_sizes(cells: np.ndarray, num_cells: int) -> dict[CellCoding, int]:
    """Bytes each coding needs for a sorted, distinct cell set (count varint included)."""
    cells = np.asarray(cells, dtype=np.int64)
    head = varint_size(np.array([len(cells)]))
    return {
        CellCoding.RICE: head + _rice_size(cells),
        CellCoding.BITMAP: head + (num_cells + 7) // 8,
        CellCoding.DELTA_VARINT: head + varint_size(_deltas(cells)),
        CellCoding.RUN_LENGTH: head + varint_size(_rle_values(cells)),
    }


def encode_cells(
    cells: np.ndarray, num_cells: int, coding: CellCoding | None = None
) -> tuple[CellCoding, bytes]:
    """A sorted, distinct set of flat cell indices in the smallest coding (or the one asked for).

    Every coding starts with the cell count as a varint; an empty set is just that count (coding
    ``RICE``, which writes nothing more for it).
    """
    cells = np.asarray(cells, dtype=np.int64)
    if len(cells) and (np.any(np.diff(cells) <= 0) or cells[0] < 0 or cells[-1] >= num_cells):
        raise ValueError(f"cells must be sorted, distinct and inside the grid of {num_cells} cells")
    count = _varint_encode(np.array([len(cells)]))
    if len(cells) == 0 and coding is None:
        return CellCoding.RICE, count
    if coding is None:
        sizes = cell_set_sizes(cells, num_cells)
        coding = min(sizes, key=lambda c: (sizes[c], int(c)))
    if coding == CellCoding.RICE:
        return coding, count + _cells_rice(cells)
    if coding == CellCoding.BITMAP:
        return coding, count + _cells_bitmap(cells, num_cells)
    if coding == CellCoding.DELTA_VARINT:
        return coding, count + _varint_encode(_deltas(cells))
    if coding == CellCoding.RUN_LENGTH:
        return coding, count + _varint_encode(_rle_values(cells))
    raise ValueError(f"cannot code {len(cells)} cells as {coding!r}")


def decode_cells(buf: memoryview, coding: CellCoding, num_cells: int) -> tuple[np.ndarray, int]:
    """Sorted cells and bytes consumed; refuses counts and indices that do not fit the grid."""
    (n,), used = _varint_decode(buf, 1, "cell count", num_cells + 1)
    n = int(n)
    rest = buf[used:]
    if coding == CellCoding.RICE:
        cells, k = _decode_rice(rest, n, num_cells)
        return cells, used + k
    if coding == CellCoding.BITMAP:
        nbytes = (num_cells + 7) // 8
        if len(rest) < nbytes:
            raise TruncatedError(f"cell bitmap: need {nbytes} bytes, have {len(rest)}")
        bits = np.unpackbits(np.frombuffer(rest[:nbytes], dtype=np.uint8))
        if bits[num_cells:].any():
            raise CellIndexError("cell bitmap sets bits beyond the grid")
        cells = np.flatnonzero(bits[:num_cells]).astype(np.int64, copy=False)
        if len(cells) != n:
            raise MalformedError(f"cell bitmap holds {len(cells)} cells, the count says {n}")
        return cells, used + nbytes
    if coding == CellCoding.DELTA_VARINT:
        deltas, k = _varint_decode(rest, n, "cell deltas", num_cells)
        deltas += 1  # each delta < num_cells and n <= num_cells: no overflow
        cells = np.cumsum(deltas, out=deltas)
        cells -= 1
        if n and cells[-1] >= num_cells:
            raise CellIndexError(f"cell index {int(cells[-1])} outside the grid of {num_cells}")
        return cells, used + k
    if coding == CellCoding.RUN_LENGTH:
        (runs,), k1 = _varint_decode(rest, 1, "run count", n + 1, MalformedError)  # runs <= cells
        runs = int(runs)
        if n and runs == 0:
            raise MalformedError(f"{n} cells in zero runs")
        vals, k2 = _varint_decode(rest[k1:], 2 * runs, "runs", num_cells)
        gaps, lengths = vals[0::2], vals[1::2] + 1
        if int(lengths.sum()) != n:
            raise MalformedError(f"runs cover {int(lengths.sum())} cells, the count says {n}")
        if runs > 1 and np.any(gaps[1:] == 0):
            raise MalformedError("two runs touch: a run-length set must use maximal runs")
        starts = np.cumsum(gaps + np.concatenate([[0], lengths[:-1]]))
        if runs and starts[-1] + lengths[-1] > num_cells:
            raise CellIndexError("a run reaches beyond the grid")
        # cell j of run r is starts[r] + (j - cells before run r): two arrays of n, no more
        cells = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        cells += np.arange(n)
        return cells, used + k1 + k2
    raise MalformedError(f"unknown cell coding {int(coding)}")


# -- detections --------------------------------------------------------------------------------
_DET_DTYPE = np.dtype(
    [
        ("x", "<i2"),  # centimetres
        ("y", "<i2"),
        ("z", "<i2"),
        ("l", "<u2"),  # centimetres
        ("w", "<u2"),
        ("h", "<u2"),
        ("yaw", "<i2"),  # yaw / pi * 32767, yaw wrapped to [-pi, pi)
        ("score", "u1"),  # score * 255
        ("cls", "u1"),  # v2x.core.boxes.ObjectClass
    ]
)
DETECTION_BYTES = _DET_DTYPE.itemsize
#: the largest finite half-precision value (RAW_FP16 features are clipped to it)
HALF_MAX = float(np.finfo(np.float16).max)
VARIANCE_BYTES = 14  # 7 x float16: variance of x, y, z, l, w, h, yaw
assert DETECTION_BYTES == 16


def quantize_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boxes as their 16-byte records (the quantisation the ego will see)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    rec = np.zeros(len(b), dtype=_DET_DTYPE)
    for k, name in enumerate(("x", "y", "z")):
        rec[name] = np.clip(np.round(b[:, k] * 100), -32767, 32767)
    for k, name in enumerate(("l", "w", "h"), start=3):
        rec[name] = np.clip(np.round(b[:, k] * 100), 1, 65535)
    yaw = (b[:, 6] + np.pi) % (2 * np.pi) - np.pi
    rec["yaw"] = np.clip(np.round(yaw / np.pi * 32767), -32767, 32767)
    rec["score"] = np.clip(np.round(np.asarray(scores, dtype=np.float64).reshape(-1) * 255), 0, 255)
    rec["cls"] = np.clip(np.asarray(labels).reshape(-1), 0, 255)
    return rec


def _encode_detections(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, variances: np.ndarray | None
) -> bytes:
    rec = quantize_detections(boxes, scores, labels)
    n = len(rec)
    if n > MAX_DETECTIONS:
        raise ValueError(f"at most {MAX_DETECTIONS} detections per message, got {n}")
    out = struct.pack("<H", n) + rec.tobytes()
    if variances is not None:
        var = np.asarray(variances, dtype=np.float64).reshape(n, 7)
        if not np.isfinite(var).all():
            raise ValueError("variances must be finite (a receiver refuses non-finite values)")
        # beyond half precision's range: its largest value, not inf (as for RAW_FP16 features)
        out += np.clip(var, 0.0, HALF_MAX).astype("<f2").tobytes()
    return out


def _decode_detections(buf: memoryview, with_var: bool):
    if len(buf) < 2:
        raise TruncatedError("detections: no count")
    (n,) = struct.unpack_from("<H", buf)
    if n > MAX_DETECTIONS:
        raise LimitError(f"{n} detections declared, at most {MAX_DETECTIONS}")
    need = 2 + n * (DETECTION_BYTES + (VARIANCE_BYTES if with_var else 0))
    if len(buf) < need:
        raise TruncatedError(f"detections: need {need} bytes, have {len(buf)}")
    rec = np.frombuffer(buf[2 : 2 + n * DETECTION_BYTES], dtype=_DET_DTYPE)
    if n and (rec["l"].min() == 0 or rec["w"].min() == 0 or rec["h"].min() == 0):
        # the encoder writes at least 1 cm: a box without volume has no IoU with anything
        raise MalformedError("a detection with a zero length, width or height")
    cm = [rec[name].astype(np.float64) / 100 for name in ("x", "y", "z", "l", "w", "h")]
    boxes = np.stack([*cm, rec["yaw"].astype(np.float64) / 32767 * np.pi], axis=1).reshape(n, 7)
    var = None
    if with_var:
        off = 2 + n * DETECTION_BYTES
        var = np.frombuffer(buf[off:need], dtype="<f2").reshape(n, 7).astype(np.float64)
        if not (np.isfinite(var).all() and (var >= 0).all()):
            # the tracker weighs each box by these: one NaN would poison its state for good
            raise MalformedError("detection variances must be finite and not negative")
    return boxes, rec["score"].astype(np.float32) / 255, rec["cls"].astype(np.int16), var, need


# -- sizes -------------------------------------------------------------------------------------
def encoded_size(
    kind: MessageType,
    grid_shape: tuple[int, int],
    cells: np.ndarray,
    *,
    unit: int = 0,
    per_cell: int = 0,
    channels: int = 0,
    levels: bool = False,
    detections: int | None = None,
    variances: bool = False,
) -> int:
    """Exact ``len(encode(...))`` for a message with these contents, without building it.

    ``cells`` must be sorted and distinct (the encoder sorts; sizes do not depend on row order).
    Budgeted selection probes many candidate cell sets with this, then encodes once.
    """
    kind = MessageType(kind)
    size = HEADER.size
    if kind in CELL_TYPES:
        n = len(cells)
        block = unit if kind in BLOCK_TYPES else 1
        num_cells = cell_count(grid_shape, block)
        size += 1 if n == 0 else min(cell_set_sizes(cells, num_cells).values())
        if kind == MessageType.CODEBOOK:
            size += 1 + (n * per_cell * unit + 7) // 8
        elif kind in (MessageType.RAW_FP32, MessageType.RAW_FP16):
            size += 2 + n * channels * (4 if kind == MessageType.RAW_FP32 else 2)
        elif levels:
            size += (2 * n + 7) // 8
    elif kind == MessageType.DETECTIONS and detections is None:
        detections = 0
    if detections is not None:
        size += 2 + detections * (DETECTION_BYTES + (VARIANCE_BYTES if variances else 0))
    return size


# -- messages ----------------------------------------------------------------------------------
def encode(
    header: Header,
    grid_shape: tuple[int, int] = (0, 0),
    cells: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    features: np.ndarray | None = None,
    levels: np.ndarray | None = None,
    detections: tuple | None = None,
    coding: CellCoding | None = None,
    complement: bool = False,
) -> bytes:
    """Bytes of one message.

    ``cells`` are flat indices into the (H, W) feature grid, or into its block grid for demand
    and offer messages (block edge = ``header.unit``); any order, distinct. ``codes`` (n, P)
    for codebook messages, ``features`` (n, C) for raw ones, ``levels`` (n,) 0..3 for demand
    and offer; all rows follow ``cells``. ``detections`` is ``(boxes (d, 7), scores, labels,
    variances (d, 7) or None)``. ``complement`` marks a demand's cell set as the cells *not*
    demanded. The header's ``coding`` and ``has_*`` fields are ignored (derived here).
    """
    t = MessageType(header.type)
    if t not in _UNIT_TYPES and header.unit:
        raise ValueError(f"a {t.name} message has no unit (got {header.unit}); a receiver refuses it")
    if t != MessageType.CODEBOOK and header.codebook_id & 0xFFFFFFFF:
        raise ValueError(f"only codebook messages name a codebook (a {t.name} message names one)")
    body = bytearray()
    coding_used = CellCoding.RICE
    flags = 0
    if t in CELL_TYPES:
        block = header.unit if t in BLOCK_TYPES else 1
        if t in BLOCK_TYPES and not 1 <= block <= 255:
            raise ValueError(f"demand / offer block edge must be 1..255 cells, got {block}")
        num_cells = cell_count(grid_shape, block)
        cells = np.asarray(cells if cells is not None else np.zeros(0), dtype=np.int64).ravel()
        order = np.argsort(cells, kind="stable")
        cells = cells[order]
        coding_used, cell_bytes = encode_cells(cells, num_cells, coding)
        body += cell_bytes
        n = len(cells)
        if t == MessageType.CODEBOOK:
            codes = np.asarray(codes if codes is not None else np.zeros((n, 1)), dtype=np.int64)
            if codes.ndim != 2 or len(codes) != n or not 1 <= codes.shape[1] <= MAX_INDICES_PER_CELL:
                raise ValueError(f"codes must be (cells, 1..{MAX_INDICES_PER_CELL}), got {codes.shape}")
            if not 1 <= header.unit <= MAX_CODE_BITS or (
                codes.size and (codes.min() < 0 or codes.max() >= (1 << header.unit))
            ):
                raise ValueError(f"codes do not fit {header.unit} bits")
            body += struct.pack("<B", codes.shape[1]) + pack_bits(codes[order], header.unit)
        elif t in (MessageType.RAW_FP32, MessageType.RAW_FP16):
            feats = np.asarray(features if features is not None else np.zeros((n, 0)), dtype=np.float32)
            if feats.ndim != 2 or len(feats) != n or feats.shape[1] > MAX_CHANNELS:
                raise ValueError(f"features must be (cells, <= {MAX_CHANNELS}), got {feats.shape}")
            if not np.isfinite(feats).all():
                raise ValueError("features must be finite (a receiver refuses non-finite values)")
            if t == MessageType.RAW_FP16:  # beyond half precision's range: its largest value, not inf
                feats = np.clip(feats, -HALF_MAX, HALF_MAX)
            dtype = "<f4" if t == MessageType.RAW_FP32 else "<f2"
            body += struct.pack("<H", feats.shape[1]) + feats[order].astype(dtype).tobytes()
        else:
            if t == MessageType.OFFER and levels is None:
                raise ValueError("an offer carries a level per block")
            if complement and (t != MessageType.DEMAND or levels is not None):
                raise ValueError("only a demand without levels may list its complement")
            if levels is not None:
                lv = np.asarray(levels, dtype=np.int64).ravel()
                if len(lv) != n or (n and (lv.min() < 0 or lv.max() > 3)):
                    raise ValueError("levels must be one 0..3 value per cell")
                body += pack_bits(lv[order], 2)
                flags |= _FLAG_LEVELS
            if complement:
                flags |= _FLAG_COMPLEMENT
    elif t == MessageType.DETECTIONS and detections is None:
        detections = (np.zeros((0, 7)), np.zeros(0), np.zeros(0, np.int64), None)
    if detections is not None:
        boxes, scores, labels, variances = detections
        body += _encode_detections(boxes, scores, labels, variances)
        flags |= _FLAG_DETECTIONS | (_FLAG_VARIANCES if variances is not None else 0)
    flags |= int(coding_used)
    x, y, z, yaw = header.pose
    head = HEADER.pack(
        MAGIC,
        VERSION,
        int(t),
        flags,
        header.unit,
        header.sender,
        header.seq & 0xFFFFFFFF,
        header.stamp_ns,
        x,
        y,
        z,
        yaw,
        header.grid_id & 0xFFFFFFFF,
        header.codebook_id & 0xFFFFFFFF,
        len(body),
        0,
    )[:60]
    crc = zlib.crc32(body, zlib.crc32(head)) & 0xFFFFFFFF
    return head + struct.pack("<I", crc) + bytes(body)


def peek_header(data: bytes | memoryview) -> Header:
    """The header alone, checked (magic, version, type, flags, sizes); the payload is not read."""
    buf = memoryview(data)
    if len(buf) < HEADER.size:
        raise TruncatedError(f"{len(buf)} bytes: shorter than the {HEADER.size}-byte header")
    magic, version, mtype, flags, unit, sender, seq, stamp, x, y, z, yaw, grid_id, cb_id, length, _crc = (
        HEADER.unpack_from(buf)
    )
    if magic != MAGIC:
        raise BadMagicError(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise VersionError(f"wire format version {version} is not supported (this decoder reads {VERSION})")
    try:
        mtype = MessageType(mtype)
    except ValueError:
        raise MalformedError(f"unknown message type {mtype}") from None
    if flags & _FLAG_RESERVED:
        raise MalformedError(f"reserved flag bits set ({flags:#04x})")
    if length > MAX_PAYLOAD:
        raise LimitError(f"payload of {length} bytes declared, at most {MAX_PAYLOAD}")
    if len(buf) < HEADER.size + length:
        raise TruncatedError(f"payload of {length} bytes declared, {len(buf) - HEADER.size} present")
    if len(buf) > HEADER.size + length:
        raise OversizedError(f"{len(buf) - HEADER.size - length} bytes after the declared payload")
    if not all(math.isfinite(v) for v in (x, y, z, yaw)):
        # a NaN pose would place the sender nowhere, and its message would be "fused" for nothing
        raise MalformedError(f"non-finite sender pose ({x}, {y}, {z}, {yaw})")
    return Header(
        mtype,
        sender,
        seq,
        stamp,
        (x, y, z, yaw),
        grid_id,
        cb_id,
        unit,
        CellCoding(flags & 3),
        bool(flags & _FLAG_DETECTIONS),
        bool(flags & _FLAG_VARIANCES),
        bool(flags & _FLAG_LEVELS),
        bool(flags & _FLAG_COMPLEMENT),
    )


def decode(
    data: bytes | memoryview,
    grid_shape: tuple[int, int],
    grid_id: int | None = None,
    codebook_id: int | None = None,
    codebook_size: int | None = None,
    max_channels: int = MAX_CHANNELS,
) -> DecodedMessage:
    """Parse and validate one message. Raises only :class:`WireError` subclasses.

    ``grid_shape`` is the receiver's (H, W) feature grid; ``grid_id``, ``codebook_id`` and
    ``codebook_size`` (k), when given, must match the message or it is refused.
    """
    progress = _Progress()
    try:
        return _decode(
            memoryview(data), grid_shape, grid_id, codebook_id, codebook_size, max_channels, progress
        )
    except WireError as exc:
        exc.stage = progress.stage
        raise
    except (ValueError, TypeError, struct.error, IndexError, OverflowError, MemoryError) as exc:
        # a last resort: a slip in the checks must still surface as a refusal, never a crash;
        # ``unexpected`` marks it as a bug (the fuzzers count it as a failure)
        err = MalformedError(f"malformed message: {exc!r}")
        err.stage, err.unexpected = progress.stage, True
        raise err from exc


class _Progress:
    """How far :func:`decode` got: ``header``, ``checksum``, ``identity``, ``fields``, ``payload``."""

    __slots__ = ("stage",)

    def __init__(self) -> None:
        self.stage = "header"


def _decode(buf, grid_shape, grid_id, codebook_id, codebook_size, max_channels, progress) -> DecodedMessage:
    h = peek_header(buf)
    progress.stage = "checksum"
    crc = struct.unpack_from("<I", buf, 60)[0]
    if zlib.crc32(buf[HEADER.size :], zlib.crc32(buf[:60])) & 0xFFFFFFFF != crc:
        raise ChecksumError("CRC-32 mismatch")
    progress.stage = "identity"
    if grid_id is not None and h.type != MessageType.DETECTIONS and h.grid_id != grid_id:
        raise GridMismatchError(f"grid {h.grid_id:#010x} is not ours ({grid_id:#010x})")
    if h.type == MessageType.CODEBOOK and codebook_id is not None and h.codebook_id != codebook_id:
        raise CodebookMismatchError(f"codebook {h.codebook_id:#010x} is not ours ({codebook_id:#010x})")
    progress.stage = "fields"
    _check_fields(h)
    progress.stage = "payload"
    body = buf[HEADER.size :]
    msg = DecodedMessage(h)
    pos = 0
    if h.type in CELL_TYPES:
        num_cells = cell_count(grid_shape, h.unit if h.type in BLOCK_TYPES else 1)
        cells, pos = decode_cells(body, h.coding, num_cells)
        msg.cells = cells
        n = len(cells)
        if h.type == MessageType.CODEBOOK:
            if pos >= len(body):
                raise TruncatedError("codebook message without its indices-per-cell byte")
            per_cell = body[pos]
            pos += 1
            if not 1 <= per_cell <= MAX_INDICES_PER_CELL:  # P = 0 too, even without cells
                raise MalformedError(f"{per_cell} codebook indices per cell (1..{MAX_INDICES_PER_CELL})")
            codes = unpack_bits(body[pos:], n * per_cell, h.unit)
            _check_padding(body[pos:], n * per_cell * h.unit, "codebook indices")
            pos += (n * per_cell * h.unit + 7) // 8
            if codebook_size is not None and codes.size and codes.max() >= codebook_size:
                raise CodeIndexError(f"codebook index {int(codes.max())} >= k = {codebook_size}")
            msg.codes = codes.reshape(n, per_cell)
        elif h.type in (MessageType.RAW_FP32, MessageType.RAW_FP16):
            if len(body) < pos + 2:
                raise TruncatedError("raw features without a channel count")
            (c,) = struct.unpack_from("<H", body, pos)
            pos += 2
            if c > max_channels:
                raise LimitError(f"{c} channels declared, at most {max_channels}")
            width = 4 if h.type == MessageType.RAW_FP32 else 2
            need = n * c * width
            if len(body) < pos + need:
                raise TruncatedError(f"raw features: need {need} bytes, have {len(body) - pos}")
            raw = np.frombuffer(body[pos : pos + need], dtype="<f4" if width == 4 else "<f2")
            if not np.isfinite(raw).all():
                raise MalformedError(f"{int((~np.isfinite(raw)).sum())} non-finite raw feature values")
            msg.features = raw.reshape(n, c).astype(np.float32)
            pos += need
        elif h.has_levels:
            msg.levels = unpack_bits(body[pos:], n, 2).astype(np.uint8)
            _check_padding(body[pos:], 2 * n, "levels")
            pos += (2 * n + 7) // 8
    if h.has_detections:
        boxes, scores, labels, var, k = _decode_detections(body[pos:], h.has_variances)
        msg.detections, msg.scores, msg.labels, msg.variances = boxes, scores, labels, var
        pos += k
    if pos != len(body):
        raise TrailingBytesError(f"{len(body) - pos} unexplained bytes at the end of the payload")
    return msg


def _check_fields(h: Header) -> None:
    """The header's fields fit its type (flags, unit, codebook identity); each misfit is malformed,
    but a codebook message's bits per index outside 1..16, which is ``code_out_of_range``."""
    if (h.has_levels or h.complement) and h.type not in BLOCK_TYPES:
        raise MalformedError(f"level / complement flags on a {h.type.name} message")
    if h.has_variances and not h.has_detections:
        raise MalformedError("variance flag without detections")
    if h.type not in CELL_TYPES and h.coding != 0:
        raise MalformedError(f"a cell coding on a {h.type.name} message")
    if h.type == MessageType.DETECTIONS and not h.has_detections:
        raise MalformedError("a detections message without its detections block")
    if h.type not in _UNIT_TYPES and h.unit != 0:
        raise MalformedError(f"a unit of {h.unit} on a {h.type.name} message (must be 0)")
    if h.type != MessageType.CODEBOOK and h.codebook_id != 0:
        raise MalformedError(f"a codebook identity on a {h.type.name} message (must be 0)")
    if h.type in BLOCK_TYPES and h.unit < 1:
        raise MalformedError(f"a {h.type.name} without a block edge")
    if h.type == MessageType.OFFER and not h.has_levels:
        raise MalformedError("an offer without levels")
    if h.has_levels and h.complement:
        raise MalformedError("a complement demand cannot carry levels")
    if h.type == MessageType.CODEBOOK and not 1 <= h.unit <= MAX_CODE_BITS:
        raise CodeIndexError(f"{h.unit} bits per codebook index (1..{MAX_CODE_BITS})")
