"""What a detector finds in a roadside unit's points alone, written in different frames.

Why: on real DAIR-V2X-C pairs intermediate and early fusion trail late fusion by 25 points.
Late fusion has the roadside unit detect in its own frame; the other two have its points (or
features) on the ego's grid, turned by the ego's heading (110 to 170 degrees on the example) and
moved to the ego's position. This script separates the two: the roadside points alone, in its
own frame, turned to the ego's heading at its own position, moved to the ego's position with its
own heading, and in the ego's frame; boxes are moved into the ego's frame and scored against the
cooperative ground truth of each pair (AP in the BEV, DAIR range). With ``--modes`` it also runs
the fusion modes with the ego blinded (its points removed), next to the full pair.

    .venv/bin/python scripts/roadside_frames.py --data runs/dair/run_B [--weights W] [--modes] [--json F]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

FRAMES = ("own", "own position, ego heading", "ego position, own heading", "ego")
MODES = ("none", "late", "early", "intermediate", "intermediate-own")


def _frames_of(ego_pose: np.ndarray, rsu_pose: np.ndarray) -> dict[str, np.ndarray]:
    turned = ego_pose.copy()
    turned[:3, 3] = rsu_pose[:3, 3]
    moved = rsu_pose.copy()
    moved[:3, 3] = ego_pose[:3, 3]
    return dict(zip(FRAMES, (rsu_pose, turned, moved, ego_pose), strict=True))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a DAIR-V2X-C folder (a run view)")
    ap.add_argument("--weights", type=Path, help="detector (default: the shipped one for DAIR)")
    ap.add_argument("--modes", action="store_true", help="also the fusion modes, full and ego blinded")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    from v2x.core.geometry import inverse, yaw_of
    from v2x.datasets import open_log
    from v2x.metrics.detection import DetectionEvaluator
    from v2x.perception.cooperative import Perception, evaluation_ground_truth
    from v2x.perception.detector import load_detector
    from v2x.perception.encoder import sanitize_points

    torch.set_num_threads(2)
    log = open_log(args.data)
    model = load_detector(args.weights, log_format=getattr(log, "format", None)).eval()
    perception = Perception(model)

    def evaluator() -> DetectionEvaluator:
        return DetectionEvaluator(eval_range=model.cfg.grid.xy_range)

    by_frame = {k: evaluator() for k in FRAMES}
    by_mode = (
        {f"{v}:{m}": evaluator() for v in ("pair", "roadside alone") for m in MODES} if args.modes else {}
    )
    turns = []
    for i in range(len(log)):
        f = log[i]
        ego, rsu = f.ego, f.collaborators[0]
        gt = evaluation_ground_truth(f, model.cfg.min_points_per_box)
        turns.append(float(np.degrees(yaw_of(inverse(ego.world_from_bev) @ rsu.world_from_bev))))
        for name, pose in _frames_of(ego.world_from_bev, rsu.world_from_bev).items():
            with torch.no_grad():
                bev = model.encode([sanitize_points(rsu.points_in(pose), model.cfg)])
                boxes = model.decode(model.detect(bev.features))[0]
            by_frame[name].add(boxes.transformed(inverse(ego.world_from_bev) @ pose), gt)
        if not args.modes:
            continue
        empty = dataclasses.replace(ego, points=np.zeros((0, ego.points.shape[1]), ego.points.dtype))
        blind = dataclasses.replace(f, agents={a: empty if a == f.ego_id else s for a, s in f.agents.items()})
        for view, frame in (("pair", f), ("roadside alone", blind)):
            for m in MODES:
                if view == "roadside alone" and m == "none":
                    continue
                kind = "intermediate" if m.startswith("intermediate") else m
                share = "own" if m == "intermediate-own" else "ego"
                by_mode[f"{view}:{m}"].add(perception.run_frame(frame, kind, share_frame=share).boxes, gt)
    out = {
        "data": str(args.data),
        "weights": str(args.weights) if args.weights else "shipped",
        "frames": len(log),
        "roadside_turn_deg": [round(min(turns), 1), round(max(turns), 1)],
        "roadside_points_in": {k: e.result()["ap_bev"] for k, e in by_frame.items()},
        "modes": {k: e.result()["ap_bev"] for k, e in by_mode.items() if e.result()["frames"]},
    }
    for section in ("roadside_points_in", "modes"):
        for k, ap_bev in out[section].items():
            print(
                f"{section:>18} {k:>32}: "
                + " / ".join(f"{100 * ap_bev[t]:.1f}" for t in ("0.3", "0.5", "0.7"))
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
