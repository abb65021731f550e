"""Dense BEV neck and a centre-based detection head.

The head predicts, per feature cell, a vehicle-centre heatmap (its sigmoid is the agent's
per-cell confidence: the *supply map* that message selection uses) and a box regression
(sub-cell offset, height, log sizes, heading as sin/cos). Decoding takes heatmap peaks and
removes overlaps with a rotated-box NMS.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from v2x.core.boxes import Boxes, ObjectClass
from v2x.perception.box_merge import merge_duplicates
from v2x.perception.config import DetectorConfig

__all__ = [
    "REG_CHANNELS",
    "CenterHead",
    "HeadOutput",
    "Neck",
    "decode_boxes",
    "fold_batch_norm",
    "rotated_nms",
]

#: regression channels: dx, dy (sub-cell offset), z, log l, log w, log h, sin yaw, cos yaw
REG_CHANNELS = 8


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class Neck(nn.Module):
    """Two-scale dense network over the (fused) BEV map: context from a half-resolution branch."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        c_in, c, c2 = cfg.bev_channels, cfg.neck_channels, cfg.neck_channels_down
        self.fine = nn.Sequential(_conv_bn_relu(c_in, c), _conv_bn_relu(c, c))
        self.coarse = nn.Sequential(_conv_bn_relu(c, c2, 2), _conv_bn_relu(c2, c2), _conv_bn_relu(c2, c2))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(c2, c, 2, 2, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        self.merge = nn.Sequential(
            nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x)
        coarse = self.up(self.coarse(fine))
        return self.merge(torch.cat([fine, coarse], dim=1))


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """An inference copy of ``module`` with every convolution + batch norm pair (a Sequential's
    first two layers) folded into one convolution: the same function to float rounding, one
    pass less over each map, about a tenth of the neck and head's time on CPU."""
    folded = copy.deepcopy(module).eval()
    for seq in folded.modules():
        if (
            isinstance(seq, nn.Sequential)
            and len(seq) >= 2
            and isinstance(seq[0], (nn.Conv2d, nn.ConvTranspose2d))
            and isinstance(seq[1], nn.BatchNorm2d)
        ):
            seq[0] = fuse_conv_bn_eval(seq[0], seq[1], transpose=isinstance(seq[0], nn.ConvTranspose2d))
            seq[1] = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


@dataclass
class HeadOutput:
    heatmap: torch.Tensor  # (B, 1, H, W) logits
    regression: torch.Tensor  # (B, REG_CHANNELS, H, W)

    def confidence(self) -> torch.Tensor:
        """(B, H, W) per-cell detection confidence in 0..1."""
        return torch.sigmoid(self.heatmap[:, 0])


class CenterHead(nn.Module):
    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        c = cfg.neck_channels
        self.shared = _conv_bn_relu(c, c)
        self.heatmap = nn.Conv2d(c, 1, 1)
        self.regression = nn.Conv2d(c, REG_CHANNELS, 1)
        # start with a low prior probability so the focal loss is stable (as CenterNet does)
        nn.init.constant_(self.heatmap.bias, -2.19)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        x = self.shared(x)
        return HeadOutput(self.heatmap(x), self.regression(x))


def rotated_nms(xyzlwhy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS on rotated BEV IoU, in decreasing score (the merge of
    :mod:`v2x.perception.box_merge` without its averaging: one definition of NMS)."""
    return merge_duplicates(xyzlwhy, scores, iou_threshold, fusion_iou=None)[0]


def decode_boxes(out: HeadOutput, cfg: DetectorConfig) -> list[Boxes]:
    """Boxes per batch item, in the frame of the feature map they were predicted on."""
    g = cfg.grid
    heat = torch.sigmoid(out.heatmap[:, 0].detach().float())
    peaks = heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]
    heat = heat * peaks
    b, h, w = heat.shape
    k = min(cfg.max_detections, h * w)
    scores, idx = heat.reshape(b, -1).topk(k, dim=1)
    reg = out.regression.detach().float().reshape(b, REG_CHANNELS, -1)
    results = []
    for i in range(b):
        keep = scores[i] > cfg.score_threshold
        sel = idx[i][keep]
        r = reg[i][:, sel]
        row = (sel // w).float()
        col = (sel % w).float()
        x = g.x_min + (col + r[0]) * g.cell
        y = g.y_min + (row + r[1]) * g.cell
        sizes = torch.exp(r[3:6].clamp(-3.0, 3.5))
        yaw = torch.atan2(r[6], r[7])
        arr = torch.stack([x, y, r[2], sizes[0], sizes[1], sizes[2], yaw], dim=1).numpy().astype(np.float64)
        sc = scores[i][keep].numpy()
        kept = rotated_nms(arr, sc, cfg.nms_iou)
        results.append(Boxes(arr[kept], labels=int(ObjectClass.CAR), scores=sc[kept]))
    return results
