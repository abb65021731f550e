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
"""

from __future__ import annotations

import contextlib
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

__all__ = ["InboxReader", "Received", "Route"]


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
    ) -> None:
        super().__init__(name="inbox-reader", daemon=True)
        self.sock = sock
        self.router, self.stats, self.wake, self.problems = router, stats, wake, problems
        self.counters: Counter[str] = Counter()  # written by this thread only
        self._lock = threading.Lock()
        self._pending: dict[int, Received] = {}
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
        return items

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
                    got = 0
                    while got < 10_000:
                        try:
                            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
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
            self.problems("malformed", "dropped a malformed message on %s: %s", topic, exc)
            return 0
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
        st.record(nbytes, (received_ns - sent) / 1e6 if sent > 0 else None)
        with self._lock:
            ids = self._by_topic.setdefault(topic, deque())
            while len(ids) >= route.depth:
                del self._pending[ids.popleft()]
                st.dropped += 1
                self.counters["dropped"] += 1
            self._next += 1
            self._pending[self._next] = Received(topic, frames, header, received_ns, nbytes)
            ids.append(self._next)
        return 1
