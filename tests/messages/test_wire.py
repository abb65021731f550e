import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from v2x.comm.wire import (
    REJECTED,
    CellCoding,
    Header,
    MessageType,
    WireError,
    decode,
    decode_cells,
    encode,
    encode_cells,
    pack_bits,
    unpack_bits,
)

N = 100 * 176
GRID = 0xA1B2C3D4
CB = 0x0BADF00D


def _header(t, bits=0):
    return Header(
        t,
        sender=101,
        seq=7,
        stamp_ns=1_234_567_890_123,
        pose=(512345.25, -3.5, 0.125, 1.25),
        grid_id=GRID,
        codebook_id=CB if t == MessageType.CODEBOOK else 0,
        code_bits=bits,
    )


def _codebook_message(rng, n=300, per_cell=4, bits=8, dets=True):
    cells = rng.choice(N, n, replace=False)
    codes = rng.integers(0, 1 << bits, (n, per_cell))
    boxes = np.c_[
        rng.uniform(-60, 60, (6, 2)),
        rng.uniform(-1, 2, 6),
        rng.uniform(0.5, 10, (6, 3)),
        rng.uniform(-3, 3, 6),
    ]
    det = (boxes, rng.random(6), rng.integers(0, 6, 6), rng.random((6, 7))) if dets else None
    return (
        encode(_header(MessageType.CODEBOOK, bits), N, cells, codes=codes, detections=det),
        cells,
        codes,
        det,
    )


@pytest.mark.parametrize("coding", list(CellCoding)[1:])
@pytest.mark.parametrize("n", [0, 1, 57, 2000, N])
def test_cell_codings_round_trip(coding, n):
    cells = np.sort(np.random.default_rng(n).choice(N, n, replace=False))
    used_coding, data = encode_cells(cells, N, coding)
    back, used = decode_cells(memoryview(data), used_coding, N)
    assert np.array_equal(back, cells) and used == len(data)


def test_best_coding_is_chosen():
    sparse = np.array([5, 900, 17000])
    dense_run = np.arange(1000, 9000)
    assert encode_cells(sparse, N)[0] == CellCoding.DELTA_VARINT
    assert encode_cells(dense_run, N)[0] == CellCoding.RUN_LENGTH
    checker = np.arange(0, N, 2)
    assert encode_cells(checker, N)[0] == CellCoding.BITMAP


def test_codebook_message_round_trips_exactly():
    rng = np.random.default_rng(0)
    data, cells, codes, det = _codebook_message(rng)
    msg = decode(data, N, GRID, CB, 256)
    order = np.argsort(cells)
    assert np.array_equal(msg.cells, cells[order]) and np.array_equal(msg.codes, codes[order])
    h = msg.header
    assert (h.sender, h.seq, h.stamp_ns, h.pose[0], h.pose[1]) == (101, 7, 1_234_567_890_123, 512345.25, -3.5)
    assert np.allclose(msg.detections[:, :6], np.round(det[0][:, :6] * 100) / 100, atol=1e-9)
    assert np.allclose(msg.scores, np.round(det[1] * 255) / 255, atol=1e-6)
    assert np.array_equal(msg.labels, det[2])
    # the encoding itself is a fixed point: decode -> encode gives the same bytes
    again = encode(
        _header(MessageType.CODEBOOK, 8),
        N,
        msg.cells,
        codes=msg.codes,
        detections=(msg.detections, msg.scores, msg.labels, msg.variances),
    )
    assert again == data


@pytest.mark.parametrize("kind", [MessageType.RAW_FP32, MessageType.RAW_FP16])
def test_raw_feature_messages(kind):
    rng = np.random.default_rng(1)
    cells = rng.choice(N, 40, replace=False)
    feats = rng.normal(size=(40, 64)).astype(np.float32)
    msg = decode(encode(_header(kind), N, cells, features=feats), N, GRID)
    order = np.argsort(cells)
    tol = 0 if kind == MessageType.RAW_FP32 else 2e-3
    assert np.allclose(msg.features, feats[order], atol=tol, rtol=tol)


def test_demand_and_detection_messages():
    cells = np.array([3, 4, 5, 100])
    msg = decode(encode(_header(MessageType.DEMAND), N, cells, levels=np.array([1, 2, 3, 0])), N)
    assert msg.cells.tolist() == [3, 4, 5, 100] and msg.levels.tolist() == [1, 2, 3, 0]
    boxes = np.array([[12.34, -5.67, 0.8, 4.5, 1.9, 1.5, 3.0]])
    msg = decode(encode(_header(MessageType.DETECTIONS), detections=(boxes, [0.5], [0], None)), N)
    assert np.allclose(msg.detections, boxes, atol=1e-4) and msg.variances is None


def test_refusals_are_typed_and_counted():
    rng = np.random.default_rng(2)
    data, *_ = _codebook_message(rng)
    before = dict(REJECTED)
    cases = {
        "truncated": data[:-3],
        "oversized": data + b"\0",
        "bad_magic": b"XXXX" + data[4:],
        "unsupported_version": data[:4] + b"\x02" + data[5:],
        "bad_checksum": data[:70] + bytes([data[70] ^ 1]) + data[71:],
    }
    for reason, bad in cases.items():
        with pytest.raises(WireError) as err:
            decode(bad, N, GRID, CB, 256)
        assert err.value.reason == reason
    with pytest.raises(WireError) as err:
        decode(data, N, GRID, CB + 1, 256)
    assert err.value.reason == "codebook_mismatch"
    with pytest.raises(WireError) as err:
        decode(data, N, GRID + 1, CB, 256)
    assert err.value.reason == "grid_mismatch"
    with pytest.raises(WireError) as err:
        decode(data, N, GRID, CB, 128)  # indices up to 255 do not fit a 128-word codebook
    assert err.value.reason == "code_out_of_range"
    with pytest.raises(WireError) as err:
        decode(data, 100, GRID, CB, 256)  # a smaller grid: cells fall outside it
    assert err.value.reason == "cell_outside_grid"
    assert sum(REJECTED.values()) - sum(before.values()) == 9


def _recrc(data: bytearray) -> bytes:
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60]) + bytes(data[64:])) & 0xFFFFFFFF)
    return bytes(data)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_wire_errors(data):
    with pytest.raises(WireError):
        decode(data, N, GRID, CB, 256)


@FUZZ
@given(st.integers(0, 5000), st.integers(0, 255), st.booleans())
def test_mutated_messages_only_raise_wire_errors(pos, value, fix_crc):
    """Flip any byte (length fields included), with or without a valid checksum afterwards."""
    data, *_ = _codebook_message(np.random.default_rng(3), n=50)
    buf = bytearray(data)
    pos = pos % len(buf)
    buf[pos] = value
    mutated = _recrc(buf) if fix_crc and pos not in range(60, 64) else bytes(buf)
    try:
        msg = decode(mutated, N, GRID, CB, 256)
    except WireError:
        return
    # a mutation that still decodes must describe a valid message
    assert msg.cells.max(initial=0) < N and (msg.codes is None or msg.codes.max(initial=0) < 256)


@FUZZ
@given(st.integers(0, 2**32 - 1))
def test_huge_declared_sizes_never_allocate(length):
    data, *_ = _codebook_message(np.random.default_rng(4), n=10, dets=False)
    buf = bytearray(data)
    buf[56:60] = struct.pack("<I", length)
    with pytest.raises(WireError):
        decode(_recrc(buf), N, GRID, CB, 256)


@given(st.lists(st.integers(0, 4095), max_size=200), st.integers(12, 16))
def test_bit_packing_round_trip(values, bits):
    assert unpack_bits(pack_bits(np.array(values), bits), len(values), bits).tolist() == values
