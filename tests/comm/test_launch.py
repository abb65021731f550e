"""Launch files and supervision with real processes: start, restart, stop, bad files, CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner
from comm_helpers import NodeEntry, summary, wait_for

from v2x.cli.main import cli
from v2x.comm.graph import pid_alive
from v2x.comm.launch import LaunchError, LaunchSpec, load_launch
from v2x.comm.node import Node
from v2x.comm.supervisor import Supervisor

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "comm" / "launch_files" / "demo.yaml"
ENV = {"PYTHONPATH": str(HERE)}  # node processes import the test nodes below from this module


class Crasher(Node):
    """Dies with an error as soon as it is active (a node with a bug)."""

    def on_activate(self):
        raise RuntimeError("a bug")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_launch_starts_all_nodes_and_stops_them_cleanly(supervise, run_dir):
    out = run_dir / "ego.json"
    sup = supervise(
        [
            NodeEntry("agent1", "v2x.comm.demo_nodes:Talker", {"size": 4000, "rate_hz": 20}),
            NodeEntry("agent2", "v2x.comm.demo_nodes:Talker", {"size": 100_000, "rate_hz": 20}),
            NodeEntry("ego", "v2x.comm.demo_nodes:Listener", {"summary": str(out)}),
        ],
        transport="ipc",
    )
    assert wait_for(lambda: len(sup.alive()) == 3)
    pids = [p.pid for p in sup.procs.values()]
    time.sleep(1.5)
    sup.stop()
    assert all(p.returncode == 0 for p in sup.procs.values())  # SIGTERM: every node exits cleanly
    assert not any(pid_alive(pid) for pid in pids)
    s = summary(out)
    assert {"agent1", "agent2"} <= set(s["senders"]) and s["corrupted"] == 0
    graph = json.loads((sup.run_dir / "graph.json").read_text())
    assert [n["status"] for n in graph["nodes"]] == ["stopped"] * 3
    assert all(n["endpoint"].startswith("ipc://") for n in graph["nodes"])


def test_a_killed_node_is_restarted_and_the_others_keep_running(supervise, run_dir):
    out = run_dir / "ego.json"
    sup = supervise(
        [
            NodeEntry(
                "agent1", "v2x.comm.demo_nodes:Talker", {"rate_hz": 20, "wait_subscribers": 1}, respawn=True
            ),
            NodeEntry("agent2", "v2x.comm.demo_nodes:Talker", {"rate_hz": 20}, respawn=True),
            NodeEntry("ego", "v2x.comm.demo_nodes:Listener", {"summary": str(out)}, respawn=True),
        ]
    )
    assert wait_for(lambda: len(sup.alive()) == 3)
    assert wait_for(lambda: "active" in sup.log_tail("agent1"), timeout=10)  # it has subscribers now
    time.sleep(0.3)
    victim = sup.procs["agent1"].pid
    others = {n: sup.procs[n].pid for n in ("agent2", "ego")}
    os.kill(victim, signal.SIGKILL)

    def restarted():
        sup.poll()
        return "agent1" in sup.procs and sup.procs["agent1"].pid != victim and len(sup.alive()) == 3

    assert wait_for(restarted, timeout=8)
    assert sup.restarts == {"agent1": 1, "agent2": 0, "ego": 0}
    assert {n: sup.procs[n].pid for n in others} == others  # the others never stopped
    assert sup.exits[0]["node"] == "agent1" and sup.exits[0]["why"] == "killed by SIGKILL"
    graph = json.loads((sup.run_dir / "graph.json").read_text())
    assert {n["name"]: n["restarts"] for n in graph["nodes"]} == {"agent1": 1, "agent2": 0, "ego": 0}
    time.sleep(1.5)  # the restarted agent reconnects to the ego by itself
    sup.stop()
    s = summary(out)
    frames_after = [seq for seq, who in zip(s["seen"], s["senders"], strict=True) if who == "agent1"]
    # agent1 counts from 0 again after its restart: the ego saw both lives, agent2 throughout
    assert frames_after.count(0) == 2 and "agent2" in s["senders"] and s["corrupted"] == 0
    assert s["diagnostics"]["topics"]["in:/agents/agent1/features"]["duplicates"] == 0


def test_a_crashing_node_is_given_up_on_and_a_misconfigured_one_not_restarted(supervise, run_dir):
    from v2x.comm.launch import RestartPolicy

    policy = RestartPolicy("on-failure", backoff_s=0.05, max_backoff_s=0.1, max_restarts=2, window_s=30)
    sup = supervise(
        [
            NodeEntry("buggy", "test_launch:Crasher", restart=policy, env=ENV),
            NodeEntry("typo", "v2x.comm.demo_nodes:Talker", {"rate_hz": "fast"}, restart="always"),
            NodeEntry("fine", "v2x.comm.demo_nodes:Listener"),
        ]
    )
    assert wait_for(
        lambda: ((sup.poll() or True) and sup.failed() == ["buggy", "typo"]) or False, timeout=10
    ), sup.failed()
    assert sup.restarts["buggy"] == 2 and sup.restarts["typo"] == 0
    assert "fine" in sup.alive()
    assert "a bug" in (sup.run_dir / "buggy.log").read_text()
    assert sup.nodes["typo"].last_exit == "configuration error (exit 78)"


def test_bad_launch_files_are_clear_errors(tmp_path):
    f = tmp_path / "l.yaml"
    cases = {
        "nodes:\n  - {name: a}\n": "nodes\\[0\\] \\(a\\) is missing 'node'",
        "nodes:\n  - {name: a, node: 'no.such.module:Thing'}\n": "cannot load 'no.such.module:Thing'",
        "nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Nope'}\n": "has no Nope",
        "nodes:\n  - {name: a, node: 'v2x.comm.node:NodeSpec'}\n": "not a v2x.comm.node.Node subclass",
        "nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker', peers: [b]}\n": "unknown peer 'b'",
        "nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker', colour: red}\n": "unknown key\\(s\\) \\['colour'\\]",
        "nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker'}\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker'}\n": "duplicate node name",
        "nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker', endpoint: 'tcp://nowhere'}\n": "expected tcp://HOST:PORT",
        "nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker', restart: sometimes}\n": "restart policy 'sometimes'",
        "transport: udp\nnodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker'}\n": "transport must be tcp or ipc",
        "keys: nokeys\nnodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker'}\n": "keys folder .*nokeys not found",
        "nodes: []\n": "'nodes' must be a non-empty list",
        "- just a list\n": "a launch file is a mapping",
        "nodes: [\n": "not valid YAML",
        "nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker', nice: 25}\n": "nice must be an integer from 0 to 19",
        "nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker', nice: high}\n": "nice must be an integer",
    }
    for text, message in cases.items():
        f.write_text(text)
        with pytest.raises(LaunchError, match=message) as err:
            load_launch(f)
        assert str(f) in str(err.value)
    f.write_text("nodes:\n  - {name: a, node: 'v2x.comm.demo_nodes:Talker'}\n")
    with pytest.raises(LaunchError, match=r"expected NODE\.PARAM=VALUE"):
        load_launch(f, ["b.rate_hz=3"])
    assert load_launch(f, ["a.rate_hz=3", "a.channel.loss=0.5"]).nodes[0].params == {
        "rate_hz": 3,
        "channel": {"loss": 0.5},
    }


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("V2X_RUN_DIR", str(tmp_path / "runs"))
    holder = zmq.Context.instance().socket(zmq.PULL)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    f = _write(
        tmp_path / "l.yaml",
        f"nodes:\n  - {{name: a, node: 'v2x.comm.demo_nodes:Talker', endpoint: 'tcp://127.0.0.1:{port}'}}\n",
    )
    try:
        with pytest.raises(
            LaunchError, match=f"tcp://127.0.0.1:{port} is not available: Address already in use"
        ):
            Supervisor(load_launch(f), tmp_path / "r")
        r = CliRunner().invoke(cli, ["launch", str(f), "--duration", "1"])
        assert r.exit_code != 0 and "not available" in r.output
    finally:
        holder.close(0)


def test_v2x_launch_runs_the_demo_and_stops_everything_on_sigint(tmp_path):
    """The real command in its own process: Ctrl-C stops every node and leaves none behind."""
    env = os.environ | {"V2X_RUN_DIR": str(tmp_path / "runs")}
    p = subprocess.Popen(
        [sys.executable, "-m", "v2x.cli.main", "launch", str(DEMO), "--set", "agent2.size=20000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    graph_file = tmp_path / "runs" / "latest" / "graph.json"
    try:

        def all_up():
            if not graph_file.is_file():
                return False
            g = json.loads(graph_file.read_text())
            return len(g["nodes"]) == 3 and all(pid_alive(n["pid"]) for n in g["nodes"])

        assert wait_for(all_up, timeout=10)
        pids = [n["pid"] for n in json.loads(graph_file.read_text())["nodes"]]
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out = p.communicate(timeout=10)[0].decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out
    assert wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=3)
    assert "SIGINT: stopping 3 node(s)" in out
    assert [n["status"] for n in json.loads(graph_file.read_text())["nodes"]] == ["stopped"] * 3


def test_nodes_die_with_a_killed_supervisor(tmp_path):
    """Even a supervisor killed with SIGKILL (no chance to stop anything) leaves no node behind."""
    env = os.environ | {"V2X_RUN_DIR": str(tmp_path / "runs")}
    p = subprocess.Popen(
        [sys.executable, "-m", "v2x.cli.main", "launch", str(DEMO)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    graph_file = tmp_path / "runs" / "latest" / "graph.json"
    try:
        assert wait_for(
            lambda: (
                graph_file.is_file() and all(n["pid"] for n in json.loads(graph_file.read_text())["nodes"])
            ),
            timeout=10,
        )
        pids = [n["pid"] for n in json.loads(graph_file.read_text())["nodes"]]
        assert len(pids) == 3 and wait_for(lambda: all(pid_alive(pid) for pid in pids), timeout=5)
    finally:
        p.kill()
        p.wait()
    assert wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=5)


def test_node_list_info_and_echo_against_a_running_launch(supervise, run_dir):
    sup = supervise(
        [
            NodeEntry("agent1", "v2x.comm.demo_nodes:Talker", {"size": 3000, "rate_hz": 20}),
            NodeEntry("ego", "v2x.comm.demo_nodes:Listener"),
        ],
        name="inspect",
    )
    assert wait_for(lambda: len(sup.alive()) == 2)
    runner = CliRunner()
    run = str(sup.run_dir)
    r = runner.invoke(cli, ["node", "list", "--run", run, "--json"])
    assert r.exit_code == 0, r.output
    rows = {n["name"]: n for n in json.loads(r.output)["nodes"]}
    assert rows["agent1"]["alive"] and rows["agent1"]["state"] == "active"
    assert "/agents/agent1/features" in rows["agent1"]["publishes"]
    assert rows["ego"]["subscribes"] == {"/agents/*/features": "Packet"}
    r = runner.invoke(
        cli, ["node", "echo", "/agents/*/features", "--run", run, "--count", "3", "--timeout", "10"]
    )
    assert r.exit_code == 0 and r.output.count("/agents/agent1/features Packet") == 3, r.output
    assert '"payload": "uint8[3000]"' in r.output
    time.sleep(1.2)  # one diagnostics period
    r = runner.invoke(cli, ["node", "info", "ego", "--run", run, "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["heartbeat"]["node"] == "ego"
    topic = info["diagnostics"]["topics"]["in:/agents/agent1/features"]
    assert topic["messages"] > 10 and 10 < topic["rate_hz"] < 30 and topic["malformed"] == 0
    r = runner.invoke(cli, ["node", "info", "nobody", "--run", run])
    assert r.exit_code != 0 and "no node 'nobody'" in r.output
    r = runner.invoke(cli, ["node", "list", "--run", str(run_dir / "nothing-here")])
    assert r.exit_code != 0 and "no running system found" in r.output


def test_launch_spec_defaults_wire_every_node_to_every_other(run_dir):
    spec = LaunchSpec(
        "w",
        [
            NodeEntry("a", "v2x.comm.demo_nodes:Talker"),
            NodeEntry("b", "v2x.comm.demo_nodes:Talker", peers=["a"]),
            NodeEntry("c", "v2x.comm.demo_nodes:Listener", peers=["b"]),
        ],
    )
    sup = Supervisor(spec, run_dir / "w")
    # peers name whom a node receives from: a is heard by b (explicitly) and c (not: only b)
    assert [p.name for p in sup.node_spec(spec.node("a")).peers] == ["b"]
    assert [p.name for p in sup.node_spec(spec.node("b")).peers] == ["a", "c"]
    assert [p.name for p in sup.node_spec(spec.node("c")).peers] == ["a"]
    assert sup.node_spec(spec.node("c")).allow == ["b"] and sup.node_spec(spec.node("a")).allow is None


def test_a_niced_node_yields_the_cpu_in_its_process_and_its_session_group(supervise, run_dir):
    """Each node runs in a session of its own; where the kernel shares CPU time between session
    groups (autogroup), the group's nice value is what ranks it against the other nodes."""
    from v2x.comm.priority import autogroup_enabled, priority_of

    sup = supervise(
        [
            NodeEntry("low", "v2x.comm.demo_nodes:Talker", {"size": 100, "rate_hz": 5}, nice=7),
            NodeEntry("normal", "v2x.comm.demo_nodes:Listener", {}),
        ],
        transport="ipc",
    )
    assert wait_for(lambda: len(sup.alive()) == 2)
    low, normal = (priority_of(sup.procs[n].pid) for n in ("low", "normal"))
    assert low["process"] == 7 and normal["process"] == 0
    if autogroup_enabled():
        assert low["autogroup"] == 7 and normal["autogroup"] == 0
