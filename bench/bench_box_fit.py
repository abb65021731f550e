"""What fitting boxes to the points costs per agent scan (v2x.perception.box_fit), on one core.

The DAIR-V2X-C weights fit every decoded box to the points on it, in each agent's perception
step and again on the ego's fused reading: this is added to the detector's latency. Input: every
scan (vehicle and roadside unit) of the real DAIR-V2X-C example in ../shared/realdata, with the
boxes the shipped DAIR detector decodes on it (score threshold as configured); the detector's own
time is not counted.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.common import write_result
from v2x.perception.box_fit import fit_boxes
from v2x.perception.encoder import sanitize_points

HERE = Path(__file__).resolve().parent
DAIR_EXAMPLE = HERE.parent.parent / "shared" / "realdata" / "dair-v2x-c-example"


def main(repeats: int = 3) -> dict:
    if not (DAIR_EXAMPLE / "cooperative" / "data_info.json").is_file():
        result = {"skipped": f"no DAIR-V2X-C example at {DAIR_EXAMPLE}"}
        write_result("box_fit", result)
        return result
    from v2x.datasets import open_log
    from v2x.perception.cooperative import Perception
    from v2x.perception.detector import load_detector

    torch.set_num_threads(1)
    log = open_log(DAIR_EXAMPLE)
    model = load_detector(None, log_format=log.format, box_fit_min_points=0)  # boxes as decoded
    min_points = load_detector(None, log_format=log.format).cfg.box_fit_min_points or 10
    perception = Perception(model)
    cases = []
    for i in range(len(log)):
        for scan in log[i].agents.values():
            boxes = perception.agent_step(scan).boxes.xyzlwhy
            cases.append((boxes, sanitize_points(scan.points_in_bev(), model.cfg).numpy()))
    times = []
    for _ in range(repeats):
        for boxes, cloud in cases:
            t0 = time.perf_counter()
            fit_boxes(boxes, cloud, min_points)
            times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    result = {
        "what": "v2x.perception.box_fit.fit_boxes per agent scan, one thread",
        "data": f"{DAIR_EXAMPLE.name}: {len(cases)} scans (vehicle and roadside unit), {repeats} passes",
        "min_points": min_points,
        "median_ms": round(float(np.median(ms)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "boxes_per_scan_median": float(np.median([len(b) for b, _ in cases])),
        "points_per_scan_median": float(np.median([len(c) for _, c in cases])),
    }
    write_result("box_fit", result, f" (median {result['median_ms']} ms per scan)")
    return result


if __name__ == "__main__":
    main()
