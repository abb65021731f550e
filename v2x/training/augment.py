"""Training-time augmentation of cooperative frames that keeps every geometric relation valid.

A global rotation of the world changes nothing an ego sees, so augmentation acts in the sensor
frames: each agent's scan is re-expressed in a sensor frame turned about z (its BEV grid then
cuts the scene differently), and the whole scene may be mirrored (points, poses and boxes
together, so the result is still a right-handed, physically consistent scene).
"""

from __future__ import annotations

import numpy as np

from v2x.core.boxes import Boxes, wrap_angle
from v2x.core.frame import AgentKind, AgentScan, Frame
from v2x.core.geometry import pose_from_xyz_yaw

__all__ = ["augment_frame", "mirror_frame", "rotate_sensor"]

_MIRROR = np.diag([1.0, -1.0, 1.0, 1.0])


def rotate_sensor(scan: AgentScan, angle: float) -> AgentScan:
    """The same scan written in a sensor frame turned by ``-angle`` about z."""
    rot = pose_from_xyz_yaw(0.0, 0.0, 0.0, angle)
    pts = scan.points.copy()
    pts[:, :3] = (pts[:, :3].astype(np.float64) @ rot[:3, :3].T).astype(np.float32)
    return AgentScan(
        scan.agent_id,
        scan.kind,
        pts,
        scan.world_from_lidar @ np.linalg.inv(rot),
        scan.timestamp_ns,
        scan.mount_height,
        scan.labels,
    )


def _mirror_boxes(boxes: Boxes | None) -> Boxes | None:
    if boxes is None:
        return None
    out = boxes.copy()
    out.xyzlwhy[:, 1] *= -1
    out.xyzlwhy[:, 6] = wrap_angle(-out.xyzlwhy[:, 6])
    return out


def mirror_frame(frame: Frame) -> Frame:
    """Reflect the whole scene in the world's xz plane (y -> -y everywhere)."""
    agents = {}
    for k, s in frame.agents.items():
        pts = s.points.copy()
        pts[:, 1] *= -1
        agents[k] = AgentScan(
            s.agent_id,
            s.kind,
            pts,
            _MIRROR @ s.world_from_lidar @ _MIRROR,
            s.timestamp_ns,
            s.mount_height,
            _mirror_boxes(s.labels),
        )
    return Frame(
        frame.scenario, frame.index, frame.timestamp_ns, agents, frame.ego_id, _mirror_boxes(frame.gt)
    )


def augment_frame(
    frame: Frame,
    rng: np.random.Generator,
    max_rotation: float = np.pi / 4,
    max_rotation_rsu: float | None = None,
) -> Frame:
    """Mirror the scene half the time and turn each agent's sensor frame by up to ``max_rotation``
    either way (roadside units by up to ``max_rotation_rsu`` when given: their scan reaches the
    ego's grid turned by whatever heading the ego drives at)."""
    if rng.random() < 0.5:
        frame = mirror_frame(frame)
    agents = {}
    for k, s in frame.agents.items():
        limit = max_rotation_rsu if max_rotation_rsu is not None and s.kind == AgentKind.RSU else max_rotation
        agents[k] = rotate_sensor(s, float(rng.uniform(-limit, limit)))
    return Frame(frame.scenario, frame.index, frame.timestamp_ns, agents, frame.ego_id, frame.gt)
