"""Training the tracker's noise model on real per-agent detections (V2V4Real's, DMSTrack's input),
what ``v2x train tracker --detections DIR --labels DIR`` does.

Steps, all on the training sequences except where said: read every agent's detections and the
labels (:mod:`v2x.experiments.tracking_files`), give each detection the ground-truth id it
belongs to, fit the fixed prior, pre-train the network on the detections' own errors and train
it through the filter (best loss on the validation sequences kept), then run one search
(:func:`v2x.tracking.tune.tune`) on the validation sequences for the fixed noise and again for
the learned noise. The checkpoint carries both tuned settings: ``"tracker"`` (learned) and
``"fixed_tracker"`` (``v2x track --fixed-noise``), the same fitted prior under both (the fixed
noise one per agent by default, the network's residual on the pooled one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from v2x.datasets.errors import DatasetError
from v2x.experiments.tracking_files import attach_labels, read_agent_sequences
from v2x.tracking.config import TrackerConfig
from v2x.tracking.records import FrameDetections
from v2x.tracking.train import NoiseTrainConfig, assign_gt_ids, fit_prior, load_tracker, train_noise_model
from v2x.tracking.tune import tune

__all__ = ["labelled_agent_sequences", "train_on_agent_folders"]


def labelled_agent_sequences(
    detections: Path,
    labels: Path,
    order: str = "xzy",
    lengths: dict[str, int] | None = None,
    problems: list[DatasetError] | None = None,
    sequences: list[str] | None = None,
) -> list[tuple[str, list[FrameDetections]]]:
    """Per-agent sequences with every frame's ground truth from ``labels/NNNN.txt``."""
    seqs = read_agent_sequences(detections, order, lengths, problems, sequences)
    for name, frames in seqs:
        path = Path(labels) / f"{name}.txt"
        if not path.is_file():
            raise DatasetError(path, "file", f"missing: no labels for sequence {name}")
        attach_labels(frames, path, order, problems)
    return seqs


def train_on_agent_folders(
    sequences: list[tuple[str, list[FrameDetections]]],
    validate: list[str],
    out: Path,
    cfg: NoiseTrainConfig,
    base: TrackerConfig | None = None,
    search: dict | None = None,
    progress: bool = True,
    per_agent_prior: bool = True,
) -> dict:
    """Train, tune both noise modes on ``validate`` and write ``out/noise.pt`` (with both
    settings) and ``out/noise_training.json``; returns the summary. ``per_agent_prior``: the
    fixed noise has one fitted prior per agent slot (the network's residual stays on the pooled
    prior; its slot input learns the same difference)."""
    out = Path(out)
    names = [n for n, _ in sequences]
    unknown = sorted(set(validate) - set(names))
    if unknown:
        raise ValueError(f"validation sequences not in the data: {', '.join(unknown)}")
    train = [f for n, f in sequences if n not in set(validate)]
    val_named = [(n, f) for n, f in sequences if n in set(validate)]
    if not train or not val_named:
        raise ValueError("need at least one training and one validation sequence")
    for _, frames in sequences:
        assign_gt_ids(frames, cfg.match_distance)
    t0 = time.time()
    prior = fit_prior(train, base or TrackerConfig(), per_agent=per_agent_prior)
    torch.set_num_threads(1)
    summary = train_noise_model(train, [f for _, f in val_named], out, cfg, prior, progress)
    tracker_cfg, net = load_tracker(out / "noise.pt")
    fixed_cfg, fixed_trials = tune(val_named, prior, None, search, progress=progress)
    learned_cfg, learned_trials = tune(val_named, tracker_cfg, net, search, progress=progress)
    ckpt = torch.load(out / "noise.pt", map_location="cpu", weights_only=True)
    ckpt["tracker"], ckpt["fixed_tracker"] = learned_cfg.to_dict(), fixed_cfg.to_dict()
    torch.save(ckpt, out / "noise.pt")
    summary.update(
        {
            "validation_sequences": sorted(validate),
            "training_sequences": sorted(set(names) - set(validate)),
            "tuning": {"fixed": fixed_trials, "learned": learned_trials},
            "tracker": learned_cfg.to_dict(),
            "fixed_tracker": fixed_cfg.to_dict(),
            "fixed_prior": "per-agent" if per_agent_prior else "pooled",
            "seconds_total": round(time.time() - t0, 1),
        }
    )
    (out / "noise_training.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
