"""Warping collaborators' BEV feature maps into the ego's frame, and fusing them per cell.

Every agent's map lies on the same grid, but in its own BEV frame (level, on the ground below
its LiDAR). The ego resamples each received map at the positions of its own cells, using the
planar part of ``ego_from_sender``, then fuses the aligned maps cell by cell.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from v2x.core.geometry import yaw_of
from v2x.core.grid import BEVGrid
from v2x.perception.alignment import WarpAlignment, sampling_geometry, sender_pixels
from v2x.perception.config import FUSIONS

__all__ = [
    "FUSIONS",
    "AttentionFusion",
    "FillFusion",
    "MaxFusion",
    "keep_own_cells",
    "make_fusion",
    "warp_affine",
    "warp_cells_to_ego",
    "warp_to_ego",
]

#: A collaborator's map in the ego frame as the ego's inference path keeps it: the flat indices
#: of the ego cells it makes valid, and its (C, len(indices)) interpolated features there.
Cells = tuple[torch.Tensor, torch.Tensor]


def warp_affine(ego_from_sender: np.ndarray, grid: BEVGrid) -> torch.Tensor:
    """2x3 matrix for ``F.affine_grid`` that samples a sender map at the ego's cell centres.

    Normalised map coordinates u, v in [-1, 1] relate to metres by p = S (u, v) + c; a point p
    in the ego frame is R^T (p - t) in the sender's frame, so the sender-normalised location
    is S^-1 R^T S (u, v) + S^-1 (R^T (c - t) - c).
    """
    yaw = yaw_of(ego_from_sender)
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    t = ego_from_sender[:2, 3]
    s = np.diag([(grid.x_max - grid.x_min) / 2, (grid.y_max - grid.y_min) / 2])
    c = np.array([(grid.x_max + grid.x_min) / 2, (grid.y_max + grid.y_min) / 2])
    s_inv = np.linalg.inv(s)
    lin = s_inv @ rot.T @ s
    off = s_inv @ (rot.T @ (c - t) - c)
    return torch.tensor(np.hstack([lin, off[:, None]]), dtype=torch.float32)


def _sampling(valid: torch.Tensor, ego_from_sender: list[np.ndarray], grid: BEVGrid, channels: int):
    """Where each ego cell falls in each sender's normalised map, and which cells come out valid."""
    n, h, w = valid.shape
    theta = torch.stack([warp_affine(T, grid) for T in ego_from_sender])
    sampling = F.affine_grid(theta, [n, channels, h, w], align_corners=False)
    vmask = F.grid_sample(
        valid[:, None].float(), sampling, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return sampling, vmask[:, 0] >= 0.5


def warp_to_ego(
    features: torch.Tensor,
    valid: torch.Tensor,
    ego_from_sender: list[np.ndarray],
    grid: BEVGrid,
    align: WarpAlignment | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample maps (N, C, H, W) and validity masks (N, H, W) into the ego frame.

    Features are bilinearly interpolated (then corrected by ``align``, if given); a cell is
    valid in the ego frame when the sampled validity reaches one half. Outside a sender's map
    everything is zero and invalid (``align`` may leave values there; fusions ignore them).
    """
    n, c, h, w = features.shape
    if n == 0:
        return features, valid
    sampling, wvalid = _sampling(valid, ego_from_sender, grid, c)
    if not torch.is_grad_enabled():
        out = features.new_zeros(n, c, h * w)
        for i in range(n):
            idx, values = _warped_cells(features[i], sampling[i], wvalid[i], ego_from_sender[i], grid, align)
            out[i].index_copy_(1, idx, values)
        return out.reshape(n, c, h, w), wvalid
    warped = F.grid_sample(features, sampling, mode="bilinear", padding_mode="zeros", align_corners=False)
    if align is not None:
        warped = torch.stack(
            [
                align(
                    warped[i].reshape(c, -1),
                    sampling_geometry(sampling[i].reshape(-1, 2), yaw_of(ego_from_sender[i]), grid),
                ).reshape(c, h, w)
                for i in range(n)
            ]
        )
    return warped, wvalid


def warp_cells_to_ego(
    senders: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    grid: BEVGrid,
    align: WarpAlignment | None = None,
) -> list[Cells]:
    """The ego's inference path: each sender's ``(features (C, H, W), valid (H, W),
    ego_from_sender)`` as the ego cells it makes valid and its features there, the same values
    :func:`warp_to_ego` gives at those cells, without a dense map per sender."""
    if not senders:
        return []
    valid = torch.stack([s[1] for s in senders])
    sampling, wvalid = _sampling(valid, [s[2] for s in senders], grid, senders[0][0].shape[0])
    return [
        _warped_cells(features, sampling[i], wvalid[i], ego_from_sender, grid, align)
        for i, (features, _, ego_from_sender) in enumerate(senders)
    ]


def _warped_cells(
    features: torch.Tensor,
    sampling: torch.Tensor,
    wvalid: torch.Tensor,
    ego_from_sender: np.ndarray,
    grid: BEVGrid,
    align: WarpAlignment | None,
) -> Cells:
    """One sender's ego cells that come out valid only (the fusions never look at invalid cells,
    and a collaborator's map covers a small part of the ego's grid), interpolated and (with
    ``align``) corrected."""
    idx = torch.nonzero(wvalid.reshape(-1)).squeeze(1)
    if not len(idx):
        return idx, features.new_zeros(features.shape[0], 0)
    uv = sampling.reshape(-1, 2).index_select(0, idx)
    values = _bilinear(features, uv)
    if align is not None:
        values = align(values, sampling_geometry(uv, yaw_of(ego_from_sender), grid))
    return idx, values


def _bilinear(features: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """``grid_sample``'s bilinear interpolation (zero padding, ``align_corners=False``) of one
    (C, H, W) map at n normalised positions ``uv`` (n, 2): (C, n)."""
    c, h, w = features.shape
    acc = torch.zeros(c, len(uv), dtype=features.dtype)
    ix, iy = sender_pixels(uv, (h, w))
    x0, y0 = torch.floor(ix), torch.floor(iy)
    fx, fy = ix - x0, iy - y0
    x0, y0 = x0.long(), y0.long()
    src = features.reshape(c, -1)
    for dx, dy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xs, ys = x0 + dx, y0 + dy
        inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        flat = ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)
        acc += src.index_select(1, flat) * (weight * inside)
    return acc


class MaxFusion(nn.Module):
    """Element-wise maximum over the agents that have data at a cell."""

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # features (A, C, H, W) aligned in the ego frame, valid (A, H, W); agent 0 is the ego.
        # The ego's inference path calls `sparse` on cell lists instead (CooperativeDetector.fuse).
        masked = features.masked_fill(~valid[:, None], float("-inf"))
        fused = masked.max(dim=0).values
        return torch.where(torch.isfinite(fused), fused, torch.zeros_like(fused))

    @staticmethod
    def sparse(ego: torch.Tensor, ego_valid: torch.Tensor, others: list[Cells]) -> torch.Tensor:
        """The same maximum (bit for bit) over the ego's (C, H, W) map and collaborators given as
        :data:`Cells`, visiting only the cells each of them covers: what the ego runs every frame."""
        c = ego.shape[0]
        fused = ego.masked_fill(~ego_valid, float("-inf")).reshape(c, -1)
        for idx, theirs in others:
            if len(idx):
                fused.index_copy_(1, idx, torch.maximum(fused.index_select(1, idx), theirs))
        # cells nobody covers are -inf: zero them (one pass; isfinite + where took 4 ms more)
        return torch.nan_to_num(fused.reshape(ego.shape), nan=0.0, posinf=0.0, neginf=0.0)


def keep_own_cells(fused: torch.Tensor, own: torch.Tensor, own_valid: torch.Tensor) -> torch.Tensor:
    """``fused`` (C, H, W) with the reading agent's own cells put back as it saw them: the others'
    maps fill only the cells it did not observe."""
    return torch.where(own_valid[None], own, fused)


class FillFusion(MaxFusion):
    """The ego's (agent 0's) cells as it saw them, and the maximum over the others only where it
    saw nothing: collaborators fill what the ego did not observe instead of overwriting what it
    did. With ``share_frame="each"`` every agent's cells get a reading in its own frame, so a cell
    both saw is read both ways (docs/perception.md)."""

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return keep_own_cells(super().forward(features, valid), features[0], valid[0])

    @staticmethod
    def sparse(ego: torch.Tensor, ego_valid: torch.Tensor, others: list[Cells]) -> torch.Tensor:
        return keep_own_cells(MaxFusion.sparse(ego, ego_valid, others), ego, ego_valid)


class AttentionFusion(nn.Module):
    """Per-cell softmax attention over agents, scored by a small learned network.

    Each agent's feature at a cell gets a scalar score; the fused feature is the
    score-weighted average over the agents that have data there. Cheap: a 1x1 MLP per agent.
    """

    def __init__(self, channels: int, hidden: int = 16) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits = self.score(features)[:, 0]  # (A, H, W)
        # a large finite negative, not -inf: a cell no agent covers must not produce NaN gradients
        logits = logits.masked_fill(~valid, -1e4)
        weights = torch.softmax(logits, dim=0) * valid
        return (weights[:, None] * features).sum(dim=0)


def make_fusion(kind: str, channels: int) -> nn.Module:
    if kind == "max":
        return MaxFusion()
    if kind == "fill":
        return FillFusion()
    if kind == "attention":
        return AttentionFusion(channels)
    raise ValueError(f"unknown fusion {kind!r}: use {', '.join(FUSIONS)}")
