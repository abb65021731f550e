"""Sweep throughput: cells per hour of a small grid with the local process pool (1 and 2 workers)
and with Ray on 2 local workers (when Ray is installed).

The grid is 4 methods (none, late, raw, where2comm) x 2 budgets on a freshly simulated scene
(3 CAVs + 1 RSU, 64-channel LiDAR), a few frames per cell, so the figures include what every
cell pays once: a worker's start (torch import), the detector load and the log opening. Each
executor starts from an empty output folder; a rerun of the finished sweep (all cells resumed,
nothing computed) is timed too. Cells per hour depend on frames per cell: to plan a sweep, a
cell costs about ``cell_overhead_s_median + frames * frame_s_mean`` of one worker (the
detector load and log opening, then the frames), plus each worker's start once.

Writes bench/results/sweep.json. Run: ``python -m bench.bench_sweep [--frames N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from bench.common import write_result
from v2x.cli.main import cli
from v2x.experiments.sweep import SweepConfig, expand_cells, run_sweep

HERE = Path(__file__).resolve().parent
METHODS = ["none", "late", "raw", "where2comm"]
BUDGETS = ["100kbps", "10Mbps"]


def make_log(root: Path, frames: int) -> Path:
    args = ["sim", "generate", "--out", str(root), "--scenes", "1", "--frames", str(frames)]
    res = CliRunner().invoke(cli, [*args, "--cavs", "3", "--rsus", "1", "--seed", "7", "--quiet"])
    if res.exit_code != 0:
        raise RuntimeError(res.output)
    return root / "train"


def timed(cfg: SweepConfig, out: Path, executor: str, workers: int) -> dict:
    t0 = time.perf_counter()
    outcome = run_sweep(cfg, out, executor=executor, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    ok = [r for r in outcome.records if r["status"] == "ok"]
    t1 = time.perf_counter()
    again = run_sweep(cfg, out, executor=executor, workers=workers, progress=False)
    resume = time.perf_counter() - t1
    cell_s = [r["result"]["wall_s"] for r in ok]
    frame_s = [r["result"]["compute_ms_per_frame"]["mean"] / 1000 for r in ok]
    overhead = [r["result"]["wall_s"] - f * r["result"]["frames"] for r, f in zip(ok, frame_s)]
    return {
        "executor": executor,
        "workers": workers,
        "cells": len(outcome.records),
        "ok": len(ok),
        "wall_s": round(wall, 1),
        "cells_per_hour": round(len(ok) / wall * 3600, 1),
        "cell_s_median": round(statistics.median(cell_s), 2) if cell_s else None,
        "frame_s_mean": round(statistics.mean(frame_s), 2) if frame_s else None,
        "cell_overhead_s_median": round(statistics.median(overhead), 2) if overhead else None,
        "resume_s": round(resume, 2),
        "resume_reran": again.ran,
    }


def main(frames: int = 3) -> dict:
    load_before = round(os.getloadavg()[0], 2)  # sweeps share the machine: say how busy it was
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        tmp = Path(tmp)
        data = make_log(tmp / "log", frames)
        cfg = SweepConfig(
            name="bench",
            data=str(data),
            source="bench/bench_sweep.py",
            settings={"frames": frames, "tracker": "ab3dmot"},
            grids=[{"method": METHODS, "budget": BUDGETS}],
        )
        runs = [timed(cfg, tmp / f"local{w}", "local", w) for w in (1, 2)]
        try:
            import ray  # noqa: F401

            runs.append(timed(cfg, tmp / "ray2", "ray", 2))
        except ImportError:
            runs.append({"executor": "ray", "skipped": "ray is not installed (pip install 'v2x-coop[ray]')"})
    result = {
        "what": "v2x sweep throughput: cells per hour by executor and workers",
        "machine": {
            "cpus": os.cpu_count(),
            "load_1min_before": load_before,
            "load_1min_after": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "grid": {
            "methods": METHODS,
            "budgets": BUDGETS,
            "cells": len(expand_cells(cfg)),
            "frames_per_cell": frames,
        },
        "log": "1 simulated scene, 3 CAVs + 1 RSU, 64-channel LiDAR",
        "runs": runs,
    }
    write_result("sweep", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3, help="frames per cell")
    main(ap.parse_args().frames)
