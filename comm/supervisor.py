"""Process supervision: every node of a launch in its own OS process, restarted when it dies.

The :class:`Supervisor` starts each node (``python -m v2x.comm.run <spec.json>``) in its own
process group, so a Ctrl-C in the terminal reaches the supervisor only, which then stops the
nodes in order. A node that exits is reported (exit code or signal, and the last lines of its
log) and, by its restart policy, started again after a back-off that doubles with each restart
inside the policy's window; after ``max_restarts`` in the window it is given up on. A node that
exits with :data:`~v2x.comm.node.EXIT_CONFIG` (bad parameters, endpoint in use, missing keys) is
never restarted: it would fail the same way. The other nodes keep running throughout.

Links are secured by default: a launch without keys gets fresh CurveZMQ keys for the run
(:meth:`Supervisor._secure`); plain links only with ``LaunchSpec.insecure``.

Stopping: SIGTERM to every node, then SIGKILL to those still running after ``stop_timeout_s``.
Each node also asks the kernel for SIGTERM should the supervisor itself die.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from v2x.comm.graph import write_graph
from v2x.comm.launch import LaunchError, LaunchSpec, NodeEntry, assign_endpoints, runs_root
from v2x.comm.node import EXIT_CONFIG, NodeSpec, Peer
from v2x.comm.priority import lower_priority
from v2x.comm.run import PARENT_ENV
from v2x.comm.security import SecurityError, generate_run_keys

__all__ = ["NodeProcess", "Supervisor", "describe_exit"]

log = logging.getLogger("v2x.launch")


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == EXIT_CONFIG:
        return "configuration error (exit 78)"
    return f"exit code {code}"


@dataclass
class NodeProcess:
    entry: NodeEntry
    proc: subprocess.Popen | None = None
    status: str = "pending"  # pending, running, backoff, stopped, exited, failed
    restarts: int = 0
    recent: deque = field(default_factory=deque)  # monotonic times of recent restarts
    next_start: float | None = None
    last_exit: str | None = None
    started_at: float | None = None


class Supervisor:
    """Starts, watches, restarts and stops the nodes of a :class:`LaunchSpec`."""

    def __init__(
        self,
        spec: LaunchSpec,
        run_dir: Path | None = None,
        screen: bool = False,
        only: list[str] | None = None,
    ) -> None:
        """``only``: start just these nodes here (the rest run on other hosts); ``screen``:
        also print the nodes' log lines, prefixed with their names."""
        self.spec = spec
        self.screen = screen
        names = [n.name for n in spec.nodes]
        unknown = sorted(set(only or []) - set(names))
        if unknown:
            raise LaunchError(f"{spec.source or spec.name}: --only names unknown node(s) {unknown}")
        self.run_dir = Path(
            run_dir or runs_root() / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._secure()
        self.endpoints_taps = assign_endpoints(spec, self.run_dir, set(only) if only else None)
        self.endpoints = {name: pair[0] for name, pair in self.endpoints_taps.items()}
        self.nodes: dict[str, NodeProcess] = {
            n.name: NodeProcess(n) for n in spec.nodes if not only or n.name in only
        }
        self._log_offsets: dict[str, int] = {}
        self.exits: list[dict[str, Any]] = []
        self._stopping = False

    def _secure(self) -> None:
        """Secure by default: a launch that names no keys gets fresh ones for this run, in
        ``<run_dir>/keys`` (0700, secrets 0600), so every link runs CurveZMQ and only this run's
        nodes can send to its inboxes; plain links only with ``insecure`` (``--insecure``)."""
        spec = self.spec
        if spec.keys:
            return
        if spec.insecure:
            log.warning(
                "INSECURE: plain links without keys; any local process can send to these nodes, "
                "impersonate them and replay their messages"
            )
            return
        names = [n.key or n.name for n in spec.nodes]
        try:
            spec.keys = str(generate_run_keys(self.run_dir / "keys", names).resolve())
        except SecurityError as exc:
            raise LaunchError(f"{spec.source or spec.name}: cannot make this run's keys: {exc}") from exc
        log.info("CurveZMQ on every link, with keys made for this run in %s", spec.keys)

    # -- compatibility views --------------------------------------------------------------------
    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        """name -> process of the nodes that have one now."""
        return {name: n.proc for name, n in self.nodes.items() if n.proc is not None}

    @property
    def restarts(self) -> dict[str, int]:
        return {name: n.restarts for name, n in self.nodes.items()}

    # -- starting -------------------------------------------------------------------------------
    def receivers(self, name: str) -> list[str]:
        """The nodes that receive from ``name``: those whose ``peers`` name it, or name no one."""
        return [m.name for m in self.spec.nodes if m.name != name and (m.peers is None or name in m.peers)]

    def node_spec(self, n: NodeEntry) -> NodeSpec:
        """What node ``n``'s process gets: its endpoints, the inboxes it sends to, its keys."""
        keys = self.spec.keys
        peers = []
        for r in self.receivers(n.name):
            other = self.spec.node(r)
            public = str(Path(keys) / f"{other.key or other.name}.key") if keys else None
            peers.append(Peer(r, self.endpoints[r], public))
        allow = n.allow
        if allow is None and n.peers is not None:  # it admits the keys of whom it receives from
            allow = [self.spec.node(p).key or p for p in n.peers]
        endpoint, tap = self.endpoints_taps[n.name]
        return NodeSpec(
            name=n.name,
            endpoint=endpoint,
            peers=peers,
            params=n.params,
            clock=n.clock or self.spec.clock,
            keys_dir=keys,
            log_json=self.spec.log_json,
            graph_file=str(self.run_dir / "graph.json"),
            tap=tap,
            key=n.key,
            allow=allow,
            log_level=self.spec.log_level,
            identities={m.name: m.key for m in self.spec.nodes if m.key and m.key != m.name},
        )

    def _start(self, np_: NodeProcess) -> None:
        n = np_.entry
        spec_file = self.run_dir / f"{n.name}.json"
        spec_file.write_text(json.dumps(json.loads(self.node_spec(n).to_json()) | {"node": n.node}, indent=1))
        env = os.environ | {PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"} | n.env
        with open(self.run_dir / f"{n.name}.log", "ab") as log_file:
            log_file.write(f"--- start {time.strftime('%H:%M:%S')} (restart {np_.restarts})\n".encode())
            log_file.flush()
            np_.proc = subprocess.Popen(
                [sys.executable, "-m", "v2x.comm.run", str(spec_file)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops nodes in order
            )
        np_.status, np_.started_at, np_.next_start = "running", time.monotonic(), None
        lowered = lower_priority(np_.proc.pid, n.nice)
        niced = f", nice {n.nice} ({' and '.join(lowered) or 'refused'})" if n.nice else ""
        log.info("started %s (pid %d%s)", n.name, np_.proc.pid, niced)
        self._write_graph()

    def start(self) -> None:
        for np_ in self.nodes.values():
            self._start(np_)

    def _write_graph(self) -> None:
        graph = {
            "name": self.spec.name,
            "launch": self.spec.source,
            "keys": self.spec.keys,
            "transport": self.spec.transport,
            "clock": self.spec.clock,
            "supervisor_pid": os.getpid(),
            "run_dir": str(self.run_dir),
            "nodes": [
                {
                    "name": name,
                    "node": np_.entry.node,
                    "endpoint": self.endpoints_taps[name][0],
                    "tap": self.endpoints_taps[name][1],
                    "key": np_.entry.key,
                    "pid": np_.proc.pid if np_.proc is not None else None,
                    "status": np_.status,
                    "restarts": np_.restarts,
                    "last_exit": np_.last_exit,
                    "log": str(self.run_dir / f"{name}.log"),
                }
                for name, np_ in self.nodes.items()
            ]
            + [
                {
                    "name": n.name,
                    "node": n.node,
                    "endpoint": self.endpoints_taps[n.name][0],
                    "tap": self.endpoints_taps[n.name][1],
                    "key": n.key,
                    "pid": None,
                    "status": "remote",
                    "restarts": 0,
                    "last_exit": None,
                    "log": None,
                }
                for n in self.spec.nodes
                if n.name not in self.nodes
            ],
        }
        root = runs_root()
        latest = root / "latest" if self.run_dir.resolve().parent == root.resolve() else None
        write_graph(self.run_dir, graph, latest)

    def log_tail(self, name: str, lines: int = 6) -> str:
        try:
            text = (self.run_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def echo_logs(self) -> None:
        """Print what the nodes logged since the last call, each line prefixed [name]."""
        for name in self.nodes:
            path = self.run_dir / f"{name}.log"
            try:
                with open(path, "rb") as f:
                    f.seek(self._log_offsets.get(name, 0))
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # whole lines only
            if end:
                self._log_offsets[name] = self._log_offsets.get(name, 0) + end
                for line in data[:end].decode(errors="replace").splitlines():
                    print(f"[{name}] {line}", flush=True)

    # -- watching -------------------------------------------------------------------------------
    def poll(self) -> None:
        """Notice exits, report them, and start nodes whose back-off has passed."""
        now = time.monotonic()
        changed = False
        for name, np_ in self.nodes.items():
            if np_.proc is None:
                if np_.status == "backoff" and np_.next_start is not None and now >= np_.next_start:
                    self._start(np_)
                continue
            code = np_.proc.poll()
            if code is None or self._stopping:
                continue
            changed = True
            np_.proc = None
            np_.last_exit = describe_exit(code)
            self.exits.append({"node": name, "code": code, "t": time.time(), "why": np_.last_exit})
            policy = np_.entry.restart
            wants = code != EXIT_CONFIG and (
                policy.policy == "always" or (policy.policy == "on-failure" and code != 0)
            )
            while np_.recent and now - np_.recent[0] > policy.window_s:
                np_.recent.popleft()
            if wants and len(np_.recent) < policy.max_restarts:
                np_.recent.append(now)
                np_.restarts += 1
                delay = min(policy.max_backoff_s, policy.backoff_s * 2 ** (len(np_.recent) - 1))
                np_.status, np_.next_start = "backoff", now + delay
                log.warning(
                    "node %s died (%s); restart %d in %.2f s. Last log lines:\n%s",
                    name,
                    np_.last_exit,
                    np_.restarts,
                    delay,
                    self.log_tail(name),
                )
            else:
                np_.status = "exited" if code == 0 else "failed"
                why = ""
                if wants:
                    why = f" (gave up after {policy.max_restarts} restarts in {policy.window_s:g} s)"
                elif code == EXIT_CONFIG:
                    why = " (not restarted: it would fail the same way)"
                level = logging.INFO if code == 0 else logging.ERROR
                log.log(
                    level, "node %s %s%s. Last log lines:\n%s", name, np_.last_exit, why, self.log_tail(name)
                )
        if changed:
            self._write_graph()

    def alive(self) -> list[str]:
        return [name for name, np_ in self.nodes.items() if np_.proc is not None and np_.proc.poll() is None]

    def finished(self) -> bool:
        """No node runs and none waits for a restart."""
        return all(np_.proc is None and np_.status != "backoff" for np_ in self.nodes.values())

    def failed(self) -> list[str]:
        return [name for name, np_ in self.nodes.items() if np_.status == "failed"]

    # -- stopping -------------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every node, wait up to ``timeout`` (the launch's stop_timeout_s), SIGKILL the rest."""
        self._stopping = True
        timeout = self.spec.stop_timeout_s if timeout is None else timeout
        running = [np_ for np_ in self.nodes.values() if np_.proc is not None]
        for np_ in running:
            if np_.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    np_.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for np_ in running:
            try:
                np_.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("node %s did not stop within %.1f s: killing it", np_.entry.name, timeout)
                np_.proc.kill()
                np_.proc.wait()
            code = np_.proc.returncode
            np_.status, np_.last_exit = "stopped", describe_exit(code)
        for np_ in self.nodes.values():
            if np_.status == "backoff":
                np_.status = "stopped"
        if running:
            codes = ", ".join(f"{np_.entry.name}: {np_.last_exit}" for np_ in running)
            log.info("stopped %d node(s) (%s)", len(running), codes)
        self._write_graph()

    def run(self, duration: float | None = None) -> int:
        """Start, supervise until SIGINT/SIGTERM, ``duration`` or every node is done; stop all.

        Returns 0, or 1 when a node failed (gave up on, or a configuration error)."""
        stop = {"signal": None}

        def handler(signum: int, _frame: Any) -> None:
            if stop["signal"] is not None:  # a second Ctrl-C: no more waiting
                self.spec.stop_timeout_s = 0.0
            stop["signal"] = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        end = time.monotonic() + duration if duration else None
        try:
            self.start()
            while stop["signal"] is None and (end is None or time.monotonic() < end):
                self.poll()
                if self.screen:
                    self.echo_logs()
                if self.finished():
                    break
                time.sleep(0.05)
        finally:
            if stop["signal"] is not None:
                log.info("%s: stopping %d node(s)", signal.Signals(stop["signal"]).name, len(self.alive()))
            self.stop()
            if self.screen:
                self.echo_logs()
            for s, h in old.items():
                signal.signal(s, h)
        return 1 if self.failed() else 0
