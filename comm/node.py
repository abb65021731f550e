"""A ROS-style node: named publishers and subscribers on topics, timers, parameters, a
lifecycle, heartbeats and diagnostics, over ZeroMQ.

Wiring. Every node binds one PUB socket (its *outbox*) at its endpoint and connects one SUB
socket to the outboxes of its peers; a subscription is a topic prefix on that SUB socket, so
filtering happens at the publisher. Endpoints are TCP (nodes on other hosts) or IPC (one host),
given by the launcher or by hand.

Security (optional, CurveZMQ through ``zmq.auth``). Each node has a key pair. Its outbox is a
CURVE server that only admits subscribers whose public key is on its allow-list (ZAP; refusals
are counted); its SUB socket pins each peer's public key, so a process that is not that peer
gets nothing to it: the handshake fails, and that is counted too.

Flow control. Sockets have small high-water marks; a subscription with ``keep_latest`` drains
everything waiting and hands only the newest message to its callback (older ones are counted as
dropped), so a lagging consumer never builds an unbounded queue.

Clock. ``now_ns()`` is the wall clock, or, with ``clock: sim``, the last time seen on ``/clock``.

Malformed frames, unknown or wrong message types never take a node down: they are counted per
topic and dropped with a log line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from v2x.comm.messages import (
    Clock,
    Diagnostics,
    Heartbeat,
    Message,
    MessageError,
    decode_frames,
    encode_frames,
)

__all__ = ["Node", "NodeSpec", "Peer", "TopicStats"]


@dataclass
class Peer:
    name: str
    endpoint: str
    public_key: str | None = None  # path of the peer's public key file (security on)


@dataclass
class NodeSpec:
    """Everything a node process needs to start: what the launcher writes for it."""

    name: str
    endpoint: str
    peers: list[Peer] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    clock: str = "wall"  # or "sim"
    keys_dir: str | None = None  # this node's key pair and the allow-list (public keys) live here
    log_json: bool = False
    graph_file: str | None = None

    @classmethod
    def from_json(cls, text: str) -> NodeSpec:
        d = json.loads(text)
        d["peers"] = [Peer(**p) for p in d.get("peers", [])]
        return cls(**d)

    def to_json(self) -> str:
        d = self.__dict__ | {"peers": [p.__dict__ for p in self.peers]}
        return json.dumps(d)


@dataclass
class TopicStats:
    messages: int = 0
    bytes: int = 0
    dropped: int = 0  # overwritten by a newer message (keep_latest) or refused by policy
    malformed: int = 0
    latency_ms_sum: float = 0.0
    latency_n: int = 0
    first_s: float | None = None
    last_s: float | None = None

    def record(self, nbytes: int, latency_ms: float | None) -> None:
        now = time.monotonic()
        self.messages += 1
        self.bytes += nbytes
        self.first_s = self.first_s or now
        self.last_s = now
        if latency_ms is not None:
            self.latency_ms_sum += latency_ms
            self.latency_n += 1

    def summary(self) -> dict[str, Any]:
        span = (
            (self.last_s - self.first_s)
            if self.first_s and self.last_s and self.last_s > self.first_s
            else None
        )
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "malformed": self.malformed,
            "rate_hz": round((self.messages - 1) / span, 2) if span else None,
            "mean_latency_ms": round(self.latency_ms_sum / self.latency_n, 3) if self.latency_n else None,
        }


@dataclass
class _Subscription:
    prefix: str
    type: type[Message] | None
    callback: Callable[[str, Message], None]
    keep_latest: bool


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "t": round(record.created, 3),
                "level": record.levelname,
                "node": record.name,
                "msg": record.getMessage(),
            }
        )


class Publisher:
    def __init__(self, node: Node, topic: str, msg_type: type[Message] | None) -> None:
        self.node, self.topic, self.type = node, topic, msg_type
        self.stats = node.stats(topic, "out")

    def publish(self, msg: Message) -> None:
        if self.type is not None and not isinstance(msg, self.type):
            raise TypeError(f"{self.topic} carries {self.type.__name__}, not {type(msg).__name__}")
        frames = encode_frames(self.topic, msg)
        self.node._pub.send_multipart(frames, copy=False)
        self.stats.record(sum(memoryview(f).nbytes for f in frames), None)


class Node:
    """Subclass and override :meth:`on_configure` / :meth:`on_activate` / :meth:`on_shutdown`."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.params = dict(spec.params)
        self.log = logging.getLogger(spec.name)
        self._stop = False
        self._timers: list[list] = []  # [next_s, period_s, callback]
        self._subs: list[_Subscription] = []
        self._topic_stats: dict[tuple[str, str], TopicStats] = {}
        self.counters: dict[str, int] = {
            "auth_refused": 0,
            "handshake_failed": 0,
            "malformed": 0,
            "wrong_type": 0,
        }
        self._sim_ns: int | None = None
        self._ctx = zmq.Context()
        self._auth = None
        self.state = "unconfigured"

    # -- parameters -----------------------------------------------------------------------------
    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    # -- time -----------------------------------------------------------------------------------
    def now_ns(self) -> int:
        if self.spec.clock == "sim":
            return self._sim_ns if self._sim_ns is not None else 0
        return time.time_ns()

    # -- wiring ---------------------------------------------------------------------------------
    def _setup_sockets(self) -> None:
        ctx = self._ctx
        self._pub = ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, int(self.param("sndhwm", 64)))
        self._pub.setsockopt(zmq.LINGER, 200)
        self._sub = ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.RCVHWM, int(self.param("rcvhwm", 64)))
        self._sub.setsockopt(zmq.LINGER, 0)
        keys = Path(self.spec.keys_dir) if self.spec.keys_dir else None
        if keys is not None:
            public, secret = zmq.auth.load_certificate(keys / f"{self.name}.key_secret")
            counter = _DenialCounter(self.counters)
            auth_log = logging.getLogger(f"{self.name}.auth")
            auth_log.addHandler(counter)
            auth_log.setLevel(logging.DEBUG)
            auth_log.propagate = False
            self._auth = ThreadAuthenticator(ctx, log=auth_log)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(keys / "allowed"))
            self._pub.curve_secretkey, self._pub.curve_publickey, self._pub.curve_server = (
                secret,
                public,
                True,
            )
            self._sub.curve_secretkey, self._sub.curve_publickey = secret, public
        self._pub.bind(self.spec.endpoint)
        self._monitor = self._sub.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        for peer in self.spec.peers:
            if keys is not None:
                key_file = Path(peer.public_key) if peer.public_key else keys / "allowed" / f"{peer.name}.key"
                self._sub.curve_serverkey = zmq.auth.load_certificate(key_file)[0]
            self._sub.connect(peer.endpoint)

    def create_publisher(self, topic: str, msg_type: type[Message] | None = None) -> Publisher:
        return Publisher(self, topic, msg_type)

    def create_subscription(
        self,
        topic: str,
        msg_type: type[Message] | None,
        callback: Callable[[str, Message], None],
        keep_latest: bool = False,
    ) -> None:
        """``topic`` is matched as a prefix; the callback gets ``(topic, message)``."""
        self._subs.append(_Subscription(topic, msg_type, callback, keep_latest))
        self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> None:
        self._timers.append([time.monotonic() + period_s, period_s, callback])

    def stats(self, topic: str, direction: str) -> TopicStats:
        return self._topic_stats.setdefault((direction, topic), TopicStats())

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self) -> None:
        """Create publishers, subscriptions and timers here."""

    def on_activate(self) -> None:
        """Called once everything is wired, before the loop starts."""

    def on_shutdown(self) -> None:
        """Release resources; called once, however the node stops."""

    def configure(self) -> None:
        self._setup_sockets()
        self._hb = self.create_publisher("/heartbeat", Heartbeat)
        self._diag = self.create_publisher("/diagnostics", Diagnostics)
        if self.spec.clock == "sim":
            self.create_subscription("/clock", Clock, self._on_clock)
        self.on_configure()
        self.create_timer(float(self.param("heartbeat_s", 1.0)), self._heartbeat)
        self.create_timer(float(self.param("diagnostics_s", 1.0)), self._diagnostics)
        self.state = "inactive"

    def activate(self) -> None:
        self.on_activate()
        self.state = "active"

    def request_stop(self, *_args) -> None:
        self._stop = True

    def spin(self, duration_s: float | None = None) -> None:
        """Serve messages and timers until stopped (or ``duration_s`` passes)."""
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        end = time.monotonic() + duration_s if duration_s is not None else None
        while not self._stop:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            due = min((t[0] for t in self._timers), default=now + 0.1)
            timeout = max(0.0, min(due - now, 0.1, (end - now) if end else 0.1))
            events = dict(poller.poll(int(timeout * 1000)))
            if self._monitor in events:
                self._drain_monitor()
            if self._sub in events:
                self._drain()
            now = time.monotonic()
            for t in self._timers:
                if now >= t[0]:
                    t[0] = max(t[0] + t[1], now)  # no catch-up bursts after a stall
                    try:
                        t[2]()
                    except Exception:
                        self.log.exception("timer callback failed")

    def _drain(self) -> None:
        latest: dict[int, tuple[str, Message, int]] = {}
        for _ in range(int(self.param("max_batch", 256))):
            try:
                frames = self._sub.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            nbytes = sum(f.buffer.nbytes for f in frames)
            topic = bytes(frames[0].buffer).decode(errors="replace") if frames else "?"
            sub_i = next((i for i, s in enumerate(self._subs) if topic.startswith(s.prefix)), None)
            if sub_i is None:
                continue
            sub = self._subs[sub_i]
            st = self.stats(sub.prefix if sub.prefix.endswith("/") else topic, "in")
            try:
                topic, msg = decode_frames(frames, sub.type)
            except MessageError as exc:
                st.malformed += 1
                key = "wrong_type" if "expected" in str(exc) else "malformed"
                self.counters[key] += 1
                self.log.warning("dropped a malformed message on %s: %s", topic, exc)
                continue
            stamp = getattr(msg, "stamp_ns", 0) or 0
            latency = (time.time_ns() - stamp) / 1e6 if self.spec.clock == "wall" and stamp > 1e18 else None
            st.record(nbytes, latency)
            if sub.keep_latest:
                key = hash((sub_i, topic))
                if key in latest:
                    st.dropped += 1
                latest[key] = (topic, msg, sub_i)
            else:
                self._dispatch(sub, topic, msg)
        for topic, msg, sub_i in latest.values():
            self._dispatch(self._subs[sub_i], topic, msg)

    def _dispatch(self, sub: _Subscription, topic: str, msg: Message) -> None:
        try:
            sub.callback(topic, msg)
        except Exception:
            self.counters["callback_errors"] = self.counters.get("callback_errors", 0) + 1
            self.log.exception("callback for %s failed", topic)

    def _drain_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                evt = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self.counters["handshake_failed"] += 1
            self.log.warning(
                "handshake with a peer failed (event %s): not the key we trust", evt.get("event")
            )

    def _on_clock(self, _topic: str, msg: Message) -> None:
        self._sim_ns = int(msg.stamp_ns)

    def _heartbeat(self) -> None:
        self._hb.publish(
            Heartbeat(
                self.name,
                os.getpid(),
                time.time_ns(),
                self.state,
                sorted({t for (d, t) in self._topic_stats if d == "out"}),
                sorted(s.prefix for s in self._subs),
                self.spec.endpoint,
            )
        )

    def diagnostics(self) -> dict[str, Any]:
        return {
            "topics": {
                f"{d}:{t}": s.summary()
                for (d, t), s in self._topic_stats.items()
                if t not in ("/heartbeat", "/diagnostics")
            },
            "counters": dict(self.counters),
        }

    def _diagnostics(self) -> None:
        d = self.diagnostics()
        self._diag.publish(Diagnostics(self.name, time.time_ns(), d["topics"], d["counters"]))

    def shutdown(self) -> None:
        if self.state == "finalized":
            return
        try:
            self.on_shutdown()
        finally:
            self.state = "finalized"
            for s in ("_monitor", "_sub", "_pub"):
                sock = getattr(self, s, None)
                if sock is not None:
                    sock.close(linger=0 if s != "_pub" else 200)
            if self._auth is not None:
                self._auth.stop()
            self._ctx.term()

    def run(self) -> int:
        """The whole lifecycle with clean exit on SIGINT / SIGTERM."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        try:
            self.configure()
            self.activate()
            self.log.info("active on %s with %d peer(s)", self.spec.endpoint, len(self.spec.peers))
            self.spin()
        finally:
            self.shutdown()
            self.log.info("stopped")
        return 0


class _DenialCounter(logging.Handler):
    """Counts the ZAP authenticator's refusals (it logs 'DENIED' for each)."""

    def __init__(self, counters: dict[str, int]) -> None:
        super().__init__(logging.DEBUG)
        self.counters = counters

    def emit(self, record: logging.LogRecord) -> None:
        if "DENIED" in record.getMessage():
            self.counters["auth_refused"] += 1


def setup_logging(name: str, as_json: bool, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if as_json else logging.Formatter(f"%(asctime)s %(levelname)s [{name}] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
