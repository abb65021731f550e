"""Typed messages: bit-exact round trips through real sockets, and refusal of anything else."""

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from v2x.comm.envelope import (
    REGISTRY,
    Boxes3D,
    Bytes,
    Clock,
    Json,
    Message,
    MessageError,
    Packet,
    PointCloud,
    WrongTypeError,
    decode_frames,
    encode_frames,
    message_type,
)
from v2x.comm.node import topic_matcher
from v2x.comm.params import ParamError, apply_overrides, coerce, load_params


@message_type(name="test/Grids")
@dataclass
class Grids(Message):
    ARRAYS: ClassVar[tuple[str, ...]] = ("a", "b", "c", "d")
    BLOBS: ClassVar[tuple[str, ...]] = ("raw",)
    a: np.ndarray = field(default_factory=lambda: np.zeros(0))
    b: np.ndarray = field(default_factory=lambda: np.zeros(0))
    c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    d: np.ndarray = field(default_factory=lambda: np.zeros(0))
    raw: bytes = b""
    note: str = ""
    pose: list = field(default_factory=list)


@pytest.fixture(scope="module")
def pipe():
    """A real PUB/SUB pair over TCP loopback (received frames are zmq.Frame, not copies)."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    pub = ctx.socket(zmq.PUB)
    pub.connect(f"tcp://127.0.0.1:{port}")
    for _ in range(100):  # until the subscription has reached the publisher
        pub.send_multipart([b"/probe"])
        if sub.poll(20):
            while sub.poll(50):
                sub.recv_multipart()
            break

    def through(frames):
        pub.send_multipart(frames, copy=False)
        assert sub.poll(5000)
        return sub.recv_multipart(copy=False)

    yield through
    pub.close(0)
    sub.close(0)
    ctx.term()


def test_arrays_of_every_kind_round_trip_bit_exact(pipe):
    rng = np.random.default_rng(1)
    msg = Grids(
        a=rng.normal(size=(64, 128, 3)).astype(np.float16),
        b=np.array([np.nan, -0.0, np.inf, 1e-45], np.float32),  # NaN payload, signed zero, subnormal
        c=(rng.integers(0, 2, (7, 9)) > 0),
        d=np.asfortranarray(rng.integers(-(2**62), 2**62, (5, 4), dtype=np.int64)),  # not C-contiguous
        raw=bytes(range(256)) * 300,
        note="ünïcode",
        pose=[1.5, -2.0, 3.25],
    )
    frames = encode_frames("/x/grids", msg, source="me", seq=7, sent_ns=123)
    topic, back, header = decode_frames(pipe(frames), Grids, with_header=True)
    assert topic == "/x/grids" and header["src"] == "me" and header["n"] == 7 and header["s"] == 123
    for name in ("a", "b", "c", "d"):
        sent, got = getattr(msg, name), getattr(back, name)
        assert got.dtype == sent.dtype and got.shape == sent.shape
        assert np.ascontiguousarray(sent).tobytes() == got.tobytes()  # bit for bit, NaN included
    assert back.raw == msg.raw and back.note == msg.note and back.pose == msg.pose
    assert not back.a.flags.writeable  # a view of the received frame, no copy


def test_the_shared_types_round_trip(pipe):
    pts = np.random.default_rng(0).normal(size=(60000, 4)).astype(np.float32)
    cases = [
        PointCloud(pts, np.eye(4) * 2, "7", "rsu", 5.5, 123, 9),
        Boxes3D(np.ones((3, 7)), np.array([0.5, 0.6, 0.7], np.float32), np.zeros(3, np.int16), np.arange(3)),
        Packet.of(
            b"\x00wire-format bytes\xff" * 1000,
            sender="a1",
            receiver="ego",
            frame=4,
            sender_position=[1.0, 2.0, 0.0],
        ),
        Bytes(b"opaque"),
        Json({"a": [1, 2, {"b": None}], "c": "d"}),
        Clock(stamp_ns=2**62, frame=3),
        Packet(np.zeros(0, np.uint8)),
        Grids(a=np.full((), 3.5), raw=b""),  # a 0-d array and an empty blob
    ]
    for msg in cases:
        _, back = decode_frames(pipe(encode_frames("/t", msg)))
        assert type(back) is type(msg) and back.meta() == msg.meta()
        for name in type(msg).ARRAYS:
            assert np.array_equal(getattr(back, name), getattr(msg, name))
            assert getattr(back, name).dtype == getattr(msg, name).dtype
        for name in type(msg).BLOBS:
            assert getattr(back, name) == getattr(msg, name)
    assert decode_frames(pipe(encode_frames("/t", cases[2])))[1].data == b"\x00wire-format bytes\xff" * 1000


def _header(frames):
    return msgpack.unpackb(frames[1])


def _with_header(frames, **changes):
    h = _header(frames) | changes
    return [frames[0], msgpack.packb(h), *frames[2:]]


def test_anything_but_a_valid_message_is_refused_with_a_reason():
    good = [bytes(memoryview(f)) for f in encode_frames("/a/b", PointCloud(np.ones((10, 4), np.float32)))]
    with pytest.raises(WrongTypeError, match="carries Packet, got PointCloud"):
        decode_frames(good, Packet)
    bad = {
        "an empty message": [],
        "a message needs a topic and a header": [b"/a/b"],
        "not a topic name": [b"no-slash", good[1]],
        "not UTF-8": [b"/\xff\xfe", good[1]],
        "unreadable header": [b"/a/b", b"\xc1\xc1"],
        "not a message header": [b"/a/b", msgpack.packb([1, 2])],
        "unknown message type 'Nope'": _with_header(good, t="Nope"),
        "wire version 9": _with_header(good, v=9),
        "needs 2 array and 0 blob frame": good[:3],
        "8 bytes for shape": [*good[:2], b"12345678", good[3]],
        "dtype |O8": _with_header(good, a=[["|O8", [10, 4]], ["<f8", [4, 4]]]),
        "dtype <U4": _with_header(good, a=[["<U4", [10, 4]], ["<f8", [4, 4]]]),
        "exceeds": _with_header(good, a=[["<f4", [2**40, 2**40]], ["<f8", [4, 4]]]),
        "bad array description": _with_header(good, a=[["<f4"], ["<f8", [4, 4]]]),
        "not allowed": _with_header(good, a=[["<f4", [-10, -4]], ["<f8", [4, 4]]]),
        "has no field": _with_header(good, m={"colour": "red"}),
        "PointCloud.frame should be int, got str": _with_header(good, m={"frame": "seven"}),
        "PointCloud.mount_height should be float, got bool": _with_header(good, m={"mount_height": True}),
        "exceeds 1048576": [b"/a/b", b"\x00" * (1 << 20 + 1)],
    }
    for reason, frames in bad.items():
        with pytest.raises(MessageError, match=reason):
            decode_frames(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=6), st.booleans())
def test_random_frames_never_raise_anything_but_message_error(frames, with_real_header):
    if with_real_header and len(frames) >= 2:  # mutate a real header to get deeper into the decoder
        real = bytes(encode_frames("/t", PointCloud())[1])
        frames[1] = real[: len(frames[1]) % len(real)] + frames[1]
        frames[0] = b"/t"
    with contextlib.suppress(MessageError):  # anything else would fail the test
        decode_frames(frames)


def test_encoding_refuses_what_cannot_travel():
    with pytest.raises(MessageError, match="must be a numpy array"):
        encode_frames("/t", Packet(payload=b"bytes"))
    with pytest.raises(MessageError, match="cannot travel"):
        encode_frames("/t", Packet(payload=np.array(["a"], dtype=object)))
    with pytest.raises(MessageError, match="cannot be encoded"):
        encode_frames("/t", Json({"f": object()}))

    @dataclass
    class Unregistered(Message):
        x: int = 0

    with pytest.raises(MessageError, match="not a registered message type"):
        encode_frames("/t", Unregistered())
    with pytest.raises(ValueError, match="already registered"):
        message_type(name="Packet")(type("Other", (Unregistered,), {}))
    assert REGISTRY["test/Grids"] is Grids


def test_topic_patterns():
    cases = {
        "/agents/*/features": (
            ["/agents/1/features", "/agents/rsu-2/features"],
            ["/agents/1/features/x", "/agents/features", "/ego/1/features"],
        ),
        "/agents/": (["/agents/1/features", "/agents/x"], ["/agentsx", "/ego/1"]),
        "/clock": (["/clock"], ["/clocks", "/clock/x"]),
        "/": (["/anything", "/a/b"], []),
        "/ego/*/": (["/ego/1/tracks", "/ego/2/demand/x"], ["/ego/1", "/agents/1/x"]),
    }
    for pattern, (yes, no) in cases.items():
        prefix, matches = topic_matcher(pattern)
        assert all(t.startswith(prefix) and matches(t) for t in yes), pattern
        assert not any(matches(t) for t in no), pattern
    for bad in ("agents", "/a//b", "/a/b*", "", "/a b"):
        with pytest.raises(ValueError, match="not a topic pattern"):
            topic_matcher(bad)


def test_params_files_overrides_and_types(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("talker: {rate_hz: 10, channel: {loss: 0.1, latency_s: 0.1}}\nlistener: {topic: /a}\n")
    p = load_params(f, "talker")
    assert apply_overrides(p, ["rate_hz=20", "channel.loss=0.5", "name=ego", "topics=[/a, /b]"]) == {
        "rate_hz": 20,
        "channel": {"loss": 0.5, "latency_s": 0.1},
        "name": "ego",
        "topics": ["/a", "/b"],
    }
    assert p["channel"]["loss"] == 0.1  # overrides never change their input
    for bad, message in {
        "rate_hz": "expected KEY=VALUE",
        "=3": "expected KEY=VALUE",
        "rate_hz.x=1": "is int, not a mapping",
        "a=[": "not valid YAML",
    }.items():
        with pytest.raises(ParamError, match=message):
            apply_overrides(p, [bad])
    assert coerce("n", "k", 3, 1.0) == 3.0 and coerce("n", "k", 4.0, 1) == 4
    for value, default, message in [
        ("x", 1.0, "must be a number"),
        (1.5, 1, "must be an integer"),
        (1, True, "must be true or false"),
        (3, "s", "must be a string"),
    ]:
        with pytest.raises(ParamError, match=f"node 'n': parameter 'k' {message}"):
            coerce("n", "k", value, default)
    f.write_text("[1, 2]")
    with pytest.raises(ParamError, match="a parameter file is a mapping"):
        load_params(f)
    with pytest.raises(ParamError, match="cannot read parameter file"):
        load_params(tmp_path / "missing.yaml")
