"""Launch files and process supervision: ``v2x launch FILE.yaml``.

A launch file names nodes (``module:Class``), their parameters, and how they are wired::

    name: demo
    transport: tcp            # tcp (nodes may be on other hosts) or ipc (one host)
    host: 127.0.0.1
    keys: keys/               # optional: CurveZMQ on every link (from `v2x keys generate`)
    clock: wall               # or sim (nodes follow /clock)
    nodes:
      - name: talker
        node: v2x.comm.demo_nodes:Talker
        params: {rate_hz: 10, size: 100000}
        respawn: true         # restart when it dies (with back-off)
      - name: listener
        node: v2x.comm.demo_nodes:Listener
        endpoint: tcp://127.0.0.1:5605   # optional; otherwise a free port / socket is assigned
        peers: [talker]       # optional; default: every other node

Every node runs as its own OS process. The supervisor restarts crashed nodes (the others keep
running), forwards SIGINT/SIGTERM, and stops them all cleanly (SIGKILL after a timeout). It
writes ``graph.json`` in its run folder so ``v2x node list|info|echo`` can find the system.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["LaunchError", "LaunchSpec", "NodeEntry", "Supervisor", "load_launch", "runs_root"]

log = logging.getLogger("v2x.launch")
KNOWN_KEYS = {"name", "transport", "host", "keys", "clock", "nodes", "log_json"}
NODE_KEYS = {"name", "node", "params", "endpoint", "respawn", "peers", "respawn_limit"}


class LaunchError(ValueError):
    """A launch file that cannot be started; names the file and the entry."""


@dataclass
class NodeEntry:
    name: str
    node: str
    params: dict[str, Any] = field(default_factory=dict)
    endpoint: str | None = None
    respawn: bool = False
    respawn_limit: int = 5
    peers: list[str] | None = None


@dataclass
class LaunchSpec:
    name: str
    nodes: list[NodeEntry]
    transport: str = "tcp"
    host: str = "127.0.0.1"
    keys: str | None = None
    clock: str = "wall"
    log_json: bool = False
    source: str = ""


def runs_root() -> Path:
    return Path(os.environ.get("V2X_RUN_DIR", Path(tempfile.gettempdir()) / f"v2x-runs-{os.getuid()}"))


def load_launch(path: str | Path, overrides: list[str] | None = None) -> LaunchSpec:
    """Read and check a launch file; ``overrides`` are ``node.param=value`` strings (YAML values)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchError(f"{path}: cannot read launch file: {exc}") from exc
    if not isinstance(raw, dict):
        raise LaunchError(f"{path}: a launch file is a mapping")
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise LaunchError(f"{path}: unknown key(s) {sorted(unknown)}")
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise LaunchError(f"{path}: 'nodes' must be a non-empty list")
    nodes: list[NodeEntry] = []
    for i, n in enumerate(nodes_raw):
        if not isinstance(n, dict):
            raise LaunchError(f"{path}: nodes[{i}] is not a mapping")
        bad = set(n) - NODE_KEYS
        if bad:
            raise LaunchError(f"{path}: nodes[{i}] has unknown key(s) {sorted(bad)}")
        for k in ("name", "node"):
            if not n.get(k):
                raise LaunchError(f"{path}: nodes[{i}] is missing '{k}'")
        nodes.append(NodeEntry(**n))
    names = [n.name for n in nodes]
    dupes = {x for x in names if names.count(x) > 1}
    if dupes:
        raise LaunchError(f"{path}: duplicate node name(s) {sorted(dupes)}")
    for n in nodes:
        for p in n.peers or []:
            if p not in names:
                raise LaunchError(f"{path}: node {n.name!r} names unknown peer {p!r}")
        _check_node_class(path, n)
    for ov in overrides or []:
        key, _, value = ov.partition("=")
        node_name, _, param = key.partition(".")
        target = next((n for n in nodes if n.name == node_name), None)
        if target is None or not param:
            raise LaunchError(f"override {ov!r}: expected NODE.PARAM=VALUE with a node of {path}")
        target.params[param] = yaml.safe_load(value)
    transport = raw.get("transport", "tcp")
    if transport not in ("tcp", "ipc"):
        raise LaunchError(f"{path}: transport must be tcp or ipc, not {transport!r}")
    keys = raw.get("keys")
    if keys:
        keys_path = (path.parent / keys) if not Path(keys).is_absolute() else Path(keys)
        missing = [n.name for n in nodes if not (keys_path / f"{n.name}.key_secret").is_file()]
        if missing:
            raise LaunchError(
                f"{path}: keys folder {keys_path} has no key pair for {missing} (run `v2x keys generate`)"
            )
        keys = str(keys_path)
    return LaunchSpec(
        raw.get("name", path.stem),
        nodes,
        transport,
        raw.get("host", "127.0.0.1"),
        keys,
        raw.get("clock", "wall"),
        bool(raw.get("log_json", False)),
        str(path),
    )


def _check_node_class(path: Path, n: NodeEntry) -> None:
    from v2x.comm.run import load_node_class

    try:
        load_node_class(n.node)
    except (ImportError, ValueError, AttributeError) as exc:
        raise LaunchError(f"{path}: node {n.name!r}: cannot load {n.node!r}: {exc}") from exc


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_endpoint_free(ep: str) -> None:
    if ep.startswith("tcp://"):
        host, _, port = ep[6:].rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, int(port)))
            except OSError as exc:
                raise LaunchError(f"endpoint {ep} is not available: {exc.strerror or exc}") from exc


class Supervisor:
    """Starts every node as a process, restarts the ones that crash, stops them all."""

    def __init__(self, spec: LaunchSpec, run_dir: Path | None = None) -> None:
        self.spec = spec
        self.run_dir = run_dir or runs_root() / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {n.name: 0 for n in spec.nodes}
        self.next_start: dict[str, float] = {}
        self.exits: list[dict] = []
        self._stopping = False
        self.endpoints = self._assign_endpoints()

    def _assign_endpoints(self) -> dict[str, str]:
        eps = {}
        for n in self.spec.nodes:
            if n.endpoint:
                _check_endpoint_free(n.endpoint)
                eps[n.name] = n.endpoint
            elif self.spec.transport == "ipc":
                eps[n.name] = f"ipc://{self.run_dir}/{n.name}.sock"
            else:
                eps[n.name] = f"tcp://{self.spec.host}:{_free_port(self.spec.host)}"
        return eps

    def _spec_file(self, n: NodeEntry) -> Path:
        from v2x.comm.node import NodeSpec, Peer

        peers = n.peers if n.peers is not None else [m.name for m in self.spec.nodes if m.name != n.name]
        keys = self.spec.keys
        spec = NodeSpec(
            name=n.name,
            endpoint=self.endpoints[n.name],
            peers=[Peer(p, self.endpoints[p], str(Path(keys) / f"{p}.key") if keys else None) for p in peers],
            params=n.params,
            clock=self.spec.clock,
            keys_dir=keys,
            log_json=self.spec.log_json,
            graph_file=str(self.run_dir / "graph.json"),
        )
        path = self.run_dir / f"{n.name}.json"
        path.write_text(json.dumps(json.loads(spec.to_json()) | {"node": n.node}))
        return path

    def _start(self, n: NodeEntry) -> None:
        log_file = open(self.run_dir / f"{n.name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[n.name] = subprocess.Popen(
            [sys.executable, "-m", "v2x.comm.run", str(self._spec_file(n))], stdout=log_file, stderr=log_file
        )
        log_file.close()
        self._write_graph()

    def _write_graph(self) -> None:
        graph = {
            "name": self.spec.name,
            "launch": self.spec.source,
            "keys": self.spec.keys,
            "supervisor_pid": os.getpid(),
            "nodes": [
                {
                    "name": n.name,
                    "node": n.node,
                    "endpoint": self.endpoints[n.name],
                    "pid": self.procs[n.name].pid if n.name in self.procs else None,
                    "restarts": self.restarts[n.name],
                    "log": str(self.run_dir / f"{n.name}.log"),
                }
                for n in self.spec.nodes
            ],
        }
        tmp = self.run_dir / ".graph.json.tmp"
        tmp.write_text(json.dumps(graph, indent=2))
        os.replace(tmp, self.run_dir / "graph.json")
        latest = runs_root() / "latest"
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(self.run_dir)
        except OSError:
            pass

    def start(self) -> None:
        for n in self.spec.nodes:
            self._start(n)

    def poll(self) -> None:
        """Notice exits; schedule and perform restarts (back-off doubles per restart, max 10 s)."""
        now = time.monotonic()
        for n in self.spec.nodes:
            p = self.procs.get(n.name)
            if p is None:
                if n.name in self.next_start and now >= self.next_start[n.name]:
                    del self.next_start[n.name]
                    self._start(n)
                continue
            code = p.poll()
            if code is None or self._stopping:
                continue
            self.exits.append({"node": n.name, "code": code, "t": time.time()})
            del self.procs[n.name]
            if n.respawn and self.restarts[n.name] < n.respawn_limit:
                self.restarts[n.name] += 1
                delay = min(10.0, 0.25 * 2 ** (self.restarts[n.name] - 1))
                log.warning(
                    "node %s exited with code %s; restarting in %.2f s (restart %d)",
                    n.name,
                    code,
                    delay,
                    self.restarts[n.name],
                )
                self.next_start[n.name] = now + delay
            else:
                log.warning("node %s exited with code %s (not restarted)", n.name, code)
            self._write_graph()

    def alive(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is None]

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def run(self, duration: float | None = None) -> int:
        """Start, supervise until SIGINT/SIGTERM, ``duration`` or every node is gone; stop all."""
        stop = {"flag": False}

        def handler(*_):
            stop["flag"] = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        self.start()
        end = time.monotonic() + duration if duration else None
        try:
            while not stop["flag"] and (end is None or time.monotonic() < end):
                self.poll()
                if not self.procs and not self.next_start:
                    break
                time.sleep(0.1)
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        return 0
