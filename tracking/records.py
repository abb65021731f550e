"""What the trackers consume, and a compact on-disk form for sequences of it.

Per frame, each agent's own detections, moved into the world frame, with the context a
measurement-noise model needs: the agent's pose, and optionally a (C, P, P) patch of its BEV
feature map around each detection, the variances it predicted for them (box order
``x y z l w h yaw``, in the agent's own frame, as the wire format carries them) and, for
training, the ground-truth id each detection belongs to.

On disk: one ``.npz`` per sequence (format version 1), flat arrays indexed by detection with
the frame and agent-slot each one belongs to; see ``docs/tracking.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from v2x.core.boxes import Boxes

__all__ = [
    "FORMAT_VERSION",
    "AgentDetections",
    "FrameDetections",
    "RecordError",
    "load_sequence",
    "record_files",
    "save_sequence",
]

FORMAT_VERSION = 1
AGENT_KINDS = ("vehicle", "rsu")


class RecordError(ValueError):
    """A detection record or file that does not hold together; names the file and field."""

    def __init__(self, where: str | Path, field_name: str, message: str) -> None:
        self.where, self.field, self.message = str(where), field_name, message
        super().__init__(f"{where}: {field_name}: {message}")


@dataclass
class AgentDetections:
    """One agent's detections in one frame.

    ``boxes`` are in the world frame, with scores. ``features`` (N, C, P, P), ``variances``
    (N, 7) and ``gt_ids`` (N,) are optional and row-aligned with the boxes.
    """

    agent_id: str
    kind: str  # "vehicle" or "rsu"
    world_from_agent: np.ndarray  # 4x4: the agent's BEV frame in the world
    boxes: Boxes
    features: np.ndarray | None = None
    variances: np.ndarray | None = None
    gt_ids: np.ndarray | None = None
    #: the agent's own localisation uncertainty: variances of its x, y (m^2) and heading (rad^2)
    pose_var: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.agent_id = str(self.agent_id)
        self.kind = getattr(self.kind, "value", self.kind)
        if self.kind not in AGENT_KINDS:
            raise RecordError(
                f"agent {self.agent_id}", "kind", f"must be one of {AGENT_KINDS}, got {self.kind!r}"
            )
        self.world_from_agent = np.asarray(self.world_from_agent, dtype=np.float64)
        if self.world_from_agent.shape != (4, 4):
            raise RecordError(
                f"agent {self.agent_id}", "world_from_agent", f"shape {self.world_from_agent.shape}"
            )
        n = len(self.boxes)
        for name, shape in (("features", None), ("variances", (n, 7)), ("gt_ids", (n,))):
            v = getattr(self, name)
            if v is None:
                continue
            v = np.asarray(v)
            if (shape is not None and v.shape != shape) or (shape is None and (v.ndim != 4 or len(v) != n)):
                want = shape or f"({n}, C, P, P)"
                raise RecordError(f"agent {self.agent_id}", name, f"shape {v.shape}, expected {want}")
            setattr(self, name, v)
        if self.pose_var is not None:
            self.pose_var = np.asarray(self.pose_var, dtype=np.float64).reshape(-1)
            if self.pose_var.shape != (3,):
                raise RecordError(
                    f"agent {self.agent_id}", "pose_var", f"shape {self.pose_var.shape}, expected (3,)"
                )

    @classmethod
    def from_agent_frame(
        cls,
        agent_id: str,
        kind: str,
        world_from_agent: np.ndarray,
        boxes_agent: Boxes,
        variances: np.ndarray | None = None,
        features: np.ndarray | None = None,
        pose_var: np.ndarray | None = None,
    ) -> AgentDetections:
        """From boxes in the agent's own BEV frame, as a detection message carries them (the
        variances stay in the agent's frame; the tracker turns them)."""
        return cls(
            agent_id,
            kind,
            world_from_agent,
            boxes_agent.transformed(world_from_agent),
            features,
            variances,
            None,
            pose_var,
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, mask: np.ndarray) -> AgentDetections:
        """The same agent with a subset of its detections."""
        return AgentDetections(
            self.agent_id,
            self.kind,
            self.world_from_agent,
            self.boxes[mask],
            None if self.features is None else self.features[mask],
            None if self.variances is None else self.variances[mask],
            None if self.gt_ids is None else self.gt_ids[mask],
            self.pose_var,
        )


@dataclass
class FrameDetections:
    """All agents' detections at one time step (ego first), and optional world-frame ground truth."""

    frame: int
    timestamp_ns: int
    agents: list[AgentDetections]
    #: ground truth in the world frame (training and evaluation only)
    gt: Boxes | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def of_boxes(
        cls,
        frame: int,
        timestamp_ns: int,
        boxes: Boxes,
        world_from_agent: np.ndarray | None = None,
        agent_id: str = "ego",
        kind: str = "vehicle",
    ) -> FrameDetections:
        """One stream of boxes (a detector's output, another tracker's input files) as a frame of
        one agent, the form every tracker's ``step`` takes."""
        pose = np.eye(4) if world_from_agent is None else world_from_agent
        return cls(frame, timestamp_ns, [AgentDetections(agent_id, kind, pose, boxes)])

    def fused(self) -> Boxes:
        """Every agent's boxes in one set (what a single-stream tracker would see)."""
        if not self.agents:
            return Boxes.empty(with_scores=True)
        return Boxes.concat([a.boxes for a in self.agents])

    def ego_only(self) -> FrameDetections:
        """The same frame with the ego's own detections alone (nothing from collaborators)."""
        return FrameDetections(self.frame, self.timestamp_ns, self.agents[:1], self.gt, self.extra)


def save_sequence(path: str | Path, frames: list[FrameDetections]) -> None:
    """One compressed ``.npz`` per sequence; features are stored as float16."""
    det: dict[str, list] = {k: [] for k in ("box", "score", "label", "frame", "agent", "feat", "var", "gt")}
    slots: list[tuple[int, str, str, np.ndarray, np.ndarray]] = []
    gt_rows: dict[str, list] = {"box": [], "label": [], "track": [], "frame": []}
    has_feat = any(a.features is not None for f in frames for a in f.agents)
    has_var = any(a.variances is not None for f in frames for a in f.agents)
    has_gt_ids = any(a.gt_ids is not None for f in frames for a in f.agents)
    feat_shape = next(
        (a.features.shape[1:] for f in frames for a in f.agents if a.features is not None), None
    )
    for fi, f in enumerate(frames):
        for a in f.agents:
            slot = len(slots)
            pose_var = a.pose_var if a.pose_var is not None else np.full(3, np.nan)
            slots.append((fi, a.agent_id, a.kind, a.world_from_agent, pose_var))
            n = len(a.boxes)
            det["box"].append(a.boxes.xyzlwhy)
            det["score"].append(a.boxes.scores if a.boxes.scores is not None else np.ones(n, np.float32))
            det["label"].append(a.boxes.labels)
            det["frame"].append(np.full(n, fi))
            det["agent"].append(np.full(n, slot))
            if has_feat:
                if a.features is None:
                    raise RecordError(
                        path, "feat", f"frame {f.frame} agent {a.agent_id} has no features, others do"
                    )
                if a.features.shape[1:] != feat_shape:
                    raise RecordError(path, "feat", f"patch shape {a.features.shape[1:]} != {feat_shape}")
                det["feat"].append(a.features.astype(np.float16))
            if has_var:
                det["var"].append(a.variances if a.variances is not None else np.full((n, 7), np.nan))
            if has_gt_ids:
                det["gt"].append(a.gt_ids if a.gt_ids is not None else np.full(n, -1))
        if f.gt is not None:
            gt_rows["box"].append(f.gt.xyzlwhy)
            gt_rows["label"].append(f.gt.labels)
            gt_rows["track"].append(f.gt.track_ids)
            gt_rows["frame"].append(np.full(len(f.gt), fi))

    def cat(src, key, shape, dtype):
        return np.concatenate(src[key]).astype(dtype) if src[key] else np.zeros(shape, dtype)

    out = {
        "format_version": np.array(FORMAT_VERSION),
        "frame_numbers": np.array([f.frame for f in frames], dtype=np.int64),
        "timestamps": np.array([f.timestamp_ns for f in frames], dtype=np.int64),
        "box": cat(det, "box", (0, 7), np.float64),
        "score": cat(det, "score", (0,), np.float32),
        "label": cat(det, "label", (0,), np.int16),
        "det_frame": cat(det, "frame", (0,), np.int64),
        "det_agent": cat(det, "agent", (0,), np.int64),
        "agent_frame": np.array([s[0] for s in slots], dtype=np.int64),
        "agent_id": np.array([s[1] for s in slots], dtype=str),
        "agent_kind": np.array([s[2] for s in slots], dtype=str),
        "agent_pose": np.array([s[3] for s in slots], dtype=np.float64).reshape(-1, 4, 4),
        "agent_pose_var": np.array([s[4] for s in slots], dtype=np.float64).reshape(-1, 3),
        "gt_box": cat(gt_rows, "box", (0, 7), np.float64),
        "gt_label": cat(gt_rows, "label", (0,), np.int16),
        "gt_track": cat(gt_rows, "track", (0,), np.int64),
        "gt_frame": cat(gt_rows, "frame", (0,), np.int64),
        "has_gt": np.array([f.gt is not None for f in frames], dtype=bool),
    }
    if has_feat:
        out["feat"] = np.concatenate(det["feat"]).astype(np.float16)
    if has_var:
        out["var"] = cat(det, "var", (0, 7), np.float32)
    if has_gt_ids:
        out["det_gt"] = cat(det, "gt", (0,), np.int64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)


def record_files(folder: str | Path) -> list[Path]:
    """The sequence records of a folder, sorted (side files such as ``*.extra.npz`` left out)."""
    return sorted(p for p in Path(folder).glob("*.npz") if not p.name.endswith(".extra.npz"))


_REQUIRED = (
    "frame_numbers",
    "timestamps",
    "box",
    "score",
    "label",
    "det_frame",
    "det_agent",
    "agent_frame",
    "agent_id",
    "agent_kind",
    "agent_pose",
    "gt_box",
    "gt_label",
    "gt_track",
    "gt_frame",
    "has_gt",
)


def load_sequence(path: str | Path) -> list[FrameDetections]:
    """Frames of one ``.npz`` sequence; a :class:`RecordError` names the file and field at fault."""
    path = Path(path)
    try:
        d = dict(np.load(path, allow_pickle=False))
    except FileNotFoundError as exc:
        raise RecordError(path, "file", "missing") from exc
    except (OSError, ValueError) as exc:
        raise RecordError(path, "file", f"not a readable npz: {exc}") from exc
    version = int(d.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise RecordError(path, "format_version", f"{version} is newer than this reader ({FORMAT_VERSION})")
    for key in _REQUIRED:
        if key not in d:
            raise RecordError(path, key, "missing")
    n_det, n_slot, n_frames = len(d["box"]), len(d["agent_frame"]), len(d["frame_numbers"])
    for key, n in (("score", n_det), ("label", n_det), ("det_frame", n_det), ("det_agent", n_det)):
        if len(d[key]) != n:
            raise RecordError(path, key, f"{len(d[key])} rows for {n} detections")
    if d["box"].ndim != 2 or d["box"].shape[1] != 7:
        raise RecordError(path, "box", f"shape {d['box'].shape}, expected (N, 7)")
    for key in ("agent_id", "agent_kind", "agent_pose"):
        if len(d[key]) != n_slot:
            raise RecordError(path, key, f"{len(d[key])} rows for {n_slot} agent slots")
    if n_det and (d["det_agent"].min() < 0 or d["det_agent"].max() >= n_slot):
        raise RecordError(path, "det_agent", "index out of range")
    if n_slot and (d["agent_frame"].min() < 0 or d["agent_frame"].max() >= n_frames):
        raise RecordError(path, "agent_frame", "index out of range")
    for key in ("feat", "var", "det_gt"):
        if key in d and len(d[key]) != n_det:
            raise RecordError(path, key, f"{len(d[key])} rows for {n_det} detections")
    by_slot = np.argsort(d["det_agent"], kind="stable")
    bounds = np.searchsorted(d["det_agent"][by_slot], np.arange(n_slot + 1))
    gt_order = np.argsort(d["gt_frame"], kind="stable")
    gt_bounds = np.searchsorted(d["gt_frame"][gt_order], np.arange(n_frames + 1))
    pose_var = d.get("agent_pose_var")
    if pose_var is not None and pose_var.shape != (n_slot, 3):
        raise RecordError(path, "agent_pose_var", f"shape {pose_var.shape}, expected ({n_slot}, 3)")
    slots_of = [[] for _ in range(n_frames)]
    for s, fi in enumerate(d["agent_frame"]):
        slots_of[int(fi)].append(s)
    frames = []
    for fi in range(n_frames):
        agents = []
        for s in slots_of[fi]:
            rows = by_slot[bounds[s] : bounds[s + 1]]
            boxes = Boxes(d["box"][rows], labels=d["label"][rows], scores=d["score"][rows])
            var = d["var"][rows] if "var" in d else None
            if var is not None and np.isnan(var).all():
                var = None  # this agent sent none (others did)
            try:
                agents.append(
                    AgentDetections(
                        str(d["agent_id"][s]),
                        str(d["agent_kind"][s]),
                        d["agent_pose"][s],
                        boxes,
                        d["feat"][rows] if "feat" in d else None,
                        var,
                        d["det_gt"][rows] if "det_gt" in d else None,
                        pose_var[s] if pose_var is not None and np.isfinite(pose_var[s]).all() else None,
                    )
                )
            except RecordError as exc:
                raise RecordError(path, exc.field, f"agent slot {s}: {exc.message}") from exc
        gt = None
        if d["has_gt"][fi]:
            g = gt_order[gt_bounds[fi] : gt_bounds[fi + 1]]
            gt = Boxes(d["gt_box"][g], labels=d["gt_label"][g], track_ids=d["gt_track"][g])
        frames.append(FrameDetections(int(d["frame_numbers"][fi]), int(d["timestamps"][fi]), agents, gt))
    return frames
