"""``v2x train messages``: the codebook, fusion, neck and head trained on what the ego receives.

CodeFilling's recipe with our message path: the detector's encoder (and the head every sender
runs for its supply map) stays frozen; each sample draws a method (codebook, codefilling or
the hybrid) and a budget (log-uniform between the configured bounds), and the real codec
builds the messages of that budget (demand, offers, information filling, exact byte sizes).
The cells a collaborator sent are quantised by the codebook being trained (decoded values
carry the codewords' gradient), the ego's own features stay exact, and the decoder (fusion,
alignment, neck, head) fuses and detects; the loss is the detection loss plus the codebook's
relative reconstruction error. Validation runs ``v2x eval comm``'s own loop at fixed budgets.

Deterministic for a seed on the same machine and thread count, like ``v2x train detector``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from v2x.messages.codebook import Codebook, load_codebook
from v2x.messages.codec import MessageCodec, exchange
from v2x.messages.message_weights import (
    DECODER_PREFIXES,
    MessageWeights,
    clone_detector,
    save_message_weights,
)
from v2x.perception.cooperative import AgentPerception, Perception
from v2x.perception.detector import CooperativeDetector
from v2x.perception.fusion_kind import FusionKind
from v2x.perception.head import HeadOutput
from v2x.pipeline.methods import METHODS, get_method
from v2x.training.data import CooperativeSample, CooperativeTrainingSet
from v2x.training.detector import _git_commit
from v2x.training.provenance import training_machine
from v2x.training.targets import build_targets, detection_loss

__all__ = ["MessageTrainConfig", "message_losses", "train_messages"]

#: the name of the codebook's trainable part in ``MessageTrainConfig.train``
CODEWORDS = "codewords"
#: methods whose messages carry codes (what the decoder learns to read)
CODE_METHODS = tuple(m.name for m in METHODS.values() if m.needs_codebook)


@dataclass
class MessageTrainConfig:
    steps: int = 600
    batch_size: int = 2
    lr: float = 5e-4
    #: learning rate of the codewords (their scale is the features', not the weights')
    codebook_lr: float = 1e-3
    weight_decay: float = 1e-2
    grad_clip: float = 10.0
    seed: int = 0
    threads: int = 2
    frame_stride: int = 1
    max_train_frames: int | None = None
    max_agents: int = 5
    #: each sample's budget (bytes per collaborator link) is drawn log-uniformly in this range
    budget_min: int = 256
    budget_max: int = 4096
    #: each sample's method, drawn uniformly from these
    methods: list[str] = field(default_factory=lambda: list(CODE_METHODS))
    #: weight of the codebook's relative reconstruction error beside the detection loss
    codebook_weight: float = 1.0
    #: which parts train: any of "codewords" and the decoder prefixes (the recipe's ablations)
    train: list[str] = field(default_factory=lambda: [CODEWORDS, *DECODER_PREFIXES])
    #: the frame collaborators encode in ("ego": the simulator's default; "own": DAIR-V2X-C's)
    share_frame: str = "ego"
    rotation_deg: float = 45.0
    #: validation: frames of the validation split, budgets, methods; every ``val_every`` steps
    val_frames: int = 30
    val_budgets: list[int] = field(default_factory=lambda: [512, 1024, 4096])
    val_methods: list[str] = field(default_factory=lambda: ["codefilling", "hybrid"])
    val_every: int = 200
    checkpoint_every: int = 50

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MessageTrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown message-training keys: {sorted(unknown)}")
        out = cls(**d)
        for m in [*out.methods, *out.val_methods]:
            if m not in CODE_METHODS:
                raise ValueError(f"methods: {m!r} does not send codes; use {', '.join(CODE_METHODS)}")
        bad = [t for t in out.train if t != CODEWORDS and t not in DECODER_PREFIXES]
        if bad or not out.train:
            raise ValueError(
                f"train: {bad or out.train} is not among {CODEWORDS}, {', '.join(DECODER_PREFIXES)}"
            )
        if not 0 < out.budget_min <= out.budget_max:
            raise ValueError(f"budget_min/budget_max: need 0 < {out.budget_min} <= {out.budget_max}")
        return out


def draw_budget(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A budget drawn log-uniformly in [lo, hi] bytes."""
    return round(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _perceptions(
    sample: CooperativeSample, feats: torch.Tensor, occ: torch.Tensor, conf: np.ndarray, boxes
) -> list[AgentPerception]:
    """The sample's agents as the codec sees them: the ego at the origin, collaborators at
    their pose relative to it (identity when they encoded on the ego's grid)."""
    poses = [np.eye(4), *sample.ego_from_agent]
    return [
        AgentPerception(
            str(i), "vehicle", 0, poses[i], feats[i], occ[i], conf[i], boxes[i] if boxes else None
        )
        for i in range(len(poses))
    ]


def message_losses(
    frozen: CooperativeDetector,
    decoder: CooperativeDetector,
    codebook: Codebook,
    samples: list[CooperativeSample],
    rng: np.random.Generator,
    tcfg: MessageTrainConfig,
) -> dict[str, torch.Tensor]:
    """One batch: real messages under a random method and budget per sample, decoded with the
    codewords' gradient, fused and detected by ``decoder``; detection plus codebook loss."""
    clouds = [c for s in samples for c in s.clouds]
    with torch.no_grad():
        bev = frozen.encode(clouds)
        head = frozen.detect(bev.features)
        conf = head.confidence().numpy().astype(np.float32)
    codec = MessageCodec(frozen.cfg.grid, codebook)
    c = frozen.cfg.bev_channels
    h, w = frozen.cfg.grid.shape
    fused, k = [], 0
    rec_err, rec_energy = torch.zeros(()), torch.zeros(())
    sent_bytes = []
    for s in samples:
        n = len(s.clouds)
        feats, occ = bev.features[k : k + n], bev.occupied[k : k + n]
        method = get_method(tcfg.methods[int(rng.integers(len(tcfg.methods)))])
        budget = draw_budget(rng, tcfg.budget_min, tcfg.budget_max)
        boxes = None
        if method.attaches_boxes and n > 1:
            boxes = frozen.decode(HeadOutput(head.heatmap[k : k + n], head.regression[k : k + n]))
        agents = _perceptions(s, feats, occ, conf[k : k + n], boxes)
        others = []
        if n > 1:
            shared, _, out = exchange(
                codec, method.features, agents[0], agents[1:], budget, hybrid=method.attaches_boxes
            )
            sent_bytes += [o.bytes for o in out.values()]
            for f in shared:
                j = int(f.agent_id)
                idx = torch.from_numpy(np.flatnonzero(f.valid.numpy().ravel()))
                x = feats[j].reshape(c, -1)[:, idx].T  # (n, C) what the sender quantised
                q = codebook.decode(codebook.encode(x)).clamp(min=0)  # as the codec decodes
                rec_err = rec_err + ((q - x) ** 2).sum()
                rec_energy = rec_energy + (x**2).sum()
                dense = torch.zeros(c, h * w).index_copy(1, idx, q.T)
                others.append((dense.reshape(c, h, w), f.valid, agents[j].world_from_bev))
        fused.append(decoder.fuse(feats[0], occ[0], others))
        k += n
    out = decoder.detect(torch.stack(fused))
    losses = detection_loss(out, build_targets([s.boxes for s in samples], decoder.cfg))
    rel = rec_err / rec_energy.clamp(min=1e-9)
    losses["reconstruction"] = rel
    losses["total"] = losses["total"] + tcfg.codebook_weight * rel
    losses["bytes"] = torch.tensor(float(np.mean(sent_bytes)) if sent_bytes else 0.0)
    return losses


def validate(
    frozen: CooperativeDetector,
    weights: MessageWeights,
    log_,
    tcfg: MessageTrainConfig,
    progress: bool = False,
) -> dict[str, dict[str, float | None]]:
    """AP@0.5 and 0.7 of each validation method and budget (``v2x eval comm``'s loop), late
    fusion's at each budget beside them."""
    from v2x.experiments.comm_eval import CommSetting, evaluate_comm
    from v2x.pipeline.frames import FrameSelection

    settings = [CommSetting(m, budget=b) for m in ["late", *tcfg.val_methods] for b in tcfg.val_budgets]
    rows = evaluate_comm(
        log_,
        Perception(frozen),
        MessageCodec(frozen.cfg.grid, weights.codebook, codebook_id=weights.identity()),
        settings,
        FrameSelection(tcfg.val_frames, "spread"),
        progress=progress,
        share_frame=tcfg.share_frame,
        decoder=weights.decoder,
    )
    return {f"{r['method']}@{r['budget_bytes']}": {t: r["ap_bev"][t] for t in ("0.5", "0.7")} for r in rows}


def _plot(history: list[dict], steps: list[tuple[int, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        s = np.array(steps)
        k = max(1, len(s) // 50)
        axes[0].plot(s[:, 0], s[:, 1], color="0.8", lw=0.5)
        axes[0].plot(s[k - 1 :, 0], np.convolve(s[:, 1], np.ones(k) / k, mode="valid"), color="C0")
    axes[0].set(xlabel="step", ylabel="training loss", title="Loss")
    keys = sorted({k for h in history for k in h["val"]})
    for i, key in enumerate(keys):
        xs = [h["step"] for h in history if key in h["val"]]
        ys = [h["val"][key]["0.5"] or 0.0 for h in history if key in h["val"]]
        axes[1].plot(
            xs, ys, marker="o", color=f"C{i % 10}", label=key, ls="--" if key.startswith("late") else "-"
        )
    axes[1].set(xlabel="step", ylabel="BEV AP@0.5", title="Validation AP per method@budget", ylim=(0, 1))
    if keys:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def train_messages(
    data: str | Path,
    out_dir: str | Path,
    frozen: CooperativeDetector,
    init_codebook: str | Path,
    tcfg: MessageTrainConfig,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train on ``data/train`` (validate on ``data/validate``); write ``messages.pt`` and provenance."""
    from v2x.datasets import open_log

    data, out_dir = Path(data), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    commit = _git_commit()
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    train_root = data / "train" if (data / "train").is_dir() else data
    val_root = data / "validate" if (data / "validate").is_dir() else None
    train_log = open_log(train_root)
    val_log = open_log(val_root) if val_root else None
    indices = list(range(0, len(train_log), max(1, tcfg.frame_stride)))[: tcfg.max_train_frames or None]
    if not indices:
        raise ValueError(f"no training frames in {train_root}")
    validating = val_log is not None and len(val_log) > 0 and tcfg.val_frames > 0

    frozen = frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    detector_identity = frozen.identity()
    decoder = clone_detector(frozen)
    codebook = load_codebook(init_codebook)
    if codebook.cfg.channels != frozen.cfg.bev_channels:
        raise ValueError(
            f"init codebook {init_codebook}: {codebook.cfg.channels} channels, detector has "
            f"{frozen.cfg.bev_channels}"
        )
    groups = []
    dec_params = [
        p
        for n, p in decoder.named_parameters()
        if n.startswith(tuple(x for x in tcfg.train if x != CODEWORDS))
    ]
    for n, p in decoder.named_parameters():
        p.requires_grad_(any(n.startswith(x) for x in tcfg.train if x != CODEWORDS))
    if dec_params:
        groups.append({"params": dec_params, "lr": tcfg.lr, "weight_decay": tcfg.weight_decay})
    codebook.codewords.requires_grad_(CODEWORDS in tcfg.train)
    if CODEWORDS in tcfg.train:
        groups.append({"params": [codebook.codewords], "lr": tcfg.codebook_lr, "weight_decay": 0.0})
    max_lrs = [g["lr"] for g in groups]  # the optimiser's groups hold the scheduled rate later
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lrs, total_steps=tcfg.steps, pct_start=0.1
    )
    dataset = CooperativeTrainingSet(
        train_log,
        frozen.cfg,
        tcfg.seed,
        True,
        0.0,
        tcfg.max_agents,
        frame_indices=indices,
        ego_grid_probability=1.0 if tcfg.share_frame == "ego" else 0.0,
        max_rotation=math.radians(tcfg.rotation_deg),
    )
    history: list[dict] = []
    step_losses: list[tuple[int, float]] = []
    start = 0
    last = out_dir / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        decoder.load_state_dict(state["decoder"])
        codebook.codewords.data.copy_(state["codewords"])
        optimizer.load_state_dict(state["optimizer"])
        history, step_losses, start = state["history"], state["step_losses"], state["step"]
        if state["scheduler"]["total_steps"] == tcfg.steps:
            scheduler.load_state_dict(state["scheduler"])
        elif start < tcfg.steps:  # more steps than planned: the one-cycle schedule stretched
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=max_lrs,
                total_steps=tcfg.steps,
                pct_start=0.1,
                last_epoch=start - 1,
            )
        if progress:
            print(f"resuming from {last} after step {start}")

    def snapshot() -> MessageWeights:
        return MessageWeights(copy.deepcopy(codebook), clone_detector(decoder))

    def save_last(step: int) -> None:
        torch.save(
            {
                "decoder": decoder.state_dict(),
                "codewords": codebook.codewords.detach().clone(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "step_losses": step_losses,
                "step": step,
            },
            last,
        )

    if start == 0 and validating:
        record = {"step": 0, "val": validate(frozen, snapshot(), val_log, tcfg, progress)}
        history.append(record)
        _log_record(out_dir, record, progress)
    per_epoch = math.ceil(len(dataset) / tcfg.batch_size)
    t0 = time.time()
    bar = tqdm(total=tcfg.steps, initial=start, desc="train messages", disable=not progress)
    sums: dict[str, float] = {}
    for step in range(start, tcfg.steps):
        epoch, pos = divmod(step, per_epoch)
        dataset.set_epoch(epoch)
        order = np.random.default_rng([tcfg.seed, epoch, 11]).permutation(len(dataset))
        batch = [dataset[int(i)] for i in order[pos * tcfg.batch_size : (pos + 1) * tcfg.batch_size]]
        batch = [s for s in batch if s.fusion is FusionKind.INTERMEDIATE]
        decoder.train()
        _freeze_untrained(decoder, tcfg.train)
        rng = np.random.default_rng([tcfg.seed, step, 13])
        losses = message_losses(frozen, decoder, codebook, batch, rng, tcfg)
        _descend(losses["total"], optimizer, [p for g in groups for p in g["params"]], tcfg.grad_clip)
        scheduler.step()
        total = float(losses["total"].detach())
        step_losses.append((step + 1, total))
        for key, v in losses.items():
            sums[key] = sums.get(key, 0.0) + float(v.detach())
        bar.update(1)
        bar.set_postfix(
            loss=f"{total:.3f}",
            rec=f"{float(losses['reconstruction'].detach()):.3f}",
            bytes=f"{float(losses['bytes']):.0f}",
        )
        done = step + 1
        if validating and (done % tcfg.val_every == 0 or done == tcfg.steps):
            record = {
                "step": done,
                "train_loss": {key: v / max(1, len(step_losses)) for key, v in sums.items()},
                "elapsed_s": round(time.time() - t0, 1),
                "val": validate(frozen, snapshot(), val_log, tcfg, progress),
            }
            history.append(record)
            _log_record(out_dir, record, progress)
            _plot(history, step_losses, out_dir / "training.png")
        if done % tcfg.checkpoint_every == 0 or done == tcfg.steps:
            save_last(done)
    bar.close()
    decoder.eval()
    provenance = {
        "command": command,
        "data": str(data),
        "train_frames": len(indices),
        "seed": tcfg.seed,
        "train_config": asdict(tcfg),
        "init_codebook": str(init_codebook),
        "detector": detector_identity,
        "git_commit": commit,
        **training_machine(),  # the same seed gives other weights on another CPU
        "threads": tcfg.threads,
        "validation": history,
    }
    final = out_dir / "messages.pt"
    identity = save_message_weights(
        final, codebook, decoder, detector_identity, provenance=json.dumps(provenance)
    )
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return {"weights": str(final), "identity": identity, "history": history, "provenance": provenance}


def _descend(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list, grad_clip: float) -> bool:
    """One optimiser step on ``loss``; False (and nothing changes) when no trained part is in its
    graph: with the codewords alone training (``train: [codewords]``), a sample whose messages
    carried no code (a hybrid whose budget went to boxes) gives the loss no gradient."""
    optimizer.zero_grad(set_to_none=True)
    if not loss.requires_grad:
        return False
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return True


def _freeze_untrained(decoder: CooperativeDetector, train: list[str]) -> None:
    """Modules outside ``train`` keep their batch-norm statistics (eval mode)."""
    for name, m in decoder.named_modules():
        if name and not any((name + ".").startswith(x) or x.startswith(name + ".") for x in train):
            m.eval()


def _log_record(out_dir: Path, record: dict, progress: bool) -> None:
    with open(out_dir / "history.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    if progress:
        aps = "  ".join(f"{k} {v['0.5']}/{v['0.7']}" for k, v in record["val"].items())
        print(f"step {record['step']}: val AP@0.5/0.7 {aps}")
