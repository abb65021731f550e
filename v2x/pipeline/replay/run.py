"""Starting, watching and ending a replay (what ``v2x replay`` does), and its in-process twin.

:func:`run_replay` writes the launch (``OUT/nodes/launch.yaml``: player, channel, one agent node
per collaborator slot, ego, optionally the recorder), starts every node as its own process under
the :class:`~v2x.comm.supervisor.Supervisor`, and runs a :class:`~v2x.pipeline.replay.monitor.Monitor`
node itself. It ends when the ego has written ``results.json``; when a node the run cannot do
without dies, or on Ctrl-C, it asks the ego to write what it has (``"partial": true`` and the
reason) and stops everything. An agent node that dies is restarted by its policy; meanwhile the
ego goes on with fewer agents.

Every link runs CurveZMQ: with ``ReplayOptions.keys``, or with keys the supervisor makes for
the run in ``OUT/nodes/keys`` (0700); plain links only with ``insecure`` (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from v2x.pipeline.config import RunConfig
from v2x.pipeline.frames import FrameSelection, select_frames
from v2x.pipeline.replay.results import (
    DETECTIONS,
    RESULTS,
    detection_record,
    sent_cells_to_json,
    write_detection,
    write_results,
)
from v2x.pipeline.replay.slots import SlotMap, count_slots

__all__ = [
    "ESSENTIAL",
    "REALTIME_AGENT_NICE",
    "REALTIME_DEADLINE_MS",
    "REALTIME_LATE_POLICY",
    "ReplayOptions",
    "build_launch",
    "realtime_timing",
    "run_in_process",
    "run_replay",
]

#: nodes the run cannot go on without
ESSENTIAL = ("player", "channel", "ego")
#: the collaborators' nodes' nice value in real time (see ReplayOptions.agent_nice_value); at 19
#: their session groups weigh 15 against the ego's 1024, so the ego keeps a core to itself
REALTIME_AGENT_NICE = 19
#: ``v2x replay --realtime``'s defaults: fuse 40 ms after capture, in practice as soon as the
#: ego's own perception is done (about 42 ms on 2 cores), with what has arrived by then, and
#: fuse later messages into the next frame, motion-compensated. Waiting for this frame's
#: messages (about 55 ms after capture on 2 cores with 4 agents) and then fusing left no room
#: for the 100 ms target; the simulated clock keeps RunConfig's 100 ms and drop.
REALTIME_DEADLINE_MS = 40.0
REALTIME_LATE_POLICY = "compensate"


def realtime_timing(deadline_ms: float | None, late_policy: str | None) -> tuple[float, str]:
    """``--realtime``'s deadline and late policy where they were not given."""
    return (
        REALTIME_DEADLINE_MS if deadline_ms is None else deadline_ms,
        late_policy or REALTIME_LATE_POLICY,
    )


Progress = Callable[[dict], None]


@dataclass
class ReplayOptions:
    data: Path
    cfg: RunConfig
    out: Path
    realtime: bool = False
    record: Path | None = None
    launch: Path | None = None
    scenes: list[str] | None = None
    threads: int = 1
    wait_s: float = 120.0  # longest wait for a live peer (wall clock): the last safety net
    dead_after_s: float = 5.0  # an agent node silent this long misses the round (hung)
    #: an agent that has not done its part of a round this long after the ego's demand misses it
    round_s: float = 10.0
    start_s: float = 300.0  # longest wait for the nodes to come up
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)
    #: CPU priority the collaborators' nodes give up (0..19; None: REALTIME_AGENT_NICE in real
    #: time, 0 on the simulated clock), see :attr:`agent_nice_value`
    agent_nice: int | None = None
    #: CurveZMQ keys folder (one pair per node); None: fresh keys for this run in OUT/nodes/keys
    keys: Path | None = None
    #: plain links and no keys (``--insecure``): any local process could send to the nodes
    insecure: bool = False

    @property
    def agent_nice_value(self) -> int:
        """On one machine every node shares its cores; on the road each collaborator computes on
        its own vehicle. In real time the collaborators' nodes therefore yield the CPU to the
        ego's (whose output is the one timed), as their own hardware would not have slowed it;
        on the simulated clock nothing waits on the wall clock and all run alike."""
        if self.agent_nice is not None:
            return self.agent_nice
        return REALTIME_AGENT_NICE if self.realtime else 0


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_launch(opts: ReplayOptions, slots: int, first_ids: dict[int, str], monitor_endpoint: str) -> dict:
    """The replay's launch file as a dict; ``opts.launch`` (a launch YAML) is merged on top:
    its top-level keys win, its nodes are merged by name (``params`` and ``env`` key by key),
    and nodes with new names are added."""
    cfg = opts.cfg
    run = cfg.to_dict()
    common = {"run": run, "realtime": opts.realtime, "wait_s": opts.wait_s}
    agents = [f"agent{i}" for i in range(slots)]
    env = {"OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    channel = {
        "preset": "ideal",
        "channel": cfg.channel.to_dict(),
        "seed": cfg.seed,
        "budget": cfg.budget_bps,
        "frame_hz": cfg.frame_hz,
        "slot_nodes": agents,  # who may send as the agent a slot plays (docs/security.md)
    }
    if cfg.trace:
        channel["trace"] = cfg.trace
    nodes: list[dict] = [
        {
            "name": "player",
            "node": "v2x.pipeline.replay.player:PlayerNode",
            "params": common
            | {
                "data": str(opts.data),
                "scenes": opts.scenes,
                "slots": slots,
                "min_points": int(opts.extra.get("min_points", 1)),
                "required": ["ego", "channel"] + (["recorder"] if opts.record else []),
                "optional": agents,
                "start_s": opts.start_s,
                "recorder": bool(opts.record),
            },
            "restart": "never",
        },
        {
            "name": "channel",
            "node": "v2x.pipeline.replay.channel:ReplayChannelNode",
            "params": channel,
            "clock": "wall" if opts.realtime else "sim",
            "restart": "never",
        },
    ]
    for i, name in enumerate(agents):
        nodes.append(
            {
                "name": name,
                "node": "v2x.pipeline.replay.agent_node:AgentNode",
                "params": common
                | {"slot": i, "agent_ids": [first_ids[i]] if i in first_ids else [], "threads": opts.threads},
                "restart": {"policy": "on-failure", "max_restarts": 3, "backoff_s": 0.5},
                "env": env,
                "nice": opts.agent_nice_value,
            }
        )
    nodes.append(
        {
            "name": "ego",
            "node": "v2x.pipeline.replay.ego_node:EgoNode",
            "params": common
            | {
                "slots": slots,
                "agent_nodes": agents,
                "out": str(opts.out),
                "data": str(opts.data),
                "dead_after_s": opts.dead_after_s,
                "round_s": opts.round_s,
                "threads": opts.threads,
            },
            "restart": "never",
            "env": env,
        }
    )
    if opts.record:
        nodes.append(
            {
                "name": "recorder",
                "node": "v2x.pipeline.replay.recorder:RecorderNode",
                "params": common | {"path": str(opts.record), "slots": slots},
                "restart": "never",
            }
        )
    nodes.append(
        {"name": "monitor", "node": "v2x.pipeline.replay.monitor:Monitor", "endpoint": monitor_endpoint}
    )
    spec: dict[str, Any] = {
        "name": "replay",
        "transport": "tcp",
        "log_level": opts.log_level,
        "stop_timeout_s": 10,
        # the player drives the frames: a message for a frame far ahead of its newest is
        # refused, and what the nodes hold for frames ahead is bounded (v2x.comm.limits)
        "params": {"frame_source": "player"},
        "nodes": nodes,
    }
    if opts.keys:
        spec["keys"] = str(Path(opts.keys).resolve())
    if opts.launch:
        spec = merge_launch(spec, opts.launch)
    return spec


def merge_launch(spec: dict, path: Path) -> dict:
    from v2x.comm.launch import LaunchError

    try:
        user = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchError(f"{path}: cannot read launch file: {exc}") from exc
    if not isinstance(user, dict):
        raise LaunchError(f"{path}: a launch file is a mapping")
    out = {k: v for k, v in spec.items() if k != "nodes"} | {k: v for k, v in user.items() if k != "nodes"}
    nodes = {n["name"]: dict(n) for n in spec["nodes"]}
    order = [n["name"] for n in spec["nodes"]]
    for i, n in enumerate(user.get("nodes") or []):
        if not isinstance(n, dict) or not n.get("name"):
            raise LaunchError(f"{path}: nodes[{i}] needs a name")
        name = n["name"]
        if name in nodes:
            nodes[name] = _deep_merge(nodes[name], n)
        else:
            nodes[name] = dict(n)
            order.append(name)
    out["nodes"] = [nodes[name] for name in order]
    return out


# -- the multi-process run ----------------------------------------------------------------------------
def _plan(opts: ReplayOptions):
    """Open the log (DatasetError for a folder of unknown format), frames, slots, frame 0's ids."""
    from v2x.datasets import open_log

    log = open_log(opts.data, max_cav=opts.cfg.max_agents)
    idx = select_frames(log, FrameSelection.of_run(opts.cfg, opts.scenes))
    if not idx:
        raise ValueError(f"{opts.data}: no frames to replay")
    slots = count_slots(log, opts.cfg.max_agents)
    first = log[idx[0]]
    ids = [s.agent_id for s in first.collaborators[: max(0, opts.cfg.max_agents - 1)]]
    first_ids = {s: a for a, s in SlotMap(slots).assign(ids).items()}
    return log, idx, slots, first_ids


def _min_points(cfg: RunConfig) -> int:
    """The detector's ``min_points_per_box`` from its checkpoint (ground truth needs it)."""
    import torch

    from v2x.perception.detector import resolve_weights

    path = resolve_weights(cfg.weights)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return int(ckpt["config"].get("min_points_per_box", 1))


class _Stop:
    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        self.reason = f"interrupted ({signal.Signals(signum).name})"


def run_replay(opts: ReplayOptions, progress: Progress | None = None) -> dict:
    """Run the replay as processes; returns the results (also in ``OUT/results.json``)."""
    from v2x.comm.launch import load_launch
    from v2x.comm.supervisor import Supervisor
    from v2x.comm.transport import free_tcp_port
    from v2x.pipeline.replay.monitor import Monitor
    from v2x.pipeline.stages import for_log_format

    t0 = time.perf_counter()
    _log, idx, slots, first_ids = _plan(opts)
    opts.cfg = for_log_format(opts.cfg, getattr(_log, "format", None))  # the nodes load these weights
    opts.extra.setdefault("min_points", _min_points(opts.cfg))
    opts.out.mkdir(parents=True, exist_ok=True)
    for stale in (RESULTS, DETECTIONS, "progress.json"):
        (opts.out / stale).unlink(missing_ok=True)
    run_dir = opts.out / "nodes"
    run_dir.mkdir(parents=True, exist_ok=True)
    for old_log in run_dir.glob("*.log"):  # the supervisor appends; a new run starts clean
        old_log.unlink()
    spec_dict = build_launch(opts, slots, first_ids, f"tcp://127.0.0.1:{free_tcp_port('127.0.0.1')}")
    launch_file = run_dir / "launch.yaml"
    launch_file.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = load_launch(launch_file, insecure=opts.insecure)  # no keys: the supervisor makes them
    names = [n.name for n in spec.nodes]
    local = [n for n in names if n != "monitor"]
    sup = Supervisor(spec, run_dir, only=local)
    monitor = Monitor(sup.node_spec(spec.node("monitor")))
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    reason: str | None = None
    seen_exits = 0
    lost: list[str] = []
    stopped: set[str] = set()
    try:
        monitor.configure()
        monitor.activate()
        sup.start()
        last = None
        while True:
            sup.poll()
            for ex in sup.exits[seen_exits:]:
                name = ex["node"]
                if name.startswith("agent") and ex["code"] != 0:
                    # an agent node exits 0 only when told to (the player's end, or a stop):
                    # at the end of a run they may go before the ego has written its results
                    lost.append(name)
                    monitor.report_dead([name])
                elif name in ESSENTIAL and ex["code"] != 0 and monitor.finished is None:
                    reason = f"{name} node died ({ex['why']})"
            seen_exits = len(sup.exits)
            now_stopped = _stopped_agents(sup)
            if now_stopped - stopped:
                monitor.report_stopped(sorted(now_stopped - stopped))
            stopped = now_stopped
            if reason or stop.reason:
                break
            monitor.spin_once(0.05)
            if progress is not None and monitor.progress is not None and monitor.progress is not last:
                last = monitor.progress
                progress(last)
            if monitor.finished is not None and (
                not opts.record or monitor.recording_closed or _gone(sup, "recorder")
            ):
                break
            if _gone(sup, "ego"):
                if monitor.finished is None:
                    reason = "ego node stopped before the end"
                break
    finally:
        reason = reason or stop.reason
        _wind_down(sup, reason)
        with contextlib.suppress(Exception):
            monitor.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
    return _final_results(opts, sup, reason, lost, slots, len(idx), time.perf_counter() - t0)


def _stopped_agents(sup) -> set[str]:
    """Agent nodes whose process is stopped (SIGSTOP, a debugger): the kernel's word, read at
    once, where a silent heartbeat would take ``dead_after_s`` to tell (Linux; elsewhere none)."""
    out = set()
    for name, np_ in sup.nodes.items():
        if not name.startswith("agent") or np_.proc is None:
            continue
        try:
            stat = Path(f"/proc/{np_.proc.pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in ("T", "t"):
            out.add(name)
    return out


def _gone(sup, name: str) -> bool:
    np_ = sup.nodes.get(name)
    return np_ is None or (np_.proc is None and np_.status != "backoff")


def _wind_down(sup, reason: str | None) -> None:
    """The ego and the recorder first (SIGTERM: they write what they have), then the rest. At a
    normal end they and the player stop by themselves: a moment for that, so no signal lands
    in the middle of their shutdown."""
    if not reason:
        end = time.monotonic() + 15
        for name in ("ego", "recorder", "player"):
            np_ = sup.nodes.get(name)
            if np_ is not None and np_.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    np_.proc.wait(max(0.1, end - time.monotonic()))
    else:
        for name in ("ego", "recorder"):
            np_ = sup.nodes.get(name)
            if np_ is not None and np_.proc is not None and np_.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    np_.proc.send_signal(signal.SIGTERM)
        for name in ("ego", "recorder"):
            np_ = sup.nodes.get(name)
            if np_ is not None and np_.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    np_.proc.wait(30)
    sup.stop()


def _final_results(opts, sup, reason, lost, slots, n_frames, wall_s) -> dict:
    path = opts.out / RESULTS
    results: dict = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            results = json.loads(path.read_text())
    if not results:  # the ego never wrote: what its last progress report said
        prog = opts.out / "progress.json"
        with contextlib.suppress(OSError, json.JSONDecodeError):
            results = {"progress": json.loads(prog.read_text())}
        results.setdefault("frames", results.get("progress", {}).get("frames", 0))
        results["partial"] = True
    if reason:
        results["partial"] = True
        results["reason"] = reason
    results.setdefault("method", opts.cfg.method)
    results.setdefault("data", str(opts.data))
    results["frames_requested"] = n_frames
    results["slots"] = slots
    results["wall_s"] = round(wall_s, 2)
    results["nodes"] = {
        "restarts": {k: v for k, v in sup.restarts.items() if v},
        "lost": sorted(set(lost)),
        "exits": sup.exits,
        "logs": str(sup.run_dir),
        "keys": sup.spec.keys,  # None only with --insecure
        "agent_nice": opts.agent_nice_value,
    }
    if opts.record:
        results["recording"] = str(opts.record)
    write_results(opts.out, results)
    return json.loads(path.read_text())


# -- the same run in one process --------------------------------------------------------------------
def run_in_process(opts: ReplayOptions, progress: Progress | None = None) -> dict:
    """``run_frames`` on the same log and settings, with the replay's outputs."""
    import torch

    from v2x.datasets import open_log
    from v2x.pipeline.clock import run_frames
    from v2x.pipeline.stages import Models, for_log_format

    t0 = time.perf_counter()
    torch.set_num_threads(opts.threads)  # as the nodes run: same arithmetic, same boxes
    log = open_log(opts.data, max_cav=opts.cfg.max_agents)
    idx = select_frames(log, FrameSelection.of_run(opts.cfg, opts.scenes))
    opts.out.mkdir(parents=True, exist_ok=True)
    opts.cfg = for_log_format(opts.cfg, getattr(log, "format", None))
    models = Models.load(opts.cfg)
    bytes_seen: list[float] = []

    def tick(k: int, info: dict) -> None:
        bytes_seen.append(info["bytes"])
        if progress is not None:
            mean = sum(bytes_seen) / len(bytes_seen)
            progress({"k": k, "frames": k + 1, "total": len(idx), "bytes_per_agent_frame": mean})

    out = run_frames(log, opts.cfg, models, tick, indices=idx)
    dets = out.pop("_detections")
    with open(opts.out / DETECTIONS, "w") as fh:
        for k, d in enumerate(dets):
            rec = detection_record(
                k,
                d["scenario"],
                d["index"],
                d["boxes"],
                d["tracks"],
                log_index=idx[k],
                sent_cells=sent_cells_to_json(d["sent_cells"], models.codec.grid),
            )
            write_detection(fh, rec)
    if opts.record:
        from v2x.pipeline.replay.recorder import record_frames

        min_points = models.perception.cfg.min_points_per_box
        record_frames(opts.record, (log[i] for i in idx), dets, min_points)
        out["recording"] = str(opts.record)
    out.update(
        {
            "data": str(opts.data),
            "clock": "in-process",
            "partial": False,
            "reason": None,
            "frames_requested": len(idx),
            "wall_s": round(time.perf_counter() - t0, 2),
        }
    )
    write_results(opts.out, out)
    return json.loads((opts.out / RESULTS).read_text())
