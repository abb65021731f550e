"""Per-sender freshness: every message a node admits must be new in its sender's stream.

What identifies a message. Not its bytes and not its per-topic sequence number ``n`` (a copy
with another process incarnation ``i`` in its header counted as a new stream), but who sent
it and where it stands in that sender's stream:

* the sender's name (``src``), bound to its key by the ZAP user id on secured links
  (:mod:`v2x.comm.receiver` checks that first);
* ``e``, the epoch: the wall-clock time in ns at which the sending node started, so a
  restarted node counts up and its old stream is closed;
* ``q``, a number the node increments for every message it publishes, on any topic.

A copy is therefore refused whatever else in its header was changed. A message of an epoch
older than the sender's newest is refused as ``stale_epoch``; within the epoch a number seen
before, or more than :data:`WINDOW` behind the newest, as ``replay``. On one ZeroMQ
connection messages arrive in order, so numbers only climb (with gaps for topics this node
does not subscribe to); the window, a bitmap of the numbers seen below the newest as in
IPsec's anti-replay window, admits each number at most once even if they ever arrive out of
order.

The state is small and bounded: one stream per sender, at most ``max_senders`` senders (the
least recently heard is forgotten first; on secured links the allow-list bounds them anyway).
A sender whose clock went back across a restart is refused until the receiver restarts: its
new epoch is older than the one on record (counted, so it shows).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["MAX_SENDERS", "WINDOW", "Freshness"]

WINDOW = 1024
MAX_SENDERS = 1024


@dataclass
class _Stream:
    epoch: int
    top: int  # the newest number admitted
    seen: int  # bit k set: number top - k was admitted


class Freshness:
    """Per-sender (epoch, number) windows; :meth:`check` admits a message or says why not."""

    def __init__(self, window: int = WINDOW, max_senders: int = MAX_SENDERS) -> None:
        if window < 1 or max_senders < 1:
            raise ValueError("window and max_senders must be >= 1")
        self.window, self.max_senders = window, max_senders
        self._mask = (1 << window) - 1
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def check(self, sender: str, epoch: int, number: int) -> str | None:
        """Admit ``(epoch, number)`` from ``sender`` (recording it) and return None, or return
        the reason it is refused: ``stale_epoch`` or ``replay``."""
        s = self._streams.get(sender)
        if s is None or epoch > s.epoch:  # a sender first heard, or restarted
            self._streams[sender] = _Stream(epoch, number, 1)
            self._streams.move_to_end(sender)
            while len(self._streams) > self.max_senders:
                self._streams.popitem(last=False)
            return None
        self._streams.move_to_end(sender)
        if epoch < s.epoch:
            return "stale_epoch"
        if number > s.top:
            shift = number - s.top
            s.seen = ((s.seen << shift) | 1) & self._mask if shift < self.window else 1
            s.top = number
            return None
        back = s.top - number
        if back >= self.window or (s.seen >> back) & 1:
            return "replay"
        s.seen |= 1 << back
        return None
