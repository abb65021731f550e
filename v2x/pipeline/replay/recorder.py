"""The recorder node (``v2x replay --record out.mcap``): the run as an MCAP file that Foxglove
and Rerun open (:class:`~v2x.output.recording.McapRecorder`).

It listens to what the player and the ego publish anyway: every agent's scan (``/tf`` and
``/agents/<id>/points``), the ground truth (``/ground_truth``), the ego's detections and tracks
(``/ego/<id>/detections``, ``/ego/<id>/tracks``, entity id = track id) and per-frame link
statistics (``/links``: bytes, delivered or lost and why, latency per collaborator), plus the
channel node's ``/diagnostics``. Messages are stamped with the log's capture times, so playback
follows the data. It closes the file when the ego has finished (or on SIGTERM), so a run cut
short still leaves a readable recording.
"""

from __future__ import annotations

from v2x.comm.envelope import Boxes3D, Diagnostics, Json, PointCloud
from v2x.pipeline.replay.base import ReplayNode
from v2x.pipeline.replay.protocol import (
    EGO_DETECTIONS,
    EGO_FINISHED,
    EGO_GT_TRACK,
    EGO_LINKS,
    EGO_SCAN,
    EGO_TRACKS,
    RECORDER_CLOSED,
    boxes_from_message,
    slot_scan,
)

__all__ = ["RecorderNode", "record_frames"]


class RecorderNode(ReplayNode):
    role = "recorder"

    def on_configure(self) -> None:
        from v2x.output.recording import McapRecorder

        self.setup()
        self.slots = self.param("slots", 0)
        self.stride = max(1, self.param("points_stride", 1))
        self.rec = McapRecorder(self.param("path", "", required=True))
        self.closed_pub = self.create_publisher(Json, RECORDER_CLOSED)
        self.ego_ids: dict[int, str] = {}
        self.stamps: dict[int, int] = {}
        for topic in [EGO_SCAN] + [slot_scan(i) for i in range(self.slots)]:
            self.create_subscription(PointCloud, topic, self.on_scan, depth=64)
        self.create_subscription(Boxes3D, EGO_GT_TRACK, self.on_gt, depth=64)
        self.create_subscription(Boxes3D, EGO_DETECTIONS, self.on_boxes, depth=64)
        self.create_subscription(Boxes3D, EGO_TRACKS, self.on_boxes, depth=64)
        self.create_subscription(Json, EGO_LINKS, self.on_links, depth=64)
        self.create_subscription(Diagnostics, "/diagnostics", self.on_diagnostics, depth=16)
        self.create_subscription(Json, EGO_FINISHED, self.on_finished)
        self.closed = False
        self.errors = 0

    def _guard(self, fn, *args) -> None:
        """A recording that fails (disk full) stops recording; the run goes on."""
        from v2x.output.recording import RecordingError

        if self.closed:
            return
        try:
            fn(*args)
        except RecordingError as exc:
            self.errors += 1
            self.log.error("%s: recording stops here", exc)
            self.close()

    def on_scan(self, topic: str, msg: PointCloud) -> None:
        self.started = True
        stamp = int(msg.stamp_ns)
        if topic == EGO_SCAN:
            self.ego_ids[int(msg.frame)] = msg.agent_id
            self.stamps[int(msg.frame)] = stamp
        self._guard(self.rec.log_transforms, stamp, {msg.agent_id: msg.world_from_lidar})
        self._guard(self.rec.log_points, stamp, msg.agent_id, msg.points[:: self.stride])

    def on_gt(self, _topic: str, msg: Boxes3D) -> None:
        self._guard(
            self.rec.log_boxes,
            int(msg.stamp_ns),
            "/ground_truth",
            boxes_from_message(msg),
            "world",
            None,
            "gt",
        )

    def on_boxes(self, topic: str, msg: Boxes3D) -> None:
        ego = self.ego_ids.get(int(msg.frame), "ego")
        if topic == EGO_TRACKS:
            self._guard(
                self.rec.log_boxes, int(msg.stamp_ns), f"/ego/{ego}/tracks", boxes_from_message(msg), "world"
            )
        else:
            self._guard(
                self.rec.log_boxes,
                int(msg.stamp_ns),
                f"/ego/{ego}/detections",
                boxes_from_message(msg),
                "world",
                (1.0, 0.25, 0.25),
                "detection",
            )

    def on_links(self, _topic: str, msg: Json) -> None:
        self._guard(self.rec.log_json, int(msg.data["stamp_ns"]), "/links", dict(msg.data))

    def on_diagnostics(self, _topic: str, msg: Diagnostics) -> None:
        if not self.stamps or not any(k.startswith("link:") for k in msg.topics):
            return
        stamp = self.stamps[max(self.stamps)]
        links = {k[5:]: v for k, v in msg.topics.items() if k.startswith("link:")}
        self._guard(self.rec.log_json, stamp, f"/diagnostics/{msg.node}", {"links": links})

    def on_finished(self, _topic: str, _msg: Json) -> None:
        self.close()
        self.request_stop()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.rec.close()
        except Exception as exc:
            self.log.error("closing the recording failed: %s", exc)
        self.closed_pub.publish(Json({"path": str(self.rec.path), "messages": self.rec.messages}))
        self.log.info("recording closed: %s (%d messages)", self.rec.path, self.rec.messages)

    def on_end(self, data: dict) -> None:
        """Wait for the ego's last word (``/replay/ego/finished``); the supervisor stops us after."""

    def on_shutdown(self) -> None:
        self.close()


def record_frames(path, frames, detections: list[dict], min_points: int = 1) -> int:
    """The same recording from an in-process run (``v2x replay --in-process --record``): frames
    read again from the log, detections as ``run_frames`` returns them. Returns the messages."""
    from v2x.output.recording import McapRecorder
    from v2x.pipeline.detections import tracking_ground_truth

    with McapRecorder(path) as rec:
        for frame, det in zip(frames, detections, strict=False):
            t = int(frame.timestamp_ns)
            rec.log_transforms(t, {a: s.world_from_lidar for a, s in frame.agents.items()})
            for a, s in frame.agents.items():
                rec.log_points(t, a, s.points)
            rec.log_boxes(t, "/ground_truth", tracking_ground_truth(frame, min_points), "world", None, "gt")
            world = det["boxes"].transformed(frame.ego.world_from_bev)
            rec.log_boxes(
                t, f"/ego/{frame.ego_id}/detections", world, "world", (1.0, 0.25, 0.25), "detection"
            )
            if det["tracks"] is not None:
                rec.log_boxes(t, f"/ego/{frame.ego_id}/tracks", det["tracks"], "world")
        return rec.messages
