"""MCAP recordings with Foxglove's schemas, which Foxglove and Rerun both open.

Topics written (all times are the log's capture times, so playback follows the data):

* ``/tf`` — ``FrameTransforms``: ``world -> agent_<id>`` for every agent's LiDAR;
* ``/agents/<id>/points`` — ``PointCloud`` (x, y, z, intensity float32) in ``agent_<id>``;
* ``/ego/<id>/detections``, ``/ego/<id>/tracks``, ``/ground_truth`` — ``SceneUpdate`` cubes in
  ``world``; track cubes use the track id as entity id, so a viewer follows them over time;
* ``/links`` and any other JSON topic — per-link statistics (bytes, delivered, dropped, latency).

A full disk or any other write failure raises :class:`RecordingError` naming the file; what
was written before stays readable (the writer is closed and the file marked partial in its
metadata where possible).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from v2x.core.boxes import Boxes

__all__ = ["McapRecorder", "RecordingError"]


class RecordingError(OSError):
    """Writing a recording failed (disk full, permissions...); names the file."""


def _rotation_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(R).as_quat()
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def _track_colour(track_id: int) -> tuple[float, float, float]:
    """A stable, distinct colour per track id (golden-ratio hue steps)."""
    import colorsys

    return colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.75, 0.95)


class McapRecorder:
    def __init__(self, path: str | Path, allow_overwrite: bool = True) -> None:
        import foxglove
        from foxglove import channels

        self.path = Path(path)
        self.partial = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._ctx = foxglove.Context()
            self._writer = foxglove.open_mcap(
                str(self.path), allow_overwrite=allow_overwrite, context=self._ctx
            )
        except Exception as exc:  # the SDK raises its own error types for I/O problems
            raise RecordingError(f"cannot open recording {self.path}: {exc}") from exc
        self._channels_mod = channels
        self._channels: dict[str, object] = {}
        self.messages = 0

    # -- helpers --------------------------------------------------------------------------------
    def _channel(self, topic: str, kind: str):
        ch = self._channels.get(topic)
        if ch is None:
            if kind == "json":
                import foxglove

                ch = foxglove.Channel(topic, message_encoding="json", context=self._ctx)
            else:
                ch = getattr(self._channels_mod, kind)(topic, context=self._ctx)
            self._channels[topic] = ch
        return ch

    def _log(self, topic: str, kind: str, msg, t_ns: int) -> None:
        try:
            self._channel(topic, kind).log(msg, log_time=int(t_ns))
        except Exception as exc:
            self.partial = True
            raise RecordingError(f"writing {topic} to {self.path} failed: {exc}") from exc
        self.messages += 1

    @staticmethod
    def _stamp(t_ns: int):
        from foxglove import messages as m

        return m.Timestamp(int(t_ns) // 1_000_000_000, int(t_ns) % 1_000_000_000)

    # -- public API -----------------------------------------------------------------------------
    def log_transforms(self, t_ns: int, world_from: dict[str, np.ndarray]) -> None:
        from foxglove import messages as m

        transforms = []
        for agent_id, T in world_from.items():
            qx, qy, qz, qw = _rotation_to_quaternion(T[:3, :3])
            transforms.append(
                m.FrameTransform(
                    timestamp=self._stamp(t_ns),
                    parent_frame_id="world",
                    child_frame_id=f"agent_{agent_id}",
                    translation=m.Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                    rotation=m.Quaternion(x=qx, y=qy, z=qz, w=qw),
                )
            )
        self._log("/tf", "FrameTransformsChannel", m.FrameTransforms(transforms=transforms), t_ns)

    def log_points(self, t_ns: int, agent_id: str, points: np.ndarray, topic: str | None = None) -> None:
        from foxglove import messages as m

        pts = np.ascontiguousarray(np.asarray(points, dtype=np.float32)[:, :4])
        f32 = m.PackedElementFieldNumericType.Float32
        fields = [
            m.PackedElementField(name=n, offset=4 * i, type=f32)
            for i, n in enumerate(("x", "y", "z", "intensity"))
        ]
        msg = m.PointCloud(
            timestamp=self._stamp(t_ns),
            frame_id=f"agent_{agent_id}",
            pose=m.Pose(position=m.Vector3(x=0, y=0, z=0), orientation=m.Quaternion(x=0, y=0, z=0, w=1)),
            point_stride=16,
            fields=fields,
            data=pts.tobytes(),
        )
        self._log(topic or f"/agents/{agent_id}/points", "PointCloudChannel", msg, t_ns)

    def log_boxes(
        self,
        t_ns: int,
        topic: str,
        boxes: Boxes,
        frame_id: str = "world",
        colour: tuple[float, float, float] | None = None,
        label: str = "box",
    ) -> None:
        """Boxes as cubes; with track ids, entity id = track id and a per-track colour."""
        from foxglove import messages as m

        entities = []
        for i in range(len(boxes)):
            x, y, z, length, width, height, yaw = (float(v) for v in boxes.xyzlwhy[i])
            tid = int(boxes.track_ids[i])
            r, g, b = colour if colour is not None or tid < 0 else _track_colour(tid)
            if colour is None and tid < 0:
                r, g, b = 0.9, 0.9, 0.9
            pose = m.Pose(
                position=m.Vector3(x=x, y=y, z=z),
                orientation=m.Quaternion(x=0.0, y=0.0, z=float(np.sin(yaw / 2)), w=float(np.cos(yaw / 2))),
            )
            meta = [m.KeyValuePair(key="class", value=str(int(boxes.labels[i])))]
            if boxes.scores is not None:
                meta.append(m.KeyValuePair(key="score", value=f"{float(boxes.scores[i]):.3f}"))
            entities.append(
                m.SceneEntity(
                    timestamp=self._stamp(t_ns),
                    frame_id=frame_id,
                    id=f"{label}_{tid}" if tid >= 0 else f"{label}_{i}",
                    metadata=meta,
                    cubes=[
                        m.CubePrimitive(
                            pose=pose,
                            size=m.Vector3(x=length, y=width, z=height),
                            color=m.Color(r=r, g=g, b=b, a=0.45),
                        )
                    ],
                )
            )
        deletion = m.SceneEntityDeletion(
            timestamp=self._stamp(t_ns), type=m.SceneEntityDeletionType.All, id=""
        )
        self._log(topic, "SceneUpdateChannel", m.SceneUpdate(deletions=[deletion], entities=entities), t_ns)

    def log_json(self, t_ns: int, topic: str, payload: dict) -> None:
        self._log(topic, "json", json.dumps(payload, default=float).encode(), t_ns)

    def close(self) -> None:
        try:
            if self.partial:
                self._writer.write_metadata("v2x", {"partial": "true"})
            self._writer.close()
        except Exception as exc:
            raise RecordingError(f"closing recording {self.path} failed: {exc}") from exc

    def __enter__(self) -> McapRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
