"""How much a node's inbox may hold, and how far ahead a message's frame may be.

Why. Before these limits a sender could make a receiver hold any amount: the inbox reader
keeps up to ``depth`` messages per topic (256 for the ego's packets) of up to ``max_frame_mb``
each, and the replay's ego keeps every message for a frame it has not fused yet, however far
ahead (40 packets of 16 MiB for future frames grew an ego from 391 MB to 1,056 MB, never
freed). Two bounds close that:

* **held bytes** (:class:`InboxLimits` ``held_bytes``, ``sender_held_bytes``): what the inbox
  reader holds for the node's thread at once, in all and per sender. A message that would go
  over is refused (``held_limit`` / ``sender_held_limit``).
* **the frame gate** (:class:`FrameGate`): a message whose ``frame`` field is more than
  ``frame_horizon`` frames ahead of the node's reference frame is refused (``future_frame``).
  With a *frame source* (the node(s) that drive frames, the player in a replay) the reference
  is the newest frame the source sent, and messages for frames ahead of it are also budgeted:
  at most ``frame_bytes`` per future frame from all senders (``frame_limit``) and
  ``sender_future_bytes`` per sender for all future frames (``sender_future_limit``). A
  frame's bytes leave the budget when the source reaches it, so what any node can be made to
  keep for the future is at most ``frame_horizon * frame_bytes`` (and one sender's share at
  most ``sender_future_bytes``), and it is given back as frames pass. Without a source the
  reference is the newest frame admitted from anyone, and only the horizon applies.

Messages with no ``frame`` field (or ``frame`` < 0) are not frame-gated. The defaults are the
node's framework parameters (``docs/security.md``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MIB", "FrameGate", "InboxLimits", "frame_of"]

MIB = 1 << 20


@dataclass(frozen=True)
class InboxLimits:
    """A node's inbox limits (bytes and frames); see the module's docstring."""

    held_bytes: int = 512 * MIB
    sender_held_bytes: int = 256 * MIB
    frame_horizon: int = 10
    frame_bytes: int = 32 * MIB
    sender_future_bytes: int = 64 * MIB
    frame_sources: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls,
        *,
        held_mb: float,
        sender_held_mb: float,
        frame_horizon: int,
        frame_mb: float,
        sender_future_mb: float,
        frame_source: str | Iterable[str] = "",
    ) -> InboxLimits:
        """From the node's parameters (MiB; ``frame_source``: names, comma-separated or a list)."""
        names = frame_source.split(",") if isinstance(frame_source, str) else list(frame_source)
        out = cls(
            int(held_mb * MIB),
            int(sender_held_mb * MIB),
            int(frame_horizon),
            int(frame_mb * MIB),
            int(sender_future_mb * MIB),
            frozenset(n.strip() for n in names if n.strip()),
        )
        if min(out.held_bytes, out.sender_held_bytes, out.frame_bytes, out.sender_future_bytes) <= 0:
            raise ValueError("inbox limits must be > 0 MiB")
        if out.frame_horizon < 0:
            raise ValueError(f"frame_horizon must be >= 0, got {frame_horizon}")
        return out


def frame_of(header: dict[str, Any]) -> int | None:
    """The ``frame`` field of a message header's scalar fields, when it is a frame number."""
    meta = header.get("m")
    frame = meta.get("frame") if isinstance(meta, dict) else None
    return frame if type(frame) is int and frame >= 0 else None


class FrameGate:
    """The frame reference, the horizon and the budgets of frames ahead of the reference.

    :meth:`check` says whether a message may be admitted (changing nothing); :meth:`admit`
    records one that was. Used by the inbox reader's thread only."""

    def __init__(self, limits: InboxLimits) -> None:
        self.limits = limits
        self.reference: int | None = None
        self._by_frame: Counter[int] = Counter()  # future frame -> bytes admitted for it
        self._by_sender: Counter[str] = Counter()  # sender -> bytes for future frames
        self._pairs: Counter[tuple[str, int]] = Counter()
        #: bytes admitted for frames the source has not reached yet (a plain int: other
        #: threads read it for diagnostics while this one changes the counters)
        self.future_bytes = 0

    def _is_source(self, sender: str) -> bool:
        return not self.limits.frame_sources or sender in self.limits.frame_sources

    def check(self, sender: str, frame: int, nbytes: int) -> str | None:
        """None, or why a message of ``nbytes`` for ``frame`` from ``sender`` is refused."""
        lim = self.limits
        if lim.frame_sources and sender in lim.frame_sources:
            return None  # the source drives the frames: it is never ahead of itself
        ref = self.reference
        if ref is None:
            if not lim.frame_sources:
                return None  # the first frame heard sets the reference
            ref = -1  # the source has not started: frames from 0 on are ahead
        if frame <= ref:
            return None
        if frame > ref + lim.frame_horizon:
            return "future_frame"
        if not lim.frame_sources:
            return None
        if self._by_frame[frame] + nbytes > lim.frame_bytes:
            return "frame_limit"
        if self._by_sender[sender] + nbytes > lim.sender_future_bytes:
            return "sender_future_limit"
        return None

    def admit(self, sender: str, frame: int, nbytes: int) -> None:
        """Record an admitted message: a source's frame moves the reference on (and frees the
        budgets of the frames it reached); another's frame ahead is charged to the budgets."""
        if self._is_source(sender):
            if self.reference is None or frame > self.reference:
                self._advance(frame)
            return
        if frame > (self.reference if self.reference is not None else -1):
            self._by_frame[frame] += nbytes
            self._by_sender[sender] += nbytes
            self._pairs[(sender, frame)] += nbytes
            self.future_bytes += nbytes

    def _advance(self, frame: int) -> None:
        self.reference = frame
        for f in [f for f in self._by_frame if f <= frame]:
            self.future_bytes -= self._by_frame.pop(f)
        for (sender, f), n in list(self._pairs.items()):
            if f <= frame:
                del self._pairs[(sender, f)]
                self._by_sender[sender] -= n
                if self._by_sender[sender] <= 0:
                    del self._by_sender[sender]
