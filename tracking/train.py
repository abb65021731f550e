"""Training the measurement-noise model end to end through the multi-sensor filter.

Windows of 10 frames are replayed through :class:`~v2x.tracking.dmstrack.MultiSensorKF` from an
empty track set; after each frame the live tracks are matched to the ground truth (Hungarian on
centre distance, at most 2 m) and the loss is the error of the matched, updated track boxes
(position, size and heading), as DMSTrack trains. Association stays a discrete choice; the
gradient flows through every Kalman gain into the noise network.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from v2x.boxes import VEHICLE_CLASSES
from v2x.tracking.ab3dmot import TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.noise_net import NoiseNet
from v2x.tracking.records import FrameDetections

__all__ = ["NoiseTrainConfig", "load_noise_model", "train_noise_model", "window_loss"]


@dataclass
class NoiseTrainConfig:
    epochs: int = 8
    window: int = 10
    stride: int = 5
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    feature_channels: int = 0
    patch: int = 5
    match_distance: float = 2.0


def window_loss(
    kf: MultiSensorKF, frames: list[FrameDetections], match_distance: float = 2.0
) -> tuple[torch.Tensor, int]:
    """Sum of squared box errors of matched tracks over a window, and the number of matches."""
    kf.reset()
    loss = torch.zeros((), dtype=torch.float64)
    matches = 0
    for fr in frames:
        out = kf.step(fr)
        if fr.gt is None or len(out.states) == 0:
            continue
        gt = fr.gt[fr.gt.of_classes(VEHICLE_CLASSES)]
        if len(gt) == 0:
            continue
        X = out.states
        xy = X[:, :2].detach().numpy()
        d = np.hypot(xy[:, None, 0] - gt.xyzlwhy[None, :, 0], xy[:, None, 1] - gt.xyzlwhy[None, :, 1])
        rows, cols = linear_sum_assignment(np.where(d < match_distance, d, 1e6))
        ok = d[rows, cols] < match_distance
        rows, cols = rows[ok], cols[ok]
        if len(rows) == 0:
            continue
        target = torch.from_numpy(gt.xyzlwhy[cols]).to(torch.float64)
        state = X[torch.from_numpy(rows)]
        pos = (state[:, :3] - target[:, :3]).pow(2).sum(dim=1)
        size = (state[:, 4:7] - target[:, 3:6]).pow(2).sum(dim=1)
        dyaw = state[:, 3] - target[:, 6]
        yaw = 1 - torch.cos(2 * dyaw)  # a box and its 180-degree turn are the same box
        loss = loss + (pos + size + yaw).sum()
        matches += len(rows)
    return loss, matches


def _windows(sequences: list[list[FrameDetections]], window: int, stride: int) -> list[list[FrameDetections]]:
    out = []
    for seq in sequences:
        for start in range(0, max(1, len(seq) - window + 1), stride):
            w = seq[start : start + window]
            if len(w) >= 3:
                out.append(w)
    return out


def evaluate_loss(kf: MultiSensorKF, windows: list[list[FrameDetections]], match_distance: float) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            loss, m = window_loss(kf, w, match_distance)
            total += float(loss)
            n += m
    return total / max(n, 1)


def train_noise_model(
    train: list[list[FrameDetections]],
    val: list[list[FrameDetections]],
    out_dir: str | Path,
    cfg: NoiseTrainConfig | None = None,
    tracker_cfg: TrackerConfig | None = None,
    progress: bool = True,
) -> dict:
    cfg = cfg or NoiseTrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = NoiseNet(cfg.feature_channels, cfg.patch)
    kf = MultiSensorKF(tracker_cfg, noise=net)
    fixed = MultiSensorKF(tracker_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_w = _windows(train, cfg.window, cfg.stride)
    val_w = _windows(val, cfg.window, cfg.window)
    history = [
        {
            "epoch": 0,
            "val_loss": evaluate_loss(kf, val_w, cfg.match_distance),
            "fixed_val_loss": evaluate_loss(fixed, val_w, cfg.match_distance),
        }
    ]
    best = history[0]["val_loss"]
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = rng.permutation(len(train_w))
        bar = tqdm(order, desc=f"noise epoch {epoch}/{cfg.epochs}", disable=not progress)
        running = []
        for i in bar:
            loss, m = window_loss(kf, train_w[i], cfg.match_distance)
            if m == 0:
                continue
            loss = loss / m
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            running.append(float(loss))
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.3f}")
        net.eval()
        val_loss = evaluate_loss(kf, val_w, cfg.match_distance)
        history.append(
            {"epoch": epoch, "train_loss": float(np.mean(running)) if running else None, "val_loss": val_loss}
        )
        if val_loss < best:
            best = val_loss
            torch.save(checkpoint(net, cfg), out_dir / "noise.pt")
    if not (out_dir / "noise.pt").exists():
        torch.save(checkpoint(net, cfg), out_dir / "noise.pt")
    summary = {
        "history": history,
        "best_val_loss": best,
        "fixed_val_loss": history[0]["fixed_val_loss"],
        "windows": {"train": len(train_w), "val": len(val_w)},
        "seconds": round(time.time() - t0, 1),
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    (out_dir / "noise_training.json").write_text(json.dumps(summary, indent=2))
    return summary


def checkpoint(net: NoiseNet, cfg: NoiseTrainConfig) -> dict:
    return {
        "state_dict": net.state_dict(),
        "feature_channels": net.feature_channels,
        "patch": net.patch,
        "config": asdict(cfg),
    }


def load_noise_model(path: str | Path) -> NoiseNet:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = NoiseNet(ckpt["feature_channels"], ckpt["patch"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()
