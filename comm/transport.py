"""ZeroMQ sockets of one node: an inbox it binds, an outbox it connects to its peers' inboxes.

Wiring (why this way round). A node *binds* its inbox, a SUB socket, at its own endpoint, and
its outbox, an XPUB socket, *connects* to the inbox of each peer it sends to. The receiver is
thus the side that accepts connections, so with CurveZMQ it is the CURVE server and its ZAP
handler decides which senders' keys it admits (see :mod:`v2x.comm.security`). Subscriptions
still flow upstream: each inbox tells every connected outbox which topic prefixes it wants, so
a 4 MB message only leaves a node for peers that subscribed to it. The outbox also *binds* an
optional tap endpoint, where inspection tools (``v2x node echo``) subscribe without being part
of the launch. One XPUB socket does both: libzmq takes each endpoint's security options when
it is bound or connected.

Endpoints are ``tcp://host:port`` (nodes on several hosts) or ``ipc:///path`` (one host).

Bounded memory. Every pipe has a small high-water mark in messages (``hwm``), a PUB never
blocks (beyond the mark it drops, and the receiver sees the gap in sequence numbers), and
``max_frame_bytes`` disconnects a peer that sends a bigger frame before it is buffered.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from v2x.comm.security import Guard, KeyRing

__all__ = [
    "IPC_PATH_MAX",
    "EndpointError",
    "Link",
    "Transport",
    "check_available",
    "check_endpoint",
    "free_tcp_port",
]

log = logging.getLogger("v2x.transport")
IPC_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one for the terminating NUL
_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed_other",
}


class EndpointError(ValueError):
    """An endpoint that is malformed, or in use by another process."""


@dataclass
class Link:
    """A peer this node sends to: its name and its inbox endpoint."""

    name: str
    endpoint: str
    server_key: bytes | None = None  # its public key (default: looked up by name in the keys folder)


def check_endpoint(ep: str) -> str:
    """``ep`` if it is a usable tcp/ipc/inproc endpoint, else :class:`EndpointError`."""
    if not isinstance(ep, str):
        raise EndpointError(f"endpoint {ep!r} is not a string")
    scheme, sep, rest = ep.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise EndpointError(f"endpoint {ep!r}: expected tcp://HOST:PORT, ipc:///PATH or inproc://NAME")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise EndpointError(f"endpoint {ep!r}: expected tcp://HOST:PORT")
        if port != "*" and not (port.isdigit() and 0 <= int(port) <= 65535):
            raise EndpointError(f"endpoint {ep!r}: port {port!r} is not 0..65535 or *")
    if scheme == "ipc" and len(rest.encode()) > IPC_PATH_MAX:
        raise EndpointError(
            f"endpoint {ep!r}: an IPC path is at most {IPC_PATH_MAX} bytes; use a shorter run folder"
        )
    return ep


_HANDED_OUT: set[int] = set()
_RESERVED_LOW = 20000  # below this sit well-known services and common development servers


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it assigns itself (bind to 0, the local end of a connect)."""
    try:
        lo, hi = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    return lo, hi


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now, chosen outside the kernel's ephemeral range.

    Why outside: the port is bound later, by another process, seconds after it is picked. A
    port the kernel handed out (bind to 0) is one it hands out again to the next socket that
    binds to 0 or connects anywhere, which on a busy host (parallel test workers, other nodes)
    takes it first: "address already in use". Ports below the ephemeral range are only ever
    taken by someone who names them. Another process may still take it before we bind; ports
    this process already handed out are not handed out twice.
    """
    lo, hi = _ephemeral_range()
    pool = [(_RESERVED_LOW, lo - 1)] if lo - 1 > _RESERVED_LOW else []
    if hi < 65535:
        pool.append((hi + 1, 65535))
    rng = random.SystemRandom()
    for _ in range(64 if pool else 0):
        first, last = rng.choice(pool)
        port = rng.randint(first, last)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room outside: the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def check_available(ep: str) -> None:
    """:class:`EndpointError` when another process already listens on ``ep``."""
    check_endpoint(ep)
    scheme, _, rest = ep.partition("://")
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if port in ("*", "0"):
            return
        host = "0.0.0.0" if host == "*" else host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq does
            try:
                s.bind((host, int(port)))
            except OSError as exc:
                raise EndpointError(f"endpoint {ep} is not available: {exc.strerror or exc}") from exc
    elif scheme == "ipc" and os.path.exists(rest):
        # libzmq silently replaces a socket file on bind: refuse if someone is listening on it
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(rest)
            except OSError:
                return  # a stale file: binding will replace it
        raise EndpointError(f"endpoint {ep} is in use by another process")


class Transport:
    """The sockets of one node. The node's thread uses the outbox; once the node starts its
    :class:`~v2x.comm.receiver.InboxReader`, the inbox belongs to that thread."""

    def __init__(
        self,
        name: str,
        endpoint: str | None,
        peers: list[Link],
        *,
        tap: str | None = None,
        keys: KeyRing | None = None,
        allow: list[str] | None = None,
        hwm: int = 16,
        max_frame_bytes: int = 256 << 20,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.name = name
        self.ctx = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self.keys = keys
        self.counters: Counter[str] = Counter()
        self.subscriptions: Counter[bytes] = Counter()  # prefixes peers subscribed to on the outbox
        self.guard: Guard | None = None
        if keys is not None:
            self.guard = Guard(
                self.ctx,
                {"inbox": keys.allow_list(allow), "tap": keys.allow_list(None, operator=True)},
            )
        self.inbox = self._socket(zmq.SUB, hwm)
        self.inbox.setsockopt(zmq.MAXMSGSIZE, int(max_frame_bytes))
        self.outbox = self._socket(zmq.XPUB, hwm)
        self.outbox.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription: subscriber counts
        self.monitors = [
            self.inbox.get_monitor_socket(zmq.EVENT_ALL),
            self.outbox.get_monitor_socket(zmq.EVENT_ALL),
        ]
        self.endpoint = self._bind(self.inbox, endpoint, "inbox") if endpoint else ""
        self.tap = self._bind(self.outbox, tap, "tap") if tap else ""
        self.peers: dict[str, Link] = {}
        for link in peers:
            self.connect(link)

    def _socket(self, kind: int, hwm: int) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        s.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # notice a peer host that vanished
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        return s

    def _bind(self, sock: zmq.Socket, ep: str, role: str) -> str:
        check_endpoint(ep)
        if self.keys is not None:
            sock.curve_secretkey, sock.curve_publickey = self.keys.secret, self.keys.public
            sock.curve_server = True
            sock.zap_domain = role.encode()
        try:
            sock.bind(ep)
        except zmq.ZMQError as exc:
            why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise EndpointError(f"node {self.name!r}: cannot bind its {role} at {ep}: {why}") from exc
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def connect(self, link: Link) -> None:
        """Send to ``link``'s inbox from now on (pinning its public key when secured)."""
        check_endpoint(link.endpoint)
        if self.keys is not None:
            self.outbox.curve_server = False
            self.outbox.curve_secretkey, self.outbox.curve_publickey = self.keys.secret, self.keys.public
            self.outbox.curve_serverkey = link.server_key or self.keys.public_key(link.name)
        self.outbox.connect(link.endpoint)
        self.peers[link.name] = link

    def disconnect(self, name: str) -> None:
        link = self.peers.pop(name, None)
        if link is not None:
            self.outbox.disconnect(link.endpoint)

    # -- traffic -------------------------------------------------------------------------------
    def send(self, frames: list[Any]) -> None:
        self.outbox.send_multipart(frames, copy=False)

    def subscribers(self, topic: str) -> int:
        """How many subscriptions of connected peers (and taps) match ``topic``."""
        t = topic.encode()
        return sum(n for prefix, n in self.subscriptions.items() if n > 0 and t.startswith(prefix))

    # -- events --------------------------------------------------------------------------------
    def service(self) -> None:
        """Read subscription changes and socket events (cheap; call it whenever they poll)."""
        while True:
            try:
                msg = self.outbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg[:1] == b"\x01":
                self.subscriptions[msg[1:]] += 1
            elif msg[:1] == b"\x00":
                self.subscriptions[msg[1:]] -= 1
                if self.subscriptions[msg[1:]] <= 0:
                    del self.subscriptions[msg[1:]]
        for mon, role in zip(self.monitors, ("inbox", "outbox"), strict=True):
            while True:
                try:
                    evt = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                except (ValueError, zmq.ZMQError):
                    continue
                kind = _FAILED.get(evt["event"])
                if kind is not None:
                    self.counters[kind] += 1
                    self.counters[f"{role}_{kind}"] += 1
                    log.warning(
                        "%s: %s handshake failed on %s (%s)",
                        self.name,
                        role,
                        evt.get("endpoint", b"").decode(errors="replace"),
                        _FAILED[evt["event"]].removeprefix("handshake_failed_"),
                    )
                elif evt["event"] == zmq.EVENT_ACCEPTED:
                    self.counters[f"{role}_accepted"] += 1
                elif evt["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.counters[f"{role}_handshakes"] += 1

    def security_counters(self) -> dict[str, int]:
        out = dict(self.counters)
        if self.guard is not None:
            for domain, n in self.guard.refused().items():
                out[f"auth_refused_{domain}"] = n
            out["auth_refused"] = sum(self.guard.refused().values())
        return out

    def pollables(self) -> list[zmq.Socket]:
        """What the node's thread polls (the inbox belongs to its reader thread)."""
        return [self.outbox, *self.monitors]

    def close(self, inbox_closed: bool = False) -> None:
        """Close everything (``inbox_closed``: the reader thread closed the inbox already)."""
        with contextlib.suppress(zmq.ZMQError):
            self.outbox.disable_monitor()
        if not inbox_closed:
            with contextlib.suppress(zmq.ZMQError):
                self.inbox.disable_monitor()
            self.inbox.close(linger=0)
        for s in (*self.monitors, self.outbox):
            s.close(linger=0)
        if self.guard is not None:
            self.guard.stop()
        if self.endpoint.startswith("ipc://"):
            Path(self.endpoint[6:]).unlink(missing_ok=True)
        if self.tap.startswith("ipc://"):
            Path(self.tap[6:]).unlink(missing_ok=True)
        if self._own_ctx:
            self.ctx.term()
