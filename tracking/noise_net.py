"""The learned measurement-noise model: per detection, seven variances in the measuring agent's frame.

As in DMSTrack, the network predicts a residual on the log of a fixed prior variance, and its
last layer starts at zero, so an untrained network is exactly the fixed-noise filter. The prior
travels with the network (buffer ``prior_var``): a residual means nothing without its base. The
inputs are what makes one detection more trustworthy than another, all in the agent's own BEV
frame so every agent can run the net on itself before sending: where the object is (offset,
range, bearing, height), how it is seen (size, heading against the line of sight), the
detector's score, whether the agent is a roadside unit, and optionally a (C, P, P) patch of the
agent's BEV feature map around the detection (how much the LiDAR saw there). Without a patch
the net uses a learned stand-in, so one model serves agents that send features and agents that
do not.

With ``agent_slots`` the net also knows which agent of the frame measured the detection (a
one-hot of its slot: 0 the ego, 1 the first collaborator, ...; later slots share the last).
Real agents differ: on V2V4Real a collaborator's boxes reach the ego through its pose, whose
error no box feature shows, and its boxes are about twice as far off as the ego's own at the
same score. This is the role of DMSTrack's network per CAV, in one shared net.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from v2x.core.boxes import Boxes, wrap_angle
from v2x.core.geometry import inverse, transform_points

__all__ = [
    "GEOMETRY_FEATURES",
    "NoiseNet",
    "agent_frame_array",
    "agent_frame_boxes",
    "detection_features",
    "predict_variances",
]

GEOMETRY_FEATURES = 14


def agent_frame_boxes(boxes_world: Boxes, world_from_agent: np.ndarray) -> np.ndarray:
    """(N, 7) boxes in the agent's frame."""
    return agent_frame_array(boxes_world.xyzlwhy, world_from_agent)


def agent_frame_array(xyzlwhy_world: np.ndarray, world_from_agent: np.ndarray) -> np.ndarray:
    """(N, 7) boxes in the agent's frame from a bare (N, 7) world-frame array (the arithmetic of
    :meth:`Boxes.transformed`, without building box objects)."""
    T = inverse(world_from_agent)
    out = np.array(xyzlwhy_world, dtype=np.float64, copy=True).reshape(-1, 7)
    if len(out):
        out[:, :3] = transform_points(T, out[:, :3])
        out[:, 6] = wrap_angle(out[:, 6] + np.arctan2(T[1, 0], T[0, 0]))
    return out


def detection_features(boxes_agent: np.ndarray, scores: np.ndarray, kind: str | np.ndarray) -> np.ndarray:
    """(N, 14) float32 from boxes in the agent's frame: offset, range, bearing, height, size,
    heading against the line of sight, score and agent kind, each roughly unit-scaled.
    ``kind`` is the agent's kind, or (N,) bool "measured by an RSU" for rows of several agents."""
    b = np.asarray(boxes_agent, dtype=np.float64).reshape(-1, 7)
    dist = np.hypot(b[:, 0], b[:, 1])
    bearing = np.arctan2(b[:, 1], b[:, 0])
    aspect = b[:, 6] - bearing  # 0: seen end-on, pi/2: seen side-on
    feats = np.stack(
        [
            b[:, 0] / 50.0,
            b[:, 1] / 50.0,
            dist / 50.0,
            np.cos(bearing),
            np.sin(bearing),
            b[:, 2] / 2.0,
            b[:, 3] / 5.0,
            b[:, 4] / 2.0,
            b[:, 5] / 2.0,
            np.cos(2 * aspect),
            np.sin(2 * aspect),
            np.sin(2 * b[:, 6]),
            np.asarray(scores, dtype=np.float64).reshape(-1),
            np.full(len(b), 1.0 if kind == "rsu" else 0.0)
            if isinstance(kind, str)
            else np.asarray(kind, float),
        ],
        axis=1,
    )
    return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


class NoiseNet(nn.Module):
    """Residual log-variances (N, 7, box order) from detection features and optional BEV patches."""

    def __init__(
        self,
        feature_channels: int = 0,
        patch: int = 5,
        hidden: int = 64,
        patch_hidden: int = 32,
        max_residual: float = 3.0,
        agent_slots: int = 0,
    ) -> None:
        super().__init__()
        self.agent_slots = agent_slots
        self.feature_channels = feature_channels
        self.patch = patch
        self.hidden = hidden
        self.patch_hidden = patch_hidden
        self.max_residual = max_residual
        # the fixed variances (box order) this net's residual applies to; set when it is trained
        self.register_buffer("prior_var", torch.ones(7, dtype=torch.float64))
        extra = 0
        if feature_channels:
            self.register_buffer("patch_mean", torch.zeros(feature_channels))
            self.register_buffer("patch_std", torch.ones(feature_channels))
            self.patch_net = nn.Sequential(
                nn.Conv2d(feature_channels, patch_hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(patch_hidden, patch_hidden, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.no_patch = nn.Parameter(torch.zeros(patch_hidden))
            extra = patch_hidden
        self.mlp = nn.Sequential(
            nn.Linear(GEOMETRY_FEATURES + extra + agent_slots, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 7),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def config(self) -> dict:
        return {
            "feature_channels": self.feature_channels,
            "patch": self.patch,
            "hidden": self.hidden,
            "patch_hidden": self.patch_hidden,
            "max_residual": self.max_residual,
            "agent_slots": self.agent_slots,
        }

    def set_prior(self, var_box) -> None:
        self.prior_var.copy_(torch.as_tensor(var_box, dtype=torch.float64))

    def set_patch_normaliser(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel statistics of the training patches (BEV features have any scale)."""
        self.patch_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.patch_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def forward(
        self, geometry: torch.Tensor, patches: torch.Tensor | None = None, slot: int = 0
    ) -> torch.Tensor:
        x = geometry.float()
        if self.agent_slots:
            onehot = torch.zeros(len(x), self.agent_slots)
            onehot[:, min(max(int(slot), 0), self.agent_slots - 1)] = 1.0
            x = torch.cat([x, onehot], dim=1)
        if self.feature_channels:
            if patches is None:
                emb = self.no_patch.expand(len(x), -1)
            else:
                p = patches.float()
                if p.shape[1:] != (self.feature_channels, self.patch, self.patch):
                    raise ValueError(
                        f"patches must be (N, {self.feature_channels}, {self.patch}, {self.patch}), "
                        f"got {tuple(p.shape)}"
                    )
                p = (p - self.patch_mean[:, None, None]) / self.patch_std[:, None, None]
                emb = self.patch_net(torch.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0))
            x = torch.cat([x, emb], dim=1)
        # bounded residual: the variance stays within a factor e^max_residual of the prior either way
        return self.max_residual * torch.tanh(self.mlp(x) / self.max_residual)

    def residual_rows(self, geometry: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """(N, 7) float32 residuals for many agents' detections at once (row ``i`` measured by
        the agent in slot ``slots[i]``), no patches: the tracker's inference path, one call per
        frame, no autograd. The MLP's layers are applied in numpy on the current weights: at a
        few dozen rows torch's per-call overhead costs several times the arithmetic. The same
        numbers as :meth:`forward` to float32 rounding (the sums may run in another order; a
        test holds them together); training goes through :meth:`forward`."""
        x = np.asarray(geometry, dtype=np.float32)
        if self.agent_slots:
            onehot = np.zeros((len(x), self.agent_slots), dtype=np.float32)
            onehot[np.arange(len(x)), np.minimum(np.maximum(slots, 0), self.agent_slots - 1)] = 1.0
            x = np.concatenate([x, onehot], axis=1)
        if self.feature_channels:
            stand_in = self.no_patch.detach().numpy()
            x = np.concatenate([x, np.broadcast_to(stand_in, (len(x), len(stand_in)))], axis=1)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                x = x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
            elif isinstance(layer, nn.ReLU):
                x = np.maximum(x, 0.0)
            else:  # a layer this path does not know: torch does it
                x = layer.forward(torch.from_numpy(x)).detach().numpy()
        return self.max_residual * np.tanh(x / np.float32(self.max_residual))


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def predict_variances(
    net: NoiseNet, boxes_agent: Boxes, kind: str, patches: np.ndarray | None = None, slot: int = 0
) -> np.ndarray:
    """(N, 7) measurement variances, box order, in the agent's frame: what an agent computes for
    its own detections before sending them (the wire format carries them as float16); ``slot``
    is the agent's place in the ego's frame (0: the ego itself)."""
    if len(boxes_agent) == 0:
        return np.zeros((0, 7))
    scores = boxes_agent.scores if boxes_agent.scores is not None else np.ones(len(boxes_agent))
    geo = torch.from_numpy(detection_features(boxes_agent.xyzlwhy, scores, kind))
    p = None
    if patches is not None and net.feature_channels:
        p = torch.from_numpy(np.nan_to_num(np.asarray(patches, dtype=np.float32)))
    with torch.no_grad():
        return (net.prior_var * torch.exp(net(geo, p, slot).double())).numpy()
