"""A learned per-cell correction of a collaborator's features after they are warped to the ego.

Why: a collaborator's features describe its points relative to *its* cell grid and *its* axes.
Resampled into the ego's grid they are blends of up to four cells whose centres sit off the
ego cell's centre, and their direction-like channels still point along the sender's axes. The
head then localises objects seen only through a collaborator worse than that collaborator's
own head does (late fusion). This module sees each warped cell's features together with how it
was resampled (relative yaw, sub-cell position, range from the sender) and adds a correction.
Its last layer starts at zero, so an untrained module leaves the fusion as it was.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from v2x.core.grid import BEVGrid

__all__ = ["GEOMETRY_CHANNELS", "WarpAlignment", "sampling_geometry", "sender_pixels"]

#: cos and sin of the relative yaw, of the sub-cell position in x and of that in y (periodic, so
#: sampling exactly on a sender's cell centre reads the same from either side), and the range
#: from the sender
GEOMETRY_CHANNELS = 7


def sender_pixels(uv: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row positions (x, y in pixels, cell centres at integers) of normalised sampling
    positions ``uv`` (n, 2) in an (H, W) map, as ``F.grid_sample`` reads them with
    ``align_corners=False``."""
    h, w = shape
    return ((uv[:, 0] + 1) * w - 1) / 2, ((uv[:, 1] + 1) * h - 1) / 2


def sampling_geometry(uv: torch.Tensor, yaw: float, grid: BEVGrid) -> torch.Tensor:
    """(GEOMETRY_CHANNELS, n) description of how n ego cells sample a sender map.

    ``uv`` (n, 2) are the sampling positions in the sender map's normalised coordinates
    (``F.grid_sample``'s, ``align_corners=False``).
    """
    ix, iy = sender_pixels(uv, grid.shape)
    x = (grid.x_max + grid.x_min) / 2 + uv[:, 0] * (grid.x_max - grid.x_min) / 2
    y = (grid.y_max + grid.y_min) / 2 + uv[:, 1] * (grid.y_max - grid.y_min) / 2
    n = uv.shape[0]
    return torch.stack(
        [
            uv.new_full((n,), float(np.cos(yaw))),
            uv.new_full((n,), float(np.sin(yaw))),
            torch.cos(2 * np.pi * ix),
            torch.sin(2 * np.pi * ix),
            torch.cos(2 * np.pi * iy),
            torch.sin(2 * np.pi * iy),
            torch.hypot(x, y) / max(abs(grid.x_max), abs(grid.x_min)),
        ]
    )


class WarpAlignment(nn.Module):
    """Residual two-layer per-cell network: features + MLP(features, geometry)."""

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.features_in = nn.Linear(channels, hidden)
        self.geometry_in = nn.Linear(GEOMETRY_CHANNELS, hidden, bias=False)
        self.out = nn.Linear(hidden, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """``features`` (C, n) and ``geometry`` (GEOMETRY_CHANNELS, n) of n warped cells -> (C, n)."""
        hidden = self.features_in.weight @ features + self.geometry_in.weight @ geometry
        hidden = torch.relu(hidden + self.features_in.bias[:, None])
        return features + self.out.weight @ hidden + self.out.bias[:, None]
