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

from v2x.messages.codebook import Codebook, CodebookConfig, fit_from_maps
from v2x.messages.codec import MessageCodec, exchange
from v2x.messages.scheme import FeatureEncoding, FeatureScheme, Selection
from v2x.metrics.detection import DetectionEvaluator
from v2x.perception.cooperative import Perception, encoding_frames, evaluation_ground_truth
from v2x.perception.encoder import sanitize_points
from v2x.perception.settings import check_share_frame
from v2x.pipeline.frames import FrameSelection, FrameStep, drive, select_frames
from v2x.pipeline.methods import get_method

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

    @property
    def scheme(self) -> FeatureScheme:
        """How the method sends features (the registry's word for it)."""
        scheme = get_method(self.method).features
        if scheme is None:
            raise ValueError(f"method {self.method}: sends no features, nothing to compare by bytes")
        return scheme


def settings_for(methods: list[str], budgets: list[int], hybrid: bool = False) -> list[CommSetting]:
    """A method that sends every cell runs once, unlimited; a threshold selection over its
    thresholds; any other over the budgets (with ``hybrid``, also with the sender's boxes)."""
    out: list[CommSetting] = []
    for m in methods:
        selection = CommSetting(m).scheme.selection
        if selection is Selection.ALL:
            out.append(CommSetting(m))
        elif selection is Selection.THRESHOLD:
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
    frames: FrameSelection | None = None,
    progress: bool = True,
    share_frame: str = "ego",
) -> list[dict]:
    """Every setting on the same frames (``frames``, default all); collaborators' maps encoded in
    ``share_frame`` (as the pipeline's agents do), each agent's once for all settings."""
    check_share_frame(share_frame)
    indices = select_frames(log, frames or FrameSelection())
    evals = {s: DetectionEvaluator(eval_range=perception.cfg.grid.xy_range) for s in settings}
    sent: dict[CommSetting, list[int]] = {s: [] for s in settings}
    cells: dict[CommSetting, list[int]] = {s: [] for s in settings}

    def evaluate(step: FrameStep) -> None:
        frame = step.frame
        gt = evaluation_ground_truth(frame, perception.cfg.min_points_per_box)
        agents = [frame.ego, *frame.collaborators]
        results = perception.agent_steps(agents, detect=True, into=encoding_frames(frame, share_frame))
        ego, rest = results[0], results[1:]
        for s in settings:
            shared, boxes, out = exchange(codec, s.scheme, ego, rest, s.budget, s.threshold or 0.3, s.hybrid)
            evals[s].add(perception.ego_step(ego, shared, boxes).boxes, gt)
            for o in out.values():
                sent[s].append(o.bytes)
                cells[s].append(o.cells_sent)

    for _ in drive(log, evaluate, indices, progress=progress, desc="frames"):
        pass
    rows = []
    c = perception.cfg.bev_channels
    for s in settings:
        r = evals[s].result()
        b = np.array(sent[s]) if sent[s] else np.zeros(1)
        n_cells = float(np.mean(cells[s])) if cells[s] else 0.0
        encoding = s.scheme.encoding
        if encoding.needs_codebook:
            formula = n_cells * codec.codebook.cfg.bits_per_cell / 8
        else:
            formula = n_cells * c * (2 if encoding is FeatureEncoding.FP16 else 4)
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
                if codec.codebook is not None and encoding.needs_codebook
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


def encoder_maps(log, perception: Perception, frames: FrameSelection, progress: bool = True):
    """(features, occupied) of every agent of the selected frames, from the frozen encoder, one
    frame at a time (a few hundred frames' maps do not fit in memory at once)."""

    def encode(step: FrameStep) -> list:
        agents = step.frame.agents.values()
        clouds = [sanitize_points(s.points_in_bev(), perception.cfg) for s in agents]
        bev = perception.model.encode(clouds)
        return [(bev.features[b], bev.occupied[b]) for b in range(len(clouds))]

    with torch.no_grad():
        for maps in drive(log, encode, select_frames(log, frames), progress=progress, desc="features"):
            yield from maps


def fit_codebook(
    log,
    perception: Perception,
    cfg: CodebookConfig,
    frames: FrameSelection | None = None,
    samples: int = 200_000,
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> tuple[Codebook, dict]:
    """Residual product k-means (and optional refinement) on occupied-cell features of the frozen
    encoder, over ``frames`` (default: 300 at random, seeded with ``seed``, as the shipped
    codebook was sampled)."""
    frames = frames or FrameSelection(300, "random", seed)
    per_map = max(1, samples // max(1, len(select_frames(log, frames)) * 2))
    return fit_from_maps(
        cfg, encoder_maps(log, perception, frames, progress), cells_per_map=per_map, seed=seed, **kwargs
    )


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))
