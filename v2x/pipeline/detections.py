"""Per-agent detections in the world frame, with the BEV feature patch around each one: what the
multi-sensor tracker and its noise model consume (see :mod:`v2x.tracking.records`)."""

from __future__ import annotations

import numpy as np
import torch

from v2x.core.boxes import Boxes
from v2x.core.frame import Frame
from v2x.core.geometry import inverse
from v2x.core.grid import BEVGrid
from v2x.perception.cooperative import AgentPerception, Perception, without_ego
from v2x.tracking.records import AgentDetections, FrameDetections

__all__ = ["agent_detections", "crop_patches", "frame_detections", "tracking_ground_truth"]


def crop_patches(features: torch.Tensor, xy: np.ndarray, grid: BEVGrid, patch: int) -> np.ndarray:
    """(N, C, patch, patch) float16 crops of a (C, H, W) map centred on the cells holding ``xy``."""
    c = features.shape[0]
    if len(xy) == 0:
        return np.zeros((0, c, patch, patch), np.float16)
    half = patch // 2
    padded = torch.nn.functional.pad(features, (half, half, half, half))
    row, col, _ = grid.cell_of(xy)
    h, w = grid.shape
    row, col = np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)
    crops = torch.stack([padded[:, r : r + patch, k : k + patch] for r, k in zip(row, col, strict=True)])
    return crops.numpy().astype(np.float16)


def tracking_ground_truth(frame: Frame, min_points: int = 1) -> Boxes:
    """Vehicles (less the ego's own car) seen by at least ``min_points`` points of the frame's agents, world frame."""
    gt = without_ego(frame)
    if min_points > 0 and len(gt):
        sub = Frame(frame.scenario, frame.index, frame.timestamp_ns, frame.agents, frame.ego_id, gt)
        total = sum(sub.points_per_gt_box().values())
        gt = gt[total >= min_points]
    return gt


def agent_detections(
    agent: AgentPerception, grid: BEVGrid, patch: int = 5, with_features: bool = True
) -> AgentDetections:
    """One agent's own detections moved into the world frame, with the BEV patch around each
    (what the tracker's noise model reads)."""
    boxes = agent.boxes if agent.boxes is not None else Boxes.empty(with_scores=True)
    feats = crop_patches(agent.features, boxes.xyzlwhy[:, :2], grid, patch) if with_features else None
    return AgentDetections(
        agent.agent_id, agent.kind.value, agent.world_from_bev, boxes.transformed(agent.world_from_bev), feats
    )


def frame_detections(
    perception: Perception,
    frame: Frame,
    patch: int = 5,
    with_features: bool = True,
    results: list[AgentPerception] | None = None,
) -> FrameDetections:
    """Every agent's own detections of one frame, moved into the world frame."""
    results = results or perception.agent_steps(list(frame.agents.values()), detect=True)
    grid = perception.cfg.grid
    agents = [agent_detections(r, grid, patch, with_features) for r in results]
    gt = tracking_ground_truth(frame, perception.cfg.min_points_per_box)
    return FrameDetections(
        frame.index, frame.timestamp_ns, agents, gt, extra={"world_from_ego_bev": frame.ego.world_from_bev}
    )


def in_ego_range(boxes_world: Boxes, world_from_ego_bev: np.ndarray, xy_range) -> Boxes:
    """Boxes written in the ego's BEV frame, restricted to the evaluation range."""
    local = boxes_world.transformed(inverse(world_from_ego_bev))
    return local[local.in_range(xy_range)]
