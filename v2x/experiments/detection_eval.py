"""Detection evaluation of the fusion modes over a log (what ``v2x eval detection`` runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from v2x.metrics.bootstrap import paired_ap_difference
from v2x.metrics.detection import DetectionEvaluator
from v2x.perception.box_merge import BOX_FUSION_IOU
from v2x.perception.cooperative import Perception, evaluation_ground_truth
from v2x.perception.detector import load_detector, resolve_weights
from v2x.perception.fusion_kind import FusionKind
from v2x.perception.settings import resolve_share_frame
from v2x.pipeline.frames import FrameSelection, FrameStep, drive, select_frames
from v2x.pipeline.methods import fusion_mode

__all__ = ["evaluate_fusion_modes"]


def evaluate_fusion_modes(
    root: Path,
    modes: list[str],
    weights: Path | None = None,
    frames: FrameSelection | None = None,
    max_cav: int = 5,
    progress: bool = False,
    threads: int | None = None,
    bootstrap: int = 0,
    bootstrap_block: int = 1,
    precision: str = "fp32",
    box_fusion_iou: float | None = BOX_FUSION_IOU,
    share_frame: str | None = None,
    box_fit: int | None = None,
) -> dict[str, dict]:
    """AP (BEV and 3D, 0.3/0.5/0.7) and mean bytes per collaborator per frame, per mode, on the
    ``frames`` selected (default: all).

    With ``bootstrap`` resamples and two or more modes, the result also holds
    ``"paired_bootstrap"``: for each later mode against each earlier one, the BEV AP difference
    with its 95 % interval over paired resamples of the frames, or of runs of ``bootstrap_block``
    consecutive frames (``v2x.metrics.bootstrap``), and ``"bootstrap"``: those two settings.
    ``precision``: the detector's neck and head in fp32 or bf16 (CooperativeDetector.set_precision).
    ``box_fusion_iou``: late fusion's merge (:mod:`v2x.perception.box_merge`; None: plain NMS).
    ``share_frame``: where collaborators encode for ``intermediate`` (None: the log format's
    default, as in ``v2x eval comm``: the ego's grid, the collaborator's own frame for DAIR-V2X-C);
    each mode's result says which under ``share_frame``. ``box_fit``: the detector's
    ``box_fit_min_points`` (None: the weights' own), reported under that name."""
    from v2x.datasets import open_log

    if threads:
        torch.set_num_threads(threads)
    log = open_log(root, max_cav=max_cav)
    fmt = getattr(log, "format", None)
    default_frame = resolve_share_frame(share_frame, fmt)
    model = load_detector(weights, precision=precision, log_format=fmt, box_fit_min_points=box_fit)
    perception = Perception(model, box_fusion_iou=box_fusion_iou)
    indices = select_frames(log, frames or FrameSelection())
    evaluators = {m: DetectionEvaluator(eval_range=model.cfg.grid.xy_range) for m in modes}
    sent: dict[str, list[int]] = {m: [] for m in modes}
    runs = {m: fusion_mode(m) for m in modes}  # the registry's fusion modes, checked before any work

    def evaluate(step: FrameStep) -> None:
        gt = evaluation_ground_truth(step.frame, model.cfg.min_points_per_box)
        for m in modes:
            res = runs[m].run(perception, step.frame, default_frame)
            evaluators[m].add(res.boxes, gt)
            sent[m].extend(res.bytes_per_collaborator.values())

    for _ in drive(log, evaluate, indices, progress=progress, desc="evaluate"):
        pass
    out = {}
    for m in modes:
        r = evaluators[m].result()
        r["fusion"] = m
        r["bytes_per_agent_frame"] = float(np.mean(sent[m])) if sent[m] else 0.0
        r["log2_bytes_per_agent_frame"] = (
            float(np.log2(r["bytes_per_agent_frame"])) if sent[m] and np.mean(sent[m]) > 0 else None
        )
        r["weights"] = str(weights) if weights else f"shipped ({resolve_weights(None, fmt).name})"
        r["model_identity"] = model.identity()
        r["precision"] = model.precision
        r["box_fusion_iou"] = box_fusion_iou
        r["box_fit_min_points"] = model.cfg.box_fit_min_points
        r["share_frame"] = (
            runs[m].shares_in(default_frame) if runs[m].fusion is FusionKind.INTERMEDIATE else None
        )
        r["data"] = str(root)
        r["_table"] = evaluators[m].table(f"fusion={m}")
        out[m] = r
    if bootstrap and len(modes) > 1:
        out["paired_bootstrap"] = {
            f"{b} - {a}": paired_ap_difference(
                evaluators[a], evaluators[b], resamples=bootstrap, block=bootstrap_block
            )
            for i, a in enumerate(modes)
            for b in modes[i + 1 :]
        }
        out["bootstrap"] = {"resamples": bootstrap, "block": bootstrap_block}
    return out
