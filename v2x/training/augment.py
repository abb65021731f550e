"""Training-time augmentation of cooperative frames that keeps every geometric relation valid.

A global rotation of the world changes nothing an ego sees, so augmentation acts in the sensor
frames: each agent's scan is re-expressed in a sensor frame turned about z (its BEV grid then
cuts the scene differently), and the whole scene may be mirrored (points, poses and boxes
together, so the result is still a right-handed, physically consistent scene).

Turning a sensor frame keeps every car's heading relative to the ray that sees it, so a network
fine-tuned on one run of real frames (where cars sit on the same lanes at the same bearings)
may learn the heading from where a car is rather than from its points. Turning each labelled
object about its own centre (its points in every agent's scan with it, SECOND's ground-truth
noise) breaks that link.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from v2x.core.boxes import Boxes, points_in_boxes, wrap_angle
from v2x.core.frame import AgentKind, AgentScan, Frame
from v2x.core.geometry import inverse, pose_from_xyz_yaw, transform_points
from v2x.core.iou import bev_iou_matrix

__all__ = ["augment_frame", "mirror_frame", "rotate_sensor", "turn_objects"]

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


def _turn_about(center_xy: np.ndarray, angle: float) -> np.ndarray:
    """World-frame transform turning by ``angle`` about the vertical through ``center_xy``."""
    to = pose_from_xyz_yaw(center_xy[0], center_xy[1], 0.0, 0.0)
    return to @ pose_from_xyz_yaw(0.0, 0.0, 0.0, angle) @ inverse(to)


def turn_objects(frame: Frame, rng: np.random.Generator, max_angle: float, margin: float = 0.2) -> Frame:
    """Turn each ground-truth object about its own vertical axis by up to ``max_angle`` either
    way, with the points inside its box (grown by ``margin``) in every agent's scan and the
    agents' own labels of it. An object whose turned footprint would touch another's stays."""
    gt = frame.gt
    if len(gt) == 0:
        return frame
    boxes = gt.xyzlwhy.copy()
    angles = rng.uniform(-max_angle, max_angle, len(boxes))
    turned: list[tuple[np.ndarray, np.ndarray]] = []  # (old box, world transform)
    for j in range(len(boxes)):
        new = boxes[j].copy()
        new[6] = wrap_angle(new[6] + angles[j])
        grown = new.copy()
        grown[3:5] += 2 * margin
        others = np.delete(boxes, j, axis=0)
        if len(others) and (bev_iou_matrix(grown[None], others) > 0).any():
            continue
        turned.append((boxes[j].copy(), _turn_about(boxes[j, :2], float(angles[j]))))
        boxes[j] = new
    if not turned:
        return frame
    old = Boxes(np.stack([b for b, _ in turned]))
    agents = {}
    for k, s in frame.agents.items():
        # points are picked in the sensor's frame, as Frame.points_per_gt_box counts them, so
        # only the moved ones pass through float64 and back
        lidar_from_world = inverse(s.world_from_lidar)
        inside = points_in_boxes(s.points, old.transformed(lidar_from_world).xyzlwhy, margin)
        pts = s.points.copy()
        for j, (_, turn) in enumerate(turned):
            sel = inside[:, j]
            if sel.any():
                local_turn = lidar_from_world @ turn @ s.world_from_lidar
                pts[sel, :3] = transform_points(local_turn, pts[sel, :3].astype(np.float64)).astype(
                    np.float32
                )
        agents[k] = dataclasses.replace(s, points=pts, labels=_turn_labels(s.labels, old, turned, margin))
    out = gt.copy()
    out.xyzlwhy[:] = boxes
    return Frame(frame.scenario, frame.index, frame.timestamp_ns, agents, frame.ego_id, out)


def _turn_labels(
    labels: Boxes | None, old: Boxes, turned: list[tuple[np.ndarray, np.ndarray]], margin: float
) -> Boxes | None:
    """An agent's own (world-frame) labels turned with the objects whose box holds their centre."""
    if labels is None or len(labels) == 0:
        return labels
    out = labels.copy()
    inside = points_in_boxes(labels.centers, old.xyzlwhy, margin)
    for j, (_, turn) in enumerate(turned):
        sel = np.flatnonzero(inside[:, j])
        if sel.size:
            out.xyzlwhy[sel] = out[sel].transformed(turn).xyzlwhy
    return out


def augment_frame(
    frame: Frame,
    rng: np.random.Generator,
    max_rotation: float = np.pi / 4,
    max_rotation_rsu: float | None = None,
    max_object_turn: float = 0.0,
) -> Frame:
    """Mirror the scene half the time and turn each agent's sensor frame by up to ``max_rotation``
    either way (roadside units by up to ``max_rotation_rsu`` when given: their scan reaches the
    ego's grid turned by whatever heading the ego drives at); with ``max_object_turn``, first turn
    each object about its own centre (:func:`turn_objects`)."""
    if max_object_turn > 0:  # drawn only when asked for: older configurations see the same stream
        frame = turn_objects(frame, rng, max_object_turn)
    if rng.random() < 0.5:
        frame = mirror_frame(frame)
    agents = {}
    for k, s in frame.agents.items():
        limit = max_rotation_rsu if max_rotation_rsu is not None and s.kind == AgentKind.RSU else max_rotation
        agents[k] = rotate_sensor(s, float(rng.uniform(-limit, limit)))
    return Frame(frame.scenario, frame.index, frame.timestamp_ns, agents, frame.ego_id, frame.gt)
