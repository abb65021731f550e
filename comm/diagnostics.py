"""Per-topic statistics a node keeps and publishes on ``/diagnostics``.

Counts are totals since the node started; rates cover the time since the previous report, so
a ``v2x node info`` shows what the node does now, not an average over its life. Latency is the
wall-clock time from the publisher's send to this node's receive (both hosts' clocks must agree
for it to mean anything across hosts), over the last :data:`LATENCY_WINDOW` messages.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LATENCY_WINDOW", "TopicStats"]

LATENCY_WINDOW = 512


@dataclass
class TopicStats:
    """Statistics of one topic in one direction (``in`` or ``out``)."""

    messages: int = 0
    bytes: int = 0
    dropped: int = 0  # received but replaced by a newer one before its callback ran (keep-latest)
    lost: int = 0  # never received: gaps in the sender's sequence numbers (HWM or a restart)
    duplicates: int = 0  # a sequence number seen again (should stay 0)
    malformed: int = 0
    wrong_type: int = 0
    # the two above and the first ones are counted by the inbox reader; these two by the
    # node's thread (a body that does not decode, a keep-latest message superseded late)
    malformed_here: int = 0
    dropped_here: int = 0
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    _window_start: float = field(default_factory=time.monotonic)
    _window_messages: int = 0
    _window_bytes: int = 0
    _last_seq: dict = field(default_factory=dict)  # source -> (incarnation, last sequence number)

    def record(self, nbytes: int, latency_ms: float | None = None) -> None:
        self.messages += 1
        self.bytes += nbytes
        self._window_messages += 1
        self._window_bytes += nbytes
        if latency_ms is not None:
            self.latency_ms.append(latency_ms)

    def sequence(self, source: str, incarnation: int, seq: int) -> bool:
        """Track one sender's sequence numbers; ``False`` for a duplicate (to be dropped).

        ``incarnation`` identifies the sending process, so a sender that restarts (and counts
        from 0 again) is a new stream, not a run of duplicates.
        """
        inc, last = self._last_seq.get(source, (None, None))
        if inc != incarnation or last is None:
            self._last_seq[source] = (incarnation, seq)
            return True
        if seq <= last:
            self.duplicates += 1
            return False
        self._last_seq[source] = (incarnation, seq)
        if seq > last + 1:
            self.lost += seq - last - 1
        return True

    def summary(self, reset_window: bool = True) -> dict[str, Any]:
        now = time.monotonic()
        span = max(now - self._window_start, 1e-9)
        lat = np.asarray(self.latency_ms, dtype=np.float64)
        out = {
            "messages": self.messages,
            "bytes": self.bytes,
            "dropped": self.dropped + self.dropped_here,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "malformed": self.malformed + self.malformed_here,
            "wrong_type": self.wrong_type,
            "rate_hz": round(self._window_messages / span, 3),
            "mbit_s": round(self._window_bytes * 8 / span / 1e6, 4),
            "mean_latency_ms": round(float(lat.mean()), 4) if lat.size else None,
            "latency_ms": (
                {
                    "p50": round(float(np.percentile(lat, 50)), 4),
                    "p95": round(float(np.percentile(lat, 95)), 4),
                    "max": round(float(lat.max()), 4),
                    "n": int(lat.size),
                }
                if lat.size
                else None
            ),
        }
        if reset_window:
            self._window_start, self._window_messages, self._window_bytes = now, 0, 0
        return out
