"""The AP-versus-bytes experiment (``v2x eval comm``) and codebook training (``v2x train codebook``).

Every method runs through :func:`v2x.messages.codec.exchange`: messages are really encoded, their
``len()`` is what is counted (headers and coordination messages included), and the ego decodes
them before fusing. Agents' encoder and head run once per frame and are shared by all methods.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from v2x.messages.codebook import Codebook, CodebookConfig, fit_from_maps
from v2x.messages.codec import MessageCodec, exchange
from v2x.metrics.detection import DetectionEvaluator
from v2x.perception.cooperative import Perception, check_share_frame, encoding_frames, evaluation_ground_truth
from v2x.perception.encoder import sanitize_points

__all__ = ["CommSetting", "encoder_maps", "evaluate_comm", "fit_codebook", "plot_comm"]

DEFAULT_BUDGETS = (256, 512, 1024, 2048, 4096, 16384, 65536)
WHERE2COMM_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)


@dataclass(frozen=True)
class CommSetting:
    method: str
    budget: int | None = None  # bytes per agent per frame
    threshold: float | None = None  # where2comm's knob
    hybrid: bool = False

    @property
    def name(self) -> str:
        return self.method + ("+boxes" if self.hybrid else "")


def settings_for(methods: list[str], budgets: list[int], hybrid: bool = False) -> list[CommSetting]:
    out: list[CommSetting] = []
    for m in methods:
        if m in ("raw", "raw-fp16"):
            out.append(CommSetting(m))
        elif m == "where2comm":
            out += [CommSetting(m, threshold=t) for t in WHERE2COMM_THRESHOLDS]
        else:
            out += [CommSetting(m, budget=b) for b in budgets]
            if hybrid:
                out += [CommSetting(m, budget=b, hybrid=True) for b in budgets]
    return out


def evaluate_comm(
    log,
    perception: Perception,
    codec: MessageCodec,
    settings: list[CommSetting],
    frames: int | None = None,
    progress: bool = True,
    share_frame: str = "ego",
) -> list[dict]:
    """Every setting on the same frames; collaborators' maps encoded in ``share_frame`` (as the
    pipeline's agents do), each agent's once for all settings."""
    check_share_frame(share_frame)
    indices = list(range(len(log)))
    if frames and frames < len(indices):
        indices = sorted(set(np.linspace(0, len(log) - 1, frames).round().astype(int).tolist()))
    evals = {s: DetectionEvaluator(eval_range=perception.cfg.grid.xy_range) for s in settings}
    sent: dict[CommSetting, list[int]] = {s: [] for s in settings}
    cells: dict[CommSetting, list[int]] = {s: [] for s in settings}
    for i in tqdm(indices, desc="frames", disable=not progress):
        frame = log[i]
        gt = evaluation_ground_truth(frame, perception.cfg.min_points_per_box)
        agents = [frame.ego, *frame.collaborators]
        results = perception.agent_steps(agents, detect=True, into=encoding_frames(frame, share_frame))
        ego, rest = results[0], results[1:]
        for s in settings:
            shared, boxes, out = exchange(codec, s.method, ego, rest, s.budget, s.threshold or 0.3, s.hybrid)
            evals[s].add(perception.ego_step(ego, shared, boxes).boxes, gt)
            for o in out.values():
                sent[s].append(o.bytes)
                cells[s].append(o.cells_sent)
    rows = []
    c = perception.cfg.bev_channels
    for s in settings:
        r = evals[s].result()
        b = np.array(sent[s]) if sent[s] else np.zeros(1)
        n_cells = float(np.mean(cells[s])) if cells[s] else 0.0
        if s.method in ("codebook", "codefilling"):
            formula = n_cells * codec.codebook.cfg.bits_per_cell / 8
        else:
            formula = n_cells * c * (2 if s.method == "raw-fp16" else 4)
        rows.append(
            {
                "method": s.name,
                "budget_bytes": s.budget,
                "threshold": s.threshold,
                "bytes_mean": float(b.mean()),
                "bytes_max": int(b.max()),
                "log2_bytes": math.log2(b.mean()) if b.mean() > 0 else None,
                "paper_formula_bytes": formula,
                "cells_mean": n_cells,
                "ap_bev": r["ap_bev"],
                "ap_3d": r["ap_3d"],
                "frames": r["frames"],
                "codebook": codec.codebook.cfg.label()
                if codec.codebook is not None and s.method in ("codebook", "codefilling")
                else None,
            }
        )
    return rows


def plot_comm(rows: list[dict], path: Path, reference: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharex=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, thr in zip(axes, ("0.5", "0.7"), strict=True):
        for m in methods:
            pts = sorted(
                (r["bytes_mean"], r["ap_bev"][thr]) for r in rows if r["method"] == m and r["bytes_mean"] > 0
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if len(pts) > 1 else "s", label=m)
        if reference:
            for name, (val, style) in reference.items():
                if val.get(thr) is not None:
                    ax.axhline(val[thr], ls=style, color="0.4", lw=1)
                    ax.text(
                        ax.get_xlim()[0] if ax.lines else 1,
                        val[thr],
                        f" {name}",
                        va="bottom",
                        fontsize=8,
                        color="0.3",
                    )
        ax.set_xscale("log", base=2)
        ax.set(
            xlabel="bytes per agent per frame (log2 scale; headers and requests included)",
            ylabel=f"BEV AP@{thr}",
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def encoder_maps(log, perception: Perception, frames: int, seed: int = 0, progress: bool = True):
    """(features, occupied) of every agent of ``frames`` randomly chosen frames, from the frozen encoder."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(log), min(frames, len(log)), replace=False)
    with torch.no_grad():
        for i in tqdm(sorted(idx), desc="features", disable=not progress):
            frame = log[int(i)]
            clouds = [sanitize_points(s.points_in_bev(), perception.cfg) for s in frame.agents.values()]
            bev = perception.model.encode(clouds)
            for b in range(len(clouds)):
                yield bev.features[b], bev.occupied[b]


def fit_codebook(
    log,
    perception: Perception,
    cfg: CodebookConfig,
    frames: int = 300,
    samples: int = 200_000,
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> tuple[Codebook, dict]:
    """Residual product k-means (and optional refinement) on occupied-cell features of the frozen encoder."""
    per_map = max(1, samples // max(1, min(frames, len(log)) * 2))
    return fit_from_maps(
        cfg, encoder_maps(log, perception, frames, seed, progress), cells_per_map=per_map, seed=seed, **kwargs
    )


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))
