"""Pre-training the noise network on detections alone: each detection's error against its
ground-truth box under a Gaussian likelihood.

Why before the filter: training through the filter (``train.py``) replays whole sequences with
gradients and learns slowly (minutes an epoch on real data); the likelihood of the detections'
own errors needs no filter, takes seconds, and already puts each kind of detection (agent,
range, score, size) at its measured spread. The filter training then only has to adjust those
variances to what tracking wants. On V2V4Real's train split a collaborator's boxes are about
twice as far off as the ego's at the same score, and the likelihood finds that in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from v2x.core.boxes import wrap_angle
from v2x.tracking.noise_net import NoiseNet, agent_frame_boxes, detection_features
from v2x.tracking.records import FrameDetections

__all__ = ["DetectionSamples", "detection_samples", "gaussian_nll", "pretrain_nll"]


@dataclass
class DetectionSamples:
    """Detections matched to ground truth: the net's inputs and the errors (box order, agent frame)."""

    geometry: np.ndarray  # (N, 14) float32
    errors: np.ndarray  # (N, 7)
    slots: np.ndarray  # (N,) the agent's place in its frame (0: the ego)

    def __len__(self) -> int:
        return len(self.errors)


def detection_samples(sequences: list[list[FrameDetections]]) -> DetectionSamples:
    """Every detection with a ground-truth id (``gt_ids``) present in its frame's ground truth."""
    geo, err, slots = [], [], []
    for seq in sequences:
        for f in seq:
            if f.gt is None:
                continue
            by_id = {int(t): i for i, t in enumerate(f.gt.track_ids)}
            for slot, a in enumerate(f.agents):
                if a.gt_ids is None or len(a.boxes) == 0:
                    continue
                rows = np.array([i for i, g in enumerate(a.gt_ids) if int(g) in by_id], dtype=np.int64)
                if not len(rows):
                    continue
                det = a.select(rows)
                gt = f.gt[np.array([by_id[int(a.gt_ids[i])] for i in rows])]
                local = agent_frame_boxes(det.boxes, a.world_from_agent)
                d = local - agent_frame_boxes(gt, a.world_from_agent)
                d[:, 6] = wrap_angle(2 * d[:, 6]) / 2
                geo.append(detection_features(local, det.boxes.scores, a.kind))
                err.append(d)
                slots.append(np.full(len(rows), slot))
    if not err:
        return DetectionSamples(np.zeros((0, 14), np.float32), np.zeros((0, 7)), np.zeros(0, np.int64))
    return DetectionSamples(np.concatenate(geo), np.concatenate(err), np.concatenate(slots))


def gaussian_nll(net: NoiseNet, samples: DetectionSamples, rows: np.ndarray | None = None) -> torch.Tensor:
    """Mean negative log-likelihood (constants dropped) of the errors under the net's variances."""
    rows = np.arange(len(samples)) if rows is None else rows
    log_prior = torch.log(net.prior_var.float())
    parts = []
    for slot in np.unique(samples.slots[rows]):
        r = rows[samples.slots[rows] == slot]
        log_var = log_prior + net(torch.from_numpy(samples.geometry[r]), None, int(slot))
        e2 = torch.from_numpy(samples.errors[r]).float() ** 2
        parts.append((e2 * torch.exp(-log_var) + log_var).sum())
    return torch.stack(parts).sum() / max(len(rows) * 7, 1)


def pretrain_nll(
    net: NoiseNet,
    samples: DetectionSamples,
    epochs: int,
    lr: float = 3e-3,
    batch: int = 2048,
    seed: int = 0,
    weight_decay: float = 1e-4,
) -> list[float]:
    """Fit the net's variances to the detections' errors (mini-batches, AdamW); the mean loss
    of each epoch. Deterministic for a seed."""
    if epochs <= 0:
        return []
    if len(samples) == 0:
        raise ValueError("no detections with ground truth to pre-train the noise network on")
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(samples))
        losses = []
        for k in range(0, len(order), batch):
            loss = gaussian_nll(net, samples, order[k : k + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    net.eval()
    return history
