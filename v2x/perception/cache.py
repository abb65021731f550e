"""Reuse of an agent's own perception across runs over the same scans (the cells of a sweep).

A sweep runs many cells over the same frames: every budget, channel, loss and method sees the
same scans, and what an agent computes from its own scan (encode, and detect for its supply
map) depends on nothing else. The sparse backbone is pinned to one thread, so a recomputation
would give the very same bits (``spconv_compat``); keeping the result instead saves most of a
cell's compute. The cache is keyed by a digest of everything the computation reads (points,
pose, mount height, id, kind, time stamp, whether it detects), and bounded in bytes with
least-recently-used eviction, so a long sweep never holds more than it was given.

Entries are shared, not copied: nothing downstream writes into an agent's perception (fusion,
selection and messages read it and build new tensors), and a test holds cached and uncached
runs to the same results.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from v2x.core.frame import AgentScan

if TYPE_CHECKING:
    from v2x.perception.cooperative import AgentPerception

__all__ = ["PerceptionCache", "memory_share_mb", "scan_key"]


def _available_mb() -> int | None:
    """Memory the system can still give (MemAvailable on Linux), in MiB; None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) >> 10
    except (OSError, ValueError, IndexError):
        pass
    try:
        return (os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) >> 20
    except (ValueError, OSError, AttributeError):
        return None


def memory_share_mb(requested_mb: int) -> int:
    """``requested_mb``, but no more than this worker's share of half the available memory,
    counting one worker per core: a machine with many cores and little memory must not run out
    because every worker filled its cache."""
    available = _available_mb()
    if available is None:
        return requested_mb
    return max(0, min(requested_mb, available // (2 * (os.cpu_count() or 1))))


def scan_key(scan: AgentScan, detect: bool, into: np.ndarray | None = None) -> bytes:
    """A digest of what an agent's perception of ``scan`` depends on (``into``: the pose of the
    frame it is encoded in, where not its own)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(b"own" if into is None else np.ascontiguousarray(into, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(scan.points).tobytes())
    h.update(np.ascontiguousarray(scan.world_from_lidar, dtype=np.float64).tobytes())
    h.update(
        repr(
            (scan.agent_id, scan.kind.value, int(scan.timestamp_ns), float(scan.mount_height), detect)
        ).encode()
    )
    return h.digest()


def _nbytes(p: AgentPerception) -> int:
    n = p.features.element_size() * p.features.nelement() + p.occupied.nelement()
    if p.confidence is not None:
        n += p.confidence.nbytes
    if p.boxes is not None:
        n += p.boxes.xyzlwhy.nbytes
    if p.points is not None:
        n += p.points.element_size() * p.points.nelement()
    return n


class PerceptionCache:
    """Least-recently-used perceptions, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, tuple[AgentPerception, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> AgentPerception | None:
        got = self._entries.get(key)
        if got is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return got[0]

    def put(self, key: bytes, perception: AgentPerception) -> None:
        size = _nbytes(perception)
        if size > self.max_bytes or key in self._entries:
            return
        while self._entries and self.bytes + size > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self.bytes -= old
        self._entries[key] = (perception, size)
        self.bytes += size
