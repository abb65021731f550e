"""Perception latency on 2 CPU cores: per-agent encode, ego fuse + detect for 4 agents, peak memory.

Targets (issue 4): encoder <= 50 ms and ego <= 50 ms per frame so a 10 Hz LiDAR keeps up.
Also the agent's encode + detect and the ego's step with the neck and head in bfloat16
(``precision="bf16"``), and whether this CPU computes bf16 natively.
Input: four copies of a real OPV2V scan (../shared/realdata) at different poses when available,
else the bundled demo log, else a synthetic cloud of the same size.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import write_result
from v2x.core.frame import AgentScan
from v2x.core.geometry import pose_from_xyz_yaw
from v2x.perception.config import load_config
from v2x.perception.cooperative import Perception, SharedFeatures
from v2x.perception.detector import DEFAULT_WEIGHTS, CooperativeDetector, load_detector, native_bf16

HERE = Path(__file__).resolve().parent
REAL_SCAN = HERE.parent.parent / "shared" / "realdata" / "opv2v" / "000070.pcd"


def _scan_points() -> tuple[np.ndarray, str]:
    if REAL_SCAN.is_file():
        from v2x.datasets.pcd import read_pcd

        return read_pcd(REAL_SCAN), f"real OPV2V scan {REAL_SCAN.name}"
    rng = np.random.default_rng(0)
    r = rng.uniform(2, 80, 56000)
    a = rng.uniform(-np.pi, np.pi, 56000)
    pts = np.c_[r * np.cos(a), r * np.sin(a), rng.uniform(-1.9, 1.0, 56000), rng.uniform(0, 1, 56000)]
    return pts.astype(np.float32), "synthetic 56k-point cloud"


def _stats(ts: list[float]) -> dict:
    a = np.array(ts) * 1000
    return {
        "median_ms": round(float(np.median(a)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "n": len(a),
    }


def main(repeats: int = 30) -> dict:
    torch.set_num_threads(2)
    model = load_detector() if DEFAULT_WEIGHTS.is_file() else CooperativeDetector(load_config()).eval()
    perception = Perception(model)
    pts, source = _scan_points()
    scans = [
        AgentScan(
            str(i), "vehicle", pts, pose_from_xyz_yaw(12.0 * i, 4.0 * i, 1.8, 0.4 * i), mount_height=1.8
        )
        for i in range(4)
    ]
    for _ in range(3):
        perception.agent_step(scans[0])
    encode, agent_total = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        perception.agent_step(scans[0], detect=False)
        encode.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        perception.agent_step(scans[0], detect=True)
        agent_total.append(time.perf_counter() - t0)
    # collaborators' maps on the ego's grid (share_frame "ego", the default) and on their own
    inputs = {}
    for name, into in (("ego", [None] + [scans[0].world_from_bev] * 3), ("own", None)):
        results = perception.agent_steps(scans, detect=False, into=into)
        shared = [SharedFeatures(r.agent_id, r.world_from_bev, r.features, r.occupied) for r in results[1:]]
        inputs[name] = (results[0], shared)
    ego_times, own_times = [], []
    for name, times in (("ego", ego_times), ("own", own_times)):
        for _ in range(repeats):
            t0 = time.perf_counter()
            perception.ego_step(*inputs[name])
            times.append(time.perf_counter() - t0)
    # the neck and head in bfloat16 (--precision bf16): the agent's detect and the ego's step
    model.set_precision("bf16")
    bf16_agent, bf16_ego = [], []
    for _ in range(3):
        perception.agent_step(scans[0])
    for _ in range(repeats):
        t0 = time.perf_counter()
        perception.agent_step(scans[0], detect=True)
        bf16_agent.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        perception.ego_step(*inputs["ego"])
        bf16_ego.append(time.perf_counter() - t0)
    model.set_precision("fp32")
    out = {
        "input": source,
        "points_per_scan": len(pts),
        "occupied_cells": int(inputs["own"][0].occupied.sum()),
        "threads": torch.get_num_threads(),
        "weights": "shipped" if DEFAULT_WEIGHTS.is_file() else "random init",
        "agent_encode": _stats(encode),
        "agent_encode_and_detect": _stats(agent_total),
        "ego_fuse_detect_4_agents": _stats(ego_times),
        "ego_fuse_detect_4_agents_own_frames": _stats(own_times),
        "native_bf16": native_bf16(),
        "bf16_agent_encode_and_detect": _stats(bf16_agent),
        "bf16_ego_fuse_detect_4_agents": _stats(bf16_ego),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "targets_ms": {"agent_encode": 50, "ego_fuse_detect": 50},
    }
    print(json.dumps(out, indent=2))
    write_result("perception", out)
    return out


if __name__ == "__main__":
    main()
