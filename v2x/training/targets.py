"""Training targets and losses for the centre-based head.

Each ground-truth vehicle puts a Gaussian peak on the heatmap at the feature cell holding its
centre, and its box (sub-cell offset, height, log sizes, heading) is regressed at that cell.
The heatmap uses the penalty-reduced focal loss of CenterNet; boxes an L1 loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from v2x.perception.config import DetectorConfig
from v2x.perception.head import REG_CHANNELS, HeadOutput

__all__ = ["HeadTargets", "build_targets", "detection_loss"]


@dataclass
class HeadTargets:
    heatmap: torch.Tensor  # (B, H, W) in 0..1
    index: torch.Tensor  # (B, K) flat cell index of each box centre
    regression: torch.Tensor  # (B, K, REG_CHANNELS)
    mask: torch.Tensor  # (B, K) bool: which of the K slots hold a box


def _draw_gaussian(heat: np.ndarray, row: int, col: int, radius: int) -> None:
    sigma = (2 * radius + 1) / 6.0
    h, w = heat.shape
    r0, r1 = max(0, row - radius), min(h, row + radius + 1)
    c0, c1 = max(0, col - radius), min(w, col + radius + 1)
    rr, cc = np.mgrid[r0:r1, c0:c1]
    g = np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma * sigma))
    np.maximum(heat[r0:r1, c0:c1], g, out=heat[r0:r1, c0:c1])


def build_targets(boxes_per_item: list[np.ndarray], cfg: DetectorConfig, max_boxes: int = 128) -> HeadTargets:
    """Targets for a batch; ``boxes_per_item[b]`` is (N, 7) in that item's map frame."""
    g = cfg.grid
    h, w = g.shape
    b = len(boxes_per_item)
    heat = np.zeros((b, h, w), dtype=np.float32)
    index = np.zeros((b, max_boxes), dtype=np.int64)
    reg = np.zeros((b, max_boxes, REG_CHANNELS), dtype=np.float32)
    mask = np.zeros((b, max_boxes), dtype=bool)
    for i, boxes in enumerate(boxes_per_item):
        k = 0
        for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 7):
            if k >= max_boxes:
                break
            fx = (box[0] - g.x_min) / g.cell
            fy = (box[1] - g.y_min) / g.cell
            col, row = int(np.floor(fx)), int(np.floor(fy))
            if not (0 <= col < w and 0 <= row < h):
                continue
            # radius grows with the box's footprint in cells, as CenterPoint's does
            radius = max(cfg.min_radius_cells, int(0.25 * min(box[3], box[4]) / g.cell + 0.5))
            _draw_gaussian(heat[i], row, col, radius)
            index[i, k] = row * w + col
            reg[i, k] = (
                fx - col,
                fy - row,
                box[2],
                np.log(box[3]),
                np.log(box[4]),
                np.log(box[5]),
                np.sin(box[6]),
                np.cos(box[6]),
            )
            mask[i, k] = True
            k += 1
    return HeadTargets(
        torch.from_numpy(heat), torch.from_numpy(index), torch.from_numpy(reg), torch.from_numpy(mask)
    )


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of peaks."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0).float()
    neg = 1.0 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** alpha * pos
    neg_loss = torch.log(1 - pred) * pred**alpha * (1 - target) ** beta * neg
    num_pos = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def detection_loss(out: HeadOutput, targets: HeadTargets, reg_weight: float = 0.5) -> dict[str, torch.Tensor]:
    heat_loss = focal_loss(out.heatmap[:, 0], targets.heatmap)
    b = out.regression.shape[0]
    flat = out.regression.reshape(b, REG_CHANNELS, -1).transpose(1, 2)  # (B, HW, R)
    pred = torch.gather(flat, 1, targets.index[..., None].expand(-1, -1, REG_CHANNELS))
    m = targets.mask.float()[..., None]
    l1 = F.l1_loss(pred * m, targets.regression * m, reduction="none")
    reg_loss = l1.sum() / m.sum().clamp(min=1.0)
    return {"heatmap": heat_loss, "regression": reg_loss, "total": heat_loss + reg_weight * reg_loss}
