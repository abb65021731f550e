"""The learned measurement-noise model: per detection, a diagonal covariance.

Like DMSTrack, the network predicts a residual on the log of a fixed prior variance, so an
untrained (zero-output) network is exactly the fixed-noise filter. Inputs are what makes one
detection more trustworthy than another: where it is relative to the agent that saw it
(distance, bearing), its size and heading relative to the agent, its score, the agent's kind,
and optionally a small patch of that agent's BEV features around it (how much the LiDAR saw).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from v2x.geometry import inverse

__all__ = ["GEOMETRY_FEATURES", "NoiseNet", "detection_features"]

GEOMETRY_FEATURES = 12


def detection_features(
    boxes_world: np.ndarray, scores: np.ndarray, world_from_agent: np.ndarray, kind: str
) -> np.ndarray:
    """(N, 12) float32: position relative to the agent, range, bearing, size, relative heading,
    score and agent kind, each roughly unit-scaled."""
    b = np.asarray(boxes_world, dtype=np.float64).reshape(-1, 7)
    T = inverse(world_from_agent)
    rel = b[:, :3] @ T[:3, :3].T + T[:3, 3]
    yaw_agent = np.arctan2(world_from_agent[1, 0], world_from_agent[0, 0])
    rel_yaw = b[:, 6] - yaw_agent
    dist = np.hypot(rel[:, 0], rel[:, 1])
    bearing = np.arctan2(rel[:, 1], rel[:, 0])
    feats = np.stack(
        [
            rel[:, 0] / 50.0,
            rel[:, 1] / 50.0,
            dist / 50.0,
            np.cos(bearing),
            np.sin(bearing),
            b[:, 3] / 5.0,
            b[:, 4] / 2.0,
            b[:, 5] / 2.0,
            np.cos(2 * rel_yaw),
            np.sin(2 * rel_yaw),
            np.asarray(scores, dtype=np.float64),
            np.full(len(b), 1.0 if kind == "rsu" else 0.0),
        ],
        axis=1,
    )
    return feats.astype(np.float32)


class NoiseNet(nn.Module):
    """Residual log-variances (N, 7) from detection features and optional BEV patches."""

    def __init__(
        self, feature_channels: int = 0, patch: int = 5, hidden: int = 64, max_residual: float = 3.0
    ) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.patch = patch
        self.max_residual = max_residual
        extra = 0
        if feature_channels:
            self.patch_net = nn.Sequential(
                nn.Conv2d(feature_channels, 32, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(32, 32),
                nn.ReLU(),
            )
            extra = 32
        self.mlp = nn.Sequential(
            nn.Linear(GEOMETRY_FEATURES + extra, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 7),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, geometry: torch.Tensor, patches: torch.Tensor | None = None) -> torch.Tensor:
        x = geometry
        if self.feature_channels:
            if patches is None:
                patches = torch.zeros(len(geometry), self.feature_channels, self.patch, self.patch)
            x = torch.cat([x, self.patch_net(patches.float())], dim=1)
        # bounded residual: the variance stays within a factor e^3 of the prior either way
        return self.max_residual * torch.tanh(self.mlp(x) / self.max_residual)
