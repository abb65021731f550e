"""Typed messages on topics, as ZeroMQ multipart frames.

A message on the wire is ``[topic, header, *buffers]``:

* ``topic``: the UTF-8 topic name (``/agents/3/features``); ZeroMQ filters subscriptions on it.
* ``header``: msgpack ``{"t": type name, "v": 1, "src": sending node, "i": its process
  incarnation (random per start), "n": per-topic sequence number, "s": wall-clock send time in ns, "m": the scalar fields, "a": [[dtype, shape], ...]
  for the array fields, "b": number of blob frames}``, and from nodes ``"e"``: the sender's
  epoch (wall-clock ns at its start) and ``"q"``: its count of every message it published, on
  any topic (what identifies a message to a receiver, :mod:`v2x.comm.freshness`).
* one frame per numpy array field (its own buffer, sent without a copy when it is 64 KiB or
  more; pyzmq copies smaller frames anyway) and one per ``bytes`` blob field.

A message type is a dataclass registered with :func:`message_type`. Array fields are listed in
``ARRAYS`` and blob fields in ``BLOBS``; everything else goes in the header and must be msgpack
types (numbers, strings, lists, dicts, bool, None). Received arrays are read-only views of the
received frames (bit-exact; copy before writing into them).

Decoding never trusts the sender: every length, dtype and shape is checked before an array is
made, and anything that is not a valid message of the expected type raises
:class:`MessageError` (:class:`WrongTypeError` for a valid message of another type), a
:class:`~v2x.comm.errors.DecodeError` whose ``reason`` is one of :data:`REASONS`. Nodes
count such messages by reason and sender and drop them; they never crash on them.

Memory: arrays are views of the received frames (no copy), blobs are copied once, and the
msgpack header (at most :data:`MAX_HEADER_BYTES`) becomes Python objects: at worst about 80
times its bytes (a header of nothing but empty lists), typically a few times.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack
import numpy as np

from v2x.comm.errors import DecodeError

__all__ = [
    "MAX_ARRAY_BYTES",
    "MAX_HEADER_BYTES",
    "REASONS",
    "REGISTRY",
    "Boxes3D",
    "Bytes",
    "Clock",
    "Diagnostics",
    "Envelope",
    "Heartbeat",
    "Json",
    "Log",
    "Message",
    "MessageError",
    "Packet",
    "PointCloud",
    "WrongTypeError",
    "decode_frames",
    "encode_frames",
    "message_type",
]

WIRE_VERSION = 1
REGISTRY: dict[str, type[Message]] = {}
MAX_HEADER_BYTES = 1 << 20  # a header is metadata; anything bigger is an attack or a bug
MAX_ARRAY_BYTES = 1 << 30  # per array; the socket's MAXMSGSIZE bounds what is received at all
_ARRAY_KINDS = set("biufc")  # bool, signed, unsigned, float, complex: no objects, no strings


class MessageError(DecodeError):
    """Frames that are not a valid message (names the topic and what is wrong; ``reason``)."""

    decoder = "envelope"


class WrongTypeError(MessageError):
    """A valid message, but not of the type the topic carries."""

    reason = "wrong_type"


#: every ``MessageError.reason`` decoding raises, each for one condition (docs/wire-format.md)
REASONS = frozenset(
    {
        "missing_frames",  # fewer than two frames (a topic and a header)
        "bad_topic",  # the topic frame is not UTF-8, does not start with "/" or is over 512 bytes
        "over_limit",  # a header frame over MAX_HEADER_BYTES, or an array over MAX_ARRAY_BYTES
        "bad_header",  # not msgpack, not a map, or t / src / i / n / s of the wrong type
        "unsupported_version",  # a header version other than WIRE_VERSION
        "unknown_type",  # a type name nobody registered
        "wrong_type",  # a registered type, but not the one asked for
        "frame_count",  # array descriptions, blob count and frames disagree with the type
        "bad_field",  # a field the type lacks or of another kind, or one its constructor refuses
        "bad_array",  # an array description that is not [dtype, shape] of an allowed dtype
        "size_mismatch",  # an array frame whose length is not its shape times its item size
    }
)


def message_type(cls: type | None = None, *, name: str | None = None):
    """Register a dataclass as a message type; its wire name is ``name`` or the class name.

    Use bare (``@message_type``) or with a name (``@message_type(name="v2x/Features")``).
    """

    def register(c: type) -> type:
        if not dataclasses.is_dataclass(c) or not issubclass(c, Message):
            raise TypeError(f"{c.__name__}: a message type is a dataclass subclassing Message")
        wire = name or c.__name__
        if wire in REGISTRY and REGISTRY[wire] is not c:
            raise ValueError(f"message type name {wire!r} is already registered by {REGISTRY[wire]}")
        c.TYPE_NAME = wire
        names = {f.name for f in fields(c)}
        missing = [a for a in (*c.ARRAYS, *c.BLOBS) if a not in names]
        if missing:
            raise TypeError(f"{c.__name__}: ARRAYS/BLOBS name unknown fields {missing}")
        c._META_FIELDS = tuple(f for f in fields(c) if f.name not in c.ARRAYS and f.name not in c.BLOBS)
        REGISTRY[wire] = c
        return c

    return register(cls) if cls is not None else register


@dataclass
class Message:
    """Base class: numpy fields named in ``ARRAYS`` and ``bytes`` fields named in ``BLOBS``
    travel as their own frames; the other fields travel in the msgpack header."""

    ARRAYS: ClassVar[tuple[str, ...]] = ()
    BLOBS: ClassVar[tuple[str, ...]] = ()
    TYPE_NAME: ClassVar[str] = ""
    _META_FIELDS: ClassVar[tuple] = ()

    def meta(self) -> dict[str, Any]:
        """The header fields (everything but arrays and blobs)."""
        return {f.name: getattr(self, f.name) for f in self._META_FIELDS}


@dataclass
class Envelope:
    """What the framework knows about a received message beyond its fields."""

    topic: str
    type_name: str
    source: str  # sending node's name
    incarnation: int  # random per start of the sending process
    seq: int  # per (source, topic) sequence number, from 0
    sent_ns: int  # wall clock at the sender, when published
    received_ns: int  # wall clock here, when received
    nbytes: int  # all frames together


# -- the types every part of the system shares ---------------------------------------------------


@message_type
@dataclass
class Clock(Message):
    """Simulated time on ``/clock``: nodes with ``clock: sim`` follow it."""

    stamp_ns: int = 0
    frame: int = -1


@message_type
@dataclass
class Heartbeat(Message):
    node: str = ""
    pid: int = 0
    stamp_ns: int = 0
    state: str = "active"
    publishes: dict = field(default_factory=dict)  # topic -> type name
    subscribes: dict = field(default_factory=dict)  # pattern -> type name (or "*")
    endpoint: str = ""
    tap: str = ""
    clock: str = "wall"
    uptime_s: float = 0.0


@message_type
@dataclass
class Diagnostics(Message):
    node: str = ""
    stamp_ns: int = 0
    topics: dict = field(default_factory=dict)  # "in:/topic" / "out:/topic" -> statistics
    counters: dict = field(default_factory=dict)


@message_type
@dataclass
class Log(Message):
    node: str = ""
    stamp_ns: int = 0
    level: str = "INFO"
    text: str = ""


@message_type
@dataclass
class Json(Message):
    """A small JSON-like document (msgpack types) for control and status messages."""

    data: dict = field(default_factory=dict)


@message_type
@dataclass
class Bytes(Message):
    """Opaque bytes, e.g. an already-encoded wire-format message."""

    BLOBS: ClassVar[tuple[str, ...]] = ("data",)
    data: bytes = b""


@message_type
@dataclass
class Packet(Message):
    """An already-encoded wire-format message with its routing metadata (what agents send and
    the channel node forwards). ``payload`` is a uint8 array so it is received without a copy."""

    ARRAYS: ClassVar[tuple[str, ...]] = ("payload",)
    payload: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    sender: str = ""
    receiver: str = ""  # empty: broadcast
    kind: str = ""  # features, demand, offer, detections, ...
    frame: int = -1
    stamp_ns: int = 0  # capture time of the data
    sent_ns: int = 0
    delivered_ns: int = 0  # set by the channel: when it arrives (simulated or wall clock)
    sender_position: list = field(default_factory=list)  # world x, y, z (for range models)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview, **meta: Any) -> Packet:
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


# -- encoding ------------------------------------------------------------------------------------


def encode_frames(
    topic: str,
    msg: Message,
    *,
    source: str = "",
    seq: int = 0,
    sent_ns: int = 0,
    incarnation: int = 0,
    epoch: int | None = None,
    number: int | None = None,
) -> list[Any]:
    """Multipart frames for ``msg`` on ``topic``; array frames are the arrays' own buffers.

    ``epoch`` and ``number`` (header ``e``, ``q``: the sender's start time and its count of
    every message it published) identify the message in its sender's stream, so a receiver
    can refuse copies (:mod:`v2x.comm.freshness`); left out of the header when not given."""
    cls = type(msg)
    if REGISTRY.get(cls.TYPE_NAME) is not cls:
        raise MessageError(f"{cls.__name__} is not a registered message type (use @message_type)")
    arrays = []
    for a in cls.ARRAYS:
        value = getattr(msg, a)
        if not isinstance(value, np.ndarray):
            raise MessageError(f"{cls.__name__}.{a} must be a numpy array, not {type(value).__name__}")
        if value.dtype.kind not in _ARRAY_KINDS:
            raise MessageError(f"{cls.__name__}.{a}: dtype {value.dtype} cannot travel")
        arrays.append(value if value.flags.c_contiguous else np.ascontiguousarray(value).reshape(value.shape))
    blobs = []
    for b in cls.BLOBS:
        value = getattr(msg, b)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise MessageError(f"{cls.__name__}.{b} must be bytes, not {type(value).__name__}")
        blobs.append(value)
    header = {
        "t": cls.TYPE_NAME,
        "v": WIRE_VERSION,
        "src": source,
        "i": incarnation,
        "n": seq,
        "s": sent_ns,
        "m": msg.meta(),
        "a": [[a.dtype.str, list(a.shape)] for a in arrays],
        "b": len(blobs),
    }
    if epoch is not None and number is not None:
        header["e"], header["q"] = epoch, number
    try:
        packed = msgpack.packb(header, use_bin_type=True, default=_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"{cls.__name__} on {topic}: a header field cannot be encoded: {exc}") from exc
    return [topic.encode(), packed, *[memoryview(a.reshape(-1).view(np.uint8)) for a in arrays], *blobs]


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


# -- decoding ------------------------------------------------------------------------------------


def _buffer(frame: Any) -> memoryview:
    """A memoryview of a received frame (zmq.Frame, bytes or memoryview) without copying."""
    buf = getattr(frame, "buffer", frame)
    return buf if isinstance(buf, memoryview) else memoryview(buf)


def read_topic(frames: list[Any]) -> str:
    """The topic of received frames; :class:`MessageError` when it is not a readable topic."""
    if not frames:
        raise MessageError("an empty message", reason="missing_frames", stage="topic")
    raw = _buffer(frames[0])
    if raw.nbytes > _MAX_TOPIC_BYTES:
        raise MessageError(
            f"topic of {raw.nbytes} bytes is not a topic name", reason="bad_topic", stage="topic"
        )
    try:
        topic = bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise MessageError(f"topic frame is not UTF-8: {exc}", reason="bad_topic", stage="topic") from exc
    if not topic.startswith("/"):
        raise MessageError(f"topic {topic[:80]!r} is not a topic name", reason="bad_topic", stage="topic")
    return topic


_MAX_TOPIC_BYTES = 512


def read_header(frames: list[Any]) -> tuple[str, dict[str, Any]]:
    """(topic, header) of received frames, checked; :class:`MessageError` when unreadable."""
    topic = read_topic(frames)
    if len(frames) < 2:
        raise MessageError(
            f"{topic}: {len(frames)} frame(s); a message needs a topic and a header",
            reason="missing_frames",
            stage="header",
        )
    raw = _buffer(frames[1])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise MessageError(
            f"{topic}: header of {raw.nbytes} bytes exceeds {MAX_HEADER_BYTES}",
            reason="over_limit",
            stage="header",
        )
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError...)
        raise MessageError(
            f"{topic}: unreadable header ({type(exc).__name__}: {exc})", reason="bad_header", stage="header"
        ) from exc
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise MessageError(f"{topic}: header is not a message header", reason="bad_header", stage="header")
    src, inc, seq, sent = header.get("src", ""), header.get("i", 0), header.get("n", 0), header.get("s", 0)
    if not (isinstance(src, str) and all(type(x) is int for x in (inc, seq, sent))):
        raise MessageError(
            f"{topic}: header has a bad sender, sequence or time", reason="bad_header", stage="header"
        )
    if header.get("v", WIRE_VERSION) != WIRE_VERSION:
        raise MessageError(
            f"{topic}: message wire version {str(header.get('v'))[:20]}, expected {WIRE_VERSION}",
            reason="unsupported_version",
            stage="header",
        )
    return topic, header


def decode_frames(
    frames: list[Any], expected: type[Message] | None = None, *, with_header: bool = False
) -> tuple[str, Message] | tuple[str, Message, dict[str, Any]]:
    """(topic, message) from received frames; :class:`MessageError` for anything malformed and
    :class:`WrongTypeError` when the message is not ``expected``. With ``with_header`` the
    header dict is returned too (source node, sequence number, send time)."""
    try:
        topic, msg, header = _decode_frames(frames, expected)
    except MessageError:
        raise
    except Exception as exc:
        # a last resort: a slip in the checks must still surface as a refusal, never a crash;
        # ``unexpected`` marks it as a bug (the fuzzers count it as a failure)
        err = MessageError(f"malformed message: {type(exc).__name__}: {exc}"[:300], reason="bad_field")
        err.unexpected = True
        raise err from exc
    return (topic, msg, header) if with_header else (topic, msg)


def _decode_frames(frames: list[Any], expected: type[Message] | None) -> tuple[str, Message, dict[str, Any]]:
    topic, header = read_header(frames)
    cls = REGISTRY.get(header["t"])
    if cls is None:
        raise MessageError(
            f"{topic}: unknown message type {header['t'][:80]!r}", reason="unknown_type", stage="type"
        )
    if expected is not None and cls is not expected:
        raise WrongTypeError(f"{topic}: carries {expected.TYPE_NAME}, got {cls.TYPE_NAME}", stage="type")
    specs, n_blobs = header.get("a", []), header.get("b", 0)
    if (
        not isinstance(specs, list)
        or len(specs) != len(cls.ARRAYS)
        or type(n_blobs) is not int
        or n_blobs != len(cls.BLOBS)
        or len(frames) != 2 + len(specs) + n_blobs
    ):
        raise MessageError(
            f"{topic}: {cls.TYPE_NAME} needs {len(cls.ARRAYS)} array and {len(cls.BLOBS)} blob frame(s); "
            f"got {len(frames) - 2} frame(s)",
            reason="frame_count",
            stage="frames",
        )
    meta = header.get("m") or {}
    if not isinstance(meta, dict):
        raise MessageError(
            f"{topic}: {cls.TYPE_NAME} fields are not a mapping", reason="bad_field", stage="fields"
        )
    kwargs = _checked_meta(topic, cls, meta)
    for name, spec, frame in zip(cls.ARRAYS, specs, frames[2:], strict=False):
        kwargs[name] = _array(topic, cls, name, spec, _buffer(frame))
    for name, frame in zip(cls.BLOBS, frames[2 + len(specs) :], strict=True):
        kwargs[name] = bytes(_buffer(frame))
    try:
        msg = cls(**kwargs)
    except Exception as exc:  # a type's __post_init__ may refuse values
        raise MessageError(
            f"{topic}: {cls.TYPE_NAME}: {exc}"[:300], reason="bad_field", stage="construct"
        ) from exc
    return topic, msg, header


def _checked_meta(topic: str, cls: type[Message], meta: dict) -> dict[str, Any]:
    """Header fields checked against the types of the dataclass defaults, so a callback never
    gets a string where its type promises a number."""
    known = {f.name: f for f in cls._META_FIELDS}
    unknown = [k for k in meta if not isinstance(k, str) or k not in known]
    if unknown:
        raise MessageError(
            f"{topic}: {cls.TYPE_NAME} has no field(s) {[str(k)[:40] for k in unknown][:5]}",
            reason="bad_field",
            stage="fields",
        )
    out = {}
    for k, v in meta.items():
        f = known[k]
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        if default is not None and not _same_kind(default, v):
            raise MessageError(
                f"{topic}: {cls.TYPE_NAME}.{k} should be {type(default).__name__}, got {type(v).__name__}",
                reason="bad_field",
                stage="fields",
            )
        out[k] = v
    return out


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, list)
    return isinstance(value, type(default))


#: what ``numpy.dtype.str`` writes for the kinds that travel: byte order, kind, item size
_DTYPE = re.compile(r"[<>|=][biufc][0-9]{1,2}")
_MAX_DIMS = 32


def _array(topic: str, cls: type[Message], name: str, spec: Any, data: memoryview) -> np.ndarray:
    """A read-only view of ``data`` as the array ``spec`` ([dtype string, shape list]) describes;
    the description is checked as text and integers before numpy sees it (numpy's own parser
    raises SyntaxError, OverflowError and more on hostile strings)."""
    where = f"{topic}: {cls.TYPE_NAME}.{name}"
    if not (
        isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], list)
    ):
        raise MessageError(
            f"{where}: bad array description {str(spec)[:80]}", reason="bad_array", stage="arrays"
        )
    dtype_str, shape = spec[0], spec[1]
    if (
        not _DTYPE.fullmatch(dtype_str)
        or len(shape) > _MAX_DIMS
        or any(type(s) is not int or s < 0 for s in shape)
    ):
        raise MessageError(
            f"{where}: dtype {dtype_str[:20]} / shape {str(shape)[:80]} not allowed",
            reason="bad_array",
            stage="arrays",
        )
    try:
        dtype = np.dtype(dtype_str)
    except TypeError as exc:  # a well-formed string of a size numpy lacks ("<f3", "|b2")
        raise MessageError(
            f"{where}: dtype {dtype_str!r} not allowed", reason="bad_array", stage="arrays"
        ) from exc
    if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
        raise MessageError(f"{where}: dtype {dtype.str} not allowed", reason="bad_array", stage="arrays")
    count = 1
    for s in shape:  # python ints: no overflow, and we stop as soon as it is too big
        count *= s
        if count * dtype.itemsize > MAX_ARRAY_BYTES:
            raise MessageError(
                f"{where}: shape {str(shape)[:80]} exceeds {MAX_ARRAY_BYTES} bytes",
                reason="over_limit",
                stage="arrays",
            )
    if data.nbytes != count * dtype.itemsize:
        raise MessageError(
            f"{where}: {data.nbytes} bytes for shape {tuple(shape)} {dtype.str}",
            reason="size_mismatch",
            stage="arrays",
        )
    out = np.frombuffer(data, dtype=dtype).reshape(shape)
    out.flags.writeable = False  # one decoded message may go to several callbacks
    return out
