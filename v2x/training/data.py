"""Training samples for the cooperative detector, drawn from a log.

One network must serve every fusion mode, so each sample picks an ego among the frame's
agents (RSUs included: every agent runs the head for its own boxes and supply map), a random
subset of collaborators, and a mode: intermediate (per-agent maps fused on the ego) or early
(the merged cloud). A subset of size zero is the single-agent case. With
``ego_grid_probability``, that share of intermediate samples with collaborators has them encode
on the ego's grid (``share_frame="ego"``, see :mod:`v2x.perception.cooperative`) instead of their own.
Targets are the vehicles
the participating agents actually hit with at least ``min_points`` LiDAR points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from v2x.core.boxes import VEHICLE_CLASSES
from v2x.core.frame import Frame
from v2x.core.geometry import inverse
from v2x.perception.config import DetectorConfig
from v2x.perception.encoder import sanitize_points
from v2x.perception.fusion_kind import FusionKind
from v2x.training.augment import augment_frame

__all__ = ["CooperativeSample", "CooperativeTrainingSet", "collate_samples"]


def sample_mode(fusion: FusionKind, on_ego_grid: bool = False) -> str:
    """A sample's mode as its key spells it: "early", "intermediate" or "intermediate-ego"."""
    return fusion.value + ("-ego" if on_ego_grid else "")


@dataclass
class CooperativeSample:
    fusion: FusionKind  # INTERMEDIATE (per-agent maps fused on the ego) or EARLY (one merged cloud)
    clouds: list[torch.Tensor]  # first is the ego's; early mode: one merged cloud
    ego_from_agent: list[np.ndarray]  # for clouds[1:], BEV frame to BEV frame
    boxes: np.ndarray  # (N, 7) targets in the ego's BEV frame
    key: str
    #: intermediate: collaborators encoded on the ego's grid rather than their own
    on_ego_grid: bool = False

    @property
    def mode(self) -> str:
        return sample_mode(self.fusion, self.on_ego_grid)


class CooperativeTrainingSet(Dataset):
    """Random cooperative samples over a log's frames, deterministic for (seed, epoch, index)."""

    def __init__(
        self,
        log,
        cfg: DetectorConfig,
        seed: int = 0,
        augment: bool = True,
        early_probability: float = 0.25,
        max_agents: int = 5,
        frame_indices: list[int] | None = None,
        ego_grid_probability: float = 0.0,
        max_rotation: float = np.pi / 4,
        max_rotation_rsu: float | None = None,
        ego_kinds: Sequence[str] | None = None,
        max_object_turn: float = 0.0,
    ) -> None:
        self.log = log
        self.max_object_turn = max_object_turn
        #: agent kinds that may be the ego (None: any; a frame with none of them: any of its agents)
        self.ego_kinds = None if ego_kinds is None else set(ego_kinds)
        self.max_rotation = max_rotation
        self.max_rotation_rsu = max_rotation_rsu
        self.cfg = cfg
        self.seed = seed
        self.augment = augment
        self.early_probability = early_probability
        self.max_agents = max_agents
        self.ego_grid_probability = ego_grid_probability
        self.indices = list(range(len(log))) if frame_indices is None else list(frame_indices)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> CooperativeSample:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        frame: Frame = self.log[self.indices[i]]
        if self.augment:
            frame = augment_frame(frame, rng, self.max_rotation, self.max_rotation_rsu, self.max_object_turn)
        ids = list(frame.agents)
        candidates = ids
        if self.ego_kinds is not None:
            candidates = [a for a in ids if frame.agents[a].kind.value in self.ego_kinds] or ids
        ego_id = candidates[int(rng.integers(len(candidates)))]
        others = [a for a in ids if a != ego_id]
        rng.shuffle(others)
        n_others = int(rng.integers(0, min(len(others), self.max_agents - 1) + 1))
        chosen = [ego_id, *others[:n_others]]
        early = n_others > 0 and rng.random() < self.early_probability
        fusion = FusionKind.EARLY if early else FusionKind.INTERMEDIATE
        # drawn only when asked for, so older configurations see the same random stream
        asked = not early and n_others > 0 and self.ego_grid_probability > 0
        on_ego_grid = bool(asked and rng.random() < self.ego_grid_probability)
        ego = frame.agents[ego_id]
        ego_bev_inv = inverse(ego.world_from_bev)

        if fusion is FusionKind.EARLY:
            merged = [frame.agents[a].points_in(ego.world_from_bev) for a in chosen]
            clouds = [sanitize_points(np.concatenate(merged), self.cfg)]
            ego_from_agent: list[np.ndarray] = []
        elif on_ego_grid:
            clouds = [sanitize_points(ego.points_in_bev(), self.cfg)] + [
                sanitize_points(frame.agents[a].points_in(ego.world_from_bev), self.cfg) for a in chosen[1:]
            ]
            ego_from_agent = [np.eye(4) for _ in chosen[1:]]
        else:
            clouds = [sanitize_points(frame.agents[a].points_in_bev(), self.cfg) for a in chosen]
            ego_from_agent = [ego_bev_inv @ frame.agents[a].world_from_bev for a in chosen[1:]]

        gt = frame.gt[frame.gt.of_classes(VEHICLE_CLASSES)]
        local = gt.transformed(ego_bev_inv)
        g = self.cfg.grid
        near = local.in_range((g.x_min - 5, g.y_min - 5, g.x_max + 5, g.y_max + 5))
        gt, local = gt[near], local[near]
        sub = Frame(
            frame.scenario,
            frame.index,
            frame.timestamp_ns,
            {a: frame.agents[a] for a in chosen},
            chosen[0],
            gt,
        )
        counts = sum(sub.points_per_gt_box().values()) if len(gt) else np.zeros(0)
        boxes = local[counts >= self.cfg.min_points_per_box]
        in_grid = boxes.in_range(self.cfg.grid.xy_range)
        key = f"{frame.scenario}/{frame.index}/{ego_id}/{sample_mode(fusion, on_ego_grid)}/{len(chosen)}"
        return CooperativeSample(fusion, clouds, ego_from_agent, boxes.xyzlwhy[in_grid], key, on_ego_grid)


def collate_samples(samples: list[CooperativeSample]) -> list[CooperativeSample]:
    """Samples differ in agent counts and point counts: keep them as a list."""
    return samples
