"""What the trackers consume: per frame, each agent's detections with the context a
measurement-noise model needs, and a compact on-disk form for sequences of them.

Boxes are in the world frame. ``features`` are optional BEV feature patches around each
detection, taken from the agent's own map; ``variances`` are optional per-detection measurement
variances an agent may send along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from v2x.boxes import Boxes

__all__ = ["AgentDetections", "FrameDetections", "load_sequence", "save_sequence"]


@dataclass
class AgentDetections:
    agent_id: str
    kind: str  # "vehicle" or "rsu"
    world_from_agent: np.ndarray  # 4x4: the agent's BEV frame
    boxes: Boxes  # world frame, with scores
    features: np.ndarray | None = None  # (N, C, P, P) float16/32
    variances: np.ndarray | None = None  # (N, 7) measurement variances sent by the agent


@dataclass
class FrameDetections:
    frame: int
    timestamp_ns: int
    agents: list[AgentDetections]
    #: ground truth in the world frame (training and evaluation only)
    gt: Boxes | None = None
    extra: dict = field(default_factory=dict)

    def fused(self) -> Boxes:
        return Boxes.concat([a.boxes for a in self.agents]) if self.agents else Boxes.empty(with_scores=True)


def save_sequence(path: str | Path, frames: list[FrameDetections]) -> None:
    """One ``.npz`` per sequence: flat arrays with frame and agent indices."""
    rows: dict[str, list] = {k: [] for k in ("box", "score", "label", "frame", "agent", "feat", "var")}
    agents: list[tuple[int, str, str, np.ndarray]] = []
    gt_rows: dict[str, list] = {"box": [], "label": [], "track": [], "frame": []}
    has_feat = any(a.features is not None for f in frames for a in f.agents)
    has_var = any(a.variances is not None for f in frames for a in f.agents)
    for fi, f in enumerate(frames):
        for a in f.agents:
            ai = len(agents)
            agents.append((fi, a.agent_id, a.kind, a.world_from_agent))
            n = len(a.boxes)
            rows["box"].append(a.boxes.xyzlwhy)
            rows["score"].append(a.boxes.scores if a.boxes.scores is not None else np.ones(n, np.float32))
            rows["label"].append(a.boxes.labels)
            rows["frame"].append(np.full(n, fi))
            rows["agent"].append(np.full(n, ai))
            if has_feat:
                rows["feat"].append(a.features.astype(np.float16))
            if has_var:
                rows["var"].append(a.variances if a.variances is not None else np.full((n, 7), np.nan))
        if f.gt is not None:
            gt_rows["box"].append(f.gt.xyzlwhy)
            gt_rows["label"].append(f.gt.labels)
            gt_rows["track"].append(f.gt.track_ids)
            gt_rows["frame"].append(np.full(len(f.gt), fi))

    def cat(key, src, shape=(0,), dtype=np.float64):
        return np.concatenate(src[key]) if src[key] else np.zeros(shape, dtype)

    out = {
        "frame_numbers": np.array([f.frame for f in frames], dtype=np.int64),
        "timestamps": np.array([f.timestamp_ns for f in frames], dtype=np.int64),
        "box": cat("box", rows, (0, 7)),
        "score": cat("score", rows, (0,), np.float32),
        "label": cat("label", rows, (0,), np.int16),
        "det_frame": cat("frame", rows, (0,), np.int64),
        "det_agent": cat("agent", rows, (0,), np.int64),
        "agent_frame": np.array([a[0] for a in agents], dtype=np.int64),
        "agent_id": np.array([a[1] for a in agents]),
        "agent_kind": np.array([a[2] for a in agents]),
        "agent_pose": np.array([a[3] for a in agents]).reshape(-1, 4, 4),
        "gt_box": cat("box", gt_rows, (0, 7)),
        "gt_label": cat("label", gt_rows, (0,), np.int16),
        "gt_track": cat("track", gt_rows, (0,), np.int64),
        "gt_frame": cat("frame", gt_rows, (0,), np.int64),
        "has_gt": np.array([f.gt is not None for f in frames]),
    }
    if has_feat:
        out["feat"] = np.concatenate(rows["feat"]) if rows["feat"] else np.zeros((0,), np.float16)
    if has_var:
        out["var"] = np.concatenate(rows["var"])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)


def load_sequence(path: str | Path) -> list[FrameDetections]:
    d = np.load(path, allow_pickle=False)
    frames = []
    for fi, (num, ts) in enumerate(zip(d["frame_numbers"], d["timestamps"], strict=True)):
        agents = []
        for ai in np.flatnonzero(d["agent_frame"] == fi):
            m = d["det_agent"] == ai
            boxes = Boxes(d["box"][m], labels=d["label"][m], scores=d["score"][m])
            feats = d["feat"][m] if "feat" in d else None
            var = d["var"][m] if "var" in d else None
            agents.append(
                AgentDetections(
                    str(d["agent_id"][ai]), str(d["agent_kind"][ai]), d["agent_pose"][ai], boxes, feats, var
                )
            )
        gt = None
        if d["has_gt"][fi]:
            g = d["gt_frame"] == fi
            gt = Boxes(d["gt_box"][g], labels=d["gt_label"][g], track_ids=d["gt_track"][g])
        frames.append(FrameDetections(int(num), int(ts), agents, gt))
    return frames
