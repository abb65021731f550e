"""Which agent's frame DAIR-V2X-C's cooperative labels are in, and what moving one agent onto the
other does to late fusion.

Why: on the real example each agent's boxes of one car sit 0.3 to 1.4 m apart (a calibration or
localisation error between the vehicle and the roadside unit), and a fused detector scores
differently on the two runs depending on which agent it follows. This script shows where the
cooperative ground truth comes from and what that means:

1. **Label origin.** Each ground-truth box of a pair is compared with the two sides' own labels
   (both in the world frame through each side's calibration): a box within ``--same-m`` of a
   vehicle-side label is the vehicle's annotation, one within it of a roadside label the roadside
   unit's. Reported per run with the bearings (from the vehicle) of each kind.
2. **Offsets.** Each agent's own boxes (fitted as the detector ships them, score >= ``--min-score``,
   in the vehicle's frame through the nominal calibration) are matched one to one with the other
   agent's and with the labels; the median offset per pair says which frame the labels follow.
3. **Late fusion with a pose correction**: the roadside unit's boxes moved by the pair's median
   offset to the vehicle's (``full``), by half of it (``half``), not at all (``nominal``, what
   the system does), or the vehicle's boxes moved onto the roadside unit's (``reverse``); scored
   against the cooperative ground truth as ``v2x eval detection`` scores it (BEV AP, DAIR range).

    .venv/bin/python scripts/dair_label_frames.py --data runs/dair/run_A --weights W [--json F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from v2x.core.matching import centre_distances, pairs_within

#: how far (metres, BEV centres) a ground-truth box may sit from a side's label and be that label
SAME_M = 0.15
#: pose corrections compared: the share of the measured offset the roadside unit's boxes move by
#: (toward the vehicle's), or "reverse": the vehicle's boxes move the whole offset the other way
CORRECTIONS = {"nominal": 0.0, "half": 0.5, "full": 1.0, "reverse": -1.0}
IOU_THRESHOLDS = (0.3, 0.5, 0.7)


def label_origin(
    gt_xy: np.ndarray, vehicle_xy: np.ndarray, roadside_xy: np.ndarray, same_m: float = SAME_M
) -> np.ndarray:
    """Per ground-truth box: "vehicle", "roadside" (the nearer side's label within ``same_m``; the
    vehicle's first, as a box both sides annotated identically is the vehicle's) or "neither"."""

    def nearest(labels: np.ndarray) -> np.ndarray:
        if not len(labels):
            return np.full(len(gt_xy), np.inf)
        return centre_distances(gt_xy, labels).min(axis=1)

    dv, dr = nearest(vehicle_xy), nearest(roadside_xy)
    return np.where(dv <= same_m, "vehicle", np.where(dr <= same_m, "roadside", "neither"))


def matched_offsets(a_xy: np.ndarray, b_xy: np.ndarray, max_distance: float) -> np.ndarray:
    """(M, 2) offsets b - a of the one-to-one matches (scipy's assignment on BEV centre distance)
    closer than ``max_distance``."""
    if not len(a_xy) or not len(b_xy):
        return np.zeros((0, 2))
    rows, cols = pairs_within(centre_distances(a_xy, b_xy), max_distance)
    return b_xy[cols, :2] - a_xy[rows, :2]


def median_offset(offsets: np.ndarray, min_matches: int) -> np.ndarray | None:
    """The median (x, y) of ``offsets``, or None with fewer than ``min_matches`` of them."""
    return np.median(offsets, axis=0) if len(offsets) >= min_matches else None


def shifted(xy: np.ndarray) -> np.ndarray:
    """A 4x4 transform moving by ``xy`` in the BEV plane."""
    t = np.eye(4)
    t[:2, 3] = xy
    return t


def _summary(offsets: list[np.ndarray]) -> dict:
    both = np.concatenate(offsets) if offsets else np.zeros((0, 2))
    if not len(both):
        return {"matched": 0}
    return {
        "matched": len(both),
        "median_m": np.round(np.median(both, axis=0), 3).tolist(),
        "median_norm_m": round(float(np.median(np.hypot(both[:, 0], both[:, 1]))), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a DAIR-V2X-C log (e.g. a run view)")
    ap.add_argument("--weights", type=Path, help="detector (default: the shipped one for the log)")
    ap.add_argument("--min-score", type=float, default=0.3, help="boxes below this are not matched")
    ap.add_argument("--max-distance", type=float, default=3.0, help="metres between matched centres")
    ap.add_argument("--min-matches", type=int, default=2, help="fewer matched cars: no correction")
    ap.add_argument(
        "--same-m", type=float, default=SAME_M, help="metres within which a label is the same box"
    )
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    import torch

    from v2x.core.geometry import inverse
    from v2x.datasets import open_log
    from v2x.metrics.detection import DetectionEvaluator
    from v2x.perception.cooperative import Perception, SharedBoxes, evaluation_ground_truth
    from v2x.perception.detector import load_detector

    torch.set_num_threads(2)
    log = open_log(args.data)
    model = load_detector(args.weights, log_format=getattr(log, "format", None))
    perception = Perception(model)
    xy_range = (model.cfg.grid.x_min, model.cfg.grid.y_min, model.cfg.grid.x_max, model.cfg.grid.y_max)
    evaluators = {
        name: DetectionEvaluator(eval_range=xy_range, thresholds=IOU_THRESHOLDS) for name in CORRECTIONS
    }
    origins: dict[str, list[float]] = {"vehicle": [], "roadside": [], "neither": []}
    offsets: dict[str, list[np.ndarray]] = {
        "roadside - vehicle": [],
        "vehicle - labels": [],
        "roadside - labels": [],
    }
    pairs = []
    for i in range(len(log)):
        frame = log[i]
        if not frame.collaborators:
            continue
        inv = inverse(frame.ego.world_from_bev)
        everything = frame.gt.transformed(inv).xyzlwhy
        sides = [
            s.labels.transformed(inv).xyzlwhy if s.labels is not None else np.zeros((0, 7))
            for s in (frame.ego, frame.collaborators[0])
        ]
        kinds = label_origin(everything, *sides, same_m=args.same_m)
        bearings = np.degrees(np.arctan2(everything[:, 1], everything[:, 0]))
        for kind in origins:
            origins[kind] += bearings[kinds == kind].tolist()
        gt = evaluation_ground_truth(frame, model.cfg.min_points_per_box)
        ego, rsu = perception.agent_steps([frame.ego, frame.collaborators[0]])
        mine = ego.boxes[ego.boxes.scores >= args.min_score].xyzlwhy
        theirs = rsu.boxes[rsu.boxes.scores >= args.min_score].transformed(inv @ rsu.world_from_bev).xyzlwhy
        between = matched_offsets(mine, theirs, args.max_distance)
        offsets["roadside - vehicle"].append(between)
        offsets["vehicle - labels"].append(matched_offsets(gt.xyzlwhy, mine, args.max_distance))
        offsets["roadside - labels"].append(matched_offsets(gt.xyzlwhy, theirs, args.max_distance))
        off = median_offset(between, args.min_matches)
        pairs.append(
            {
                "index": i,
                "labels": {k: int((kinds == k).sum()) for k in origins},
                "roadside_minus_vehicle_m": None if off is None else np.round(off, 3).tolist(),
                "matched": len(between),
            }
        )
        for name, share in CORRECTIONS.items():
            move = np.zeros(2) if off is None else -share * off
            own = ego.boxes
            if share < 0:  # the vehicle's boxes onto the roadside unit's; the unit's stay
                own, move = ego.boxes.transformed(shifted(move)), np.zeros(2)
            pose = ego.world_from_bev @ shifted(move) @ inv @ rsu.world_from_bev
            merged = perception.merge_boxes(
                ego.world_from_bev, own, [SharedBoxes(rsu.agent_id, pose, rsu.boxes)]
            )
            evaluators[name].add(merged, gt)
        print(
            f"pair {i}: labels {pairs[-1]['labels']}, roadside - vehicle {pairs[-1]['roadside_minus_vehicle_m']}",
            flush=True,
        )

    out = {
        "data": str(args.data),
        "weights": str(args.weights) if args.weights else "shipped",
        "pairs": len(pairs),
        "label_origin": {
            k: {
                "boxes": len(v),
                "bearing_deg_5_50_95": np.round(np.percentile(v, [5, 50, 95]), 1).tolist() if v else None,
            }
            for k, v in origins.items()
        },
        "offsets": {k: _summary(v) for k, v in offsets.items()},
        "late_fusion_ap_bev": {
            name: {str(t): round(ev.ap("bev", t), 4) for t in IOU_THRESHOLDS}
            for name, ev in evaluators.items()
        },
        "per_pair": pairs,
    }
    print(json.dumps({k: out[k] for k in ("label_origin", "offsets", "late_fusion_ap_bev")}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
