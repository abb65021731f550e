"""A ROS-style node: named publishers and subscriptions on topics, timers, parameters, a
lifecycle, heartbeats and diagnostics, over ZeroMQ (see ``docs/nodes.md``).

Write a node by subclassing :class:`Node` and creating its publishers, subscriptions and timers
in :meth:`Node.on_configure`::

    class Doubler(Node):
        def on_configure(self):
            self.out = self.create_publisher(Json, "/numbers/doubled")
            self.create_subscription(Json, "/numbers/raw", self.on_number)
            self.create_timer(1.0, lambda: self.log.info("alive at %d", self.now_ns()))

        def on_number(self, topic, msg):
            self.out.publish(Json({"value": 2 * msg.data["value"]}))

Run it as its own process with ``v2x launch`` or ``v2x node run``, or in a test with
``node = Doubler(NodeSpec("doubler", "tcp://127.0.0.1:5601", peers=[...])); node.run()``.

Everything a node does happens on one thread, the one that calls :meth:`Node.spin`: callbacks
and timers never run concurrently, and a slow callback delays the rest (which is why sensor
streams should subscribe with ``keep_latest=True``). Other threads hand work to the node with
:meth:`Node.call_soon_threadsafe`.

A node never dies of what it receives: malformed frames, unknown or wrong message types,
duplicates and exceptions raised by callbacks are counted (``/diagnostics``) and logged. Nor
does it take what it should not: a message claiming another sender than its key's, a copy of
an earlier one, one for a frame too far ahead or over the inbox's byte limits is refused and
counted (:mod:`v2x.comm.receiver`, parameters ``held_mb`` ... ``frame_source``, docs/security.md).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import random
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq

from v2x.comm.diagnostics import TopicStats
from v2x.comm.envelope import (
    Clock,
    Diagnostics,
    Envelope,
    Heartbeat,
    Message,
    MessageError,
    decode_frames,
    encode_frames,
)
from v2x.comm.errors import count_refusal
from v2x.comm.limits import InboxLimits
from v2x.comm.params import ParamError, coerce
from v2x.comm.receiver import InboxReader, Route
from v2x.comm.security import KeyRing, SecurityError, load_public_key
from v2x.comm.transport import EndpointError, Link, Transport

__all__ = [
    "EXIT_CONFIG",
    "ConfigError",
    "Node",
    "NodeSpec",
    "Peer",
    "Publisher",
    "Subscription",
    "Timer",
    "setup_logging",
    "topic_matcher",
]

EXIT_CONFIG = 78  # sysexits EX_CONFIG: a node that cannot start as configured (not restarted)
HEARTBEAT_TOPIC = "/heartbeat"
DIAGNOSTICS_TOPIC = "/diagnostics"
CLOCK_TOPIC = "/clock"
_FRAMEWORK_PARAMS = {
    "hwm": 16,
    "heartbeat_s": 1.0,
    "diagnostics_s": 1.0,
    "queue_depth": 32,
    "max_frame_mb": 256.0,
    # inbox limits (v2x.comm.limits, docs/security.md)
    "held_mb": 512.0,
    "sender_held_mb": 256.0,
    "frame_horizon": 10,
    "frame_mb": 32.0,
    "sender_future_mb": 64.0,
    "frame_source": "",
}
_LIMIT_PARAMS = ("held_mb", "sender_held_mb", "frame_horizon", "frame_mb", "sender_future_mb", "frame_source")
_TOPIC = re.compile(r"^(/[A-Za-z0-9_.\-~]+)+$")
_PATTERN_SEGMENT = re.compile(r"^([A-Za-z0-9_.\-~]+|\*)$")
ConfigError = (ParamError, EndpointError, SecurityError)


@dataclass
class Peer:
    """A node this one sends to: its name (for its public key) and its inbox endpoint."""

    name: str
    endpoint: str
    public_key: str | None = None  # a public key file; default: <keys>/allowed/<name>.key


@dataclass
class NodeSpec:
    """Everything a node process needs to start (what the launcher writes for it)."""

    name: str
    endpoint: str = ""  # where its inbox binds ("": it receives nothing)
    peers: list[Peer] = field(default_factory=list)  # whose inboxes its outbox connects to
    params: dict[str, Any] = field(default_factory=dict)
    clock: str = "wall"  # or "sim": now_ns() and timers follow /clock
    keys_dir: str | None = None  # CurveZMQ on every link when set
    log_json: bool = False
    graph_file: str | None = None  # the launch's graph.json (for the record)
    tap: str = ""  # where its outbox also binds, for inspection tools
    key: str | None = None  # key pair name (default: the node's name)
    allow: list[str] | None = None  # names whose keys may send to it (default: keys/allowed/*)
    log_level: str = "INFO"
    #: node name -> key name, for senders whose key is not named after them (the ZAP user id
    #: of a secured link is the key's name; the inbox checks each message's sender against it)
    identities: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeSpec:
        d = dict(d)
        d["peers"] = [p if isinstance(p, Peer) else Peer(**p) for p in d.get("peers", [])]
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> NodeSpec:
        return cls.from_dict(json.loads(text))

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def topic_matcher(pattern: str) -> tuple[str, Callable[[str], bool]]:
    """(ZeroMQ prefix, predicate) for a subscription pattern.

    ``/a/b`` matches that topic only; ``/a/`` every topic under ``/a``; ``*`` matches one
    segment (``/agents/*/features``); ``/`` matches everything.
    """
    if pattern == "/":
        return "/", lambda t: True
    body = pattern[:-1] if pattern.endswith("/") else pattern
    segments = body.split("/")[1:]
    if not pattern.startswith("/") or not segments or not all(_PATTERN_SEGMENT.match(s) for s in segments):
        raise ValueError(f"{pattern!r} is not a topic pattern (like /agents/*/features or /agents/)")
    if "*" not in segments:
        if pattern.endswith("/"):
            return pattern, lambda t: t.startswith(pattern)
        return pattern, lambda t: t == pattern
    first = segments.index("*")
    prefix = "/" + "/".join(segments[:first]) + ("/" if first else "")
    rx = re.compile(
        "^/"
        + "/".join("[^/]+" if s == "*" else re.escape(s) for s in segments)
        + ("/" if pattern.endswith("/") else "$")
    )
    return prefix, lambda t: rx.match(t) is not None


class Publisher:
    """Publishes one topic. Arrays in a message are sent without a copy: do not modify them
    after :meth:`publish` (make a new array per message)."""

    def __init__(self, node: Node, topic: str, msg_type: type[Message] | None) -> None:
        self.node, self.topic, self.type = node, topic, msg_type
        self.stats = node.stats(topic, "out")
        self.seq = 0

    def publish(self, msg: Message) -> int:
        """Send ``msg`` to every subscriber of the topic; returns the bytes sent (all frames)."""
        if self.type is not None and not isinstance(msg, self.type):
            raise TypeError(f"{self.topic} carries {self.type.__name__}, not {type(msg).__name__}")
        frames = encode_frames(
            self.topic,
            msg,
            source=self.node.name,
            seq=self.seq,
            sent_ns=time.time_ns(),
            incarnation=self.node.incarnation,
            epoch=self.node.epoch,
            number=next(self.node._numbers),
        )
        self.seq += 1
        self.node.transport.send(frames)
        nbytes = sum(memoryview(f).nbytes for f in frames)
        self.stats.record(nbytes)
        return nbytes

    def subscribers(self) -> int:
        """Subscriptions of connected peers and taps that match this topic (0 until they join)."""
        self.node.transport.service()
        return self.node.transport.subscribers(self.topic)


@dataclass
class Subscription:
    pattern: str
    type: type[Message] | None
    callback: Callable[[str, Message], None]
    keep_latest: bool
    depth: int = 1  # newest messages held per topic while the node is busy
    prefix: str = ""
    matches: Callable[[str], bool] = field(default=lambda t: False, repr=False)
    active: bool = True


@dataclass
class Timer:
    period_ns: int
    callback: Callable[[], None]
    sim: bool  # follows the simulated clock
    next_ns: int | None
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire_by(self, epoch_s: float) -> None:
        """A wall timer: fire no later than wall-clock time ``epoch_s`` (``time.time()``), then go
        on with its period. Why: a node that waits for a moment (a deadline, a delivery time)
        can sleep until then instead of waking every few milliseconds to look."""
        if self.sim:
            return
        due_ns = time.monotonic_ns() + int((epoch_s - time.time()) * 1e9)  # timers run on monotonic
        if self.next_ns is None or due_ns < self.next_ns:
            self.next_ns = due_ns


class _RateLimitedLog:
    """Logs the first few of each kind of problem, then every 1000th, so a flood of garbage
    cannot fill the disk through the log."""

    def __init__(self, log: logging.Logger) -> None:
        self.log, self.seen = log, Counter()

    def warning(self, kind: str, text: str, *args: Any, exc_info: bool = False) -> None:
        self.seen[kind] += 1
        n = self.seen[kind]
        if n <= 5 or n % 1000 == 0:
            suffix = f" ({n} so far)" if n > 5 else ""
            self.log.warning(text + suffix, *args, exc_info=exc_info)


class Node:
    """Subclass and override :meth:`on_configure` / :meth:`on_activate` / :meth:`on_shutdown`."""

    def __init__(self, spec: NodeSpec) -> None:
        if spec.clock not in ("wall", "sim"):
            raise ParamError(f"node {spec.name!r}: clock must be 'wall' or 'sim', not {spec.clock!r}")
        self.spec = spec
        self.name = spec.name
        self.params: dict[str, Any] = dict(spec.params)
        self.log = logging.getLogger(spec.name)
        self.state = "unconfigured"
        self.incarnation = random.getrandbits(31)
        #: where this node's message stream starts (v2x.comm.freshness): later for a restart
        self.epoch = time.time_ns()
        self._numbers = itertools.count()  # every message published, on any topic
        self.current: Envelope | None = None  # the message being handled, inside a callback
        self.counters: Counter[str] = Counter()
        self.transport: Transport | None = None  # type: ignore[assignment]
        self._used_params: set[str] = set()
        self._stop = False
        self._subs: list[Subscription] = []
        self._route_cache: dict[str, list[Subscription]] = {}  # the node's thread
        self._subs_snapshot: tuple[int, tuple[Subscription, ...]] = (0, ())
        self._reader_routes: dict[str, Route | None] = {}  # the reader thread
        self._reader_version = -1
        self._prefixes: set[str] = set()
        self._publishers: dict[str, Publisher] = {}
        self._timers: list[Timer] = []
        self._topic_stats: dict[tuple[str, str], TopicStats] = {}
        self._sim_ns: int | None = None
        self._posted: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._started = time.monotonic()
        self._problems = _RateLimitedLog(self.log)
        self._poller: zmq.Poller | None = None
        self._reader: InboxReader | None = None  # type: ignore[assignment]

    # -- parameters -----------------------------------------------------------------------------
    def param(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        """Parameter ``key`` as the type of ``default``; :class:`ParamError` if it is not."""
        self._used_params.add(key)
        if key not in self.params:
            if required:
                raise ParamError(f"node {self.name!r}: parameter {key!r} is required")
            return default
        return coerce(self.name, key, self.params[key], default)

    # -- time -----------------------------------------------------------------------------------
    def now_ns(self) -> int:
        """Wall-clock ns, or with ``clock: sim`` the last time on ``/clock`` (0 before any)."""
        if self.spec.clock == "sim":
            return self._sim_ns if self._sim_ns is not None else 0
        return time.time_ns()

    @property
    def clock_ready(self) -> bool:
        return self.spec.clock == "wall" or self._sim_ns is not None

    # -- the graph ------------------------------------------------------------------------------
    def create_publisher(self, msg_type: type[Message] | None, topic: str) -> Publisher:
        """A publisher of ``msg_type`` on ``topic`` (one per topic and node; asking again returns
        the same). The message type comes first, as in rclpy's ``create_publisher``."""
        if not _TOPIC.match(topic):
            raise ValueError(f"{topic!r} is not a topic name (like /agents/3/features)")
        self._need_transport()
        pub = self._publishers.get(topic)
        if pub is not None:
            if pub.type is not msg_type:
                raise TypeError(f"{topic} already has a publisher of {pub.type}")
            return pub
        pub = self._publishers[topic] = Publisher(self, topic, msg_type)
        return pub

    def create_subscription(
        self,
        msg_type: type[Message] | None,
        topic: str,
        callback: Callable[[str, Message], None],
        keep_latest: bool = False,
        depth: int | None = None,
    ) -> Subscription:
        """Call ``callback(topic, message)`` for each message on topics matching ``topic``
        (exact, ``/prefix/`` or with ``*`` segments).

        The message type comes first, as in rclpy's ``create_subscription(msg_type, topic,
        callback)``. ``msg_type`` checks what arrives (other types are dropped and counted;
        ``None`` takes any). While the node is busy, the newest ``depth`` messages per topic are
        held and older ones dropped and counted; ``keep_latest=True`` means ``depth=1``: sensor
        streams hand over only the newest message. The default depth is the ``queue_depth``
        parameter (32)."""
        self._need_transport()
        prefix, matches = topic_matcher(topic)
        if depth is None:
            depth = 1 if keep_latest else self.param("queue_depth", _FRAMEWORK_PARAMS["queue_depth"])
        if depth < 1:
            raise ValueError(f"subscription depth must be >= 1, got {depth}")
        sub = Subscription(topic, msg_type, callback, keep_latest or depth == 1, depth, prefix, matches)
        self._subs.append(sub)
        self._subs_changed()
        self._subscribe_prefix(prefix)
        return sub

    def destroy_subscription(self, sub: Subscription) -> None:
        sub.active = False
        self._subs.remove(sub)
        self._subs_changed()

    def _subs_changed(self) -> None:
        self._route_cache.clear()
        self._subs_snapshot = (self._subs_snapshot[0] + 1, tuple(self._subs))

    def _subscribe_prefix(self, prefix: str) -> None:
        """Keep the inbox's ZeroMQ subscriptions a minimal cover (each peer then counts once)."""
        if any(prefix.startswith(p) for p in self._prefixes):
            return
        for p in [p for p in self._prefixes if p.startswith(prefix)]:
            self._reader.command("unsub", p)
            self._prefixes.discard(p)
        self._reader.command("sub", prefix)
        self._prefixes.add(prefix)

    def create_timer(self, period_s: float, callback: Callable[[], None], clock: str | None = None) -> Timer:
        """Call ``callback()`` every ``period_s``. Timers follow the node's clock (``sim``: they
        fire as ``/clock`` advances); ``clock="wall"`` keeps one on steady wall time."""
        if not period_s > 0:
            raise ValueError(f"timer period must be > 0, got {period_s}")
        sim = (clock or self.spec.clock) == "sim"
        period_ns = int(period_s * 1e9)
        first = (self._sim_ns + period_ns if self._sim_ns is not None else None) if sim else None
        if not sim:
            first = time.monotonic_ns() + period_ns
        timer = Timer(period_ns, callback, sim, first)
        self._timers.append(timer)
        return timer

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on the node's thread at its next turn (the only thread-safe call)."""
        self._posted.put(fn)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full buffer means it is awake already
            self._wake_w.send(b"x")

    def connect_peer(self, name: str, endpoint: str) -> None:
        """Also send to ``name``'s inbox at ``endpoint`` (e.g. a node that joined later)."""
        self._need_transport()
        self.transport.connect(Link(name, endpoint))

    def wait_for_subscribers(self, topic: str, count: int = 1, timeout_s: float = 5.0) -> bool:
        """Wait until ``count`` subscriptions match ``topic`` (or time runs out); no callbacks
        or timers run meanwhile.

        ZeroMQ drops what is published before a subscriber has joined; a node that must not
        lose its first messages (a replay) waits here first."""
        self._need_transport()
        end = time.monotonic() + timeout_s
        while not self._stop:
            self.transport.service()
            left = end - time.monotonic()
            if self.transport.subscribers(topic) >= count or left <= 0:
                break
            self.transport.outbox.poll(int(min(left, 0.02) * 1000))
        return self.transport.subscribers(topic) >= count

    def stats(self, topic: str, direction: str) -> TopicStats:
        return self._topic_stats.setdefault((direction, topic), TopicStats())

    # -- lifecycle hooks ------------------------------------------------------------------------
    def on_configure(self) -> None:
        """Create publishers, subscriptions and timers; read parameters."""

    def on_activate(self) -> None:
        """Called once everything is wired, before the loop starts."""

    def on_shutdown(self) -> None:
        """Release resources; called once, however the node stops."""

    # -- lifecycle ------------------------------------------------------------------------------
    def _need_transport(self) -> None:
        if self.transport is None:
            raise RuntimeError(f"node {self.name!r}: create publishers/subscriptions in on_configure()")

    def _inbox_limits(self) -> InboxLimits:
        """The inbox's held-bytes and frame limits from the framework parameters."""
        p = {k: self.param(k, _FRAMEWORK_PARAMS[k]) for k in _LIMIT_PARAMS}
        try:
            return InboxLimits.of(**p)
        except ValueError as exc:
            raise ParamError(f"node {self.name!r}: {exc}") from exc

    def configure(self) -> None:
        """Open the sockets (bind inbox and tap, connect to peers), then :meth:`on_configure`."""
        if self.state != "unconfigured":
            raise RuntimeError(f"node {self.name!r} is {self.state}, cannot configure")
        spec = self.spec
        keys = KeyRing(spec.keys_dir, spec.key or spec.name) if spec.keys_dir else None
        self.transport = Transport(
            self.name,
            spec.endpoint or None,
            [],
            tap=spec.tap or None,
            keys=keys,
            allow=spec.allow,
            hwm=self.param("hwm", _FRAMEWORK_PARAMS["hwm"]),
            max_frame_bytes=int(self.param("max_frame_mb", _FRAMEWORK_PARAMS["max_frame_mb"]) * (1 << 20)),
        )
        for p in spec.peers:
            server_key = load_public_key(p.public_key) if (p.public_key and keys is not None) else None
            self.transport.connect(Link(p.name, p.endpoint, server_key))
        self._reader = InboxReader(
            self.transport.inbox,
            self._reader_route,
            lambda topic: self.stats(topic, "in"),
            self._wake,
            self._problems.warning,
            secured=keys is not None,
            identities=spec.identities,
            limits=self._inbox_limits(),
        )
        self._hb = self.create_publisher(Heartbeat, HEARTBEAT_TOPIC)
        self._diag = self.create_publisher(Diagnostics, DIAGNOSTICS_TOPIC)
        if spec.clock == "sim":
            self.create_subscription(Clock, CLOCK_TOPIC, self._on_clock)
        self.on_configure()
        if spec.endpoint:
            self._reader.start()  # from here on the inbox belongs to the reader thread
        self.create_timer(
            self.param("heartbeat_s", _FRAMEWORK_PARAMS["heartbeat_s"]), self._heartbeat, "wall"
        )
        self.create_timer(
            self.param("diagnostics_s", _FRAMEWORK_PARAMS["diagnostics_s"]), self._diagnostics, "wall"
        )
        self.state = "inactive"

    def activate(self) -> None:
        if self.state != "inactive":
            raise RuntimeError(f"node {self.name!r} is {self.state}, cannot activate")
        unused = sorted(set(self.params) - self._used_params)
        if unused:
            self.log.warning("parameter(s) given but never read (a typo?): %s", ", ".join(unused))
        self.on_activate()
        self.state = "active"
        self._heartbeat()

    def request_stop(self, *_args: Any) -> None:
        """Ask the loop to end after the current callback (safe from signal handlers)."""
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    @property
    def stopping(self) -> bool:
        return self._stop

    def spin(self, duration_s: float | None = None) -> None:
        """Serve messages and timers until stopped (or ``duration_s`` passes)."""
        end = time.monotonic() + duration_s if duration_s is not None else None
        while not self._stop:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            self.spin_once(min(0.1, end - now) if end is not None else 0.1)

    def spin_once(self, timeout_s: float = 0.1) -> None:
        """Wait up to ``timeout_s`` for work, then do what is due."""
        if self._poller is None:
            self._poller = zmq.Poller()
            for sock in self.transport.pollables():
                self._poller.register(sock, zmq.POLLIN)
            self._poller.register(self._wake_r, zmq.POLLIN)
        due = min((t.next_ns for t in self._timers if not t.sim and not t.cancelled), default=None)
        if due is not None:
            timeout_s = min(timeout_s, max(0.0, (due - time.monotonic_ns()) / 1e9))
        events = dict(self._poller.poll(int(timeout_s * 1000)))
        if self._wake_r.fileno() in events:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
            while True:
                try:
                    fn = self._posted.get_nowait()
                except queue.Empty:
                    break
                self._guarded("posted", fn)
        if self._reader.error is not None:
            raise RuntimeError(f"node {self.name!r}: its inbox reader failed: {self._reader.error!r}")
        if len(events) > (self._wake_r.fileno() in events):
            self.transport.service()  # subscription changes and socket events
        self._dispatch_pending()
        self._run_wall_timers()

    # -- receiving ------------------------------------------------------------------------------
    def _routes(self, topic: str) -> list[Subscription]:
        routes = self._route_cache.get(topic)
        if routes is None:
            routes = [s for s in self._subs if s.matches(topic)]
            if len(self._route_cache) > 4096:  # topics are few; do not let garbage grow it
                self._route_cache.clear()
            self._route_cache[topic] = routes
        return routes

    def _reader_route(self, topic: str) -> Route | None:
        """What the reader thread holds for ``topic`` (from a snapshot of the subscriptions)."""
        version, subs = self._subs_snapshot
        if version != self._reader_version or len(self._reader_routes) > 4096:
            self._reader_routes, self._reader_version = {}, version
        if topic not in self._reader_routes:
            matching = [s for s in subs if s.matches(topic)]
            route = None
            if matching:
                types = (
                    None
                    if any(s.type is None for s in matching)
                    else frozenset(s.type.TYPE_NAME for s in matching)
                )
                route = Route(max(s.depth for s in matching), types)
            self._reader_routes[topic] = route
        return self._reader_routes[topic]

    def _dispatch_pending(self) -> None:
        """Hand what the reader holds to the callbacks, oldest first."""
        items = self._reader.take() if self._reader is not None else []
        if not items:
            return
        newest: dict[tuple[int, str], int] = {}
        for k, item in enumerate(items):  # keep-latest subscriptions get only the newest per topic
            for sub in self._routes(item.topic):
                if sub.keep_latest:
                    newest[(id(sub), item.topic)] = k
        for k, item in enumerate(items):
            routes = self._routes(item.topic)
            wanted = [s for s in routes if not s.keep_latest or newest.get((id(s), item.topic)) == k]
            if not wanted:
                st = self.stats(item.topic, "in")
                st.dropped_here += 1
                self.counters["dropped"] += 1
                continue
            try:
                topic, msg = decode_frames(item.frames)
            except MessageError as exc:
                self.stats(item.topic, "in").malformed_here += 1
                self.counters["malformed"] += 1
                count_refusal(self.counters, exc, item.header.get("src"))
                self._problems.warning("malformed", "dropped a malformed message on %s: %s", item.topic, exc)
                continue
            h = item.header
            env = Envelope(
                topic,
                type(msg).TYPE_NAME,
                h.get("src", ""),
                h.get("i", 0),
                h.get("n", 0),
                h.get("s", 0),
                item.received_ns,
                item.nbytes,
            )
            for sub in wanted:
                if sub.type is None or isinstance(msg, sub.type):
                    self._dispatch(sub, topic, msg, env)

    def _dispatch(self, sub: Subscription, topic: str, msg: Message, env: Envelope) -> None:
        if not sub.active:
            return
        self.current = env
        try:
            sub.callback(topic, msg)
        except Exception:
            self.counters["callback_errors"] += 1
            self._problems.warning("callback", "callback for %s raised", topic, exc_info=True)
        finally:
            self.current = None

    def _guarded(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.counters[f"{what}_errors"] += 1
            self._problems.warning(what, "%s callback raised", what, exc_info=True)

    # -- time and timers ------------------------------------------------------------------------
    def _run_wall_timers(self) -> None:
        now = time.monotonic_ns()
        for t in list(self._timers):
            if t.cancelled:
                self._timers.remove(t)
            elif not t.sim and now >= t.next_ns:
                t.next_ns = max(t.next_ns + t.period_ns, now)  # no catch-up bursts after a stall
                self._guarded("timer", t.callback)

    def _on_clock(self, _topic: str, msg: Clock) -> None:
        stamp = int(msg.stamp_ns)
        if self._sim_ns is not None and stamp < self._sim_ns:
            self.log.info("simulated clock went back (%d -> %d): timers restart", self._sim_ns, stamp)
            for t in self._timers:
                if t.sim:
                    t.next_ns = None
        self._sim_ns = stamp
        for t in list(self._timers):
            if not t.sim or t.cancelled:
                continue
            if t.next_ns is None:
                t.next_ns = stamp + t.period_ns
            elif stamp >= t.next_ns:
                t.next_ns += t.period_ns * max(1, (stamp - t.next_ns) // t.period_ns + 1)
                self._guarded("timer", t.callback)

    # -- heartbeats and diagnostics -------------------------------------------------------------
    def _heartbeat(self) -> None:
        self._hb.publish(
            Heartbeat(
                node=self.name,
                pid=os.getpid(),
                stamp_ns=time.time_ns(),
                state=self.state,
                publishes={t: (p.type.TYPE_NAME if p.type else "*") for t, p in self._publishers.items()},
                subscribes={s.pattern: (s.type.TYPE_NAME if s.type else "*") for s in self._subs},
                endpoint=self.transport.endpoint,
                tap=self.transport.tap,
                clock=self.spec.clock,
                uptime_s=round(time.monotonic() - self._started, 3),
            )
        )

    def diagnostics(self) -> dict[str, Any]:
        """{"topics": {"in:/t" | "out:/t": statistics}, "counters": {...}}; extend to add more."""
        return {
            "topics": {
                f"{d}:{t}": s.summary(reset_window=False)
                # a copy: the inbox reader thread may add a topic while the timer reads them
                for (d, t), s in list(self._topic_stats.items())
                if t not in (HEARTBEAT_TOPIC, DIAGNOSTICS_TOPIC)
            },
            # dict(): one C-level copy of the reader's counters, which its thread may be adding
            # keys to (refusals by sender) while this one iterates
            "counters": dict(self.counters + Counter(dict(self._reader.counters)))
            | self.transport.security_counters()
            | self._reader.memory(),
        }

    def _diagnostics(self) -> None:
        d = self.diagnostics()
        for s in list(self._topic_stats.values()):
            s.summary(reset_window=True)
        self._diag.publish(Diagnostics(self.name, time.time_ns(), d["topics"], d["counters"]))

    # -- the whole life -------------------------------------------------------------------------
    def shutdown(self) -> None:
        """:meth:`on_shutdown`, then close the sockets (idempotent)."""
        if self.state == "finalized":
            return
        was = self.state
        self.state = "finalized"
        try:
            if was != "unconfigured":
                self.on_shutdown()
        finally:
            if self._reader is not None:
                self._reader.stop()
            if self.transport is not None:
                self.transport.close(inbox_closed=self._reader is not None)
            self._wake_r.close()
            self._wake_w.close()

    def run(self) -> int:
        """Configure, activate and spin until SIGINT/SIGTERM; returns the process exit code
        (0 clean, :data:`EXIT_CONFIG` for a configuration error, 1 for a crash)."""
        signals = {
            signal.SIGINT: signal.getsignal(signal.SIGINT),
            signal.SIGTERM: signal.getsignal(signal.SIGTERM),
        }

        def on_signal(signum: int, _frame: Any) -> None:
            if self._stop:  # a second signal: stop now
                raise KeyboardInterrupt
            self.log.info("received %s: stopping", signal.Signals(signum).name)
            self.request_stop()

        for s in signals:
            signal.signal(s, on_signal)
        code = 0
        try:
            self.configure()
            self.activate()
            self.log.info(
                "active: inbox %s, tap %s, sending to %s",
                self.transport.endpoint or "-",
                self.transport.tap or "-",
                ", ".join(self.transport.peers) or "nobody",
            )
            self.spin()
        except ConfigError as exc:
            self.log.error("configuration error: %s", exc)
            code = EXIT_CONFIG
        except KeyboardInterrupt:
            code = 0
        except Exception:
            self.log.exception("node crashed")
            code = 1
        finally:
            try:
                self.shutdown()
            except Exception:
                self.log.exception("shutdown failed")
                code = code or 1
            for s, h in signals.items():
                signal.signal(s, h)
        self.log.info("stopped (exit code %d)", code)
        return code


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "t": round(record.created, 6),
            "level": record.levelname,
            "node": self.node,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(name: str, as_json: bool = False, level: str | int = "INFO") -> None:
    """Log to stderr as text lines, or as JSON lines (one object per record)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter(name)
        if as_json
        else logging.Formatter(f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
