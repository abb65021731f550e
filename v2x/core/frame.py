"""The data model every loader produces and every node consumes.

A :class:`Frame` is one time step of a cooperative log: each agent's LiDAR scan with its pose,
and the ground truth in the world frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from v2x.core.boxes import Boxes, points_in_boxes
from v2x.core.geometry import check_rigid, inverse, pose_from_xyz_yaw, transform_points, yaw_of

__all__ = ["AgentKind", "AgentScan", "Frame", "estimate_mount_height"]


class AgentKind(str, Enum):
    VEHICLE = "vehicle"
    RSU = "rsu"


def estimate_mount_height(points: np.ndarray, radius: float = 25.0, default: float = 1.8) -> float:
    """Height of the sensor above the ground, from the lowest points near it.

    Used when a log does not state it: the ground is the 2nd percentile of z within ``radius``.
    """
    pts = np.asarray(points)
    if len(pts) == 0:
        return default
    near = pts[np.hypot(pts[:, 0], pts[:, 1]) < radius]
    if len(near) < 100:
        return default
    return float(-np.percentile(near[:, 2], 2.0))


@dataclass
class AgentScan:
    """One agent's sensor data at one time step.

    ``points`` is (N, 4) float32 ``x, y, z, intensity`` in the LiDAR frame, intensity in 0..1.
    ``mount_height`` is the LiDAR's height above the ground beneath it (metres).
    """

    agent_id: str
    kind: AgentKind
    points: np.ndarray
    world_from_lidar: np.ndarray
    timestamp_ns: int = 0
    mount_height: float = 1.8
    #: Boxes this agent's own label file lists, in the world frame (None when the log has none).
    labels: Boxes | None = None
    #: LiDAR points this agent put on each object (track id -> count) when the log records it
    #: (our simulator does); None when unknown, then counts are computed from the points.
    hits: dict[int, int] | None = None

    def __post_init__(self) -> None:
        self.kind = AgentKind(self.kind)
        self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 4)
        self.world_from_lidar = check_rigid(self.world_from_lidar, f"agent {self.agent_id} world_from_lidar")

    @property
    def position(self) -> np.ndarray:
        return self.world_from_lidar[:3, 3]

    @property
    def world_from_bev(self) -> np.ndarray:
        """A level frame on the ground below the LiDAR, heading with it: the encoder's frame.

        Tilted sensors (a roadside LiDAR looking down) and high mounts map into the same
        height band as a car's roof LiDAR, so one grid serves vehicles and RSUs.
        """
        p = self.position
        return pose_from_xyz_yaw(p[0], p[1], p[2] - self.mount_height, yaw_of(self.world_from_lidar))

    @property
    def bev_from_lidar(self) -> np.ndarray:
        return inverse(self.world_from_bev) @ self.world_from_lidar

    def points_in_bev(self) -> np.ndarray:
        return self.points_in(self.world_from_bev)

    def points_in(self, world_from_frame: np.ndarray) -> np.ndarray:
        """The scan's points in the frame with that world pose: another agent's BEV frame, for
        early fusion or for features shared on the ego's grid (``share_frame="ego"``)."""
        return transform_points(inverse(world_from_frame) @ self.world_from_lidar, self.points)

    def points_in_world(self) -> np.ndarray:
        return transform_points(self.world_from_lidar, self.points)


@dataclass
class Frame:
    """One time step: agents ordered with the ego first, ground truth in the world frame."""

    scenario: str
    index: int
    timestamp_ns: int
    agents: dict[str, AgentScan]
    ego_id: str
    gt: Boxes = field(default_factory=Boxes.empty)

    def __post_init__(self) -> None:
        if self.ego_id not in self.agents:
            raise ValueError(
                f"frame {self.scenario}/{self.index}: ego {self.ego_id!r} is not among its agents"
            )
        # Keep the ego first whatever order the caller used.
        self.agents = {self.ego_id: self.agents[self.ego_id]} | {
            k: v for k, v in self.agents.items() if k != self.ego_id
        }

    @property
    def ego(self) -> AgentScan:
        return self.agents[self.ego_id]

    @property
    def collaborators(self) -> list[AgentScan]:
        return [a for k, a in self.agents.items() if k != self.ego_id]

    def gt_in(self, world_from_frame: np.ndarray) -> Boxes:
        """Ground truth written in another frame (e.g. the ego's BEV frame)."""
        return self.gt.transformed(inverse(world_from_frame))

    def points_per_gt_box(self, margin: float = 0.1) -> dict[str, np.ndarray]:
        """For each agent, the number of its LiDAR points on each ground-truth object.

        Taken from the log when it records them (``AgentScan.hits``), else counted in the boxes,
        grown by ``margin`` metres: returns from an object's flat sides sit on the box surface,
        and range noise moves half of them just outside it.
        """
        out = {}
        for agent_id, scan in self.agents.items():
            if scan.hits is not None and (self.gt.track_ids >= 0).all():
                out[agent_id] = np.array(
                    [scan.hits.get(int(t), 0) for t in self.gt.track_ids], dtype=np.int64
                )
                continue
            boxes_in_lidar = self.gt.transformed(inverse(scan.world_from_lidar))
            out[agent_id] = points_in_boxes(scan.points, boxes_in_lidar.xyzlwhy, margin).sum(axis=0)
        return out

    def with_agents(self, agent_ids: list[str]) -> Frame:
        """The same frame restricted to some agents (the ego must stay)."""
        keep = {k: v for k, v in self.agents.items() if k in agent_ids or k == self.ego_id}
        return Frame(self.scenario, self.index, self.timestamp_ns, keep, self.ego_id, self.gt)
