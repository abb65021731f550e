"""The decoders under test, each with its documented error type and reasons, its seeds, its
mutator, and what a message it accepts must satisfy.

* ``wire``: :func:`v2x.comm.wire.decode` on every message kind, as the receiver's grid and codebook see it;
* ``codec``: the codec's readers a node calls (``read_demand``, ``read_offer``, ``read_features``,
  ``read_detections``), each fed the kind it expects most of the time and another kind otherwise;
* ``detections``: ``read_detections`` on detections messages (with and without variances);
* ``points``: :func:`v2x.comm.wire_points.decode_points`;
* ``envelope``: :func:`v2x.comm.envelope.decode_frames` on node messages of every registered type.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fuzzkit import mutate, seeds
from v2x.comm import envelope, wire, wire_points
from v2x.comm.errors import DecodeError
from v2x.core.geometry import is_rigid

__all__ = ["MEMORY_BOUNDS", "TARGETS", "Target", "make_target"]

#: peak bytes a decoder may allocate for an input of n bytes, per_byte * n + constant: the bounds
#: docs/wire-format.md states ("Decoding untrusted bytes"). Wire messages add 64 bytes per cell of
#: the receiver's grid (a declared cell set is bounded by the grid, not by the bytes: a run-length
#: set of 17,600 cells takes 5 bytes); every bound adds 64 KiB for bookkeeping.
_SMALL = 64 * 1024
_WIRE = (80, 64 * 100 * 176 + _SMALL)
MEMORY_BOUNDS: dict[str, tuple[int, int]] = {
    "envelope": (80, _SMALL),
    "wire": _WIRE,
    "codec": _WIRE,  # its numpy part; the dense (C, H, W) torch map it returns is not traced
    "detections": _WIRE,
    "points": (4, _SMALL),
}


@dataclass(frozen=True)
class Target:
    """One decoder: ``make_input(rng)`` -> (input, size in bytes, how it was made); ``decode``;
    ``check(output)`` -> None, or what is wrong with an accepted message."""

    name: str
    error: type[DecodeError]
    reasons: frozenset[str]
    payload_stages: frozenset[str]  # refusals at these stages came from the payload parsers
    make_input: Callable[[random.Random], tuple[Any, int, str]]
    decode: Callable[[Any], Any]
    check: Callable[[Any], str | None]

    def memory_bound(self, size: int) -> int:
        """The documented bound on the decoder's peak memory for an input of ``size`` bytes."""
        per_byte, constant = MEMORY_BOUNDS[self.name]
        return per_byte * size + constant


def _check_wire(msg: wire.DecodedMessage) -> str | None:
    n_cells = seeds.receiver().grid.num_cells
    c = msg.cells
    if len(c) and (c.min() < 0 or c.max() >= n_cells or np.any(np.diff(c) <= 0)):
        return "cells not sorted, distinct and inside the grid"
    if msg.codes is not None and msg.codes.size and msg.codes.max() >= seeds.receiver().codebook.cfg.k:
        return "a code >= k"
    if msg.features is not None and not np.isfinite(msg.features).all():
        return "non-finite features"
    if msg.levels is not None and msg.levels.size and msg.levels.max() > 3:
        return "a level above 3"
    if not all(np.isfinite(msg.header.pose)):
        return "non-finite pose"
    return _check_boxes(msg.detections, msg.variances)


def _check_boxes(boxes: np.ndarray | None, variances: np.ndarray | None) -> str | None:
    if boxes is not None and len(boxes) and (not np.isfinite(boxes).all() or boxes[:, 3:6].min() <= 0):
        return "a box that is not finite or has no volume"
    if (
        variances is not None
        and len(variances)
        and not (np.isfinite(variances).all() and variances.min() >= 0)
    ):
        return "variances not finite and non-negative"
    return None


def _check_codec(out: Any) -> str | None:
    rx = seeds.receiver()
    if isinstance(out, tuple):  # read_features
        feats, boxes = out
        dense, valid = feats.features.numpy(), feats.valid.numpy()
        if dense.shape != (seeds.CHANNELS, *rx.grid.shape) or not np.isfinite(dense[:, valid]).all():
            return "dense features of the wrong shape or not finite"
        if not is_rigid(feats.world_from_bev):
            return "a sender pose that is not rigid"
        return _check_boxes(boxes.boxes.xyzlwhy, None) if boxes is not None else None
    if hasattr(out, "levels") and hasattr(out, "world_from_ego"):  # Demand
        return (
            None
            if out.levels.max(initial=0) <= 3 and len(out.levels) == rx.codec.num_blocks
            else "bad demand"
        )
    if hasattr(out, "blocks"):  # Offer
        return (
            None if out.blocks.max(initial=0) < rx.codec.num_blocks else "an offered block outside the grid"
        )
    return _check_boxes(out.boxes.xyzlwhy, out.variances)  # SharedBoxes


def _check_points(msg: wire_points.PointsMessage) -> str | None:
    if not np.isfinite(msg.points).all():
        return "non-finite points"
    if not is_rigid(msg.world_from_lidar, wire_points.POSE_TOL):
        return "a pose that is not rigid"
    return None


def _check_envelope(out: tuple) -> str | None:
    _topic, msg = out
    if not isinstance(msg, envelope.Message):
        return "not a message"
    for name in type(msg).ARRAYS:
        a = getattr(msg, name)
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biufc" or a.flags.writeable:
            return f"{name}: not a read-only array of a plain dtype"
    return None


def _wire_target() -> Target:
    rx, pool = seeds.receiver(), [s.data for s in seeds.wire_seeds()]
    grid_id, cb_id, k = rx.codec.grid_id, rx.codebook.identity(), rx.codebook.cfg.k

    def make(rng: random.Random) -> tuple[bytes, int, str]:
        data, how = mutate.mutate_wire(rng.choice(pool), rng, pool)
        return data, len(data), how

    return Target(
        "wire",
        wire.WireError,
        wire.REASONS - {"unexpected_type"},  # raised by the codec's readers, not by decode
        frozenset({"payload"}),
        make,
        lambda data: wire.decode(data, rx.grid.shape, grid_id, cb_id, k),
        _check_wire,
    )


def _codec_target(kinds: Sequence[str] | None = None, name: str = "codec") -> Target:
    rx = seeds.receiver()
    codec = rx.codec
    readers: dict[str, Callable[[bytes], Any]] = {
        "demand": codec.read_demand,
        "offer": codec.read_offer,
        "features": lambda data: codec.read_features(data, seeds.CHANNELS),
        "detections": codec.read_detections,
    }
    chosen = [s for s in seeds.wire_seeds() if kinds is None or s.kind in kinds]
    pool = [s.data for s in seeds.wire_seeds()]

    def make(rng: random.Random) -> tuple[tuple[str, bytes], int, str]:
        seed = rng.choice(chosen)
        kind = seed.kind if rng.random() < 0.85 or kinds is not None else rng.choice(list(readers))
        data, how = mutate.mutate_wire(seed.data, rng, pool)
        return (kind, data), len(data), how

    return Target(
        name,
        wire.WireError,
        wire.REASONS,
        frozenset({"payload", "codec"}),
        make,
        lambda inp: readers[inp[0]](inp[1]),
        _check_codec,
    )


def _points_target() -> Target:
    pool = list(seeds.points_seeds())

    def make(rng: random.Random) -> tuple[bytes, int, str]:
        data, how = mutate.mutate_points(rng.choice(pool), rng, pool)
        return data, len(data), how

    return Target(
        "points",
        wire_points.PointsMessageError,
        wire_points.REASONS,
        frozenset({"pose"}),
        make,
        wire_points.decode_points,
        _check_points,
    )


def _envelope_target() -> Target:
    frame_sets = seeds.envelope_seeds()
    types = list(envelope.REGISTRY.values())
    names = list(envelope.REGISTRY)
    pool = [f for fs in frame_sets for f in fs[1:]]

    def make(rng: random.Random) -> tuple[tuple[list[bytes], Any], int, str]:
        frames, how = mutate.mutate_envelope(rng.choice(frame_sets), rng, names, pool)
        expected = rng.choice(types) if rng.random() < 0.05 else None
        return (frames, expected), sum(len(f) for f in frames), how

    return Target(
        "envelope",
        envelope.MessageError,
        envelope.REASONS,
        frozenset({"fields", "arrays", "construct"}),
        make,
        lambda inp: envelope.decode_frames(inp[0], inp[1]),
        _check_envelope,
    )


#: decoder name -> builder; builders are cached per process (seeds are built once)
TARGETS: dict[str, Callable[[], Target]] = {
    "envelope": _envelope_target,
    "wire": _wire_target,
    "codec": _codec_target,
    "points": _points_target,
    "detections": functools.partial(_codec_target, ("detections",), "detections"),
}


@functools.cache
def make_target(name: str) -> Target:
    return TARGETS[name]()
