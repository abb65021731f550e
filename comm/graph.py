"""The registry of a running system, and the inspector behind ``v2x node list|info|echo``.

The supervisor writes ``graph.json`` in its run folder (and points ``<runs>/latest`` at the
folder): every node's name, class, inbox and tap endpoints, process id, state and restarts.
That is the static half. The live half comes from the nodes themselves: each publishes a
``/heartbeat`` (state, topics it publishes and subscribes) and ``/diagnostics`` (rates, bytes,
drops, latency) every second. The :class:`Inspector` subscribes to the nodes' taps to read
them, or any other topic, without joining the launch; with CurveZMQ it uses the ``operator``
key pair from the keys folder, which every tap admits.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq
from zmq.auth import load_certificate

from v2x.comm.envelope import Message, MessageError, decode_frames
from v2x.comm.procs import pid_alive

__all__ = ["GraphError", "Inspector", "pid_alive", "read_graph", "write_graph"]


class GraphError(LookupError):
    """No running system found where one was expected."""


def write_graph(run_dir: Path, graph: dict[str, Any], latest: Path | None = None) -> Path:
    """Write ``graph.json`` atomically (readers never see half a file); point ``latest`` at it."""
    path = run_dir / "graph.json"
    tmp = run_dir / f".graph.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(graph, indent=2))
    os.replace(tmp, path)
    if latest is not None:
        try:
            tmp_link = latest.with_name(f".latest.{os.getpid()}")
            tmp_link.unlink(missing_ok=True)
            tmp_link.symlink_to(run_dir.resolve())
            os.replace(tmp_link, latest)
        except OSError:
            pass
    return path


def read_graph(where: str | Path | None = None) -> dict[str, Any]:
    """The graph of a run folder or graph.json file (default: the latest run)."""
    from v2x.comm.launch import runs_root

    path = Path(where) if where else runs_root() / "latest"
    if path.is_dir():
        path = path / "graph.json"
    if not path.is_file():
        raise GraphError(f"no running system found ({path}); start one with `v2x launch FILE.yaml`")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GraphError(f"{path}: unreadable graph: {exc}") from exc


class Inspector:
    """A subscriber on the taps of a running system's nodes (read-only)."""

    def __init__(self, graph: dict[str, Any], topic: str = "/", nodes: list[str] | None = None) -> None:
        self.graph = graph
        keys = graph.get("keys")
        targets = [n for n in graph.get("nodes", []) if n.get("tap") and (not nodes or n["name"] in nodes)]
        own, server_keys = None, {}
        if keys:  # read every key first: a missing one fails here, before any socket exists
            from v2x.comm.security import OPERATOR, SecurityError, load_public_key

            secret_file = Path(keys) / f"{OPERATOR}.key_secret"
            if not secret_file.is_file():
                raise SecurityError(f"{secret_file}: this system uses CurveZMQ; the operator key is missing")
            own = load_certificate(secret_file)
            for n in targets:
                server_keys[n["name"]] = load_public_key(Path(keys) / f"{n.get('key') or n['name']}.key")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 64)
        if own is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey = own
        for n in targets:
            if own is not None:
                self.sock.curve_serverkey = server_keys[n["name"]]
            self.sock.connect(n["tap"])
        self.sock.setsockopt(zmq.SUBSCRIBE, b"" if topic == "/" else topic.encode())

    def messages(self, timeout_s: float | None = None) -> Iterator[tuple[str, Message | None, str]]:
        """(topic, message or None, error text) as they arrive, until ``timeout_s`` passes."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while end is None or time.monotonic() < end:
            wait = 200 if end is None else max(0, min(200, int((end - time.monotonic()) * 1000)))
            if not self.sock.poll(wait):
                continue
            frames = self.sock.recv_multipart(copy=False)
            try:
                topic, msg = decode_frames(frames)
            except MessageError as exc:
                yield "?", None, str(exc)
                continue
            yield topic, msg, ""

    def collect(
        self, topics: set[str], timeout_s: float, until: int | None = None
    ) -> dict[str, dict[str, Any]]:
        """The latest message per (topic, node) for ``topics`` seen within ``timeout_s``."""
        found: dict[str, dict[str, Any]] = {}
        for topic, msg, _ in self.messages(timeout_s):
            if msg is not None and topic in topics:
                found.setdefault(getattr(msg, "node", "?"), {})[topic] = msg
                if until is not None and sum(len(v) for v in found.values()) >= until:
                    break
        return found

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.destroy(linger=0)

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
