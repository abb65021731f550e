"""What a dead or stuck agent node costs a ``v2x replay`` (simulated clock).

Runs the same short replay three ways through the node processes and times each from the moment
of the fault to the end of the run:

* ``none``: no fault, the reference;
* ``kill``: ``kill -9`` of agent node ``agent0`` once the ego has finished frame ``FAULT_AT``
  (the supervisor restarts it, as a replay does);
* ``stop``: ``SIGSTOP`` of ``agent0`` at the same moment, ``SIGCONT`` once the ego has finished
  ``--stop-frames`` more frames (or after ``--stop-max-s``).

Reported per run: wall seconds (``results.json``'s, start-up included) and from the fault to the
end, how much the latter exceeds the reference's, frames fused, the collaborators fused per frame,
the absences counted per agent, restarts. The issue's target: ``kill`` adds at most 2 s.

Run: ``python -m bench.bench_replay_faults`` (``--frames``, ``--method``, ``--faults kill,stop``,
``--repeat N``: N interleaved rounds, medians reported, each fault against its round's reference);
writes ``bench/results/replay_faults.json``. Needs ``data/demo`` (``v2x sim generate --preset demo
--out data/demo``). Timings depend on the machine and its load: measurements, not a figure to
assert in a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.common import write_result

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "demo"
FAULT_AT = 2  # the fault comes once the ego has finished this frame
VICTIM = "agent0"


def _progress(out: Path) -> int:
    """The last frame the ego finished (-1: none yet)."""
    with contextlib.suppress(OSError, json.JSONDecodeError, KeyError):
        return int(json.loads((out / "progress.json").read_text())["k"])
    return -1


def _pid(out: Path, node: str) -> int | None:
    with contextlib.suppress(OSError, json.JSONDecodeError):
        graph = json.loads((out / "nodes" / "graph.json").read_text())
        return next((n["pid"] for n in graph["nodes"] if n["name"] == node), None)
    return None


def run_one(fault: str, args: argparse.Namespace, work: Path) -> dict:
    """One replay with ``fault`` applied to agent0; its timings and counts."""
    out = work / fault
    cmd = [sys.executable, "-m", "v2x.cli.main", "replay", str(args.data), "--out", str(out)]
    cmd += ["--frames", str(args.frames), "--method", args.method, "--agents", str(args.agents), "--json"]
    if args.launch:
        cmd += ["--launch", str(args.launch)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_fault = t_resume = None
    stopped_pid = None
    try:
        while proc.poll() is None:
            k = _progress(out)
            if t_fault is None and k >= FAULT_AT:
                t_fault = time.monotonic()
                pid = _pid(out, VICTIM)
                if fault == "kill" and pid:
                    os.kill(pid, signal.SIGKILL)
                elif fault == "stop" and pid:
                    os.kill(pid, signal.SIGSTOP)
                    stopped_pid = pid
            if (
                stopped_pid is not None
                and t_resume is None
                and (k >= FAULT_AT + args.stop_frames or time.monotonic() - t_fault > args.stop_max_s)
            ):
                os.kill(stopped_pid, signal.SIGCONT)
                t_resume = time.monotonic()
            if time.monotonic() - t0 > args.timeout_s:
                proc.send_signal(signal.SIGINT)
                proc.wait(60)
                break
            time.sleep(0.02)
    finally:
        if stopped_pid is not None and t_resume is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped_pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t_end = time.monotonic()
    results = json.loads((out / "results.json").read_text())
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines() if x.strip()]
    return {
        "fault": fault,
        "exit_code": proc.returncode,
        "wall_s": results.get("wall_s"),
        "fault_to_end_s": None if t_fault is None else round(t_end - t_fault, 2),
        "stopped_s": None if t_resume is None else round(t_resume - t_fault, 2),
        "frames": results.get("frames"),
        "partial": results.get("partial"),
        "fused_per_frame": [len(r["fused"]) for r in lines],
        "messages": results.get("messages"),
        "missing_agent_frames": results.get("missing_agent_frames"),
        "agent_absences": results.get("agent_absences"),
        "absence_reasons": results.get("absence_reasons"),
        "restarts": results.get("nodes", {}).get("restarts"),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--method", default="codefilling")
    p.add_argument("--faults", default="none,kill,stop")
    p.add_argument("--stop-frames", type=int, default=3)
    p.add_argument("--stop-max-s", type=float, default=60.0)
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--name", default="replay_faults")
    p.add_argument("--keep", type=Path, help="keep each run's output (node logs) under this folder")
    p.add_argument("--launch", type=Path, help="a launch YAML for every run (e.g. agent0 restart: never)")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds of every fault, interleaved (a noisy machine)"
    )
    args = p.parse_args(argv if argv is not None else [])
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no log (v2x sim generate --preset demo --out data/demo)")
    runs = []
    faults = args.faults.split(",")
    with tempfile.TemporaryDirectory(prefix="v2x-faults-") as tmp:
        for rnd in range(args.repeat):
            this_round = []
            for fault in faults:
                load = os.getloadavg()[0]
                run = run_one(fault, args, (args.keep or Path(tmp)) / f"round{rnd}")
                run |= {"round": rnd, "load_before": round(load, 2)}
                this_round.append(run)
            ref = next((r for r in this_round if r["fault"] == "none"), None)
            for r in this_round:  # against the same round's run without a fault
                if ref is not None and r["fault_to_end_s"] is not None and ref["fault_to_end_s"] is not None:
                    r["added_s"] = round(r["fault_to_end_s"] - ref["fault_to_end_s"], 2)
                print(json.dumps(r), flush=True)
            runs.extend(this_round)
    summary = {}
    for fault in faults:
        mine = [r for r in runs if r["fault"] == fault]
        summary[fault] = {
            key: statistics.median(vals)
            if (vals := [r[key] for r in mine if r.get(key) is not None])
            else None
            for key in ("wall_s", "fault_to_end_s", "added_s", "stopped_s")
        }
    print(json.dumps({"median": summary}), flush=True)
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: str(v) for k, v in vars(args).items()} | {"fault_at_frame": FAULT_AT},
        "median": summary,
        "runs": runs,
    }
    write_result(args.name, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
