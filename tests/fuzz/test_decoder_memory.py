"""The documented bounds on decoding memory hold for the worst inputs we know of, not only for the
fuzzers' samples: per message kind, the shapes that make each parser allocate the most per byte
(cell sets the grid bounds but the bytes do not, 1-bit codes, all-zero Golomb-Rice streams,
msgpack headers of empty containers)."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from fuzzkit.targets import MEMORY_BOUNDS

from v2x.comm import envelope, wire, wire_points
from v2x.comm.wire import CellCoding, Header, MessageType, encode
from v2x.core.grid import BEVGrid

GRID = BEVGrid()
SHAPE, GID, N = GRID.shape, GRID.fingerprint(), GRID.num_cells
CB = 0x1234ABCD


def _head(t: MessageType, unit: int = 0) -> Header:
    return Header(t, 1, 1, 0, (0.0, 0.0, 0.0, 0.0), GID, CB if t == MessageType.CODEBOOK else 0, unit)


def _with_payload(kind: MessageType, unit: int, coding: int, body: bytes) -> bytes:
    buf = bytearray(encode(_head(kind, unit), SHAPE, []))[:64] + body
    buf[6] = coding
    struct.pack_into("<I", buf, 56, len(body))
    struct.pack_into("<I", buf, 60, zlib.crc32(bytes(buf[64:]), zlib.crc32(bytes(buf[:60]))) & 0xFFFFFFFF)
    return bytes(buf)


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _wire_cases() -> dict[str, bytes]:
    one_run = _varint(N) + _varint(1) + _varint(0) + _varint(N - 1)
    return {
        # 74 bytes that declare every cell of the grid: the grid, not the bytes, bounds the set
        "raw, one run of all cells, 0 channels": _with_payload(MessageType.RAW_FP32, 0, 3, one_run + b"\0\0"),
        "demand of every cell-sized block, one run": _with_payload(MessageType.DEMAND, 1, 3, one_run),
        "Rice k=0, all gaps 0": _with_payload(MessageType.DEMAND, 1, 0, _varint(N) + b"\0" + bytes(N // 8)),
        "Rice k=24, all gaps 0": _with_payload(
            MessageType.DEMAND, 1, 0, _varint(N) + b"\x18" + bytes(25 * N // 8)
        ),
        "bitmap, every bit set": _with_payload(MessageType.DEMAND, 1, 1, _varint(N) + b"\xff" * (N // 8)),
        "codebook, 1-bit codes, 64 per cell": encode(
            _head(MessageType.CODEBOOK, 1), SHAPE, np.arange(N), codes=np.zeros((N, 64), np.int64)
        ),
        "codebook, delta-coded cells": encode(
            _head(MessageType.CODEBOOK, 4),
            SHAPE,
            np.arange(N),
            codes=np.ones((N, 4), np.int64),
            coding=CellCoding.DELTA_VARINT,
        ),
        "raw fp16": encode(_head(MessageType.RAW_FP16), SHAPE, np.arange(3000), features=np.ones((3000, 16))),
        "4096 detections with variances": encode(
            _head(MessageType.DETECTIONS),
            detections=(
                np.tile([1.0, 2, 0, 4, 2, 1.5, 0.1], (4096, 1)),
                np.ones(4096),
                np.zeros(4096, int),
                np.ones((4096, 7)),
            ),
        ),
    }


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _bound(name: str, size: int) -> int:
    per_byte, constant = MEMORY_BOUNDS[name]
    return per_byte * size + constant


@pytest.mark.parametrize("case", sorted(_wire_cases()))
def test_wire_decoding_stays_within_its_bound(case):
    data = _wire_cases()[case]
    peak = _peak(lambda: wire.decode(data, SHAPE, GID, CB))  # valid: decoded in full
    assert peak <= _bound("wire", len(data)), (peak, len(data))


def test_points_decoding_stays_within_its_bound():
    data = wire_points.encode_points(1, 0, np.eye(4), np.ones((100_000, 4), np.float32))
    peak = _peak(lambda: wire_points.decode_points(data))
    assert peak <= _bound("points", len(data)), (peak, len(data))


@pytest.mark.parametrize(
    "filler", [[], {}, -20, "ab", 1.5], ids=["lists", "maps", "ints", "strings", "floats"]
)
def test_envelope_decoding_stays_within_its_bound(filler):
    """A 128 KiB header of one filler object repeated (the Python objects per byte do not depend
    on the length; 128 KiB keeps tracemalloc's bookkeeping of them quick)."""
    count = (128 << 10) // len(msgpack.packb(filler))
    head = {
        "t": "Json",
        "v": 1,
        "src": "a",
        "i": 0,
        "n": 0,
        "s": 0,
        "m": {"data": {"x": [filler] * count}},
        "a": [],
        "b": 0,
    }
    frames = [b"/t", msgpack.packb(head)]
    assert len(frames[1]) <= envelope.MAX_HEADER_BYTES
    peak = _peak(lambda: envelope.decode_frames(frames))
    assert peak <= _bound("envelope", len(frames[1])), (peak, len(frames[1]))
