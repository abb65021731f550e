"""What the replay's nodes say to each other: topic names, and scans, boxes and settings as
messages.

Two kinds of traffic:

* **through the channel** (``Packet`` on ``/agents/...`` and ``/ego/...``): the messages the
  system would put on the air (demand, offers, features / detections / points). The channel
  node emulates the network on them and republishes them on ``/rx/<receiver><topic>``.
* **direct** (``/replay/...``): the harness's own bookkeeping (log data, frame ticks, status
  notes, results). It is not radio traffic and never passes the channel.

Every subscription is to an exact topic or to a prefix that only carries what the subscriber
wants (ZeroMQ filters on prefixes at the sender), so a 4 MB scan goes only where it is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from v2x.comm.envelope import Boxes3D, PointCloud
from v2x.core.boxes import Boxes
from v2x.core.frame import AgentScan
from v2x.pipeline.methods import Method
from v2x.sim.channel import ChannelConfig, GilbertElliott

__all__ = [
    "ABSENT_NOTE",
    "ALIVE_TOPIC",
    "CHANNEL_STATS",
    "CHANNEL_STATS_REQUEST",
    "DEMAND_NOTE",
    "EGO_DETECTIONS",
    "EGO_DONE",
    "EGO_FINISHED",
    "EGO_FRAME",
    "EGO_GT",
    "EGO_GT_TRACK",
    "EGO_LINKS",
    "EGO_SCAN",
    "EGO_TRACKS",
    "END",
    "NODES",
    "OFFER_NOTE",
    "POSITIONS",
    "READY",
    "RECORDER_CLOSED",
    "boxes_from_message",
    "boxes_message",
    "config_from_dict",
    "message_topic",
    "scan_from_message",
    "scan_message",
    "slot_frame",
    "slot_scan",
    "slot_status",
]

# -- direct (harness) topics -------------------------------------------------------------------------
EGO_SCAN = "/replay/scan/ego"
EGO_GT = "/replay/gt/eval"  # ground truth scored against, in the ego's BEV frame
EGO_GT_TRACK = "/replay/gt/track"  # ground truth for tracking, world frame
EGO_FRAME = "/replay/frame/ego"
POSITIONS = "/replay/positions"  # every agent's position this frame, for the channel's range models
DEMAND_NOTE = "/replay/note/demand"  # the ego's demand size this frame (sent on the air separately)
OFFER_NOTE = "/replay/note/offer"  # whether (and how big) an agent's offer is this frame
ABSENT_NOTE = "/replay/note/absent"  # the collaborators the ego goes on without this frame
EGO_DONE = "/replay/ego/done"
EGO_DETECTIONS = "/replay/ego/detections"
EGO_TRACKS = "/replay/ego/tracks"
EGO_LINKS = "/replay/ego/links"
EGO_FINISHED = "/replay/ego/finished"
READY = "/replay/ready"
END = "/replay/end"
NODES = "/replay/nodes"  # the supervisor's word on node deaths and stopped nodes
ALIVE_TOPIC = "/heartbeat"
CHANNEL_STATS_REQUEST = "/replay/channel/request"
CHANNEL_STATS = "/replay/channel/stats"
RECORDER_CLOSED = "/replay/recorder/closed"


def slot_scan(slot: int) -> str:
    return f"/replay/scan/slot{slot}"


def slot_frame(slot: int) -> str:
    return f"/replay/frame/slot{slot}"


def slot_status(slot: int) -> str:
    return f"/replay/status/slot{slot}"


def message_topic(agent_id: str, method: Method) -> str:
    """Where a collaborator's message goes on the air (the design's topic names)."""
    if method.topic_kind is None:
        raise ValueError(f"method {method.name}: collaborators send nothing, on no topic")
    return f"/agents/{agent_id}/{method.topic_kind}"


# -- conversions ------------------------------------------------------------------------------------
def scan_message(scan: AgentScan, frame: int) -> PointCloud:
    """A scan as a message; :func:`scan_from_message` gives back the same arrays bit for bit."""
    return PointCloud(
        np.ascontiguousarray(scan.points, dtype=np.float32),
        np.ascontiguousarray(scan.world_from_lidar, dtype=np.float64),
        agent_id=scan.agent_id,
        kind=scan.kind.value,
        mount_height=float(scan.mount_height),
        stamp_ns=int(scan.timestamp_ns),
        frame=int(frame),
    )


def scan_from_message(msg: PointCloud) -> AgentScan:
    return AgentScan(
        msg.agent_id,
        msg.kind,
        np.array(msg.points, dtype=np.float32),  # received arrays are read-only views
        np.array(msg.world_from_lidar, dtype=np.float64),
        timestamp_ns=int(msg.stamp_ns),
        mount_height=float(msg.mount_height),
    )


def boxes_message(boxes: Boxes, frame: int, stamp_ns: int = 0, frame_id: str = "world") -> Boxes3D:
    scores = boxes.scores if boxes.scores is not None else np.zeros(0, np.float32)
    return Boxes3D(
        np.ascontiguousarray(boxes.xyzlwhy, dtype=np.float64),
        np.ascontiguousarray(scores, dtype=np.float32),
        np.ascontiguousarray(boxes.labels, dtype=np.int16),
        np.ascontiguousarray(boxes.track_ids, dtype=np.int64),
        frame_id=frame_id,
        stamp_ns=int(stamp_ns),
        frame=int(frame),
    )


def boxes_from_message(msg: Boxes3D, with_scores: bool | None = None) -> Boxes:
    """Boxes back from a message; scores are kept when there are as many as boxes (or asked)."""
    n = len(msg.boxes)
    keep = (len(msg.scores) == n and n > 0) if with_scores is None else with_scores
    return Boxes(
        np.array(msg.boxes, dtype=np.float64),
        np.array(msg.labels),
        np.array(msg.track_ids),
        np.array(msg.scores, dtype=np.float32) if keep else None,
    )


def config_from_dict(d: dict[str, Any]):
    """A :class:`~v2x.pipeline.config.RunConfig` from its ``to_dict()`` (what nodes get as a parameter)."""
    from v2x.pipeline.config import RunConfig

    d = dict(d)
    ch = dict(d.pop("channel"))
    if isinstance(ch.get("burst"), dict):
        ch["burst"] = GilbertElliott(**ch["burst"])
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(channel=ChannelConfig(**ch), **{k: v for k, v in d.items() if k in known})
