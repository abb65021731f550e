"""Raw point clouds on the wire, for early fusion (the upper bound every paper compares with).

Our wire format (``v2x.comm.wire``) carries features, codes and boxes; early fusion ships the
LiDAR scan itself, so it has its own small message:

=======  ========  ==============================================================
offset   type      field
=======  ========  ==============================================================
0        4s        magic ``V2XP``
4        u8        version (1)
5        u8        reserved
6        u16       reserved
8        i32       sender code (as in the wire format)
12       i64       capture time, ns
20       12 f64    ``world_from_lidar``, first three rows, row-major
116      u32       point count ``n``
120      u32       CRC-32 of bytes 0..119 and the body
124      n x 7 B   x, y, z as int16 centimetres in the sensor frame, intensity as u8 (0..255)
=======  ========  ==============================================================

Centimetre coordinates keep +-327 m, far beyond any BEV grid; the ego never sees more error
than 5 mm per axis. A budget thins the scan uniformly (every k-th point) rather than cropping it.

Decoding refuses anything else with :class:`PointsMessageError` (a
:class:`~v2x.comm.errors.DecodeError`), one of :data:`REASONS` each, checked in this order:
``truncated`` (shorter than the header), ``bad_magic``, ``unsupported_version``, ``malformed``
(reserved fields not 0), ``over_limit`` (``n`` above :data:`MAX_POINTS`), ``truncated`` /
``oversized`` (fewer / more body bytes than ``n`` points), ``bad_checksum``, ``bad_pose`` (a
pose with a NaN or infinite value, or not rigid). The body itself cannot be wrong: every 7-byte
record is a point. Decoding holds about 5 times the message's bytes at its peak.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from v2x.comm.errors import DecodeError
from v2x.core.geometry import is_rigid

__all__ = [
    "MAGIC",
    "POINT_BYTES",
    "REASONS",
    "PointsMessage",
    "PointsMessageError",
    "decode_points",
    "encode_points",
    "pose_of",
    "with_pose",
]

MAGIC = b"V2XP"
VERSION = 1
_HEAD = struct.Struct("<4sBBHiq12dI")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEAD.size + _CRC.size
_POINT = np.dtype([("x", "<i2"), ("y", "<i2"), ("z", "<i2"), ("i", "u1")])
POINT_BYTES = _POINT.itemsize
#: a scan larger than this is refused (a corrupt count must not allocate gigabytes)
MAX_POINTS = 2_000_000
#: how far from rigid a sender pose may be: the loosest any log reader accepts (DAIR-V2X's)
POSE_TOL = 1e-3


#: every ``PointsMessageError.reason`` (module docstring; docs/wire-format.md)
REASONS = frozenset(
    {
        "truncated",
        "bad_magic",
        "unsupported_version",
        "malformed",
        "over_limit",
        "oversized",
        "bad_checksum",
        "bad_pose",
    }
)


class PointsMessageError(DecodeError):
    """A points message that cannot be read; says why (``reason``, one of :data:`REASONS`)."""

    decoder = "points"


@dataclass
class PointsMessage:
    sender: int
    stamp_ns: int
    world_from_lidar: np.ndarray  # 4x4
    points: np.ndarray  # (N, 4) float32: x, y, z in the sensor frame, intensity 0..1


def encode_points(
    sender: int,
    stamp_ns: int,
    world_from_lidar: np.ndarray,
    points: np.ndarray,
    budget: int | None = None,
    max_range: float = 120.0,
) -> bytes:
    """The message for one scan (points beyond ``max_range`` dropped), thinned to fit ``budget``."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, points.shape[-1] if np.ndim(points) == 2 else 4)
    pts = pts[np.isfinite(pts[:, :3]).all(axis=1) & (np.linalg.norm(pts[:, :2], axis=1) <= max_range)]
    if budget is not None:
        room = max(0, (budget - HEADER_BYTES) // POINT_BYTES)
        if room < len(pts):
            step = int(np.ceil(len(pts) / max(room, 1))) if room else len(pts) + 1
            pts = pts[::step][:room]
    rec = np.zeros(len(pts), dtype=_POINT)
    for k, axis in enumerate("xyz"):
        rec[axis] = np.clip(np.round(pts[:, k] * 100.0), -32767, 32767).astype(np.int16)
    if pts.shape[1] > 3:
        rec["i"] = np.clip(np.round(pts[:, 3] * 255.0), 0, 255).astype(np.uint8)
    pose = np.asarray(world_from_lidar, dtype=np.float64)[:3, :].ravel()
    head = _HEAD.pack(MAGIC, VERSION, 0, 0, int(sender), int(stamp_ns), *pose, len(rec))
    body = rec.tobytes()
    return head + _CRC.pack(zlib.crc32(head + body) & 0xFFFFFFFF) + body


def decode_points(data: bytes | memoryview) -> PointsMessage:
    """Parse and check one points message; any defect raises :class:`PointsMessageError`."""
    buf = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    if len(buf) < HEADER_BYTES:
        raise PointsMessageError(
            f"points message too short: {len(buf)} bytes, the header alone is {HEADER_BYTES}",
            reason="truncated",
            stage="header",
        )
    magic, version, reserved8, reserved16, sender, stamp, *rest = _HEAD.unpack_from(buf, 0)
    pose, n = rest[:12], rest[12]
    if magic != MAGIC:
        raise PointsMessageError(
            f"not a points message (magic {magic!r})", reason="bad_magic", stage="header"
        )
    if version != VERSION:
        raise PointsMessageError(
            f"points message version {version}, this reader knows {VERSION}",
            reason="unsupported_version",
            stage="header",
        )
    if reserved8 or reserved16:
        raise PointsMessageError(
            "points message: reserved fields are not 0", reason="malformed", stage="header"
        )
    if n > MAX_POINTS:
        raise PointsMessageError(
            f"points message says {n} points, at most {MAX_POINTS}", reason="over_limit", stage="header"
        )
    body = len(buf) - HEADER_BYTES
    if body != n * POINT_BYTES:
        raise PointsMessageError(
            f"points message says {n} points but holds {body} body bytes",
            reason="truncated" if body < n * POINT_BYTES else "oversized",
            stage="header",
        )
    (crc,) = _CRC.unpack_from(buf, _HEAD.size)
    if crc != zlib.crc32(buf[HEADER_BYTES:], zlib.crc32(buf[: _HEAD.size])) & 0xFFFFFFFF:
        raise PointsMessageError("points message checksum mismatch", reason="bad_checksum", stage="checksum")
    world_from_lidar = np.eye(4)
    world_from_lidar[:3, :] = np.asarray(pose, dtype=np.float64).reshape(3, 4)
    rotation = world_from_lidar[:3, :3]
    # a rotation's entries lie in [-1, 1]: bigger ones are refused before the products that
    # test rigidity could overflow; a NaN or sheared pose would put the points nowhere, or bend them
    if not (np.abs(rotation) <= 1 + POSE_TOL).all() or not is_rigid(world_from_lidar, POSE_TOL):
        raise PointsMessageError(
            "points message: the sender pose is not a finite rigid transform", reason="bad_pose", stage="pose"
        )
    rec = np.frombuffer(buf, dtype=_POINT, count=n, offset=HEADER_BYTES)
    pts = np.empty((n, 4), dtype=np.float32)
    for k, axis in enumerate("xyz"):
        pts[:, k] = rec[axis]
        pts[:, k] /= 100.0
    pts[:, 3] = rec["i"]
    pts[:, 3] /= 255.0
    return PointsMessage(int(sender), int(stamp), world_from_lidar, pts)


def pose_of(data: bytes) -> np.ndarray:
    """The sender's 4x4 ``world_from_lidar`` from a points message's header (not checked)."""
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise PointsMessageError("not a points message")
    pose = np.eye(4)
    pose[:3, :] = np.asarray(_HEAD.unpack_from(data, 0)[6:18], dtype=np.float64).reshape(3, 4)
    return pose


def with_pose(data: bytes, world_from_lidar: np.ndarray) -> bytes:
    """The same message with another sender pose (the channel's localisation error), checksum
    redone."""
    head = list(_HEAD.unpack_from(data, 0))
    head[6:18] = np.asarray(world_from_lidar, dtype=np.float64)[:3, :].ravel().tolist()
    packed = _HEAD.pack(*head)
    body = data[HEADER_BYTES:]
    return packed + _CRC.pack(zlib.crc32(packed + body) & 0xFFFFFFFF) + body
