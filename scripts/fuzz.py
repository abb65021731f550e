"""The long fuzzing run (``make fuzz``): millions of mutated messages through every decoder on a
node's receive path, in parallel workers, with progress and a JSON report.

    .venv/bin/python scripts/fuzz.py --per-decoder 1000000 --workers 2 --out bench/results/fuzz.json

The harness is ``tests/fuzz/fuzzkit`` (the suite runs the same targets with a few thousand inputs
each). Input ``i`` of a decoder depends only on ``--seed``, the decoder and ``i``, so a failure in
the report (its ``index``) is reproduced alone with ``fuzzkit.engine.make_one``. Exits 1 when any
input failed (an error other than the decoder's documented one, or an accepted message that
breaks its invariants) or a memory sample exceeded the documented bound.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fuzz"))

DECODERS = ("envelope", "wire", "codec", "points", "detections")


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _task(args: tuple[str, int, int, int, int]):
    from fuzzkit.engine import run_range

    name, seed, start, stop, mem_every = args
    return run_range(name, seed, start, stop, mem_every)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--per-decoder", type=int, default=1_000_000, help="inputs per decoder (default 1,000,000)"
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument(
        "--decoders", default=",".join(DECODERS), help=f"comma-separated, of {', '.join(DECODERS)}"
    )
    p.add_argument("--chunk", type=int, default=20_000, help="inputs per task")
    p.add_argument("--mem-every", type=int, default=50, help="sample peak memory every M-th input (0: never)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fuzz.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from fuzzkit.engine import DecoderStats
    from fuzzkit.targets import MEMORY_BOUNDS

    opts = _parse(argv)
    names = [d for d in opts.decoders.split(",") if d]
    unknown = sorted(set(names) - set(DECODERS))
    if unknown:
        print(f"unknown decoder(s) {unknown}; choose from {DECODERS}", file=sys.stderr)
        return 2
    tasks = [
        (name, opts.seed, start, min(start + opts.chunk, opts.per_decoder), opts.mem_every)
        for name in names
        for start in range(0, opts.per_decoder, opts.chunk)
    ]
    totals = {name: DecoderStats(name) for name in names}
    t0 = time.perf_counter()
    last_write = 0.0
    print(
        f"fuzzing {', '.join(names)}: {opts.per_decoder:,} inputs each, {opts.workers} worker(s), seed {opts.seed}"
    )
    with mp.get_context("spawn").Pool(opts.workers, initializer=_init_worker) as pool:
        for stats in pool.imap_unordered(_task, tasks):
            total = totals[stats.decoder]
            total.merge(stats)
            wall = time.perf_counter() - t0
            done = sum(t.inputs for t in totals.values())
            print(
                f"[{wall:7.1f} s] {stats.decoder:10s} {total.inputs:>10,}/{opts.per_decoder:,}"
                f"  failures {total.failures}  reached payload {total.reached_payload / total.inputs:.1%}"
                f"  all decoders {done / wall:,.0f} inputs/s",
                flush=True,
            )
            if wall - last_write > 30:
                _write(opts, totals, wall, MEMORY_BOUNDS, finished=False)
                last_write = wall
    wall = time.perf_counter() - t0
    report = _write(opts, totals, wall, MEMORY_BOUNDS, finished=True)
    for name, d in report["decoders"].items():
        print(
            f"{name:10s} {d['inputs']:>10,} inputs  failures {d['failures']}  accepted {d['accepted_share']:.1%}"
            f"  reached payload {d['reached_payload_share']:.1%}  peak memory max {d['memory']['peak_max_bytes']:,} B"
            f" (input {d['memory']['peak_max_input_bytes']:,} B), over bound {d['memory']['samples_over_documented_bound']}"
        )
    print(f"{sum(t.inputs for t in totals.values()):,} inputs in {wall:.0f} s; report: {opts.out}")
    return 0 if report["ok"] else 1


def _write(opts, totals, wall: float, bounds, finished: bool) -> dict:
    import numpy as np

    decoders = {name: t.as_dict() for name, t in totals.items()}
    report = {
        "finished": finished,
        "ok": all(
            d["failures"] == 0 and d["memory"]["samples_over_documented_bound"] == 0
            for d in decoders.values()
        ),
        "seed": opts.seed,
        "per_decoder": opts.per_decoder,
        "workers": opts.workers,
        "mem_every": opts.mem_every,
        "wall_s": round(wall, 1),
        "inputs_per_s": round(sum(t.inputs for t in totals.values()) / wall, 1) if wall else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "memory_bounds": {
            n: {"per_input_byte": a, "constant_bytes": b} for n, (a, b) in bounds.items() if n in totals
        },
        "decoders": decoders,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = opts.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(opts.out)
    return report


if __name__ == "__main__":
    sys.exit(main())
