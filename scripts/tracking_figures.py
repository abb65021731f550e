"""Figures and checks for ``docs/tracking.md``: what the two evaluation modes see, what the noise
net learned, and the evaluator on V2V4Real's real ground truth against a perturbed copy.

A documentation script, not part of the installed package (it reads dataset files, which
``v2x.tracking`` never does)::

    .venv/bin/python scripts/tracking_figures.py --records DIR --weights noise.pt --out docs/images
    .venv/bin/python scripts/tracking_figures.py --v2v4real ../shared/realdata/v2v4real
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from v2x.core.boxes import Boxes
from v2x.datasets.kitti_tracking import read_kitti_tracking, read_seqmap
from v2x.tracking.metrics import TrackingSequence, evaluate_tracking
from v2x.tracking.noise_net import agent_frame_boxes, detection_features
from v2x.tracking.records import load_sequence, record_files
from v2x.tracking.sequences import ego_sequence, run_tracker
from v2x.tracking.train import assign_gt_ids, load_tracker

__all__ = ["mota_recall_figure", "noise_figure", "v2v4real_check"]


def mota_recall_figure(sequences, out: Path, tracker: str = "ab3dmot") -> None:
    """MOTA and sMOTA against recall in both modes for one tracker (late fusion: duplicate tracks)."""
    runs = [ego_sequence(name, frames, run_tracker(tracker, frames)) for name, frames in sequences]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for mode, style in (("comparable", "-"), ("strict", "--")):
        r = evaluate_tracking(runs, mode)
        rec = [c["recall_level"] for c in r["curve"]]
        ax.plot(
            rec,
            [c["mota"] for c in r["curve"]],
            style,
            color="C0",
            label=f"MOTA, {mode} (AMOTA {r['amota']:.1f})",
        )
        ax.plot(
            rec,
            [c["smota"] for c in r["curve"]],
            style,
            color="C1",
            label=f"sMOTA, {mode} (sAMOTA {r['samota']:.1f})",
        )
    ax.set_xlabel("recall level")
    ax.set_ylabel("score at that level")
    ax.set_xlim(0, 1)
    ax.set_ylim(-1, 1.05)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(f"{tracker}, every agent's boxes as one stream", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def noise_figure(sequences, weights: Path, out: Path) -> None:
    """Learned position std (along and across the line of sight) against range, beside the
    detections' actual errors and the fixed prior."""
    cfg, net = load_tracker(weights)
    rng_, pred, err = [], [], []
    for _, frames in sequences:
        assign_gt_ids(frames)
        for f in frames:
            by_id = {int(t): i for i, t in enumerate(f.gt.track_ids)}
            for a in f.agents:
                rows = [i for i, g in enumerate(a.gt_ids) if int(g) in by_id]
                if not rows:
                    continue
                d = a.select(np.array(rows))
                local = agent_frame_boxes(d.boxes, a.world_from_agent)
                gt = agent_frame_boxes(
                    f.gt[np.array([by_id[int(a.gt_ids[i])] for i in rows])], a.world_from_agent
                )
                r = np.hypot(local[:, 0], local[:, 1])
                u = local[:, :2] / np.maximum(r, 1e-6)[:, None]
                e = local[:, :2] - gt[:, :2]
                err.append(np.c_[(e * u).sum(1), e[:, 0] * -u[:, 1] + e[:, 1] * u[:, 0]])
                with torch.no_grad():
                    geo = torch.from_numpy(detection_features(local, d.boxes.scores, a.kind))
                    var = (net.prior_var * torch.exp(net(geo).double())).numpy()
                # variances are along the agent's x and y: project on the line of sight
                along = var[:, 0] * u[:, 0] ** 2 + var[:, 1] * u[:, 1] ** 2
                across = var[:, 0] * u[:, 1] ** 2 + var[:, 1] * u[:, 0] ** 2
                pred.append(np.c_[np.sqrt(along), np.sqrt(across)])
                rng_.append(r)
    r, p, e = np.concatenate(rng_), np.concatenate(pred), np.concatenate(err)
    bins = np.arange(0, 75, 7.5)
    mid = (bins[1:] + bins[:-1]) / 2
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    prior = np.sqrt(np.asarray(cfg.measurement_var)[:2].mean())
    for k, (ax, name) in enumerate(zip(axes, ("along the line of sight", "across it"), strict=True)):
        idx = np.digitize(r, bins) - 1
        ok = [(idx == b).sum() > 20 for b in range(len(mid))]
        emp = [np.sqrt(np.mean(e[idx == b, k] ** 2)) if o else np.nan for b, o in enumerate(ok)]
        net_ = [np.median(p[idx == b, k]) if o else np.nan for b, o in enumerate(ok)]
        ax.plot(mid, emp, "o-", label="actual RMS error")
        ax.plot(mid, net_, "s-", label="learned std (median)")
        ax.axhline(prior, color="grey", ls="--", label="fixed prior std")
        ax.set_title(name)
        ax.set_xlabel("range from the detecting agent (m)")
    axes[0].set_ylabel("position error (m)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def v2v4real_check(root: Path, seed: int = 0) -> dict:
    """Real V2V4Real train ground truth against a copy with 0.4 m noise, 10 % of boxes missed and
    0.5 low-score phantom boxes per frame, in every mode and geometry (test data, never trained on)."""
    rng = np.random.default_rng(seed)
    seqs = []
    for name, (_, last) in read_seqmap(root / "train.seqmap").items():
        gt = {f: t.boxes for f, t in read_kitti_tracking(root / "train_label" / f"{name}.txt").items()}
        trk = {}
        for f, b in gt.items():
            moved = b.xyzlwhy + rng.normal(0, [0.4, 0.4, 0.1, 0.1, 0.05, 0.05, 0.05], b.xyzlwhy.shape)
            keep = rng.random(len(b)) > 0.1
            n = rng.poisson(0.5)
            fp = np.c_[
                rng.uniform(-60, 60, (n, 2)),
                np.zeros(n),
                np.tile([4.5, 1.9, 1.5], (n, 1)),
                rng.uniform(-3, 3, n),
            ]
            ids = np.r_[b.track_ids[keep], 900000 + f * 10 + np.arange(n)]
            scores = np.r_[rng.uniform(0.4, 1, keep.sum()), rng.uniform(0, 0.5, n)]
            trk[f] = Boxes(np.r_[moved[keep], fp], 0, ids, scores)
        seqs.append(TrackingSequence(name, last + 1, gt, trk))
    out = {}
    for mode, geometry in (("comparable", None), ("comparable", "exact"), ("strict", None)):
        r = evaluate_tracking(seqs, mode, geometry=geometry)
        out[f"{mode}/{r['geometry']}"] = {
            k: round(float(r[k]), 2) for k in ("amota", "samota", "amotp", "mota", "fp", "recall")
        }
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=Path)
    ap.add_argument("--weights", type=Path)
    ap.add_argument(
        "--v2v4real", type=Path, help="V2V4Real tracking ground truth folder (train_label, train.seqmap)"
    )
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.v2v4real:
        for k, v in v2v4real_check(args.v2v4real).items():
            print(k, v)
    if not args.records:
        return
    if not args.weights:
        ap.error("--records needs --weights")
    seqs = [(p.stem, load_sequence(p)) for p in record_files(args.records)]
    args.out.mkdir(parents=True, exist_ok=True)
    mota_recall_figure(seqs, args.out / "tracking_mota_recall.png")
    noise_figure(seqs, args.weights, args.out / "tracking_learned_noise.png")


if __name__ == "__main__":
    main()
