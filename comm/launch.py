"""Launch files: which nodes run, with what parameters, wired how (``v2x launch FILE.yaml``).

A launch file is YAML::

    name: demo                  # names the run folder
    transport: tcp              # tcp (nodes may sit on other hosts) or ipc (one host)
    host: 127.0.0.1             # where tcp endpoints are assigned when a node names none
    keys: keys/                 # CurveZMQ keys (`v2x keys generate`); without: fresh keys
                                #   per run in the run folder (plain links: --insecure only)
    clock: wall                 # or sim: nodes follow /clock
    log_json: false             # node logs as JSON lines
    params: {hwm: 16}           # given to every node (a node's own params win)
    restart: on-failure         # default policy: never | on-failure | always, or a mapping
                                #   {policy, backoff_s, max_backoff_s, max_restarts, window_s}
    stop_timeout_s: 5           # SIGTERM, then SIGKILL after this long
    nodes:
      - name: talker
        node: v2x.comm.demo_nodes:Talker       # package.module:Class, a Node subclass
        params: {rate_hz: 10, size: 100000}
        params_file: talker.yaml               # optional, relative to the launch file
      - name: listener
        node: v2x.comm.demo_nodes:Listener
        endpoint: tcp://127.0.0.1:5605         # its inbox (default: a free port / an IPC socket)
        tap: tcp://127.0.0.1:5705              # its inspection tap (default: assigned)
        peers: [talker]                        # whom it receives from (default: every other node)
        allow: [talker]                        # whose keys it admits (default: its peers' keys,
                                               #   or every key in keys/allowed/ without peers)
        key: listener                          # its key pair (default: its name)
        clock: wall                            # per-node clock override
        restart: always
        env: {OMP_NUM_THREADS: "1"}
        nice: 10                               # lower CPU priority, 0..19 (default 0): on one
                                               #   machine, keep it from delaying the others

:func:`load_launch` checks all of it (unknown keys, missing or unloadable node classes, peers
that do not exist, malformed endpoints, missing keys) and raises :class:`LaunchError` naming the
file and the entry; :func:`assign_endpoints` refuses an endpoint another process listens on.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from v2x.comm.params import ParamError, apply_overrides, load_params, merge
from v2x.comm.transport import EndpointError, check_available, check_endpoint, free_tcp_port

__all__ = [
    "LaunchError",
    "LaunchSpec",
    "NodeEntry",
    "RestartPolicy",
    "assign_endpoints",
    "load_launch",
    "runs_root",
]

TOP_KEYS = {
    "name",
    "transport",
    "host",
    "keys",
    "clock",
    "log_json",
    "log_level",
    "params",
    "restart",
    "stop_timeout_s",
    "nodes",
}
NODE_KEYS = {
    "name",
    "node",
    "params",
    "params_file",
    "endpoint",
    "tap",
    "peers",
    "allow",
    "key",
    "clock",
    "restart",
    "respawn",
    "env",
    "nice",
}
POLICIES = ("never", "on-failure", "always")


class LaunchError(ValueError):
    """A launch file that cannot be started; the message names the file and the entry."""


@dataclass
class RestartPolicy:
    """When and how fast a node that exits is started again."""

    policy: str = "on-failure"  # never | on-failure (exit code != 0) | always
    backoff_s: float = 0.5  # first delay; doubles with each restart in the window
    max_backoff_s: float = 10.0
    max_restarts: int = 5  # more restarts than this within window_s: give up on the node
    window_s: float = 60.0

    @classmethod
    def parse(cls, raw: Any, where: str, base: RestartPolicy | None = None) -> RestartPolicy:
        base = base or cls()
        if raw is None:
            return base
        if isinstance(raw, str):
            raw = {"policy": raw}
        if not isinstance(raw, dict):
            raise LaunchError(f"{where}: restart must be one of {POLICIES} or a mapping")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise LaunchError(f"{where}: restart has unknown key(s) {sorted(unknown)}")
        out = cls(**(base.__dict__ | raw))
        if out.policy not in POLICIES:
            raise LaunchError(f"{where}: restart policy {out.policy!r} is not one of {POLICIES}")
        for k in ("backoff_s", "max_backoff_s", "window_s"):
            if not isinstance(getattr(out, k), (int, float)) or getattr(out, k) < 0:
                raise LaunchError(f"{where}: restart {k} must be a number >= 0")
        if not isinstance(out.max_restarts, int) or out.max_restarts < 0:
            raise LaunchError(f"{where}: restart max_restarts must be an integer >= 0")
        return out


@dataclass
class NodeEntry:
    name: str
    node: str
    params: dict[str, Any] = field(default_factory=dict)
    endpoint: str | None = None
    restart: RestartPolicy | str | None = None
    peers: list[str] | None = None
    tap: str | None = None
    allow: list[str] | None = None
    key: str | None = None
    clock: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    respawn: bool | None = None  # shorthand: true = restart on failure, false = never
    nice: int = 0  # 0..19: how much CPU priority the node gives up (v2x.comm.priority)

    def __post_init__(self) -> None:
        if not isinstance(self.restart, RestartPolicy):
            raw = self.restart
            if raw is None and self.respawn is not None:
                raw = "on-failure" if self.respawn else "never"
            self.restart = RestartPolicy.parse(raw, f"node {self.name!r}", RestartPolicy(policy="never"))


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
    log_level: str = "INFO"
    stop_timeout_s: float = 5.0
    #: plain links, no keys (``--insecure``); otherwise a launch without ``keys`` gets fresh
    #: per-run keys from the supervisor (docs/security.md)
    insecure: bool = False

    def node(self, name: str) -> NodeEntry:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def runs_root() -> Path:
    """Where run folders (logs, node specs, graph.json) go: ``$V2X_RUN_DIR`` or a temp folder."""
    return Path(os.environ.get("V2X_RUN_DIR", Path(tempfile.gettempdir()) / f"v2x-runs-{os.getuid()}"))


def _str_list(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise LaunchError(f"{where} must be a list of names")
    return value


def load_launch(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    check_classes: bool = True,
    keys_required: bool = True,
    keys: str | Path | None = None,
    insecure: bool = False,
) -> LaunchSpec:
    """Read and check a launch file; ``overrides`` are ``NODE.PARAM=VALUE`` (YAML values).

    ``check_classes``: import every node class now (a typo fails here, not in a child);
    ``keys_required``: the keys folder it names must exist and hold every node's pair;
    ``keys``: a keys folder (relative to the current directory) that replaces the file's;
    ``insecure``: plain links (refused together with keys: the two contradict each other)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LaunchError(f"{path}: cannot read launch file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise LaunchError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise LaunchError(f"{path}: a launch file is a mapping with a 'nodes' list")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise LaunchError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise LaunchError(f"{path}: 'nodes' must be a non-empty list")
    transport = raw.get("transport", "tcp")
    if transport not in ("tcp", "ipc"):
        raise LaunchError(f"{path}: transport must be tcp or ipc, not {transport!r}")
    clock = raw.get("clock", "wall")
    if clock not in ("wall", "sim"):
        raise LaunchError(f"{path}: clock must be wall or sim, not {clock!r}")
    shared = raw.get("params") or {}
    if not isinstance(shared, dict):
        raise LaunchError(f"{path}: 'params' must be a mapping")
    default_restart = RestartPolicy.parse(raw.get("restart"), f"{path}: restart")

    nodes: list[NodeEntry] = []
    for i, n in enumerate(nodes_raw):
        where = f"{path}: nodes[{i}]"
        if not isinstance(n, dict):
            raise LaunchError(f"{where} is not a mapping")
        if n.get("name"):
            where += f" ({n['name']})"
        bad = set(n) - NODE_KEYS
        if bad:
            raise LaunchError(f"{where} has unknown key(s) {sorted(bad)}; known: {sorted(NODE_KEYS)}")
        for k in ("name", "node"):
            if not isinstance(n.get(k), str) or not n.get(k):
                raise LaunchError(f"{where} is missing '{k}'")
        if "/" in n["name"] or n["name"].startswith("."):
            raise LaunchError(f"{where}: node name {n['name']!r} may not contain '/' or start with '.'")
        params = n.get("params") or {}
        if not isinstance(params, dict):
            raise LaunchError(f"{where}: params must be a mapping")
        try:
            if n.get("params_file"):
                pf = Path(n["params_file"])
                params = merge(load_params(pf if pf.is_absolute() else path.parent / pf, n["name"]), params)
        except ParamError as exc:
            raise LaunchError(f"{where}: {exc}") from exc
        env = n.get("env") or {}
        if not isinstance(env, dict):
            raise LaunchError(f"{where}: env must be a mapping")
        if n.get("clock", clock) not in ("wall", "sim"):
            raise LaunchError(f"{where}: clock must be wall or sim")
        nice = n.get("nice", 0)
        if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
            raise LaunchError(f"{where}: nice must be an integer from 0 to 19, not {nice!r}")
        for k in ("endpoint", "tap"):
            if n.get(k) is not None:
                try:
                    check_endpoint(n[k])
                except EndpointError as exc:
                    raise LaunchError(f"{where}: {k}: {exc}") from exc
        restart_raw = n.get("restart")
        if restart_raw is None and "respawn" in n:
            restart_raw = "on-failure" if n["respawn"] else "never"
        nodes.append(
            NodeEntry(
                name=n["name"],
                node=n["node"],
                params=merge(shared, params),
                endpoint=n.get("endpoint"),
                restart=RestartPolicy.parse(restart_raw, where, default_restart),
                peers=_str_list(n.get("peers"), f"{where}: peers"),
                tap=n.get("tap"),
                allow=_str_list(n.get("allow"), f"{where}: allow"),
                key=n.get("key"),
                clock=n.get("clock"),
                env={str(k): str(v) for k, v in env.items()},
                nice=nice,
            )
        )
    names = [n.name for n in nodes]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise LaunchError(f"{path}: duplicate node name(s) {dupes}")
    for n in nodes:
        for p in n.peers or []:
            if p not in names:
                raise LaunchError(f"{path}: node {n.name!r} names unknown peer {p!r}")
        if check_classes:
            _check_node_class(path, n)
    for ov in overrides:
        key, _, _value = ov.partition("=")
        node_name, dot, param = key.partition(".")
        if not dot or not param or node_name not in names:
            raise LaunchError(f"override {ov!r}: expected NODE.PARAM=VALUE with NODE one of {names}")
        target = nodes[names.index(node_name)]
        try:
            target.params = apply_overrides(target.params, [ov[len(node_name) + 1 :]])
        except ParamError as exc:
            raise LaunchError(str(exc)) from exc
    if keys is not None:
        keys_path = Path(keys)
    elif raw.get("keys"):
        keys = raw["keys"]
        keys_path = Path(keys) if Path(keys).is_absolute() else path.parent / keys
    if keys and insecure:
        raise LaunchError(f"{path}: keys ({keys}) and --insecure contradict each other; drop one")
    if keys and keys_required:
        if not keys_path.is_dir():
            raise LaunchError(
                f"{path}: keys folder {keys_path} not found (run `v2x keys generate --launch {path} --out {keys_path}`)"
            )
        missing = [n.name for n in nodes if not (keys_path / f"{n.key or n.name}.key_secret").is_file()]
        if missing:
            raise LaunchError(
                f"{path}: keys folder {keys_path} has no key pair for {missing} (run `v2x keys generate`)"
            )
        keys = str(keys_path.resolve())
    return LaunchSpec(
        name=str(raw.get("name", path.stem)),
        nodes=nodes,
        transport=transport,
        host=str(raw.get("host", "127.0.0.1")),
        keys=keys,
        clock=clock,
        log_json=bool(raw.get("log_json", False)),
        source=str(path),
        log_level=str(raw.get("log_level", "INFO")),
        stop_timeout_s=float(raw.get("stop_timeout_s", 5.0)),
        insecure=insecure,
    )


def _check_node_class(path: Path, n: NodeEntry) -> None:
    from v2x.comm.run import load_node_class

    try:
        load_node_class(n.node)
    except (ImportError, ValueError, AttributeError) as exc:
        raise LaunchError(f"{path}: node {n.name!r}: cannot load {n.node!r}: {exc}") from exc


def assign_endpoints(
    spec: LaunchSpec, run_dir: Path, local: set[str] | None = None
) -> dict[str, tuple[str, str]]:
    """name -> (inbox endpoint, tap endpoint): the launch file's, checked to be free, or new
    ones (free TCP ports on ``host``, or IPC sockets in ``run_dir``).

    ``local``: the nodes started on this host (default all). The others run elsewhere, so
    they must have an ``endpoint`` in the launch file, and it is not checked here."""
    where = spec.source or spec.name
    out: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()
    for n in spec.nodes:
        if local is not None and n.name not in local:
            if not n.endpoint:
                raise LaunchError(
                    f"{where}: node {n.name!r} runs on another host (not in --only), so it needs an 'endpoint'"
                )
            out[n.name] = (n.endpoint, n.tap or "")
            continue
        pair = []
        for role, given in (("in", n.endpoint), ("tap", n.tap)):
            if given:
                try:
                    check_available(given)
                except EndpointError as exc:
                    raise LaunchError(f"{where}: node {n.name!r}: {exc}") from exc
                ep = given
            elif spec.transport == "ipc":
                ep = check_endpoint(f"ipc://{run_dir}/{n.name}.{role}")
            else:
                while True:
                    ep = f"tcp://{spec.host}:{free_tcp_port(spec.host)}"
                    if ep not in taken:
                        break
            if ep in taken:
                raise LaunchError(f"{where}: endpoint {ep} is named twice")
            taken.add(ep)
            pair.append(ep)
        out[n.name] = (pair[0], pair[1])
    return out


def __getattr__(name: str) -> Any:
    if name == "Supervisor":  # it lives in v2x.comm.supervisor; kept importable from here
        from v2x.comm.supervisor import Supervisor

        return Supervisor
    raise AttributeError(name)
