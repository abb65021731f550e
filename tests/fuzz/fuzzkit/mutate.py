"""Structure-aware mutation of valid messages, and the re-sealing that gets them past the checksums.

A plain byte mutator mostly breaks a CRC or a length field, so nearly everything would be refused
at the door. Here one to four edits hit the fields that steer a parser (lengths, counts, types,
flags, poses, dtypes, shapes) more often than chance would, with values from a list of
troublemakers (0, 1, 0x7f, 0x80, 0xff..., NaN, infinities), and then, most of the time, the
fields a sender keeps consistent (payload length, point count, CRC-32, the msgpack envelope) are
made consistent again, so the input reaches the payload parsers.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections.abc import Callable, Sequence

import msgpack

__all__ = ["mutate_bytes", "mutate_envelope", "mutate_points", "mutate_wire"]

_INTS = (0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 63, 64, 65, 0x7F, 0x80, 0xFF, 0x100, 0x3FF, 0x400, 0x401,
         0xFFF, 0x1000, 0x1001, 0x44C, 0x44D, 0x44B, 17599, 17600, 17601, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
         0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 64 * 1024 * 1024, 64 * 1024 * 1024 + 1)  # fmt: skip
_FLOATS = (math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, 1.0, -1.0, 4.0e6, 1e-9)
_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def _int_for(rng: random.Random, size: int, length: int) -> int:
    """A troublesome unsigned value for a field of ``size`` bytes (sometimes near the input length)."""
    r = rng.random()
    if r < 0.6:
        v = rng.choice(_INTS)
    elif r < 0.8:
        v = length + rng.randint(-3, 3)
    else:
        v = rng.getrandbits(8 * size)
    return v % (1 << (8 * size))


def _set_int(buf: bytearray, rng: random.Random, pos: int, size: int) -> None:
    if pos + size <= len(buf):
        struct.pack_into(_FORMATS[size], buf, pos, _int_for(rng, size, len(buf)))


def _set_float(buf: bytearray, rng: random.Random, pos: int, size: int) -> None:
    if pos + size > len(buf):
        return
    fmt = "<d" if size == 8 else "<f"
    r = rng.random()
    if r < 0.6:
        v = rng.choice(_FLOATS)
    else:  # a small change: finite, but no longer what a rigid pose or a valid value needs
        (old,) = struct.unpack_from(fmt, buf, pos)
        v = old * rng.choice((1.001, -1.0, 0.5, 2.0, 1e30)) if math.isfinite(old) else 1.0
    try:
        struct.pack_into(fmt, buf, pos, v)
    except OverflowError:  # too large for f32: infinity is just as interesting
        struct.pack_into(fmt, buf, pos, math.inf)


def _byte_edit(buf: bytearray, rng: random.Random, pool: Sequence[bytes], focus: int = 0) -> None:
    """One generic edit; ``focus`` biases positions towards a region start (a payload's first bytes)."""
    n = len(buf)
    pos = (
        min(n - 1, focus + int(rng.expovariate(1 / 12)))
        if n and focus < n and rng.random() < 0.5
        else rng.randrange(max(n, 1))
    )
    op = rng.randrange(11)
    if n == 0 or op == 0:  # insert bytes
        buf[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.choice((1, 1, 2, 4, 16, 100))))
    elif op == 1:  # flip a bit
        buf[pos] ^= 1 << rng.randrange(8)
    elif op == 2:  # a troublesome byte
        buf[pos] = rng.choice((0, 1, 0x7F, 0x80, 0x81, 0xFE, 0xFF, rng.getrandbits(8)))
    elif op in (3, 4):  # a troublesome integer
        _set_int(buf, rng, pos, rng.choice((1, 2, 4, 8)))
    elif op == 5:  # delete a range
        del buf[pos : pos + rng.choice((1, 1, 2, 4, 16, 256))]
    elif op == 6:  # truncate
        del buf[rng.randrange(n + 1) :]
    elif op == 7:  # duplicate a range
        k = rng.choice((1, 4, 16, 64))
        buf[pos:pos] = buf[pos : pos + k]
    elif op == 8:  # random bytes over a range
        k = min(rng.choice((1, 2, 4, 8, 32)), n - pos)
        buf[pos : pos + k] = bytes(rng.getrandbits(8) for _ in range(k))
    elif op == 9 and pool:  # splice in a piece of another message
        other = rng.choice(pool)
        a = rng.randrange(len(other) + 1)
        buf[pos:] = other[a : a + rng.choice((4, 16, 64, 1 << 20))] + buf[pos:]
    else:  # a float
        _set_float(buf, rng, pos, rng.choice((4, 8)))


def mutate_bytes(data: bytes, rng: random.Random, pool: Sequence[bytes] = (), focus: int = 0) -> bytearray:
    """One to four generic edits."""
    buf = bytearray(data)
    for _ in range(1 + min(3, int(rng.expovariate(1.0)))):
        _byte_edit(buf, rng, pool, focus)
    return buf


# -- wire format v1 ----------------------------------------------------------------------------
_WIRE_FIELDS: tuple[tuple[int, int, Callable], ...] = (
    (5, 1, lambda b, r: b.__setitem__(5, r.choice((0, 1, 2, 3, 4, 5, 6, 7, 255)))),  # type
    (
        6,
        1,
        lambda b, r: b.__setitem__(6, r.getrandbits(6) if r.random() < 0.8 else r.getrandbits(8)),
    ),  # flags
    (7, 1, lambda b, r: b.__setitem__(7, r.choice((0, 1, 2, 4, 5, 8, 16, 17, 255)))),  # unit
    (24, 8, lambda b, r: _set_float(b, r, r.choice((24, 32)), 8)),  # pose x, y
    (40, 4, lambda b, r: _set_float(b, r, r.choice((40, 44)), 4)),  # pose z, yaw
    (48, 4, lambda b, r: _set_int(b, r, r.choice((48, 52)), 4)),  # grid / codebook identity
    (56, 4, lambda b, r: _set_int(b, r, 56, 4)),  # payload length (left as set, below)
)


def mutate_wire(data: bytes, rng: random.Random, pool: Sequence[bytes] = ()) -> tuple[bytes, str]:
    """A mutated wire-format message, re-sealed (payload length and CRC) most of the time.

    Returns the bytes and what was done (``header``, ``payload``; ``+sealed`` when re-sealed).
    """
    buf = bytearray(data)
    keep_length = False
    if rng.random() < 0.3:
        _off, _size, edit = rng.choice(_WIRE_FIELDS)
        edit(buf, rng)
        keep_length = _off == 56
        what = "header"
        if rng.random() < 0.5:
            buf = mutate_bytes(bytes(buf), rng, pool, focus=64)
    else:
        buf = mutate_bytes(data, rng, pool, focus=64)
        what = "payload"
    sealed = len(buf) >= 64 and rng.random() < 0.93
    if sealed:
        if not keep_length and rng.random() < 0.95:
            struct.pack_into("<I", buf, 56, len(buf) - 64)
        struct.pack_into("<I", buf, 60, zlib.crc32(bytes(buf[64:]), zlib.crc32(bytes(buf[:60]))) & 0xFFFFFFFF)
        what += "+sealed"
    return bytes(buf), what


# -- points ------------------------------------------------------------------------------------
_POINTS_HEAD = 120


def _points_pose_edit(buf: bytearray, rng: random.Random) -> None:
    """A pose that is not rigid or not finite: a NaN, a scaled entry, swapped or negated rows."""
    r = rng.random()
    if r < 0.5:
        _set_float(buf, rng, 20 + 8 * rng.randrange(12), 8)
    elif r < 0.75:  # negate a row of the rotation: det -1, a mirror
        row = rng.randrange(3)
        for c in range(3):
            (v,) = struct.unpack_from("<d", buf, 20 + 8 * (4 * row + c))
            struct.pack_into("<d", buf, 20 + 8 * (4 * row + c), -v)
    else:  # swap two rows
        a, b = rng.sample(range(3), 2)
        ra, rb = buf[20 + 32 * a : 52 + 32 * a], buf[20 + 32 * b : 52 + 32 * b]
        buf[20 + 32 * a : 52 + 32 * a], buf[20 + 32 * b : 52 + 32 * b] = rb, ra


def mutate_points(data: bytes, rng: random.Random, pool: Sequence[bytes] = ()) -> tuple[bytes, str]:
    """A mutated points message; the point count and CRC re-sealed most of the time."""
    buf = bytearray(data)
    r = rng.random()
    keep_count = False
    if r < 0.3 and len(buf) >= 124:
        _points_pose_edit(buf, rng)
        what = "pose"
    elif r < 0.5 and len(buf) >= 124:
        field = rng.choice(((4, 1), (5, 1), (6, 2), (8, 4), (12, 8), (116, 4)))
        _set_int(buf, rng, *field)
        keep_count = field[0] == 116
        what = "header"
    else:
        buf = mutate_bytes(data, rng, pool, focus=_POINTS_HEAD)
        what = "body"
    if len(buf) >= 124 and rng.random() < 0.93:
        if not keep_count and (len(buf) - 124) % 7 == 0 and rng.random() < 0.95:
            struct.pack_into("<I", buf, 116, (len(buf) - 124) // 7)
        struct.pack_into(
            "<I", buf, 120, zlib.crc32(bytes(buf[124:]), zlib.crc32(bytes(buf[:120]))) & 0xFFFFFFFF
        )
        what += "+sealed"
    return bytes(buf), what


# -- node envelope -----------------------------------------------------------------------------
_DTYPES = ("<f4", "<f8", "|u1", "<i8", "<i2", "|b1", ">f4", "<c8", "<f2", "<f16", ",i2", "(2,)f4", "(999999999,)f8",
           "O", "|O8", "<U4", "S4", "|V8", "f", "", "<f3", "|b2", "<i0", "i" * 300, "[('a','<f4')]", "{}", "<M8",
           "<m8[ns]", "=f4", "<f4,<f4", "bool", "float64")  # fmt: skip
_DIMS = (0, 1, 2, 3, 4, 7, 40, -1, -(2**63), 2**31, 2**40, 2**62, 2**64 - 1, math.inf, -math.inf, math.nan, 2.5, 3.0,
         True, False, None, "3", b"3", [], [3], {"a": 1})  # fmt: skip
_VALUES = (0, -1, 1.5, math.nan, math.inf, "", "x" * 100, b"\x00", None, True, [], [1, 2, 3], [math.nan] * 3,
           {"a": 1}, 2**63, -(2**63), [[[]]], "/", "é")  # fmt: skip


def _mutate_spec(spec: object, rng: random.Random) -> object:
    if not isinstance(spec, list) or len(spec) != 2 or rng.random() < 0.1:
        return rng.choice(([rng.choice(_DTYPES)], rng.choice(_DIMS), [], [rng.choice(_DTYPES), [], 1], "<f4"))
    dtype, shape = spec
    if rng.random() < 0.5:
        dtype = rng.choice(_DTYPES)
    if rng.random() < 0.6:
        shape = list(shape) if isinstance(shape, list) else []
        r = rng.random()
        if r < 0.5 and shape:
            shape[rng.randrange(len(shape))] = rng.choice(_DIMS)
        elif r < 0.7:
            shape.append(rng.choice(_DIMS))
        elif r < 0.8 and shape:
            shape.pop()
        else:
            shape = [rng.choice((0, 1, 2, 3, 4))] * rng.choice((1, 2, 33, 40))
    return [dtype, shape]


def _mutate_header(head: dict, rng: random.Random, type_names: Sequence[str]) -> dict:
    head = dict(head)
    # mostly the fields that reach the payload checks (fields, arrays); the rest now and then
    key = rng.choice(("m", "m", "m", "m", "a", "a", "a", "a", "a", "t", "b", "extra", "top"))
    if key == "a" and not head.get("a"):
        key = "m"  # a type without arrays: an array description can only break the frame count
    if key == "t":
        head["t"] = rng.choice(type_names) if rng.random() < 0.8 else rng.choice(("Nope", "", 7, None))
    elif key in ("b", "top"):
        head[key if key == "b" else rng.choice(("v", "src", "i", "n", "s"))] = rng.choice(
            (*_VALUES, 2, 3, -(2**63), 2**64 - 1)
        )
    elif key == "m":
        meta = dict(head.get("m") or {}) if isinstance(head.get("m"), dict) else {}
        name = (
            rng.choice((*meta.keys(), "colour", 7))
            if meta and rng.random() < 0.8
            else rng.choice(("colour", 7, "frame"))
        )
        meta[name] = rng.choice(_VALUES)
        head["m"] = meta if rng.random() < 0.95 else rng.choice(_VALUES)
    elif key == "a":
        specs = list(head.get("a") or []) if isinstance(head.get("a"), list) else []
        if specs and rng.random() < 0.93:
            k = rng.randrange(len(specs))
            specs[k] = _mutate_spec(specs[k], rng)
        elif rng.random() < 0.5:
            specs.append(["<f4", [1]])
        elif specs:
            specs.pop()
        head["a"] = specs
    else:
        head[rng.choice(("zz", 1, ""))] = rng.choice(_VALUES)
    return head


def mutate_envelope(
    frames: Sequence[bytes], rng: random.Random, type_names: Sequence[str], pool: Sequence[bytes] = ()
) -> tuple[list[bytes], str]:
    """Mutated received frames: most often the msgpack header changed as a structure and packed
    again (the envelope re-sealed), else a frame's bytes, the frame list or an array's length."""
    out = list(frames)
    r = rng.random()
    if r < 0.7 and len(out) >= 2:
        try:
            head = msgpack.unpackb(out[1], raw=False, strict_map_key=False)
        except Exception:
            head = None
        if isinstance(head, dict):
            for _ in range(1 + min(2, int(rng.expovariate(1.0)))):
                head = _mutate_header(head, rng, type_names)
            try:
                out[1] = msgpack.packb(head, use_bin_type=True)
                return out, "header+sealed"
            except (OverflowError, TypeError, ValueError):
                pass  # a value msgpack cannot write: mutate the bytes instead
        out[1] = bytes(mutate_bytes(out[1], rng, pool))
        return out, "header-bytes"
    if r < 0.82 and len(out) > 2:  # an array or blob frame: other length or bytes
        k = rng.randrange(2, len(out))
        out[k] = bytes(mutate_bytes(out[k], rng, pool))
        return out, "array"
    if r < 0.93:  # the frame list itself
        op = rng.randrange(4)
        if op == 0 and out:
            del out[rng.randrange(len(out))]
        elif op == 1:
            out.insert(rng.randrange(len(out) + 1), rng.choice((b"", b"\x00" * 8, *(pool[:1] or [b"x"]))))
        elif op == 2 and out:
            out = out[: rng.randrange(len(out))]
        else:
            out.append(rng.choice((b"", bytes(16))))
        return out, "frames"
    if out:  # the topic
        out[0] = rng.choice(
            (b"", b"no-slash", b"/\xff\xfe", b"/" + b"a" * 600, bytes(mutate_bytes(out[0], rng)))
        )
    return out, "topic"
