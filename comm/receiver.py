"""The inbox reader: a thread that empties a node's inbox socket as fast as messages arrive and
keeps, per topic, only the newest ``depth`` of them until the node's thread takes them.

Why a thread. If messages waited in ZeroMQ's queues while a callback runs, the queues would
fill and ZeroMQ would drop the *newest* messages (a PUB drops what it cannot queue), so a
lagging consumer would get stale data. Reading continuously moves the choice here: a
keep-latest topic (``depth`` 1) holds one message, replaced by each newer one, and a queued
topic holds its newest ``depth``. Memory stays bounded by the depths whatever the consumer
does; every message replaced is counted as dropped.

The reader checks each message's topic and header (type, sender, sequence number) and counts
malformed, wrong-type, duplicate and lost messages; the node's thread decodes the bodies of
the messages it actually hands to callbacks.

Admission (``docs/security.md``). Before a message is held the reader also refuses, and counts
by reason and claimed sender (``refused:inbox.<reason>[:<sender>]``):

* on secured links, a message whose header names a sender (``src``) other than the one whose
  key sent it: libzmq stamps the ZAP user id, the key's name, on every frame
  (:class:`~v2x.comm.security.NamingAuthenticator`), so a valid key cannot speak for another
  node (``impersonation``; ``unauthenticated`` when a frame carries no user id);
* a message that is not new in its sender's stream (:mod:`v2x.comm.freshness`: ``replay``,
  ``stale_epoch``; ``unsequenced`` for a header without epoch and number on secured links);
* a message for a frame too far ahead, or over a budget (:mod:`v2x.comm.limits`:
  ``future_frame``, ``frame_limit``, ``sender_future_limit``, ``held_limit``,
  ``sender_held_limit``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from v2x.comm.diagnostics import TopicStats
from v2x.comm.envelope import MessageError, read_header, read_topic
from v2x.comm.errors import DecodeError, count_refusal
from v2x.comm.freshness import Freshness
from v2x.comm.limits import FrameGate, InboxLimits, frame_of

__all__ = ["InboxReader", "InboxRefusedError", "Received", "Route", "peer_name"]


class InboxRefusedError(DecodeError):
    """A well-formed message the inbox refuses (who sent it, when, or how much); counted with
    :func:`~v2x.comm.errors.count_refusal` like the decoders' refusals."""

    decoder = "inbox"


def peer_name(frame: Any) -> str:
    """The ZAP user id libzmq stamped on a received frame (the sending key's name on a secured
    link), or "" when there is none (a plain link)."""
    try:
        return frame.get("User-Id") or ""
    except (zmq.ZMQError, AttributeError, TypeError, UnicodeDecodeError):
        return ""


@dataclass(frozen=True)
class Route:
    """What a node wants of a topic: how many newest messages to hold, and of which types."""

    depth: int
    types: frozenset[str] | None  # message type names wanted; None: any


@dataclass
class Received:
    topic: str
    frames: list[Any]
    header: dict[str, Any]
    received_ns: int
    nbytes: int


class InboxReader(threading.Thread):
    """Owns the inbox socket once started; other threads talk to it through methods here."""

    def __init__(
        self,
        sock: zmq.Socket,
        router: Callable[[str], Route | None],
        stats: Callable[[str], TopicStats],
        wake: Callable[[], None],
        problems: Callable[..., None],
        *,
        secured: bool = False,
        identities: dict[str, str] | None = None,
        limits: InboxLimits | None = None,
    ) -> None:
        """``secured``: the inbox is a CURVE server, so every frame must carry the sending key's
        name; ``identities``: node name -> key name for senders whose key is not named after
        them; ``limits``: the held-bytes and frame limits (:mod:`v2x.comm.limits`)."""
        super().__init__(name="inbox-reader", daemon=True)
        self.sock = sock
        self.router, self.stats, self.wake, self.problems = router, stats, wake, problems
        self.counters: Counter[str] = Counter()  # written by this thread only
        self.secured = secured
        self.identities = dict(identities or {})
        self.limits = limits or InboxLimits()
        self.freshness = Freshness()
        self.gate = FrameGate(self.limits)
        self._lock = threading.Lock()
        self._pending: dict[int, Received] = {}
        self._held = 0  # bytes of the messages in _pending (under _lock)
        self._held_by: Counter[str] = Counter()  # the same per sender
        self._by_topic: dict[str, deque[int]] = {}
        self._next = 0
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._ctl_r, self._ctl_w = socket.socketpair()
        self._ctl_r.setblocking(False)
        self._ctl_w.setblocking(False)
        self._halt = threading.Event()
        self.error: BaseException | None = None

    # -- called from the node's thread ----------------------------------------------------------
    def command(self, op: str, prefix: str) -> None:
        """(Un)subscribe ``prefix`` on the inbox (applied by the reader thread)."""
        if not self.is_alive():
            self._apply(op, prefix)
            return
        self._commands.put((op, prefix))
        self._poke()

    def take(self) -> list[Received]:
        """Everything held now, in arrival order; the holding area is empty afterwards."""
        with self._lock:
            if not self._pending:
                return []
            items = list(self._pending.values())
            self._pending = {}
            self._by_topic = {}
            self._held = 0
            self._held_by = Counter()
        return items

    def memory(self) -> dict[str, int]:
        """Bytes held for the node's thread now, and bytes admitted for frames ahead."""
        return {"held_bytes": self._held, "future_bytes": self.gate.future_bytes}

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self._poke()
        if self.is_alive():
            self.join(timeout)
        else:
            self._close_socket()
        self._ctl_r.close()
        self._ctl_w.close()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # buffer full: the reader is awake already
            self._ctl_w.send(b"x")

    # -- the reader thread ----------------------------------------------------------------------
    def _apply(self, op: str, prefix: str) -> None:
        self.sock.setsockopt(zmq.SUBSCRIBE if op == "sub" else zmq.UNSUBSCRIBE, prefix.encode())

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._ctl_r, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                events = dict(poller.poll(200))
                if self._ctl_r.fileno() in events:
                    try:
                        while self._ctl_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    while True:
                        try:
                            self._apply(*self._commands.get_nowait())
                        except queue.Empty:
                            break
                if self.sock in events:
                    got = read = 0
                    while read < 10_000:  # refused ones count too: a flood cannot hold the loop
                        try:
                            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        read += 1
                        got += self._accept(frames)
                    if got:
                        self.wake()
        except Exception as exc:  # never silently: the node notices and reports it
            self.error = exc
            logging.getLogger("v2x.receiver").exception("inbox reader failed")
            self.wake()
        finally:
            self._close_socket()

    def _close_socket(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.sock.close(linger=0)

    def _accept(self, frames: list[zmq.Frame]) -> int:
        received_ns = time.time_ns()
        nbytes = sum(f.buffer.nbytes for f in frames)
        try:
            topic = read_topic(frames)
        except MessageError as exc:
            self.counters["malformed"] += 1
            count_refusal(self.counters, exc)
            self.problems("malformed", "dropped a message with no readable topic: %s", exc)
            return 0
        route = self.router(topic)
        if route is None:
            return 0  # a ZeroMQ prefix match no pattern wants (/a/bc for /a/b)
        st = self.stats(topic)
        try:
            _, header = read_header(frames)
            src, inc, seq, sent = (
                header.get("src", ""),
                header.get("i", 0),
                header.get("n", 0),
                header.get("s", 0),
            )
            if not (isinstance(src, str) and all(isinstance(x, int) for x in (inc, seq, sent))):
                raise MessageError(f"{topic}: header has a bad sender, sequence or time")
        except MessageError as exc:
            st.malformed += 1
            self.counters["malformed"] += 1
            count_refusal(self.counters, exc)  # the header names no sender it can be trusted for
            self.problems("malformed", "dropped a malformed message on %s: %s", topic, exc)
            return 0
        why = self._authentic(frames, header, src)
        if why is not None:
            return self._refuse(why[0], src, "%s on %s", why[1], topic)
        if route.types is not None and header["t"] not in route.types:
            st.wrong_type += 1
            self.counters["wrong_type"] += 1
            self.problems(
                "wrong_type",
                "dropped %s on %s (expected %s)",
                str(header["t"])[:60],
                topic,
                ", ".join(sorted(route.types)),
            )
            return 0
        if not st.sequence(src, inc, seq):
            self.counters["duplicates"] += 1
            self.problems("duplicate", "dropped a duplicate on %s from %s (seq %d)", topic, src, seq)
            return 0
        frame = frame_of(header)
        if frame is not None:
            why_frame = self.gate.check(src, frame, nbytes)
            if why_frame is not None:
                return self._refuse(
                    why_frame,
                    src,
                    "%d bytes for frame %d on %s (reference frame %s)",
                    nbytes,
                    frame,
                    topic,
                    self.gate.reference,
                )
        with self._lock:
            ids = self._by_topic.setdefault(topic, deque())
            evict = list(itertools.islice(ids, max(0, len(ids) - route.depth + 1)))
            freed = sum(self._pending[i].nbytes for i in evict)
            freed_src = sum(
                r.nbytes for r in (self._pending[i] for i in evict) if r.header.get("src", "") == src
            )
            over = None
            if self._held - freed + nbytes > self.limits.held_bytes:
                over = "held_limit"
            elif self._held_by[src] - freed_src + nbytes > self.limits.sender_held_bytes:
                over = "sender_held_limit"
            else:
                for _ in evict:
                    old = self._pending.pop(ids.popleft())
                    self._held -= old.nbytes
                    self._held_by[old.header.get("src", "")] -= old.nbytes
                    st.dropped += 1
                    self.counters["dropped"] += 1
                self._next += 1
                self._pending[self._next] = Received(topic, frames, header, received_ns, nbytes)
                ids.append(self._next)
                self._held += nbytes
                self._held_by[src] += nbytes
        if over is not None:
            return self._refuse(
                over, src, "%d bytes on %s: the inbox holds %d already", nbytes, topic, self._held
            )
        if frame is not None:
            self.gate.admit(src, frame, nbytes)
        st.record(nbytes, (received_ns - sent) / 1e6 if sent > 0 else None)
        return 1

    def _authentic(self, frames: list[Any], header: dict[str, Any], src: str) -> tuple[str, str] | None:
        """None for a message from whom it says, new in its sender's stream; else (reason, why)."""
        if self.secured:
            user = peer_name(frames[0])
            if not user:
                return "unauthenticated", f"a message claiming to be {src!r} came with no key name"
            if self.identities.get(src, src) != user:
                return "impersonation", f"the key of {user!r} sent a message claiming to be {src!r}"
        epoch, number = header.get("e"), header.get("q")
        if epoch is None and number is None and not self.secured:
            return None  # a plain link from a sender that numbers no stream (an older node)
        if type(epoch) is not int or type(number) is not int:
            return "unsequenced", f"a message from {src!r} without its epoch and number"
        why = self.freshness.check(src, epoch, number)
        if why is not None:
            return why, f"a message from {src!r} seen before (epoch {epoch}, number {number})"
        return None

    def _refuse(self, reason: str, sender: str, text: str, *args: Any) -> int:
        """Count a refusal by reason and claimed sender, log it (rate-limited); 0 admitted."""
        count_refusal(self.counters, InboxRefusedError(text % args, reason=reason), sender)
        self.problems(f"refused_{reason}", f"refused ({reason}): {text}", *args)
        return 0
