"""Each refusal of the receive-path decoders has one reason, for one exact condition (issue 23):
the inputs that used to end a node (an ``inf`` array dimension, a dtype string numpy parses as
code, a raw message with cells but no channels, a points message with a NaN or sheared pose) and
the edge cases the issue asked to settle (trailing bytes, varint limits, P = 0, boxes without
volume, padding bits)."""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter

import msgpack
import numpy as np
import pytest

from v2x.comm import envelope, wire, wire_points
from v2x.comm.errors import MAX_REFUSAL_KEYS, DecodeError, count_refusal
from v2x.comm.wire import CellCoding, Header, MessageType, decode, encode
from v2x.core.geometry import pose_from_xyz_rpy
from v2x.core.grid import BEVGrid
from v2x.messages.codec import MessageCodec

GRID = BEVGrid()
SHAPE, GID = GRID.shape, GRID.fingerprint()


# -- envelope ----------------------------------------------------------------------------------
def _frames(**header) -> list[bytes]:
    frames = [
        bytes(memoryview(f))
        for f in envelope.encode_frames("/scan", envelope.PointCloud(np.ones((3, 4), np.float32)))
    ]
    head = msgpack.unpackb(frames[1]) | header
    return [frames[0], msgpack.packb(head), *frames[2:]]


@pytest.mark.parametrize(
    "spec",
    [
        ["<f4", [math.inf, 4]],  # was OverflowError
        [",i2", [3, 4]],  # was SyntaxError from numpy's dtype parser
        ["<f4", [math.nan, 4]],
        ["<f4", [3.0, 4]],
        ["<f4", [3, True]],
        ["<f4", ["3", 4]],
        ["(2,)f4", [3, 2]],
        ["<f3", [3, 4]],
        ["<f4", [3] * 33],
        ["<f4"],
        "<f4",
    ],
)
def test_hostile_array_descriptions_are_bad_array(spec):
    with pytest.raises(envelope.MessageError) as err:
        envelope.decode_frames(_frames(a=[spec, ["<f8", [4, 4]]]))
    assert err.value.reason == "bad_array" and err.value.stage == "arrays" and not err.value.unexpected


def test_every_envelope_reason_has_its_condition():
    good = _frames()
    cases = {
        "missing_frames": [b"/scan"],
        "bad_topic": [b"scan", good[1]],
        "over_limit": [b"/scan", bytes(envelope.MAX_HEADER_BYTES + 1)],
        "bad_header": _frames(src=7),
        "unsupported_version": _frames(v=2),
        "unknown_type": _frames(t="Nope"),
        "frame_count": good[:3],
        "bad_field": _frames(m={"frame": "seven"}),
        "bad_array": _frames(a=[["|O8", [3, 4]], ["<f8", [4, 4]]]),
        "size_mismatch": [*good[:2], b"1234", good[3]],
    }
    for reason, frames in cases.items():
        with pytest.raises(envelope.MessageError) as err:
            envelope.decode_frames(frames)
        assert err.value.reason == reason, (reason, err.value)
    with pytest.raises(envelope.WrongTypeError) as err:
        envelope.decode_frames(good, envelope.Packet)
    assert err.value.reason == "wrong_type"
    assert set(cases) | {"wrong_type"} == envelope.REASONS


# -- wire format -------------------------------------------------------------------------------
def _head(t: MessageType, unit: int = 0, cb: int = 0) -> Header:
    return Header(t, 5, 1, 0, (1.0, 2.0, 0.0, 0.5), GID, cb, unit)


def _reseal(data: bytes | bytearray, body: bytes | None = None) -> bytes:
    buf = bytearray(data[:64]) + (bytearray(data[64:]) if body is None else bytearray(body))
    struct.pack_into("<I", buf, 56, len(buf) - 64)
    struct.pack_into("<I", buf, 60, zlib.crc32(bytes(buf[64:]), zlib.crc32(bytes(buf[:60]))) & 0xFFFFFFFF)
    return bytes(buf)


def _reason(data: bytes, **kw) -> tuple[str, str]:
    with pytest.raises(wire.WireError) as err:
        decode(data, SHAPE, GID, **kw)
    assert not err.value.unexpected
    return err.value.reason, err.value.stage


def test_trailing_bytes_have_one_reason_each():
    data = encode(_head(MessageType.DEMAND, 4), SHAPE, [3, 9])
    assert _reason(data + b"\0") == ("oversized", "header")  # beyond 64 + payload length
    assert _reason(_reseal(data + b"\0")) == ("trailing_bytes", "payload")  # inside it, unread
    huge = bytearray(data)
    struct.pack_into("<I", huge, 56, wire.MAX_PAYLOAD + 1)  # a declared size above its cap
    assert _reason(bytes(huge)) == ("over_limit", "header")


def test_varints_are_in_their_shortest_form_and_no_longer_than_their_field_needs():
    data = encode(
        _head(MessageType.DEMAND, 4), SHAPE, [3], coding=CellCoding.DELTA_VARINT
    )  # count 1, delta 3
    assert decode(data, SHAPE, GID).cells.tolist() == [3]
    assert _reason(_reseal(data, b"\x01\x83\x00")) == ("malformed", "payload")  # 3 in two bytes
    assert _reason(_reseal(data, b"\x81\x00\x03")) == ("malformed", "payload")  # a count of 1 in two bytes
    assert _reason(_reseal(data, b"\x01\xff\xff\x7f")) == (
        "cell_outside_grid",
        "payload",
    )  # 3 bytes: >= 1,100
    assert _reason(_reseal(data, b"\x01\xcc\x08")) == (
        "cell_outside_grid",
        "payload",
    )  # 1,100: the block count
    runs = encode(_head(MessageType.DEMAND, 4), SHAPE, [3, 4], coding=CellCoding.RUN_LENGTH)
    assert _reason(_reseal(runs, b"\x02\x03\x03\x01\x00\x00")) == (
        "malformed",
        "payload",
    )  # 3 runs of 2 cells


def test_one_varint_and_many_follow_the_same_rules():
    """The single-varint fast path (counts) and the vectorised one agree with the documented rules."""
    rng = np.random.default_rng(1)
    for _ in range(3000):
        buf = bytes(rng.choice([0, 1, 0x7F, 0x80, 0x81, 0xFF, 0x05, 0x44], int(rng.integers(0, 6))))
        limit = int(rng.choice([2, 100, 128, 129, 1100, 17601, 2**21]))
        count = int(rng.integers(1, 3))
        want = _reference_varints(buf, count, limit)
        try:
            got = wire._varint_decode(memoryview(buf), count, "x", limit)
            got = ("ok", got[0].tolist(), got[1])
        except wire.WireError as exc:
            got = (exc.reason,)
        assert got == want, (buf.hex(), count, limit)


def _reference_varints(buf: bytes, count: int, limit: int) -> tuple:
    """docs/wire-format.md's rules, one byte at a time: truncated, then too long for the field,
    then not the shortest form, then the value against the limit."""
    max_len = max(1, ((limit - 1).bit_length() + 6) // 7)
    ends = [i for i, b in enumerate(buf) if b < 0x80]
    if count > len(buf) or len(ends) < count:
        return ("truncated",)
    starts = [0] + [e + 1 for e in ends[: count - 1]]
    lengths = [e - s + 1 for s, e in zip(starts, ends[:count], strict=True)]
    if max(lengths) > max_len:
        return ("cell_outside_grid",)
    if any(n > 1 and buf[e] == 0 for n, e in zip(lengths, ends, strict=False)):
        return ("malformed",)
    values = [
        sum((buf[s + k] & 0x7F) << (7 * k) for k in range(n)) for s, n in zip(starts, lengths, strict=True)
    ]
    if max(values) >= limit:
        return ("cell_outside_grid",)
    return ("ok", values, ends[count - 1] + 1)


def test_codes_and_levels_pad_with_zero_bits_and_a_codebook_message_has_indices():
    cb = _head(MessageType.CODEBOOK, 4, 0x1234)
    data = encode(cb, SHAPE, [7], codes=np.array([[5]]))  # one 4-bit code: 4 padding bits
    assert decode(data, SHAPE, GID).codes.tolist() == [[5]]
    assert _reason(_reseal(data[:-1] + bytes([data[-1] | 1]))) == ("malformed", "payload")
    empty = encode(cb, SHAPE, [], codes=np.zeros((0, 1), np.int64))
    assert _reason(_reseal(empty[:-1] + b"\x00")) == ("malformed", "payload")  # P = 0, even without cells
    offer = encode(_head(MessageType.OFFER, 4), SHAPE, [7], levels=[2])  # one 2-bit level: 6 padding bits
    assert _reason(_reseal(offer[:-1] + bytes([offer[-1] | 0x01]))) == ("malformed", "payload")


def test_boxes_need_volume_and_variances_must_be_finite_and_non_negative():
    box = np.array([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3]])
    plain = encode(_head(MessageType.DETECTIONS), detections=(box, [0.9], [0], None))
    for field in (6, 8, 10):  # length, width, height of the first record
        flat = bytearray(plain)
        struct.pack_into("<H", flat, 64 + 2 + field, 0)
        assert _reason(_reseal(flat)) == ("malformed", "payload")
    with_var = encode(_head(MessageType.DETECTIONS), detections=(box, [0.9], [0], np.ones((1, 7))))
    for bad in (math.nan, math.inf, -1.0):
        buf = bytearray(with_var)
        struct.pack_into("<e", buf, 64 + 2 + 16, bad)
        assert _reason(_reseal(buf)) == ("malformed", "payload")
    empty = encode(_head(MessageType.DETECTIONS), detections=(np.zeros((0, 7)), [], [], None))
    assert len(decode(empty, SHAPE, GID).detections) == 0  # no boxes is a valid answer
    # the sender never writes what the receiver refuses: huge variances are clipped, NaN refused
    big = decode(
        encode(_head(MessageType.DETECTIONS), detections=(box, [0.9], [0], np.full((1, 7), 1e6))), SHAPE
    )
    assert np.isfinite(big.variances).all()
    with pytest.raises(ValueError, match="finite"):
        encode(_head(MessageType.DETECTIONS), detections=(box, [0.9], [0], np.full((1, 7), math.nan)))


def test_fields_a_type_does_not_use_must_be_zero():
    raw = encode(_head(MessageType.RAW_FP32), SHAPE, [1], features=np.ones((1, 2)))
    assert _reason(_reseal(raw[:7] + b"\x03" + raw[8:])) == ("malformed", "fields")  # a unit on raw features
    assert _reason(_reseal(raw[:52] + b"\x01\x00\x00\x00" + raw[56:])) == (
        "malformed",
        "fields",
    )  # a codebook id
    with pytest.raises(ValueError, match="no unit"):
        encode(_head(MessageType.RAW_FP32, 3), SHAPE, [1], features=np.ones((1, 2)))
    with pytest.raises(ValueError, match="name a codebook"):
        encode(_head(MessageType.DEMAND, 4, cb=9), SHAPE, [1])


def test_stages_say_how_far_the_decoder_got():
    data = encode(_head(MessageType.DEMAND, 4), SHAPE, [3, 9])
    assert _reason(data[:10]) == ("truncated", "header")
    assert _reason(data[:-1] + bytes([data[-1] ^ 1])) == ("bad_checksum", "checksum")
    with pytest.raises(wire.GridMismatchError) as err:
        decode(data, SHAPE, GID + 1)
    assert err.value.stage == "identity"


def test_a_raw_message_with_cells_but_no_channels_is_refused_by_the_codec():
    """It used to end the ego: RuntimeError (shape mismatch) placing 0 values per cell."""
    codec = MessageCodec(GRID)
    data = encode(_head(MessageType.RAW_FP32), SHAPE, [1, 2, 3], features=np.zeros((3, 0)))
    with pytest.raises(wire.WireError) as err:
        codec.read_features(data, 64)
    assert (err.value.reason, err.value.stage) == ("malformed", "codec")
    empty = encode(_head(MessageType.RAW_FP32), SHAPE, [], features=np.zeros((0, 0)))
    feats, _ = codec.read_features(empty, 64)  # no cells: nothing to place, nothing wrong
    assert not feats.valid.any()


# -- points ------------------------------------------------------------------------------------
def _points(pose: np.ndarray, n: int = 5) -> bytes:
    return wire_points.encode_points(3, 7, pose, np.ones((n, 4), np.float32))


def _points_reason(data: bytes) -> tuple[str, str]:
    with pytest.raises(wire_points.PointsMessageError) as err:
        wire_points.decode_points(data)
    return err.value.reason, err.value.stage


def _translated(x: float) -> np.ndarray:
    pose = np.eye(4)
    pose[0, 3] = x
    return pose


@pytest.mark.parametrize(
    "pose",
    [
        _translated(math.nan),  # was accepted: the points went nowhere
        _translated(math.inf),
        np.diag([1.0, 1.0, -1.0, 1.0]),  # a mirror: det -1
        np.diag([1.01, 1.0, 1.0, 1.0]),  # scaled
        np.array([[1.0, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),  # sheared
        np.diag([1e300, 1.0, 1.0, 1.0]),  # would overflow the rigidity test's products
    ],
)
def test_points_with_a_pose_that_is_not_finite_and_rigid_are_refused(pose):
    with np.errstate(all="raise"):  # and quietly: no overflow warning on the way
        assert _points_reason(_points(pose)) == ("bad_pose", "pose")
    assert wire_points.decode_points(
        _points(pose_from_xyz_rpy(1.0, 2.0, 0.0, 0.1, 0.0, 2.0))
    ).points.shape == (5, 4)


def test_every_points_reason_has_its_condition():
    good = _points(pose_from_xyz_rpy(4.0e6, 5.0e5, 30.0, 0.05, -0.02, 1.0))
    assert wire_points.decode_points(good).points.shape == (5, 4)

    def sealed(buf: bytearray) -> bytes:
        struct.pack_into("<I", buf, 120, zlib.crc32(bytes(buf[124:]), zlib.crc32(bytes(buf[:120]))))
        return bytes(buf)

    def field(offset: int, fmt: str, value) -> bytes:
        buf = bytearray(good)
        struct.pack_into(fmt, buf, offset, value)
        return sealed(buf)

    assert _points_reason(good[:100]) == ("truncated", "header")
    assert _points_reason(b"XXXX" + good[4:]) == ("bad_magic", "header")
    assert _points_reason(field(4, "<B", 2)) == ("unsupported_version", "header")
    assert _points_reason(field(5, "<B", 1)) == ("malformed", "header")
    assert _points_reason(field(6, "<H", 1)) == ("malformed", "header")
    assert _points_reason(field(116, "<I", wire_points.MAX_POINTS + 1)) == ("over_limit", "header")
    assert _points_reason(field(116, "<I", 6)) == ("truncated", "header")
    assert _points_reason(field(116, "<I", 4)) == ("oversized", "header")
    assert _points_reason(good[:-1] + bytes([good[-1] ^ 1])) == ("bad_checksum", "checksum")


# -- the error type and the count a node keeps -------------------------------------------------
def test_one_error_type_with_the_decoder_named():
    assert issubclass(wire.WireError, DecodeError) and issubclass(envelope.MessageError, DecodeError)
    assert issubclass(wire_points.PointsMessageError, DecodeError) and issubclass(DecodeError, ValueError)
    assert {
        wire.WireError.decoder,
        envelope.MessageError.decoder,
        wire_points.PointsMessageError.decoder,
    } == {
        "wire",
        "envelope",
        "points",
    }


def test_refusals_are_counted_by_reason_and_sender_in_bounded_keys():
    counters: Counter[str] = Counter({"malformed": 3})
    err = envelope.MessageError("x", reason="bad_array")
    count_refusal(counters, err, "agent:3\n")
    count_refusal(counters, err, "agent:3\n")
    count_refusal(counters, wire.TruncatedError("y"))
    assert (
        counters["refused:envelope.bad_array"] == 2 and counters["refused:envelope.bad_array:agent_3_"] == 2
    )
    assert counters["refused:wire.truncated"] == 1 and counters["refused:wire.truncated:?"] == 1
    for k in range(2 * MAX_REFUSAL_KEYS):  # a sender that renames itself at every message
        count_refusal(counters, err, f"liar{k}")
    assert len(counters) <= MAX_REFUSAL_KEYS + 2 and counters["refused:envelope.bad_array:other"] > 0
    assert counters["refused:envelope.bad_array"] == 2 + 2 * MAX_REFUSAL_KEYS
