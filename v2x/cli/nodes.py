"""``v2x launch``, ``v2x node list|info|echo`` and ``v2x keys generate``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command("launch")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--set", "overrides", multiple=True, help="Override a parameter: NODE.PARAM=VALUE (repeatable)."
)
@click.option("--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
def launch(file, overrides, duration) -> None:
    """Start every node of a launch file as its own process and supervise them."""
    import logging

    from v2x.comm.launch import LaunchError, Supervisor, load_launch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = load_launch(file, list(overrides))
        sup = Supervisor(spec)
    except LaunchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"launching {len(spec.nodes)} node(s) from {file}; run folder {sup.run_dir}")
    sup.run(duration)
    for e in sup.exits:
        click.echo(f"node {e['node']} exited with code {e['code']}")


def _graph(path: Path | None) -> dict:
    from v2x.comm.launch import runs_root

    path = path or runs_root() / "latest" / "graph.json"
    if path.is_dir():
        path = path / "graph.json"
    if not path.is_file():
        raise click.ClickException(f"no running system found ({path}); start one with `v2x launch`")
    return json.loads(path.read_text())


@click.group("node")
def node() -> None:
    """Inspect a running system (like ros2 node / topic)."""


@node.command("list")
@click.option(
    "--graph",
    "graph_path",
    type=click.Path(path_type=Path),
    help="graph.json of a run (default: the latest).",
)
def node_list(graph_path) -> None:
    """Nodes, their endpoints and whether their processes are alive."""
    import os

    g = _graph(graph_path)
    for n in g["nodes"]:
        alive = False
        if n.get("pid"):
            try:
                os.kill(n["pid"], 0)
                alive = True
            except OSError:
                alive = False
        click.echo(
            f"{n['name']:<20} {'alive' if alive else 'dead':<6} pid {n.get('pid')!s:<8} {n['endpoint']}  restarts {n['restarts']}"
        )


def _subscriber(g: dict, keys_as: str | None, topic: str):
    import zmq

    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    if g.get("keys"):
        import zmq.auth

        if not keys_as:
            raise click.ClickException(
                "this system uses CurveZMQ: pass --as NAME (a key pair in its keys folder)"
            )
        pub, sec = zmq.auth.load_certificate(Path(g["keys"]) / f"{keys_as}.key_secret")
        sub.curve_publickey, sub.curve_secretkey = pub, sec
    for n in g["nodes"]:
        if g.get("keys"):
            import zmq.auth

            sub.curve_serverkey = zmq.auth.load_certificate(Path(g["keys"]) / f"{n['name']}.key")[0]
        sub.connect(n["endpoint"])
    sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    return sub


@node.command("info")
@click.argument("name")
@click.option("--graph", "graph_path", type=click.Path(path_type=Path))
@click.option("--as", "keys_as", help="Key pair to connect with when the system uses CurveZMQ.")
@click.option("--timeout", type=float, default=3.0, show_default=True)
def node_info(name, graph_path, keys_as, timeout) -> None:
    """A node's heartbeat and latest diagnostics (topics, rates, bytes, drops, latency)."""
    from v2x.comm.messages import MessageError, decode_frames

    g = _graph(graph_path)
    sub = _subscriber(g, keys_as, "/")
    found: dict[str, object] = {}
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(found) < 2:
        if sub.poll(200):
            try:
                topic, msg = decode_frames(sub.recv_multipart())
            except MessageError:
                continue
            if topic in ("/heartbeat", "/diagnostics") and getattr(msg, "node", None) == name:
                found[topic] = msg.meta()
    if not found:
        raise click.ClickException(f"no heartbeat from {name!r} within {timeout} s")
    click.echo(json.dumps(found, indent=2, default=str))


@node.command("echo")
@click.argument("topic")
@click.option("--graph", "graph_path", type=click.Path(path_type=Path))
@click.option("--as", "keys_as", help="Key pair to connect with when the system uses CurveZMQ.")
@click.option("--count", type=int, default=0, help="Stop after this many messages.")
@click.option("--timeout", type=float, default=0.0, help="Stop after this many seconds.")
def node_echo(topic, graph_path, keys_as, count, timeout) -> None:
    """Print the messages on a topic (prefix), one line each."""
    from v2x.comm.messages import MessageError, decode_frames

    g = _graph(graph_path)
    sub = _subscriber(g, keys_as, topic)
    seen = 0
    end = time.monotonic() + timeout if timeout else None
    while (not count or seen < count) and (end is None or time.monotonic() < end):
        if not sub.poll(200):
            continue
        try:
            t, msg = decode_frames(sub.recv_multipart())
        except MessageError as exc:
            click.echo(f"(malformed message: {exc})")
            continue
        meta = {k: v for k, v in msg.meta().items() if k not in ("topics",)}
        arrays = {a: list(getattr(msg, a).shape) for a in msg.ARRAYS}
        click.echo(
            f"{t} {type(msg).__name__} {json.dumps(meta, default=str)} {json.dumps(arrays) if arrays else ''}"
        )
        seen += 1


@click.group("keys")
def keys() -> None:
    """CurveZMQ key pairs."""


@keys.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--agents", help="Comma-separated names (one key pair each).")
@click.option(
    "--launch",
    "launch_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A launch file: one key pair per node in it.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing key pairs.")
def keys_generate(out, agents, launch_file, overwrite) -> None:
    """One key pair per agent (or per node of a launch file), plus the allow-list folder."""
    import yaml

    from v2x.comm.security import generate_keys

    names = [a.strip() for a in (agents or "").split(",") if a.strip()]
    if launch_file:
        raw = yaml.safe_load(launch_file.read_text()) or {}
        names += [n["name"] for n in raw.get("nodes", []) if isinstance(n, dict) and "name" in n]
    if not names:
        raise click.UsageError("give --agents a,b,c or --launch FILE")
    written = generate_keys(out, sorted(set(names)), overwrite)
    click.echo(f"{len(written)} key pair(s) in {out} (allow-list: {out / 'allowed'})")
