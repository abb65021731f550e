"""Typed messages on topics, as ZeroMQ multipart frames.

Frames: ``[topic, header, *buffers]``. The header is msgpack: ``{"t": type name, "m": metadata,
"a": [[dtype, shape], ...]}``; each numpy array travels as its own frame, without a copy on the
sending side. Any type registered with :func:`message_type` can travel; a frame sequence that
does not decode raises :class:`MessageError` (nodes count it and drop the message).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack
import numpy as np

__all__ = [
    "REGISTRY",
    "Boxes3D",
    "Clock",
    "Diagnostics",
    "Heartbeat",
    "Json",
    "Message",
    "MessageError",
    "Packet",
    "PointCloud",
    "decode_frames",
    "encode_frames",
    "message_type",
]

REGISTRY: dict[str, type[Message]] = {}
_ALLOWED_DTYPES = {"<f4", "<f8", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "|b1", "<f2", "|i1"}
MAX_ARRAY_BYTES = 512 * 1024 * 1024


class MessageError(ValueError):
    """Frames that are not a valid message of a known type."""


def message_type(cls):
    """Register a dataclass as a message type (its class name is the wire name)."""
    REGISTRY[cls.__name__] = cls
    return cls


@dataclass
class Message:
    """Base: dataclass fields that are numpy arrays travel as buffers, the rest in the header."""

    ARRAYS: ClassVar[tuple[str, ...]] = ()

    def meta(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.ARRAYS}


@message_type
@dataclass
class Clock(Message):
    stamp_ns: int = 0
    frame: int = -1


@message_type
@dataclass
class Heartbeat(Message):
    node: str = ""
    pid: int = 0
    stamp_ns: int = 0
    state: str = "active"
    publishes: list = field(default_factory=list)
    subscribes: list = field(default_factory=list)
    endpoint: str = ""


@message_type
@dataclass
class Diagnostics(Message):
    node: str = ""
    stamp_ns: int = 0
    topics: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)


@message_type
@dataclass
class Json(Message):
    data: dict = field(default_factory=dict)


@message_type
@dataclass
class Packet(Message):
    """An already-encoded wire-format message and its routing metadata."""

    ARRAYS: ClassVar[tuple[str, ...]] = ("payload",)
    payload: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    sender: str = ""
    receiver: str = ""  # empty: broadcast
    kind: str = ""  # features, demand, offer, detections
    frame: int = -1
    stamp_ns: int = 0  # capture time of the data
    sent_ns: int = 0
    delivered_ns: int = 0  # set by the channel: when it arrives (simulated or wall clock)
    sender_position: list = field(default_factory=list)  # world x, y, z (for range models)

    @classmethod
    def of(cls, data: bytes, **meta) -> Packet:
        return cls(np.frombuffer(data, dtype=np.uint8), **meta)

    @property
    def data(self) -> bytes:
        return self.payload.tobytes()


@message_type
@dataclass
class PointCloud(Message):
    ARRAYS: ClassVar[tuple[str, ...]] = ("points", "world_from_lidar")
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    world_from_lidar: np.ndarray = field(default_factory=lambda: np.eye(4))
    agent_id: str = ""
    kind: str = "vehicle"
    mount_height: float = 1.8
    stamp_ns: int = 0
    frame: int = -1


@message_type
@dataclass
class Boxes3D(Message):
    ARRAYS: ClassVar[tuple[str, ...]] = ("boxes", "scores", "labels", "track_ids")
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    frame_id: str = "world"
    stamp_ns: int = 0
    frame: int = -1


def encode_frames(topic: str, msg: Message) -> list:
    """Multipart frames for ``msg`` on ``topic`` (array frames are the arrays' own buffers)."""
    name = type(msg).__name__
    if name not in REGISTRY:
        raise MessageError(f"{name} is not a registered message type")
    arrays = [np.ascontiguousarray(getattr(msg, a)) for a in msg.ARRAYS]
    header = {"t": name, "m": msg.meta(), "a": [[a.dtype.str, list(a.shape)] for a in arrays]}
    return [
        topic.encode(),
        msgpack.packb(header, use_bin_type=True, default=_default),
        *[memoryview(a) for a in arrays],
    ]


def _default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def decode_frames(frames: list, expected: type[Message] | None = None) -> tuple[str, Message]:
    """(topic, message) from received frames; :class:`MessageError` for anything malformed."""
    if len(frames) < 2:
        raise MessageError(f"{len(frames)} frame(s): a message needs a topic and a header")
    try:
        topic = bytes(frames[0]).decode()
        header = msgpack.unpackb(bytes(frames[1]), raw=False, strict_map_key=False)
    except (UnicodeDecodeError, ValueError, msgpack.exceptions.ExtraData, TypeError) as exc:
        raise MessageError(f"unreadable header: {exc}") from exc
    if not isinstance(header, dict) or "t" not in header:
        raise MessageError("header is not a message header")
    cls = REGISTRY.get(header.get("t"))
    if cls is None:
        raise MessageError(f"unknown message type {header.get('t')!r}")
    if expected is not None and cls is not expected:
        raise MessageError(f"topic {topic!r} carries {cls.__name__}, expected {expected.__name__}")
    specs = header.get("a", [])
    if len(specs) != len(cls.ARRAYS) or len(frames) != 2 + len(specs):
        raise MessageError(f"{cls.__name__}: {len(frames) - 2} array frame(s), expected {len(cls.ARRAYS)}")
    kwargs = dict(header.get("m") or {})
    for name, spec, buf in zip(cls.ARRAYS, specs, frames[2:], strict=True):
        try:
            dtype, shape = np.dtype(spec[0]), tuple(int(s) for s in spec[1])
        except (TypeError, ValueError, IndexError) as exc:
            raise MessageError(f"{cls.__name__}.{name}: bad array spec {spec!r}") from exc
        if dtype.str not in _ALLOWED_DTYPES or any(s < 0 for s in shape):
            raise MessageError(f"{cls.__name__}.{name}: dtype {dtype.str} / shape {shape} not allowed")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = memoryview(buf.buffer if hasattr(buf, "buffer") else buf)
        if nbytes > MAX_ARRAY_BYTES or data.nbytes != nbytes:
            raise MessageError(f"{cls.__name__}.{name}: {data.nbytes} bytes for shape {shape} {dtype}")
        kwargs[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    try:
        return topic, cls(**kwargs)
    except TypeError as exc:
        raise MessageError(f"{cls.__name__}: {exc}") from exc
