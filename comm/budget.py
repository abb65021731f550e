"""Per-link bandwidth budgets: a rate in bits per second, the per-frame byte allowance a sender
sizes its message to, and a token bucket that enforces the rate on what is actually sent.

This module is the one place that reads a budget and turns it into bytes, so the sender's fit
and the channel's enforcement cannot disagree:

* :func:`parse_budget` reads the command line's, a launch file's or a sweep's spelling
  (``200kbps``, ``2Mbps``, a number of bit/s, ``unlimited``); :func:`parse_rate` reads one rate.
* :func:`frame_allowance` is the per-link, per-frame allowance in bytes. The sender sizes its
  message to it, less what it already spent on the link this frame (``RunConfig.frame_bytes``,
  used by ``AgentStage.message``); it does not look at the bucket's tokens.
* :class:`LinkBudget`, one per link in the channel, holds a token bucket whose burst is that
  same allowance and which refills at the rate; :meth:`LinkBudget.admit` decides, by policy,
  whether a message goes now, waits for tokens (``delay``) or is dropped (``drop``); every
  outcome is counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["LinkBudget", "TokenBucket", "frame_allowance", "parse_budget", "parse_rate"]

_NO_BUDGET = ("none", "unlimited")  # spellings of "no budget", any case

_RATE = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmg]?)\s*(bps|bit/s|b/s|bits/s)?\s*$", re.IGNORECASE
)


def parse_rate(value: str | float | int) -> float:
    """Bits per second from a number or a string such as ``200kbps``, ``27Mbps``, ``1.5 Mbit/s``."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a rate cannot be negative: {value}")
        return float(value)
    m = _RATE.match(str(value))
    if not m:
        raise ValueError(f"not a rate: {value!r} (use e.g. 200kbps, 27Mbps, 1.5 Mbit/s)")
    return float(m.group(1)) * {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]


def parse_budget(value: str | float | int | None) -> float | None:
    """A link's budget in bit/s, or None for no budget (``None``, ``none``, ``unlimited``).

    The one reader of a budget, for the CLI (through ``RunConfig.from_options``), the channel
    node's ``budget`` parameter and a sweep's budget axis. A budget must be positive: 0 is
    refused rather than read as either "nothing" or "unlimited"."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO_BUDGET):
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a rate: {value!r}")
    bps = parse_rate(value)
    if bps <= 0:
        raise ValueError(f"a budget must be positive (use 'unlimited' for none), got {value!r}")
    return bps


def frame_allowance(rate_bps: float, frame_hz: float) -> int:
    """Bytes one link may carry per frame at ``rate_bps`` and ``frame_hz`` frames a second,
    rounded down: the size a sender fits its message to and the token bucket's burst."""
    return int(rate_bps / 8 / frame_hz)


@dataclass
class TokenBucket:
    """``rate_bps`` sustained, ``burst_bytes`` at most at once. Times are seconds (any clock)."""

    rate_bps: float
    burst_bytes: float
    tokens: float = -1.0
    last: float | None = None
    promised_until: float = float("-inf")  # a delayed send spends its tokens then (see take)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst_bytes

    def _refill(self, now: float) -> None:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst_bytes, self.tokens + (now - self.last) * self.rate_bps / 8)
        if self.last is None or now > self.last:
            self.last = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def _ahead(self, now: float) -> float:
        # until a delayed send's time has come, the tokens counted belong to that time
        return max(0.0, self.promised_until - now)

    def consume(self, size: int, now: float) -> bool:
        self._refill(now)
        if self._ahead(now) == 0.0 and size <= self.tokens:
            self.tokens -= size
            return True
        return False

    def wait_time(self, size: int, now: float) -> float:
        """Seconds until ``size`` bytes of tokens exist (inf if the bucket can never hold them),
        counting from the last spend when a delayed one lies ahead of ``now``."""
        self._refill(now)
        if size > self.burst_bytes:
            return float("inf")
        return self._ahead(now) + max(0.0, (size - self.tokens) * 8 / self.rate_bps)

    def take(self, size: int, now: float) -> None:
        """Spend ``size`` bytes at ``now``, a time :meth:`wait_time` gave (rounding may leave the
        bucket a hair short: it is not allowed below empty)."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - size)
        self.promised_until = max(self.promised_until, now)


@dataclass
class LinkBudget:
    """The budget of one sender -> receiver link."""

    rate_bps: float
    frame_hz: float = 10.0
    policy: str = "drop"  # or "delay"
    max_delay_s: float = 0.1
    bucket: TokenBucket = field(init=False)
    counts: dict[str, int] = field(
        default_factory=lambda: {"admitted": 0, "delayed": 0, "dropped": 0, "bytes": 0}
    )

    def __post_init__(self) -> None:
        if self.policy not in ("drop", "delay"):
            raise ValueError(f"budget policy must be drop or delay, got {self.policy!r}")
        if self.rate_bps <= 0:
            raise ValueError(f"a budget needs a positive rate, got {self.rate_bps}")
        # one frame's allowance of burst: a sender may spend its whole allowance at once
        self.bucket = TokenBucket(self.rate_bps, self.frame_bytes)

    @classmethod
    def of(cls, rate: str | float, frame_hz: float = 10.0, policy: str = "drop") -> LinkBudget:
        return cls(parse_rate(rate), frame_hz, policy)

    @property
    def frame_bytes(self) -> int:
        """The per-frame allowance at the nominal frame rate (the bucket's burst)."""
        return frame_allowance(self.rate_bps, self.frame_hz)

    def admit(self, size: int, now: float) -> tuple[bool, float]:
        """(send?, seconds to wait first). Counts admitted, delayed and dropped messages."""
        if self.bucket.consume(size, now):
            self.counts["admitted"] += 1
            self.counts["bytes"] += size
            return True, 0.0
        wait = self.bucket.wait_time(size, now)
        if self.policy == "delay" and wait <= self.max_delay_s:
            self.bucket.take(size, now + wait)
            self.counts["delayed"] += 1
            self.counts["admitted"] += 1
            self.counts["bytes"] += size
            return True, wait
        self.counts["dropped"] += 1
        return False, 0.0
