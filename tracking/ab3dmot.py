"""The AB3DMOT baseline: one filterpy Kalman filter per track, fixed noise, one detection stream
(the union of the frame's agents' boxes: give it one agent to track that agent's boxes alone).

Follows AB3DMOT (Weng et al.) as V2V4Real runs it: 10-D constant-velocity state, Hungarian
matching on 3D GIoU over all pairs with pairs under -0.2 dropped afterwards, the track's heading
turned to agree with the detection before each update, new tracks from unmatched detections,
a track reported while it has missed fewer than ``max_age`` frames and has been hit in at
least ``min_hits`` frames (every track during the first ``min_hits`` frames), and dropped after
``max_age`` misses in a row. Noise and covariances are AB3DMOT's unless configured otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
from filterpy.kalman import KalmanFilter

from v2x.core.boxes import Boxes
from v2x.tracking.association import affinity_matrix, hungarian
from v2x.tracking.config import TrackerConfig
from v2x.tracking.motion import (
    FrameClock,
    boxes_from_states,
    constant_velocity,
    heading_correction,
    within_pi,
)
from v2x.tracking.records import FrameDetections
from v2x.tracking.sanitize import Warnings, sanitize_boxes
from v2x.tracking.tracker import StepOutput

__all__ = ["AB3DMOT"]


class _Track:
    def __init__(self, tid: int, box: np.ndarray, score: float, label: int, cfg: TrackerConfig) -> None:
        kf = KalmanFilter(dim_x=10, dim_z=7)
        kf.H = np.eye(7, 10)
        kf.R = np.diag(cfg.R_state())
        kf.P = cfg.P0()
        kf.x = np.concatenate([box[[0, 1, 2, 6, 3, 4, 5]], np.zeros(3)])[:, None]
        self.kf = kf
        self.id = tid
        self.hits = 1
        self.misses = 0
        self.score = score
        self.label = label

    def box(self) -> np.ndarray:
        return boxes_from_states(self.kf.x[:, 0][None])[0]


class AB3DMOT:
    """Tracks boxes given in one frame of reference (world or ego), frame by frame."""

    #: one stream: the frame's agents' boxes are tracked as one set (a
    #: :class:`~v2x.tracking.tracker.Tracker`)
    per_agent = False

    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self.reset()

    def reset(self) -> None:
        self.tracks: list[_Track] = []
        self._next_id = 1
        self.clock = FrameClock(self.cfg.dt, self.cfg.timing)
        self.warnings = Warnings()

    def step(self, frame: FrameDetections) -> StepOutput:
        """Predict, associate, update with the union of the frame's agents' boxes; ``boxes`` are
        the reported tracks (with ids and the last matched detection's score). A refused frame
        (repeated, out of order) reports none and changes nothing."""
        cfg = self.cfg
        dt = self.clock.advance(frame.frame, frame.timestamp_ns, self.warnings)
        if dt is None:
            return self._output(Boxes.empty(with_scores=True), accepted=False)
        dets, _ = sanitize_boxes(frame.fused(), self.warnings)
        F, Q = constant_velocity(dt), cfg.Q(dt)
        for t in self.tracks:
            t.kf.predict(F=F, Q=Q)
            t.kf.x[3, 0] = within_pi(t.kf.x[3, 0])
            t.misses += 1
        predicted = np.array([t.box() for t in self.tracks]).reshape(-1, 7)
        floor = cfg.threshold if cfg.prune else None
        aff = affinity_matrix(cfg.affinity, predicted, dets.xyzlwhy, floor)
        pairs, _, new = hungarian(aff, cfg.threshold, cfg.gate_first)
        R = np.diag(cfg.R_state())
        for ti, di in pairs:
            t = self.tracks[ti]
            z = dets.xyzlwhy[di][[0, 1, 2, 6, 3, 4, 5]].copy()
            offset, z[3] = heading_correction(t.kf.x[3, 0], z[3])
            t.kf.x[3, 0] += float(offset)
            t.kf.update(z[:, None], R=R)
            t.kf.x[3, 0] = within_pi(t.kf.x[3, 0])
            t.hits += 1
            t.misses = 0
            t.score = float(dets.scores[di])
        for di in new:
            self.tracks.append(
                _Track(self._next_id, dets.xyzlwhy[di], float(dets.scores[di]), int(dets.labels[di]), cfg)
            )
            self._next_id += 1
        early = self.clock.count <= cfg.min_hits
        shown = [t for t in self.tracks if t.misses < cfg.max_age and (t.hits >= cfg.min_hits or early)]
        self.tracks = [t for t in self.tracks if t.misses < cfg.max_age]
        reported = Boxes(
            np.array([t.box() for t in shown]).reshape(-1, 7),
            labels=[t.label for t in shown],
            track_ids=[t.id for t in shown],
            scores=[t.score for t in shown],
        )
        return self._output(reported)

    def _output(self, boxes: Boxes, accepted: bool = True) -> StepOutput:
        """The reported tracks with every live track's state, as the multi-sensor filter gives them."""
        ids, states, covariances = self.states()
        updated = np.array([accepted and t.misses == 0 for t in self.tracks], dtype=bool)
        return StepOutput(
            boxes,
            torch.from_numpy(states),
            torch.from_numpy(covariances),
            ids,
            updated,
            np.full(len(ids), -1, dtype=np.int64),
            accepted,
        )

    def states(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Live tracks: ids (N,), states (N, 10) and covariances (N, 10, 10)."""
        return (
            np.array([t.id for t in self.tracks], dtype=np.int64),
            np.array([t.kf.x[:, 0] for t in self.tracks]).reshape(-1, 10),
            np.array([t.kf.P for t in self.tracks]).reshape(-1, 10, 10),
        )
