"""Fitting the fixed noise prior and training the measurement-noise network end to end.

Prior: like Chiu et al.'s probabilistic tracker (and DMSTrack's fixed-noise baseline), the
fixed measurement variances are the spread of the training detections' errors (each detection
against the ground-truth box it belongs to, in the measuring agent's frame), and the process
noise is the spread of the ground truth's departures from constant velocity.

Network: sequences are replayed through :class:`~v2x.tracking.dmstrack.MultiSensorKF` with
gradients on. After every frame, each track updated in that frame is compared with the
ground-truth box its detection belongs to (association by ground-truth id: exact, no guessing)
and the loss is the squared error of position, size and heading (heading modulo 180 degrees).
Every ``window`` frames (10, as DMSTrack) the loss is back-propagated through the Kalman gains
into the network, the optimiser steps, and the tracker's state is detached so the next window
starts from warm tracks (truncated back-propagation).
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from v2x.core.boxes import VEHICLE_CLASSES, wrap_angle
from v2x.core.matching import centre_distances, pairs_within
from v2x.tracking.calibrate import detection_samples, pretrain_nll
from v2x.tracking.config import STATE_FROM_BOX, TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.noise_net import NoiseNet, agent_frame_boxes, parameter_count
from v2x.tracking.records import FrameDetections
from v2x.tracking.tracker import StepOutput

__all__ = [
    "NoiseTrainConfig",
    "assign_gt_ids",
    "fit_prior",
    "frame_loss",
    "load_noise_model",
    "load_tracker",
    "sequence_loss",
    "train_noise_model",
]


@dataclass
class NoiseTrainConfig:
    epochs: int = 8
    window: int = 10
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    feature_channels: int = 0
    patch: int = 5
    hidden: int = 64
    #: one-hot agent slots the net sees (0: none; 2 for V2V4Real's ego and collaborator)
    agent_slots: int = 0
    #: epochs of likelihood pre-training on the detections' own errors (``calibrate.py``) first
    nll_epochs: int = 0
    nll_lr: float = 3e-3
    clip_grad: float = 1.0
    #: detections farther than this from every ground-truth centre are false positives
    match_distance: float = 2.0
    yaw_weight: float = 1.0
    size_weight: float = 1.0


# -- ground-truth ids -------------------------------------------------------------------------------


def assign_gt_ids(frames: list[FrameDetections], max_distance: float = 2.0) -> int:
    """Give detections without ``gt_ids`` the id of the ground-truth box they belong to (Hungarian
    on BEV centre distance, at most ``max_distance`` m; -1 otherwise). Returns how many got one."""
    n = 0
    for f in frames:
        if f.gt is None:
            continue
        gt = f.gt[f.gt.of_classes(VEHICLE_CLASSES)]
        for a in f.agents:
            if a.gt_ids is not None:
                continue
            ids = np.full(len(a.boxes), -1, dtype=np.int64)
            if len(a.boxes) and len(gt):
                rows, cols = pairs_within(centre_distances(a.boxes.xyzlwhy, gt.xyzlwhy), max_distance)
                ids[rows] = gt.track_ids[cols]
                n += len(rows)
            a.gt_ids = ids
    return n


# -- the fixed prior --------------------------------------------------------------------------------


def _robust_var(x: np.ndarray, floor: float) -> float:
    """Variance after dropping the 1 % largest deviations from the median (gross mismatches, not
    noise); a quantile rather than a MAD rule, as some components are mostly exact zeros."""
    x = x[np.isfinite(x)]
    if len(x) < 10:
        return floor
    dev = np.abs(x - np.median(x))
    keep = dev <= np.quantile(dev, 0.99)
    return float(max(np.var(x[keep]), floor))


def detection_errors(sequences: list[list[FrameDetections]], slot: int | None = None) -> np.ndarray:
    """(N, 7) errors of matched detections, box order, in the measuring agent's frame
    (heading modulo 180 degrees, sizes absolute); ``slot``: only the agents in that place of
    their frame (0 the ego)."""
    errs = []
    for seq in sequences:
        for f in seq:
            if f.gt is None:
                continue
            by_id = {int(t): i for i, t in enumerate(f.gt.track_ids)}
            for k, a in enumerate(f.agents):
                if (slot is not None and k != slot) or a.gt_ids is None or len(a.boxes) == 0:
                    continue
                rows = [i for i, g in enumerate(a.gt_ids) if int(g) in by_id]
                if not rows:
                    continue
                det = a.select(np.array(rows))
                gt = f.gt[np.array([by_id[int(a.gt_ids[i])] for i in rows])]
                d = agent_frame_boxes(det.boxes, a.world_from_agent) - agent_frame_boxes(
                    gt, a.world_from_agent
                )
                d[:, 6] = wrap_angle(2 * d[:, 6]) / 2
                errs.append(d)
    return np.concatenate(errs) if errs else np.zeros((0, 7))


def fit_prior(
    sequences: list[list[FrameDetections]], base: TrackerConfig | None = None, per_agent: bool = False
) -> TrackerConfig:
    """A tracker configuration whose fixed noise is fitted to training data (see module doc).

    ``per_agent``: also one prior per agent slot (``measurement_var_by_slot``), each fitted to
    that slot's detections alone (a slot with under 100 of them takes the pooled prior): the
    fixed-noise filter then knows, as the learned network does from its slot input, that a
    collaborator's boxes are further off than the ego's own."""
    base = base or TrackerConfig()
    errs = detection_errors(sequences)
    if len(errs) < 10:
        raise ValueError(f"only {len(errs)} detections with ground truth: cannot fit a noise prior")
    meas = tuple(_robust_var(errs[:, i], 1e-4) for i in range(7))
    by_slot: tuple[tuple[float, ...], ...] = ()
    if per_agent:
        slots = max((len(f.agents) for seq in sequences for f in seq), default=0)
        rows = []
        for k in range(slots):
            e = detection_errors(sequences, slot=k)
            rows.append(tuple(_robust_var(e[:, i], 1e-4) for i in range(7)) if len(e) >= 100 else meas)
        by_slot = tuple(rows)
    # process noise: departures of the ground truth from constant velocity over one step
    acc, dyaw, dsize, speed = [], [], [], []
    for seq in sequences:
        tracks: dict[int, list[tuple[int, np.ndarray]]] = {}
        for f in seq:
            if f.gt is None:
                continue
            for tid, b in zip(f.gt.track_ids, f.gt.xyzlwhy, strict=True):
                tracks.setdefault(int(tid), []).append((f.frame, b))
        for items in tracks.values():
            fr = np.array([i[0] for i in items])
            b = np.array([i[1] for i in items]).reshape(-1, 7)
            step = np.diff(fr) == 1  # consecutive frames only (objects come and go from view)
            triple = step[1:] & step[:-1]
            acc.append((b[2:, :3] - 2 * b[1:-1, :3] + b[:-2, :3])[triple])
            dyaw.append((wrap_angle(2 * np.diff(b[:, 6])) / 2)[step])
            dsize.append(np.diff(b[:, 3:6], axis=0)[step])
            speed.append((np.diff(b[:, :3], axis=0) / base.dt)[step])
    acc, dyaw, dsize, speed = (np.concatenate(x) for x in (acc, dyaw, dsize, speed))
    if len(acc) < 10:
        raise ValueError("too few ground-truth tracks three frames long: cannot fit the process noise")
    dt = base.dt
    # plain variances: manoeuvres are rare but they are what the process noise is for; only
    # physically impossible steps (re-used ids, teleports) are left out
    real = np.linalg.norm(acc, axis=1) / dt**2 < 30.0
    acc = acc[real]
    dyaw = dyaw[np.abs(dyaw) < 0.5]
    pos = [max(float(np.var(acc[:, i])), 1e-4) for i in range(3)]
    vel = [max(float(np.var(acc[:, i] / dt)), 1e-2) for i in range(3)]
    process = (
        *pos,
        max(float(np.var(dyaw)), 1e-5),
        *(max(float(np.var(dsize[:, i])), 1e-6) for i in range(3)),
        *vel,
    )
    spread = [max(float(np.var(speed[:, i])), 1.0) for i in range(3)]
    initial = tuple(np.asarray(meas)[STATE_FROM_BOX]) + tuple(spread)
    return base.with_(
        measurement_var=meas, measurement_var_by_slot=by_slot, process_var=process, initial_var=initial
    )


# -- loss -------------------------------------------------------------------------------------------


def frame_loss(out: StepOutput, frame: FrameDetections, cfg: NoiseTrainConfig) -> tuple[torch.Tensor, int]:
    """Squared box error of the tracks updated this frame against their ground truth, and how many."""
    zero = torch.zeros((), dtype=torch.float64)
    if frame.gt is None or not out.updated.any():
        return zero, 0
    by_id = {int(t): i for i, t in enumerate(frame.gt.track_ids)}
    rows = [i for i in np.flatnonzero(out.updated) if int(out.gt_ids[i]) in by_id]
    if not rows:
        return zero, 0
    gt = torch.from_numpy(frame.gt.xyzlwhy[[by_id[int(out.gt_ids[i])] for i in rows]][:, STATE_FROM_BOX])
    x = out.states[torch.tensor(rows)]
    d = x[:, :7] - gt
    dyaw = torch.atan2(torch.sin(2 * d[:, 3]), torch.cos(2 * d[:, 3])) / 2
    err = d[:, :3].pow(2).sum(1) + cfg.size_weight * d[:, 4:7].pow(2).sum(1) + cfg.yaw_weight * dyaw.pow(2)
    return err.sum(), len(rows)


def sequence_loss(kf: MultiSensorKF, seq: list[FrameDetections], cfg: NoiseTrainConfig) -> tuple[float, int]:
    """Summed loss and matched-track count over a whole sequence, without gradients."""
    kf.reset()
    kf.differentiable = False
    total, n = 0.0, 0
    for f in seq:
        loss, m = frame_loss(kf.step(f), f, cfg)
        total += float(loss)
        n += m
    return total, n


def _mean_loss(kf, seqs, cfg) -> float:
    parts = [sequence_loss(kf, s, cfg) for s in seqs]
    return sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)


def _patch_stats(seqs: list[list[FrameDetections]], channels: int, rng: np.random.Generator):
    feats = [
        a.features for s in seqs for f in s for a in f.agents if a.features is not None and len(a.features)
    ]
    if not feats:
        return torch.zeros(channels), torch.ones(channels)
    x = np.concatenate(feats).astype(np.float32)
    if len(x) > 20000:
        x = x[rng.choice(len(x), 20000, replace=False)]
    x = x.transpose(1, 0, 2, 3).reshape(channels, -1)
    return torch.from_numpy(x.mean(1)), torch.from_numpy(x.std(1))


def train_noise_model(
    train: list[list[FrameDetections]],
    val: list[list[FrameDetections]],
    out_dir: str | Path,
    cfg: NoiseTrainConfig | None = None,
    tracker_cfg: TrackerConfig | None = None,
    progress: bool = True,
) -> dict:
    """Fit the prior (unless ``tracker_cfg`` is given), train the net, keep the best on ``val``.

    Writes ``noise.pt`` (best), ``last.pt`` and ``noise_training.json`` into ``out_dir``.
    """
    cfg = cfg or NoiseTrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    for seq in [*train, *val]:
        assign_gt_ids(seq, cfg.match_distance)
    t0 = time.time()
    tracker_cfg = tracker_cfg or fit_prior(train)
    net = NoiseNet(cfg.feature_channels, cfg.patch, cfg.hidden, agent_slots=cfg.agent_slots)
    net.set_prior(tracker_cfg.measurement_var)
    if cfg.feature_channels:
        net.set_patch_normaliser(*_patch_stats(train, cfg.feature_channels, rng))
    nll = pretrain_nll(net, detection_samples(train), cfg.nll_epochs, cfg.nll_lr, seed=cfg.seed)
    kf = MultiSensorKF(tracker_cfg, noise=net)
    fixed = MultiSensorKF(tracker_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_frames = sum(len(s) for s in train)
    fixed_val = _mean_loss(fixed, val, cfg)
    history = [{"epoch": 0, "val_loss": _mean_loss(kf, val, cfg)}]
    best = history[0]["val_loss"]
    torch.save(_checkpoint(net, tracker_cfg, cfg, 0, history), out_dir / "noise.pt")
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        bar = tqdm(total=n_frames, desc=f"tracker noise epoch {epoch}/{cfg.epochs}", disable=not progress)
        running: list[float] = []
        for si in rng.permutation(len(train)):
            seq = train[si]
            kf.reset()
            kf.differentiable = True
            acc, n_acc = torch.zeros((), dtype=torch.float64), 0
            for k, frame in enumerate(seq):
                loss, m = frame_loss(kf.step(frame), frame, cfg)
                acc, n_acc = acc + loss, n_acc + m
                if (k + 1) % cfg.window == 0 or k == len(seq) - 1:
                    if n_acc:
                        opt.zero_grad()
                        (acc / n_acc).backward()
                        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
                        opt.step()
                        running.append(float(acc.detach()) / n_acc)
                    kf.detach()
                    acc, n_acc = torch.zeros((), dtype=torch.float64), 0
                bar.update(1)
            bar.set_postfix(loss=f"{np.mean(running[-20:]):.4f}" if running else "-")
        bar.close()
        net.eval()
        val_loss = _mean_loss(kf, val, cfg)
        history.append(
            {"epoch": epoch, "train_loss": float(np.mean(running)) if running else None, "val_loss": val_loss}
        )
        torch.save(_checkpoint(net, tracker_cfg, cfg, epoch, history), out_dir / "last.pt")
        if val_loss < best:
            best = val_loss
            torch.save(_checkpoint(net, tracker_cfg, cfg, epoch, history), out_dir / "noise.pt")
    summary = {
        "history": history,
        "best_val_loss": best,
        "fixed_val_loss": fixed_val,
        "sequences": {"train": len(train), "validate": len(val)},
        "frames": {"train": n_frames, "validate": sum(len(s) for s in val)},
        "seconds": round(time.time() - t0, 1),
        "config": asdict(cfg),
        "tracker": tracker_cfg.to_dict(),
        "parameters": parameter_count(net),
        "nll_history": nll,
    }
    (out_dir / "noise_training.json").write_text(json.dumps(summary, indent=2))
    return summary


def _checkpoint(
    net: NoiseNet, tracker_cfg: TrackerConfig, cfg: NoiseTrainConfig, epoch: int, history
) -> dict:
    return {
        "format": "v2x-tracker-noise/1",
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "net": net.config(),
        "tracker": tracker_cfg.to_dict(),
        "train": asdict(cfg),
        "epoch": epoch,
        "history": list(history),
    }


def load_tracker(path: str | Path, fixed: bool = False) -> tuple[TrackerConfig, NoiseNet | None]:
    """The tracker configuration (with its fitted prior) and the noise network of a checkpoint.

    ``fixed``: the fixed-noise filter instead, i.e. the same prior with the settings tuned for
    it (``"fixed_tracker"``, when the checkpoint has them) and no network.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable tracker checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        raise ValueError(f"{path}: not a tracker noise checkpoint (no 'net' entry)")
    if fixed:
        return TrackerConfig.from_dict(ckpt.get("fixed_tracker", ckpt["tracker"])), None
    net = NoiseNet(**ckpt["net"])
    net.load_state_dict(ckpt["state_dict"])
    return TrackerConfig.from_dict(ckpt["tracker"]), net.eval()


def load_noise_model(path: str | Path) -> NoiseNet:
    return load_tracker(path)[1]
