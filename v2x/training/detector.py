"""Training loop of the cooperative detector: progress, checkpoints, resume, validation AP, plots.

Deterministic for a seed on the same machine and thread count: parameter initialisation,
sample order and every random choice inside a sample derive from (seed, epoch, index).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from v2x.core.frame import AgentKind
from v2x.metrics.detection import DetectionEvaluator
from v2x.perception.config import DetectorConfig, load_config
from v2x.perception.cooperative import Perception, evaluation_ground_truth
from v2x.perception.detector import CooperativeDetector
from v2x.perception.fusion_kind import FusionKind
from v2x.perception.settings import resolve_share_frame
from v2x.pipeline.methods import fusion_mode
from v2x.training.dair_data import dair_split, is_dair_root
from v2x.training.data import CooperativeSample, CooperativeTrainingSet, collate_samples
from v2x.training.provenance import training_machine
from v2x.training.targets import build_targets, detection_loss

__all__ = ["TrainConfig", "evaluate_detector", "forward_losses", "train_detector"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 6
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-2
    grad_clip: float = 10.0
    seed: int = 0
    workers: int = 1
    threads: int = 2
    #: use every n-th training frame (consecutive 10 Hz frames are nearly identical)
    frame_stride: int = 1
    max_train_frames: int | None = None
    val_frames: int = 60
    early_probability: float = 0.25
    #: share of intermediate samples with collaborators encoded on the ego's grid (share_frame ego)
    ego_grid_probability: float = 0.0
    #: each agent's sensor frame is turned by up to this many degrees either way (augmentation).
    #: 45 suits vehicles, which mostly see cars along or across their heading; a roadside scan
    #: reaches the ego's grid turned by whatever angle the ego drives at (DAIR-V2X-C: 110 to 170
    #: degrees), so a detector fed roadside points on the ego's grid needs 180
    rotation_deg: float = 45.0
    #: ... and roadside units' by up to this many (default: ``rotation_deg``)
    rotation_deg_rsu: float | None = None
    #: each labelled object turned about its own centre by up to this many degrees either way,
    #: its points with it (0: off). Turning sensor frames keeps a car's heading relative to the
    #: ray that sees it; on one run of real frames that ties heading to place
    object_turn_deg: float = 0.0
    #: fine-tuning on few real frames: a second log folder (its ``train`` split when it has
    #: one, e.g. the simulated scans stage 1 trained on) whose frames join every epoch, so the
    #: network keeps seeing cars at every heading and bearing while it adapts to the real sensors
    mix_data: str | None = None
    #: ... that many of its frames, evenly spread (default: all)
    mix_frames: int | None = None
    #: only agents of these kinds (``vehicle``, ``rsu``) are made the ego of a training sample
    #: (default: any). With ``[vehicle]`` the head never learns in a roadside unit's frame, whose
    #: cars keep the pole's road directions; roadside single-side DAIR frames then drop out
    ego_kinds: list[str] | None = None
    max_agents: int = 5
    #: fine-tuning: start from these weights (keys the model lacks are refused; keys the
    #: checkpoint lacks must be trainable) ...
    init_weights: str | None = None
    #: ... and train only the parameters whose names start with one of these (e.g. ``fusion.``);
    #: the rest is frozen, batch-norm statistics included
    train_only: list[str] | None = None
    #: fusion modes validated each epoch (AP of each in history.jsonl)
    val_modes: list[str] = field(default_factory=lambda: ["none", "intermediate"])
    #: a real DAIR-V2X-C folder as --data (v2x.training.dair_data): validate on the pairs of
    #: these runs (A, B, ... in time order), ...
    dair_val_runs: list[str] | None = None
    #: ... train on these (default: every other run), ...
    dair_train_runs: list[str] | None = None
    #: ... with each side's frames that are in no pair as single-agent samples, ...
    dair_single_side: bool = True
    #: ... a run ending where consecutive vehicle scans are more than this apart (seconds)
    dair_run_gap_s: float = 0.5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training keys: {sorted(unknown)}")
        out = cls(**d)
        kinds = {k.value for k in AgentKind}
        if out.ego_kinds is not None and (not out.ego_kinds or set(out.ego_kinds) - kinds):
            raise ValueError(
                f"train.ego_kinds must be a non-empty list of {sorted(kinds)}, got {out.ego_kinds}"
            )
        if FusionKind.INTERMEDIATE.value not in out.val_modes:  # the best checkpoint is chosen by its AP
            raise ValueError(f"train.val_modes must include 'intermediate', got {out.val_modes}")
        return out


def load_train_config(path: str | Path | None) -> tuple[DetectorConfig, TrainConfig]:
    """Detector and training settings from one YAML file (sections ``detector`` and ``train``)."""
    cfg = load_config(path)
    raw = yaml.safe_load(Path(path).read_text()) if path is not None else {}
    return cfg, TrainConfig.from_dict((raw or {}).get("train", {}))


def forward_losses(model: CooperativeDetector, samples: list[CooperativeSample]) -> dict[str, torch.Tensor]:
    """Encode every cloud of the batch at once, fuse per sample, detect, and score against targets."""
    clouds = [c for s in samples for c in s.clouds]
    bev = model.encode(clouds)
    fused, k = [], 0
    for s in samples:
        n = len(s.clouds)
        feats, occ = bev.features[k : k + n], bev.occupied[k : k + n]
        others = [(feats[j], occ[j], s.ego_from_agent[j - 1]) for j in range(1, n)]
        fused.append(model.fuse(feats[0], occ[0], others))
        k += n
    out = model.detect(torch.stack(fused))
    targets = build_targets([s.boxes for s in samples], model.cfg)
    return detection_loss(out, targets)


def evaluate_detector(
    model: CooperativeDetector,
    log_,
    frame_indices: list[int],
    modes=("none", "intermediate"),
    progress: bool = False,
) -> dict[str, dict]:
    """AP per fusion mode (names of ``v2x.pipeline.methods.FUSION_MODES``) on the given frames of a
    log (ego of each frame as the log defines it), collaborators sharing in the frame the log's
    format defaults to, as in ``v2x eval detection``."""
    perception = Perception(model)
    default_frame = resolve_share_frame(None, getattr(log_, "format", None))
    evaluators = {m: DetectionEvaluator(eval_range=model.cfg.grid.xy_range) for m in modes}
    runs = {m: fusion_mode(m) for m in modes}
    for i in tqdm(frame_indices, desc="validate", disable=not progress, leave=False):
        frame = log_[i]
        gt = evaluation_ground_truth(frame, model.cfg.min_points_per_box)
        for m in modes:
            evaluators[m].add(runs[m].run(perception, frame, default_frame).boxes, gt)
    return {m: e.result() for m, e in evaluators.items()}


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _mix_in(
    train_log: Any, indices: list[int], mix_root: Path, mix_frames: int | None
) -> tuple[Any, list[int]]:
    """The training frames with ``mix_frames`` frames of another log (evenly spread) appended;
    the mixed-in frames' scenarios are prefixed ``mix/``."""
    from v2x.datasets import ConcatLog, open_log

    mix_log = open_log(_split(mix_root, "train") or mix_root)
    count = len(mix_log) if mix_frames is None else min(mix_frames, len(mix_log))
    if count <= 0:
        raise ValueError(f"train.mix_data: no frames to mix in from {mix_root}")
    picked = sorted(set(np.linspace(0, len(mix_log) - 1, count).round().astype(int).tolist()))
    both = ConcatLog([train_log, mix_log], ["real", "mix"])
    return both, indices + [len(train_log) + i for i in picked]


def _split(data: Path, name: str) -> Path | None:
    p = data / name
    return p if p.is_dir() else None


def _plot(history: list[dict], steps: list[tuple[int, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        s = np.array(steps)
        k = max(1, len(s) // 100)
        smooth = np.convolve(s[:, 1], np.ones(k) / k, mode="valid")
        axes[0].plot(s[:, 0], s[:, 1], color="0.8", lw=0.5, label="per step")
        axes[0].plot(s[k - 1 :, 0], smooth, color="C0", label=f"mean of {k}")
        axes[0].set_yscale("log")
    axes[0].set(xlabel="step", ylabel="training loss", title="Loss")
    axes[0].legend()
    for mode, color in (("none", "C1"), ("intermediate", "C2")):
        for thr, style in (("0.5", "-"), ("0.7", "--")):
            ys = [h["val"][mode]["ap_bev"][thr] for h in history if h.get("val") and mode in h["val"]]
            if ys:
                axes[1].plot(
                    range(1, len(ys) + 1), ys, style, color=color, marker="o", label=f"{mode} AP@{thr}"
                )
    axes[1].set(xlabel="epoch", ylabel="BEV AP", title="Validation AP", ylim=(0, 1))
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def train_detector(
    data: str | Path,
    out_dir: str | Path,
    cfg: DetectorConfig,
    tcfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train on ``data/train``, validate on ``data/validate`` each epoch; return the final summary.

    A real DAIR-V2X-C folder (``cooperative/data_info.json`` at ``data``) has no splits: it is
    split by run instead (``dair_val_runs``, v2x.training.dair_data)."""
    from v2x.datasets import open_log

    data, out_dir = Path(data), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    commit = _git_commit()  # the code that trains, not whatever is checked out when it ends
    torch.set_num_threads(tcfg.threads)
    split_summary: dict[str, Any] | None = None
    if is_dair_root(data):
        split = dair_split(
            data,
            tcfg.dair_val_runs or [],
            tcfg.dair_train_runs,
            tcfg.dair_single_side,
            tcfg.dair_run_gap_s,
            single_side_kinds=tcfg.ego_kinds,
        )
        train_root, train_log, split_summary = data, split.train, split.summary
        val_log = split.validate if len(split.validate) else None
        if progress:
            print(f"DAIR-V2X-C runs: {json.dumps(split_summary['runs'])}")
    else:
        train_root = _split(data, "train") or data
        val_root = _split(data, "validate")
        train_log = open_log(train_root)
        val_log = open_log(val_root) if val_root else None
    indices = list(range(0, len(train_log), max(1, tcfg.frame_stride)))
    if tcfg.max_train_frames:
        indices = indices[: tcfg.max_train_frames]
    if not indices:
        raise ValueError(f"no training frames in {train_root}")
    if tcfg.mix_data:
        train_log, indices = _mix_in(train_log, indices, Path(tcfg.mix_data), tcfg.mix_frames)
    val_indices: list[int] = []
    if val_log is not None and len(val_log) and tcfg.val_frames:
        val_indices = sorted(
            set(np.linspace(0, len(val_log) - 1, tcfg.val_frames).round().astype(int).tolist())
        )

    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    model = CooperativeDetector(cfg)
    if tcfg.init_weights:
        _load_initial(model, Path(tcfg.init_weights), tcfg.train_only)
    trainable = _trainable(model, tcfg.train_only)
    dataset = CooperativeTrainingSet(
        train_log,
        cfg,
        tcfg.seed,
        True,
        tcfg.early_probability,
        tcfg.max_agents,
        frame_indices=indices,
        ego_grid_probability=tcfg.ego_grid_probability,
        max_rotation=math.radians(tcfg.rotation_deg),
        max_rotation_rsu=None if tcfg.rotation_deg_rsu is None else math.radians(tcfg.rotation_deg_rsu),
        ego_kinds=tcfg.ego_kinds,
        max_object_turn=math.radians(tcfg.object_turn_deg),
    )
    steps_per_epoch = math.ceil(len(dataset) / tcfg.batch_size)
    optimizer = torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=tcfg.lr, total_steps=tcfg.epochs * steps_per_epoch, pct_start=0.1
    )
    history: list[dict] = []
    step_losses: list[tuple[int, float]] = []
    start_epoch = 0
    last = out_dir / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        history, step_losses, start_epoch = state["history"], state["step_losses"], state["epoch"]
        if state["scheduler"]["total_steps"] == tcfg.epochs * steps_per_epoch:
            scheduler.load_state_dict(state["scheduler"])
        elif start_epoch < tcfg.epochs:  # more epochs than planned: the one-cycle schedule stretched
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=tcfg.lr,
                total_steps=tcfg.epochs * steps_per_epoch,
                pct_start=0.1,
                last_epoch=start_epoch * steps_per_epoch - 1,
            )
        log.info("resumed from %s at epoch %d", last, start_epoch)
        if progress:
            print(f"resuming from {last} after epoch {start_epoch}")

    best_ap = max(
        (h["val"]["intermediate"]["ap_bev"]["0.5"] or 0.0 for h in history if h.get("val")), default=-1.0
    )
    t_start = time.time()
    for epoch in range(start_epoch, tcfg.epochs):
        _train_mode(model, tcfg.train_only)
        dataset.set_epoch(epoch)
        order = np.random.default_rng([tcfg.seed, epoch, 7]).permutation(len(dataset)).tolist()
        loader = DataLoader(
            dataset,
            batch_size=tcfg.batch_size,
            sampler=order,
            collate_fn=collate_samples,
            num_workers=tcfg.workers,
            worker_init_fn=_worker_init,
        )
        bar = tqdm(
            loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not progress
        )
        sums: dict[str, float] = {}
        skipped = 0
        for step, samples in enumerate(bar):
            losses = forward_losses(model, samples)
            if losses["total"].requires_grad:
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                torch.nn.utils.clip_grad_norm_(trainable, tcfg.grad_clip)
                optimizer.step()
            else:
                # nothing trainable took part: only the warp alignment trains and no sample of
                # this batch has a collaborator
                skipped += 1
            scheduler.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            global_step = epoch * steps_per_epoch + step
            total = float(losses["total"].detach())
            step_losses.append((global_step, total))
            bar.set_postfix(loss=f"{total:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": {k: v / steps_per_epoch for k, v in sums.items()},
            "elapsed_s": round(time.time() - t_start, 1),
            "steps_without_gradient": skipped,
        }
        if val_indices:
            model.eval()
            record["val"] = evaluate_detector(
                model, val_log, val_indices, modes=tuple(tcfg.val_modes), progress=progress
            )
            ap = record["val"]["intermediate"]["ap_bev"]["0.5"] or 0.0
            if progress:
                v = record["val"]
                aps = "  ".join(f"{m} {r['ap_bev']['0.5']}/{r['ap_bev']['0.7']}" for m, r in v.items())
                print(f"epoch {epoch + 1}: loss {record['train_loss']['total']:.3f}  val AP@0.5/0.7 {aps}")
            if ap > best_ap:
                best_ap = ap
                torch.save(model.checkpoint(epoch=epoch + 1, val=record["val"]), out_dir / "best.pt")
        history.append(record)
        with open(out_dir / "history.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        torch.save(
            {
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "step_losses": step_losses,
                "epoch": epoch + 1,
                "config": cfg.to_dict(),
            },
            last,
        )
        _plot(history, step_losses, out_dir / "training.png")

    provenance = {
        "command": command,
        "data": str(data),
        "train_frames": len(indices),
        "seed": tcfg.seed,
        "train_config": asdict(tcfg),
        "git_commit": commit,
        **training_machine(),  # the same seed gives other weights on another CPU
        "threads": tcfg.threads,
        "final_val": history[-1].get("val") if history else None,
    }
    if split_summary is not None:
        provenance["validation_split"] = split_summary
    model.eval()
    final = out_dir / "detector.pt"
    torch.save(model.checkpoint(provenance=json.dumps(provenance)), final)
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return {"weights": str(final), "history": history, "provenance": provenance, "identity": model.identity()}


def _load_initial(model: CooperativeDetector, path: Path, train_only: list[str] | None) -> None:
    """Weights to fine-tune from: everything the checkpoint has must fit the model; what it
    lacks (a new fusion module, say) must be among the parameters being trained."""
    if not path.is_file():
        raise FileNotFoundError(f"init_weights: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"init_weights {path}: keys this model does not have: {sorted(unexpected)[:5]}")
    untrained = [k for k in missing if not any(k.startswith(p) for p in (train_only or [""]))]
    if untrained:
        raise ValueError(f"init_weights {path} lacks {sorted(untrained)[:5]}, which train_only freezes")


def _trainable(model: CooperativeDetector, train_only: list[str] | None) -> list[torch.nn.Parameter]:
    """The parameters to optimise; the others stop taking gradients."""
    out = []
    for name, p in model.named_parameters():
        p.requires_grad_(not train_only or any(name.startswith(x) for x in train_only))
        if p.requires_grad:
            out.append(p)
    if not out:
        raise ValueError(f"train_only {train_only} names no parameter of the model")
    return out


def _train_mode(model: CooperativeDetector, train_only: list[str] | None) -> None:
    """Training mode for the trained modules only: frozen ones keep their batch-norm statistics."""
    model.train()
    if train_only:
        for name, m in model.named_modules():
            if name and not any(name.startswith(x.rstrip(".")) for x in train_only):
                m.eval()


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
