"""Reliability diagram of the detector's BEV confidence maps (what demand and supply are made of).

Every agent of the chosen frames runs the shipped detector on its own scan, in its own BEV frame;
a cell "holds an object" when its centre lies in the BEV footprint of a vehicle that some agent's
LiDAR sees (the objects ``v2x eval comm`` scores against, less the agent's own car). The diagram
bins the predicted confidence and draws the fraction of such cells per bin, for all cells and for
the occupied ones (those a message can carry). With ``--calibrate LOG`` a temperature is fitted
on that log (never the evaluated test split), with a Platt scaling (a temperature and a shift of
the logits) and a binned isotonic map, and their curves and ECE are added.

    .venv/bin/python scripts/reliability.py --data /tmp/h20/demo --frames 40 --pick spread \
        --calibrate /tmp/h20/cal --json docs/images/reliability.json --plot docs/images/reliability.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _split(root: Path, preferred: str) -> Path:
    """The log's ``preferred`` split folder where it has one, else the only split it has, else itself."""
    if (root / preferred).is_dir():
        return root / preferred
    splits = [root / s for s in ("train", "validate", "test") if (root / s).is_dir()]
    return splits[0] if len(splits) == 1 else root


def collect(data: Path, split: str, frames: int | None, pick: str) -> dict[str, np.ndarray]:
    """Confidence, truth and occupancy of every cell of every agent of the selected frames."""
    from v2x.core.geometry import inverse
    from v2x.datasets import open_log
    from v2x.messages.reliability import cells_in_boxes
    from v2x.perception.cooperative import Perception, evaluation_ground_truth
    from v2x.perception.detector import load_detector
    from v2x.pipeline.frames import FrameSelection, drive, select_frames

    log = open_log(_split(data, split))
    model = load_detector(None, log_format=getattr(log, "format", None))
    perception = Perception(model)
    grid = model.cfg.grid

    def step(s) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        frame = s.frame
        gt_ego = evaluation_ground_truth(frame, perception.cfg.min_points_per_box)
        agents = [frame.ego, *frame.collaborators]
        out = []
        for scan, p in zip(agents, perception.agent_steps(agents, detect=True, boxes=False), strict=True):
            gt = gt_ego.transformed(inverse(p.world_from_bev) @ frame.ego.world_from_bev)
            if gt.track_ids is not None and scan.agent_id.isdigit():
                gt = gt[gt.track_ids != int(scan.agent_id)]  # not its own car
            truth = cells_in_boxes(grid, gt.xyzlwhy)
            out.append((p.confidence.ravel(), truth.ravel(), p.occupied.numpy().ravel()))
        return out

    conf, truth, occ = [], [], []
    idx = select_frames(log, FrameSelection(frames, pick))
    for per_agent in drive(log, step, idx, progress=True, desc=f"frames of {data.name}"):
        for c, t, o in per_agent:
            conf.append(c)
            truth.append(t)
            occ.append(o)
    return {
        "confidence": np.concatenate(conf),
        "truth": np.concatenate(truth),
        "occupied": np.concatenate(occ),
        "frames": np.array(len(idx)),
    }


def summarise(conf: np.ndarray, truth: np.ndarray, bins: int) -> dict:
    from v2x.messages.reliability import expected_calibration_error, nll, reliability_bins

    return {
        "cells": len(conf),
        "positive_fraction": float(truth.mean()) if len(truth) else 0.0,
        "ece": expected_calibration_error(conf, truth, bins),
        "nll": nll(conf, truth),
        "bins": reliability_bins(conf, truth, bins),
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, part in zip(axes, ("all_cells", "occupied_cells"), strict=True):
        ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfectly calibrated")
        for key, style in (("raw", "o-"), ("temperature", "s-"), ("platt", "^-"), ("isotonic", "d-")):
            r = report[part].get(key)
            if r is None:
                continue
            pts = [
                (p, f)
                for p, f in zip(r["bins"]["confidence"], r["bins"]["positive_fraction"], strict=True)
                if p is not None
            ]
            xs, ys = zip(*pts, strict=True)
            label = {
                "raw": "detector",
                "temperature": f"temperature {report.get('temperature', 0):.2f}",
                "platt": "Platt a={:.2f} b={:.2f}".format(*report.get("platt", (0, 0))),
                "isotonic": "binned isotonic",
            }[key]
            ax.plot(xs, ys, style, label=f"{label} (ECE {r['ece']:.3f})")
        counts = report[part]["raw"]["bins"]["count"]
        edges = report[part]["raw"]["bins"]["edges"]
        twin = ax.twinx()
        twin.bar(edges[:-1], counts, width=np.diff(edges), align="edge", alpha=0.12, color="k")
        twin.set_yscale("log")
        twin.set_ylabel("cells per bin (log)", color="0.4")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="predicted BEV confidence",
            ylabel="fraction of cells holding an object",
            title=part.replace("_", " "),
        )
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="log to evaluate (its test/ split if present)")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--pick", default="spread", choices=("first", "spread", "random"))
    ap.add_argument(
        "--calibrate", type=Path, default=None, help="log to fit a temperature on (not the test split)"
    )
    ap.add_argument("--calibrate-frames", type=int, default=None)
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from v2x.messages.reliability import (
        fit_isotonic,
        fit_platt,
        fit_temperature,
        with_isotonic,
        with_platt,
        with_temperature,
    )

    for name in ("data", "calibrate"):
        p = getattr(args, name)
        if p is not None and not p.is_dir():
            print(f"--{name}: no log folder at {p}", file=sys.stderr)
            return 2
    got = collect(args.data, "test", args.frames, args.pick)
    report: dict = {"data": str(args.data), "frames": int(got["frames"]), "bins": args.bins}
    parts = {"all_cells": np.ones(len(got["truth"]), bool), "occupied_cells": got["occupied"]}
    for part, mask in parts.items():
        report[part] = {"raw": summarise(got["confidence"][mask], got["truth"][mask], args.bins)}
    if args.calibrate is not None:
        cal = collect(args.calibrate, "validate", args.calibrate_frames, args.pick)
        t = fit_temperature(cal["confidence"], cal["truth"])
        a, b = fit_platt(cal["confidence"], cal["truth"])
        knots, values = fit_isotonic(cal["confidence"], cal["truth"])
        report["isotonic"] = {"knots": knots.tolist(), "values": values.tolist()}
        report["temperature"] = t
        report["platt"] = [a, b]
        report["calibration_data"] = str(args.calibrate)
        report["calibration_frames"] = int(cal["frames"])
        # the calibration log's own diagram: what a level's confidence range means there
        report["calibration_log"] = {
            "all_cells": summarise(cal["confidence"], cal["truth"], args.bins),
            "occupied_cells": summarise(
                cal["confidence"][cal["occupied"]], cal["truth"][cal["occupied"]], args.bins
            ),
        }
        for part, mask in parts.items():
            conf, truth = got["confidence"][mask], got["truth"][mask]
            report[part]["temperature"] = summarise(with_temperature(conf, t), truth, args.bins)
            report[part]["platt"] = summarise(with_platt(conf, a, b), truth, args.bins)
            report[part]["isotonic"] = summarise(with_isotonic(conf, knots, values), truth, args.bins)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    for part in parts:
        line = f"{part}: {report[part]['raw']['cells']} cells, ECE {report[part]['raw']['ece']:.4f}"
        if "temperature" in report[part]:
            line += f", with T={report['temperature']:.3f}: ECE {report[part]['temperature']['ece']:.4f}"
            line += ", with Platt a={:.3f} b={:.3f}: ECE {:.4f}".format(
                *report["platt"], report[part]["platt"]["ece"]
            )
            line += f", binned isotonic: ECE {report[part]['isotonic']['ece']:.4f}"
        print(line)
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
