"""``v2x launch``, ``v2x node list|info|echo|run`` and ``v2x keys generate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from v2x.cli.options import insecure_option, warn_insecure

_RUN_HELP = "Run folder or graph.json of a launch (default: the latest)."


@click.command("launch")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--set", "overrides", multiple=True, metavar="NODE.PARAM=VALUE", help="Override a parameter (repeatable)."
)
@click.option("--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--only", help="Start only these nodes (comma-separated); the others run on other hosts.")
@click.option("--screen", is_flag=True, help="Also print the nodes' log lines here, prefixed [name].")
@click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Where logs and graph.json go."
)
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="CurveZMQ keys folder (from `v2x keys generate`). Default: the launch file's, else "
    "fresh keys for this run in RUN_DIR/keys.",
)
@insecure_option
def launch(
    file: Path,
    overrides: tuple[str, ...],
    duration: float | None,
    only: str | None,
    screen: bool,
    run_dir: Path | None,
    keys_dir: Path | None,
    insecure: bool,
) -> None:
    """Start every node of a launch FILE as its own process, supervise, stop all on Ctrl-C.

    Every link runs CurveZMQ: with the keys given, or with keys made for this run."""
    import logging

    from v2x.comm.launch import LaunchError, load_launch
    from v2x.comm.supervisor import Supervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger("v2x.launch").getEffectiveLevel() > logging.INFO:
        logging.getLogger("v2x.launch").setLevel(logging.INFO)  # starts, exits and restarts
    try:
        spec = load_launch(file, overrides, keys=keys_dir, insecure=insecure)
        names = [x.strip() for x in only.split(",") if x.strip()] if only else None
        if names and spec.keys is None and not insecure:
            raise LaunchError(
                f"{file}: with --only the other hosts' nodes need the same keys: make them with "
                "`v2x keys generate --launch FILE --out DIR` and pass --keys DIR (or --insecure)"
            )
        sup = Supervisor(spec, run_dir, screen=screen, only=names)
    except LaunchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"launching {len(sup.nodes)} node(s) from {file}; logs and graph in {sup.run_dir}", err=True)
    if insecure:
        warn_insecure()
    else:
        click.echo(f"CurveZMQ on every link; keys in {spec.keys}", err=True)
    code = sup.run(duration)
    for e in sup.exits:
        click.echo(f"node {e['node']}: {e['why']}", err=True)
    if code:
        raise click.ClickException(f"node(s) failed: {', '.join(sup.failed())} (logs in {sup.run_dir})")


def _graph(run: Path | None) -> dict[str, Any]:
    from v2x.comm.graph import GraphError, read_graph

    try:
        return read_graph(run)
    except GraphError as exc:
        raise click.ClickException(str(exc)) from exc


def _inspector(g: dict[str, Any], topic: str, nodes: list[str] | None = None):
    from v2x.comm.graph import Inspector
    from v2x.comm.security import SecurityError

    try:
        return Inspector(g, topic, nodes)
    except SecurityError as exc:
        raise click.ClickException(str(exc)) from exc


def _live(g: dict[str, Any], timeout: float, nodes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Latest heartbeat and diagnostics per node, listening ``timeout`` seconds at most."""
    wanted = len(nodes) if nodes else sum(1 for n in g["nodes"] if n.get("status") != "remote")
    with _inspector(g, "/", nodes) as insp:
        return insp.collect({"/heartbeat", "/diagnostics"}, timeout, until=2 * wanted)


@click.group("node")
def node() -> None:
    """Inspect a running system (like ros2 node / topic), or run one node by hand."""


@node.command("list")
@click.option("--run", type=click.Path(path_type=Path), help=_RUN_HELP)
@click.option(
    "--live/--no-live", default=True, show_default=True, help="Listen for heartbeats (state, topics)."
)
@click.option(
    "--timeout", type=float, default=2.5, show_default=True, help="How long to listen for heartbeats."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def node_list(run: Path | None, live: bool, timeout: float, as_json: bool) -> None:
    """Nodes of a launch: process, state, restarts, endpoints and topics."""
    from v2x.comm.graph import pid_alive

    g = _graph(run)
    beats = _live(g, timeout) if live else {}
    rows = []
    for n in g["nodes"]:
        hb = beats.get(n["name"], {}).get("/heartbeat")
        rows.append(
            n
            | {
                "alive": pid_alive(n.get("pid")),
                "state": hb.state if hb else None,
                "publishes": hb.publishes if hb else None,
                "subscribes": hb.subscribes if hb else None,
            }
        )
    if as_json:
        click.echo(json.dumps({"name": g["name"], "run_dir": g.get("run_dir"), "nodes": rows}, indent=2))
        return
    click.echo(f"{g['name']} ({g.get('run_dir', '')})")
    for r in rows:
        proc = "remote" if r["status"] == "remote" else ("alive" if r["alive"] else "dead")
        click.echo(
            f"  {r['name']:<16} {proc:<6} pid {r.get('pid')!s:<8} {(r['state'] or '-'):<9} "
            f"restarts {r['restarts']:<3} inbox {r['endpoint']}  tap {r['tap'] or '-'}"
        )
        if r["publishes"] is not None:
            pubs = [t for t in r["publishes"] if t not in ("/heartbeat", "/diagnostics")]
            click.echo(
                f"      publishes: {', '.join(pubs) or '-'}   subscribes: {', '.join(r['subscribes']) or '-'}"
            )


@node.command("info")
@click.argument("name")
@click.option("--run", type=click.Path(path_type=Path), help=_RUN_HELP)
@click.option("--timeout", type=float, default=3.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def node_info(name: str, run: Path | None, timeout: float, as_json: bool) -> None:
    """A node's heartbeat and latest diagnostics: topics, rates, bytes, drops, latency."""
    g = _graph(run)
    entry = next((n for n in g["nodes"] if n["name"] == name), None)
    if entry is None:
        raise click.ClickException(
            f"no node {name!r} in {g['name']}; nodes: {', '.join(n['name'] for n in g['nodes'])}"
        )
    found = _live(g, timeout, [name]).get(name, {})
    if "/heartbeat" not in found:
        raise click.ClickException(
            f"no heartbeat from {name!r} within {timeout} s (is it running? `v2x node list`)"
        )
    hb, diag = found["/heartbeat"], found.get("/diagnostics")
    if as_json:
        out = {"graph": entry, "heartbeat": hb.meta(), "diagnostics": diag.meta() if diag else None}
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"{name}: {entry['node']}  pid {hb.pid}  {hb.state}  clock {hb.clock}  up {hb.uptime_s:.1f} s")
    click.echo(f"  inbox {hb.endpoint or '-'}   tap {hb.tap or '-'}   restarts {entry['restarts']}")
    click.echo("  publishes:  " + (", ".join(f"{t} [{ty}]" for t, ty in hb.publishes.items()) or "-"))
    click.echo("  subscribes: " + (", ".join(f"{t} [{ty}]" for t, ty in hb.subscribes.items()) or "-"))
    if diag is None:
        return
    click.echo(
        f"  {'topic':<40} {'msgs':>8} {'Hz':>8} {'Mbit/s':>8} {'drop':>6} {'lost':>6} {'bad':>5} {'p50 ms':>8}"
    )
    for key, t in sorted(diag.topics.items()):
        lat = (t.get("latency_ms") or {}).get("p50")
        bad = t.get("malformed", 0) + t.get("wrong_type", 0)
        click.echo(
            f"  {key:<40} {t.get('messages', 0):>8} {t.get('rate_hz', 0):>8.2f} {t.get('mbit_s', 0):>8.3f} "
            f"{t.get('dropped', 0):>6} {t.get('lost', 0):>6} {bad:>5} {'-' if lat is None else f'{lat:.3f}':>8}"
        )
    if diag.counters:
        click.echo("  counters: " + ", ".join(f"{k}={v}" for k, v in sorted(diag.counters.items())))


def _describe(msg: Any, full: bool) -> str:
    meta = msg.meta()
    if not full:
        meta = {k: (v if len(repr(v)) < 80 else f"<{type(v).__name__} of {len(v)}>") for k, v in meta.items()}
    arrays = {a: f"{getattr(msg, a).dtype}{list(getattr(msg, a).shape)}" for a in type(msg).ARRAYS}
    blobs = {b: f"{len(getattr(msg, b))} bytes" for b in type(msg).BLOBS}
    return json.dumps(meta | arrays | blobs, default=str)


@node.command("echo")
@click.argument("topic")
@click.option("--run", type=click.Path(path_type=Path), help=_RUN_HELP)
@click.option("--count", type=int, default=0, help="Stop after this many messages.")
@click.option("--timeout", type=float, default=0.0, help="Stop after this many seconds.")
@click.option("--full", is_flag=True, help="Print long fields in full.")
def node_echo(topic: str, run: Path | None, count: int, timeout: float, full: bool) -> None:
    """Print the messages on TOPIC (exact, /prefix/ or with * segments), one line each."""
    from v2x.comm.node import topic_matcher

    try:
        prefix, matches = topic_matcher(topic)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TOPIC") from exc
    g = _graph(run)
    seen = 0
    with _inspector(g, prefix) as insp:
        try:
            for t, msg, error in insp.messages(timeout or None):
                if msg is None:
                    click.echo(f"(malformed message: {error})")
                    continue
                if not matches(t):
                    continue
                click.echo(f"{t} {type(msg).TYPE_NAME} {_describe(msg, full)}")
                seen += 1
                if count and seen >= count:
                    break
        except KeyboardInterrupt:
            pass
    if not seen and timeout:
        click.echo(f"no message on {topic} within {timeout:g} s", err=True)
        sys.exit(1)


@node.command("run")
@click.argument("target", metavar="MODULE:CLASS")
@click.option("--name", required=True, help="The node's name.")
@click.option("--endpoint", default="", help="Where its inbox binds, e.g. tcp://0.0.0.0:5601.")
@click.option("--tap", default="", help="Where its inspection tap binds.")
@click.option(
    "--peer", "peers", multiple=True, metavar="NAME=ENDPOINT", help="A node it sends to (repeatable)."
)
@click.option(
    "--params",
    "params_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML parameters.",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a parameter (repeatable)."
)
@click.option("--clock", type=click.Choice(["wall", "sim"]), default="wall", show_default=True)
@click.option(
    "--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), help="CurveZMQ keys folder."
)
@click.option("--log-json", is_flag=True, help="Log JSON lines.")
def node_run(target, name, endpoint, tap, peers, params_file, overrides, clock, keys_dir, log_json) -> None:
    """Run one node in this process (e.g. on another host than the rest of a launch)."""
    from v2x.comm.node import NodeSpec, Peer, setup_logging
    from v2x.comm.params import ParamError, apply_overrides, load_params
    from v2x.comm.run import load_node_class

    try:
        params = load_params(params_file, name) if params_file else {}
        params = apply_overrides(params, overrides)
    except ParamError as exc:
        raise click.ClickException(str(exc)) from exc
    peer_list = []
    for p in peers:
        pname, sep, ep = p.partition("=")
        if not sep or not pname or not ep:
            raise click.BadParameter(f"{p!r}: expected NAME=ENDPOINT", param_hint="--peer")
        peer_list.append(Peer(pname, ep))
    try:
        cls = load_node_class(target)
    except (ImportError, ValueError) as exc:
        raise click.ClickException(f"cannot load {target!r}: {exc}") from exc
    spec = NodeSpec(
        name, endpoint, peer_list, params, clock, str(keys_dir) if keys_dir else None, log_json, tap=tap
    )
    setup_logging(name, log_json)
    if not keys_dir:
        click.echo(
            "WARNING: no --keys: plain links; any process that reaches the inbox can send to it", err=True
        )
    sys.exit(cls(spec).run())


@click.group("keys")
def keys() -> None:
    """CurveZMQ key pairs for authenticated node links."""


@keys.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Keys folder.")
@click.option("--agents", help="Comma-separated names (one key pair each).")
@click.option(
    "--launch",
    "launch_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A launch file: one key pair per node in it (its 'key', else its name).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing key pairs.")
def keys_generate(out: Path, agents: str | None, launch_file: Path | None, overwrite: bool) -> None:
    """One key pair per agent (plus 'operator' for the inspection commands) and allowed/."""
    from v2x.comm.launch import LaunchError, load_launch
    from v2x.comm.security import SecurityError, generate_keys

    names = [a.strip() for a in (agents or "").split(",") if a.strip()]
    if launch_file:
        try:
            spec = load_launch(launch_file, check_classes=False, keys_required=False)
        except LaunchError as exc:
            raise click.ClickException(str(exc)) from exc
        names += [n.key or n.name for n in spec.nodes]
    if not names:
        raise click.UsageError("give --agents a,b,c or --launch FILE")
    try:
        written = generate_keys(out, names, overwrite)
    except SecurityError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(written)} key pair(s) in {out}: {', '.join(written)}")
    click.echo(f"allow-list: {out / 'allowed'} (remove a file there to shut that node out)")
    click.echo("secret keys (*.key_secret) are readable by you only; copy each to its host alone")
