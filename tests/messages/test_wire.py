import contextlib
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from v2x.comm.wire import (
    HEADER,
    REJECTED,
    CellCoding,
    Header,
    MessageType,
    WireError,
    _varint_decode,
    _varint_encode,
    cell_set_sizes,
    decode,
    decode_cells,
    encode,
    encode_cells,
    pack_bits,
    peek_header,
    rejections,
    unpack_bits,
    varint_size,
)

SHAPE = (100, 176)
N = SHAPE[0] * SHAPE[1]
GRID = 0xA1B2C3D4
CB = 0x0BADF00D


def _header(t, unit=0):
    return Header(
        t,
        sender=101,
        seq=7,
        stamp_ns=1_234_567_890_123,
        pose=(512345.25, -3.5, 0.125, 1.25),
        grid_id=GRID,
        codebook_id=CB if t == MessageType.CODEBOOK else 0,
        unit=unit,
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
        encode(_header(MessageType.CODEBOOK, bits), SHAPE, cells, codes=codes, detections=det),
        cells,
        codes,
        det,
    )


@pytest.mark.parametrize("coding", list(CellCoding))
@pytest.mark.parametrize("n", [0, 1, 57, 2000, N])
def test_cell_codings_round_trip_and_sizes_are_exact(coding, n):
    cells = np.sort(np.random.default_rng(n).choice(N, n, replace=False))
    used_coding, data = encode_cells(cells, N, coding)
    back, used = decode_cells(memoryview(data), used_coding, N)
    assert np.array_equal(back, cells) and used == len(data)
    assert cell_set_sizes(cells, N)[coding] == len(data)


def test_the_smallest_coding_is_chosen():
    sparse = np.array([5, 900, 17000])
    dense_run = np.arange(1000, 9000)
    checker = np.arange(0, N, 2)
    assert encode_cells(sparse, N)[0] == CellCoding.DELTA_VARINT
    assert encode_cells(dense_run, N)[0] == CellCoding.RUN_LENGTH
    assert encode_cells(checker, N)[0] == CellCoding.BITMAP
    assert encode_cells(np.zeros(0, np.int64), N) == (CellCoding.RICE, b"\x00")
    rng = np.random.default_rng(5)
    for n in (10, 300, 3000, 12000):
        cells = np.sort(rng.choice(N, n, replace=False))
        _coding, data = encode_cells(cells, N)
        assert len(data) == min(cell_set_sizes(cells, N).values())


@given(st.lists(st.integers(0, 2**40), max_size=50))
def test_varints_round_trip(values):
    data = _varint_encode(np.array(values, dtype=np.uint64))
    assert len(data) == varint_size(np.array(values, dtype=np.uint64))
    back, used = _varint_decode(memoryview(data), len(values), "test", 2**41)
    assert back.tolist() == values and used == len(data)


def test_codebook_message_round_trips_exactly():
    rng = np.random.default_rng(0)
    data, cells, codes, det = _codebook_message(rng)
    msg = decode(data, SHAPE, GRID, CB, 256)
    order = np.argsort(cells)
    assert np.array_equal(msg.cells, cells[order]) and np.array_equal(msg.codes, codes[order])
    h = msg.header
    assert (h.sender, h.seq, h.stamp_ns, h.pose[0], h.pose[1], h.unit) == (
        101,
        7,
        1_234_567_890_123,
        512345.25,
        -3.5,
        8,
    )
    assert np.allclose(msg.detections[:, :6], np.round(det[0][:, :6] * 100) / 100, atol=1e-9)
    assert np.allclose(msg.scores, np.round(det[1] * 255) / 255, atol=1e-6)
    assert np.array_equal(msg.labels, det[2])
    assert np.array_equal(msg.variances, det[3].astype(np.float16).astype(np.float64))
    # decoding then encoding again gives the same bytes: nothing is lost beyond the first quantisation
    again = encode(
        _header(MessageType.CODEBOOK, 8),
        SHAPE,
        msg.cells,
        codes=msg.codes,
        detections=(msg.detections, msg.scores, msg.labels, msg.variances),
    )
    assert again == data


@pytest.mark.parametrize("bits,per_cell", [(1, 1), (4, 2), (7, 6), (12, 3), (16, 4)])
def test_code_widths_round_trip(bits, per_cell):
    rng = np.random.default_rng(bits)
    cells = rng.choice(N, 77, replace=False)
    codes = rng.integers(0, 1 << bits, (77, per_cell))
    data = encode(_header(MessageType.CODEBOOK, bits), SHAPE, cells, codes=codes)
    msg = decode(data, SHAPE, GRID, CB, 1 << bits)
    assert np.array_equal(msg.codes, codes[np.argsort(cells)])
    payload_codes = (77 * per_cell * bits + 7) // 8
    assert len(data) == HEADER.size + encode_cells(np.sort(cells), N)[1].__len__() + 1 + payload_codes


@pytest.mark.parametrize("kind", [MessageType.RAW_FP32, MessageType.RAW_FP16])
def test_raw_feature_messages_are_exact(kind):
    rng = np.random.default_rng(1)
    cells = rng.choice(N, 40, replace=False)
    feats = rng.normal(size=(40, 64)).astype(np.float32)
    data = encode(_header(kind), SHAPE, cells, features=feats)
    msg = decode(data, SHAPE, GRID)
    expected = feats if kind == MessageType.RAW_FP32 else feats.astype(np.float16).astype(np.float32)
    assert np.array_equal(msg.features, expected[np.argsort(cells)])
    width = 4 if kind == MessageType.RAW_FP32 else 2
    assert len(data) == HEADER.size + len(encode_cells(np.sort(cells), N)[1]) + 2 + 40 * 64 * width


@pytest.mark.parametrize("kind", [MessageType.RAW_FP32, MessageType.RAW_FP16])
def test_non_finite_features_and_poses_are_refused_and_never_sent(kind):
    """A NaN pose places the sender nowhere and NaN features poison the fused map: either would
    be "fused" for nothing, so the receiver refuses them as malformed (and counts them). A
    sender cannot write them, and half precision clips to its largest value rather than inf."""
    cells = np.array([5, 9])
    feats = np.ones((2, 3), np.float32)
    good = encode(_header(kind), SHAPE, cells, features=feats)
    width = 4 if kind == MessageType.RAW_FP32 else 2
    for value in (float("nan"), float("inf")):
        bad = bytearray(good)
        struct.pack_into("<f" if width == 4 else "<e", bad, len(bad) - width, value)
        with pytest.raises(WireError, match="non-finite raw feature") as err:
            decode(_recrc(bad), SHAPE, GRID)
        assert err.value.reason == "malformed"
        for offset, fmt in ((24, "<d"), (44, "<f")):  # pose x (float64), yaw (float32)
            bad = bytearray(good)
            struct.pack_into(fmt, bad, offset, value)
            with pytest.raises(WireError, match="non-finite sender pose"):
                decode(_recrc(bad), SHAPE, GRID)
        with pytest.raises(ValueError, match="finite"):
            encode(_header(kind), SHAPE, cells, features=np.full((2, 3), value, np.float32))
    big = encode(_header(kind), SHAPE, cells, features=np.full((2, 3), 1e6, np.float32))
    got = decode(big, SHAPE, GRID).features
    assert np.isfinite(got).all() and (got == (1e6 if width == 4 else np.finfo(np.float16).max)).all()


def test_demand_offer_and_detection_messages():
    blocks = (25, 44)  # the 4-cell block grid of the default feature grid
    cells = np.array([3, 4, 5, 100])
    msg = decode(
        encode(_header(MessageType.OFFER, 4), SHAPE, cells, levels=np.array([1, 2, 3, 0])), SHAPE, GRID
    )
    assert msg.cells.tolist() == [3, 4, 5, 100] and msg.levels.tolist() == [1, 2, 3, 0]
    assert msg.header.unit == 4 and msg.header.has_levels and not msg.header.complement
    comp = decode(encode(_header(MessageType.DEMAND, 4), SHAPE, cells, complement=True), SHAPE, GRID)
    assert comp.header.complement and comp.levels is None and comp.cells.tolist() == [3, 4, 5, 100]
    # block indices are checked against the block grid, not the cell grid
    with pytest.raises(WireError) as err:
        decode(encode(_header(MessageType.DEMAND, 4), SHAPE, [blocks[0] * blocks[1] - 1]), (50, 88), GRID)
    assert err.value.reason == "cell_outside_grid"
    boxes = np.array([[12.34, -5.67, 0.8, 4.5, 1.9, 1.5, 3.0]])
    msg = decode(encode(_header(MessageType.DETECTIONS), detections=(boxes, [0.5], [0], None)), SHAPE)
    assert np.allclose(msg.detections, boxes, atol=1e-4) and msg.variances is None
    assert len(encode(_header(MessageType.DETECTIONS), detections=(boxes, [0.5], [0], None))) == 64 + 2 + 16


def test_refusals_are_typed_and_counted():
    rng = np.random.default_rng(2)
    data, *_ = _codebook_message(rng)
    before = rejections()

    def refuse(bad, reason, **kw):
        args = {"grid_shape": SHAPE, "grid_id": GRID, "codebook_id": CB, "codebook_size": 256, **kw}
        with pytest.raises(WireError) as err:
            decode(bad, **args)
        assert err.value.reason == reason, err.value

    refuse(data[:-3], "truncated")
    refuse(data[:40], "truncated")
    refuse(data + b"\0", "oversized")
    refuse(b"XXXX" + data[4:], "bad_magic")
    refuse(data[:4] + b"\x02" + data[5:], "unsupported_version")
    refuse(data[:70] + bytes([data[70] ^ 1]) + data[71:], "bad_checksum")
    refuse(_recrc(bytearray(data[:5] + b"\x09" + data[6:])), "malformed")  # unknown type
    refuse(_recrc(bytearray(data[:6] + bytes([data[6] | 0x80]) + data[7:])), "malformed")  # reserved flag
    refuse(data, "codebook_mismatch", codebook_id=CB + 1)
    refuse(data, "grid_mismatch", grid_id=GRID + 1)
    refuse(data, "code_out_of_range", codebook_size=128)  # indices up to 255 do not fit k = 128
    refuse(data, "cell_outside_grid", grid_shape=(10, 10))  # a smaller grid: cells fall outside it
    after = rejections()
    assert sum(after.values()) - sum(before.values()) == 12
    assert after["bad_checksum"] == before.get("bad_checksum", 0) + 1
    assert REJECTED["grid_mismatch"] == after["grid_mismatch"]


def test_rice_coding_is_compact_and_its_corruptions_are_refused():
    rng = np.random.default_rng(8)
    cells = np.sort(rng.choice(N, 1000, replace=False))
    sizes = cell_set_sizes(cells, N)
    # about the entropy of a random 1000-of-17600 set (~5.6 bits a cell), well under a byte a cell
    assert sizes[CellCoding.RICE] < 0.8 * sizes[CellCoding.DELTA_VARINT]
    coding, data = encode_cells(cells, N)
    assert coding == CellCoding.RICE and len(data) == sizes[CellCoding.RICE]
    count = len(_varint_encode(np.array([1000])))
    bad_k = bytearray(data)
    bad_k[count] = 30
    with pytest.raises(WireError) as err:
        decode_cells(memoryview(bytes(bad_k)), CellCoding.RICE, N)
    assert err.value.reason == "malformed"
    with pytest.raises(WireError) as err:  # the stream cut short
        decode_cells(memoryview(data[: len(data) // 2]), CellCoding.RICE, N)
    assert err.value.reason == "truncated"
    with pytest.raises(WireError) as err:  # a smaller grid: the same gaps overrun it
        decode_cells(memoryview(data), CellCoding.RICE, N // 4)
    assert err.value.reason == "cell_outside_grid"
    one, two = encode_cells(np.array([3]), N, CellCoding.RICE)[1], encode_cells(np.array([17599]), N)[1]
    assert decode_cells(memoryview(one), CellCoding.RICE, N)[0].tolist() == [3] and len(two) <= 4


def test_header_pose_keeps_metre_precision_far_from_the_origin():
    """x, y travel as float64: a pose 4,000 km from the world origin comes back to the nanometre."""
    h = _header(MessageType.DETECTIONS)
    h.pose = (4_412_345.678_912, 512_345.123_456, 35.25, -2.5)
    back = peek_header(encode(h, detections=(np.zeros((0, 7)), [], [], None)))
    assert abs(back.pose[0] - h.pose[0]) < 1e-9 and abs(back.pose[1] - h.pose[1]) < 1e-9
    assert abs(back.pose[3] - h.pose[3]) < 1e-6


def _recrc(data: bytearray) -> bytes:
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60]) + bytes(data[64:])) & 0xFFFFFFFF)
    return bytes(data)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_MESSAGES = {
    "codebook": _codebook_message(np.random.default_rng(3), n=50)[0],
    "raw": encode(_header(MessageType.RAW_FP16), SHAPE, [1, 2, 3, 900], features=np.ones((4, 8))),
    "rle": encode(
        _header(MessageType.CODEBOOK, 5),
        SHAPE,
        np.arange(400, 480),
        codes=np.ones((80, 2), np.int64),
        coding=CellCoding.RUN_LENGTH,
    ),
    "demand": encode(_header(MessageType.DEMAND, 4), SHAPE, [5, 6, 7, 500], levels=[1, 2, 3, 3]),
    "rice": encode(
        _header(MessageType.CODEBOOK, 6),
        SHAPE,
        np.random.default_rng(9).choice(N, 40, replace=False),
        codes=np.full((40, 2), 33),
        coding=CellCoding.RICE,
    ),
    "bitmap": encode(
        _header(MessageType.OFFER, 4),
        SHAPE,
        np.arange(0, 1100, 3),
        levels=np.ones(367, np.int64),
        coding=CellCoding.BITMAP,
    ),
}


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_wire_errors(data):
    with pytest.raises(WireError):
        decode(data, SHAPE, GRID, CB, 256)


@FUZZ
@given(st.sampled_from(sorted(_MESSAGES)), st.binary(min_size=64, max_size=64))
def test_random_payload_behind_a_valid_header_only_raises_wire_errors(name, junk):
    """Garbage behind a real header (length and CRC made consistent) reaches the payload parsers."""
    buf = bytearray(_MESSAGES[name][:64] + junk)
    buf[56:60] = struct.pack("<I", len(junk))
    with contextlib.suppress(WireError):
        decode(_recrc(buf), SHAPE, GRID, CB, 256)


@FUZZ
@given(st.sampled_from(sorted(_MESSAGES)), st.integers(0, 5000), st.integers(0, 255), st.booleans())
def test_mutated_messages_only_raise_wire_errors(name, pos, value, fix_crc):
    """Change any byte (length and count fields included), with or without a valid checksum after."""
    buf = bytearray(_MESSAGES[name])
    pos = pos % len(buf)
    buf[pos] = value
    mutated = _recrc(buf) if fix_crc and pos not in range(60, 64) else bytes(buf)
    try:
        msg = decode(mutated, SHAPE, GRID, CB, 256)
    except WireError:
        return
    # a mutation that still decodes describes a valid message
    limit = N if msg.header.type not in (MessageType.DEMAND, MessageType.OFFER) else 25 * 44
    assert msg.cells.max(initial=0) < max(limit, 1)
    assert msg.codes is None or msg.codes.max(initial=0) < 256


@pytest.mark.parametrize("name", sorted(_MESSAGES))
def test_every_truncation_is_refused(name):
    data = _MESSAGES[name]
    for cut in range(len(data)):
        with pytest.raises(WireError):
            decode(data[:cut], SHAPE, GRID, CB, 256)
        buf = bytearray(data[:cut].ljust(64, b"\0"))
        buf[56:60] = struct.pack("<I", max(0, cut - 64))  # a header that agrees with the short frame
        buf[:4] = b"V2XM"
        buf[4] = 1
        if cut > 64:
            with pytest.raises(WireError):
                decode(_recrc(buf), SHAPE, GRID, CB, 256)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.sampled_from([56, 64, 65, 66]))
def test_huge_declared_sizes_are_refused_without_allocating(value, where):
    """A length (header) or count (payload varint / channel / per-cell) field set to anything."""
    buf = bytearray(_MESSAGES["raw"])
    if where == 56:
        buf[56:60] = struct.pack("<I", value)
    else:
        buf[where] = value & 0xFF
    tracemalloc.start()
    try:
        decode(_recrc(buf), SHAPE, GRID, CB, 256)
    except WireError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # everything decode allocates is bounded by the few hundred bytes actually present
    assert peak < 64 * 1024


@given(st.lists(st.integers(0, 4095), max_size=200), st.integers(12, 16))
def test_bit_packing_round_trip(values, bits):
    packed = pack_bits(np.array(values), bits)
    assert len(packed) == (len(values) * bits + 7) // 8
    assert unpack_bits(packed, len(values), bits).tolist() == values
