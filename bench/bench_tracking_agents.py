"""Tracking speed for two agents on one core: V2V4Real's real per-agent detections (issue 21).

Target: tracking alone (the multi-sensor filter's ``step``: association, updates, births, track
management; no file reading, no scoring) at 200 frames per second or more on one core. Runs on
every frame of the real train split when ``../shared/realdata/v2v4real`` is there (32
sequences, 7105 frames, about 12 boxes per agent per frame), else on synthetic two-agent frames
of the same size (the JSON says which). Measured for fixed noise, learned noise (the shipped
``noise_v2v4real.pt``), and AB3DMOT on the ego's boxes and on both agents' as one stream.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import write_result
from v2x import WEIGHTS
from v2x.tracking.records import FrameDetections
from v2x.tracking.sequences import make_tracker
from v2x.tracking.train import load_tracker

HERE = Path(__file__).resolve().parent
REALDATA = Path(os.environ.get("V2X_REALDATA", HERE.parent.parent / "shared" / "realdata")) / "v2v4real"
TARGET_FPS = 200.0


def _real() -> list[list[FrameDetections]] | None:
    from v2x.experiments.tracking_files import read_agent_sequences, seqmap_lengths

    folder = REALDATA / "per_agent_detections_train"
    if not folder.is_dir():
        return None
    lengths = seqmap_lengths(REALDATA / "train.seqmap")
    return [frames for _, frames in read_agent_sequences(folder, lengths=lengths)]


def _synthetic(n_seq: int = 8, n_frames: int = 200, seed: int = 0) -> list[list[FrameDetections]]:
    """Two agents each seeing 12 of 25 cars driving straight, the ego frame as the world."""
    from v2x.core.boxes import Boxes
    from v2x.tracking.records import AgentDetections

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_seq):
        start = np.c_[rng.uniform(-60, 60, 25), rng.uniform(-35, 35, 25)]
        vel = rng.uniform(-12, 12, (25, 2))
        frames = []
        for k in range(n_frames):
            xy = start + 0.1 * k * vel
            truth = np.c_[
                xy, np.full(25, -1.0), np.tile([4.5, 1.9, 1.6], (25, 1)), np.arctan2(vel[:, 1], vel[:, 0])
            ]
            agents = []
            for name, sd in (("ego", 0.2), ("1", 0.5)):
                idx = np.sort(rng.choice(25, 12, replace=False))
                boxes = Boxes(
                    truth[idx] + rng.normal(0, sd, (12, 7)) * [1, 1, 1, 0.2, 0.1, 0.1, 0.1],
                    labels=0,
                    scores=rng.uniform(0.2, 0.9, 12),
                )
                agents.append(AgentDetections(name, "vehicle", np.eye(4), boxes))
            frames.append(FrameDetections(k, k * 100_000_000, agents))
        out.append(frames)
    return out


def _fps(name: str, sequences: list[list[FrameDetections]], cfg=None, noise=None) -> dict:
    """Frames per second of ``step`` alone, over every frame (per-frame times for the tail)."""
    times = []
    with torch.no_grad():
        for frames in sequences:
            tracker = make_tracker(name, cfg, noise)
            for f in frames:
                f = f.ego_only() if name == "ab3dmot-ego" else f
                t0 = time.perf_counter()
                tracker.step(f)
                times.append(time.perf_counter() - t0)
    t = np.array(times)
    return {
        "frames": len(t),
        "fps": round(float(len(t) / t.sum()), 1),
        "median_ms": round(1000 * float(np.median(t)), 3),
        "p95_ms": round(1000 * float(np.percentile(t, 95)), 3),
    }


def main() -> dict:
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    sequences = _real()
    source = "V2V4Real train split, per-agent detections (ego, 1)"
    if sequences is None:
        sequences, source = _synthetic(), "synthetic: 2 agents x 12 boxes, 25 cars"
    boxes = np.mean([sum(len(a) for a in f.agents) for s in sequences for f in s])
    weights = WEIGHTS / "noise_v2v4real.pt"
    results: dict = {"data": source, "boxes_per_frame": round(float(boxes), 2), "one_core": True}
    if weights.is_file():
        fixed_cfg, _ = load_tracker(weights, fixed=True)
        learned_cfg, net = load_tracker(weights)
    else:
        from v2x.tracking.config import TrackerConfig

        fixed_cfg, learned_cfg, net = TrackerConfig(), TrackerConfig(), None
    results["dmstrack_fixed"] = _fps("dmstrack", sequences, fixed_cfg)
    if net is not None:
        results["dmstrack_learned"] = _fps("dmstrack", sequences, learned_cfg, net)
    results["ab3dmot_ego"] = _fps("ab3dmot-ego", sequences)
    results["ab3dmot_both_agents"] = _fps("ab3dmot", sequences)
    results["target_fps"] = TARGET_FPS
    key = "dmstrack_learned" if net is not None else "dmstrack_fixed"
    results["target_met"] = bool(
        results[key]["fps"] >= TARGET_FPS and results["dmstrack_fixed"]["fps"] >= TARGET_FPS
    )
    print(json.dumps(results, indent=2))
    write_result("tracking_agents", results)
    return results


if __name__ == "__main__":
    main()
