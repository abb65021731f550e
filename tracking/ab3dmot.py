"""The AB3DMOT-style baseline: one Kalman filter per track (filterpy), fixed noise, one fused
detection stream.

State (10-D): ``x, y, z, yaw, l, w, h, vx, vy, vz`` with a constant-velocity model; the
measurement is the 7-D box. Association is Hungarian on 3D GIoU (pairs at or below -0.2 are not
allowed, DMSTrack's setting). A track is reported after 3 hits and dropped after 2 misses.
Headings are kept within 90 degrees of the prediction (a box and its 180-degree turn are the
same box), as AB3DMOT does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from filterpy.kalman import KalmanFilter

from v2x.boxes import Boxes, wrap_angle
from v2x.tracking.association import giou3d_matrix, hungarian
from v2x.tracking.sanitize import sanitize_detections

__all__ = ["AB3DMOT", "TrackerConfig", "constant_velocity"]


@dataclass
class TrackerConfig:
    dt: float = 0.1
    giou_threshold: float = -0.2
    min_hits: int = 3
    max_misses: int = 2
    #: diagonal noise: measurement (7), process (10), initial covariance (10)
    measurement_std: tuple[float, ...] = (0.5, 0.5, 0.5, 0.3, 0.5, 0.3, 0.3)
    process_std: tuple[float, ...] = (0.1, 0.1, 0.1, 0.05, 0.02, 0.02, 0.02, 1.0, 1.0, 0.1)
    initial_std: tuple[float, ...] = (1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 10.0, 10.0, 1.0)


def constant_velocity(dt: float) -> np.ndarray:
    F = np.eye(10)
    F[0, 7] = F[1, 8] = F[2, 9] = dt
    return F


def align_heading(measured_yaw: float, predicted_yaw: float) -> float:
    """The measured heading, turned by 180 degrees if that brings it within 90 of the prediction."""
    d = wrap_angle(measured_yaw - predicted_yaw)
    if abs(d) > np.pi / 2:
        d = wrap_angle(d + np.pi)
    return float(predicted_yaw + d)


class _Track:
    def __init__(self, tid: int, box: np.ndarray, score: float, label: int, cfg: TrackerConfig) -> None:
        kf = KalmanFilter(dim_x=10, dim_z=7)
        kf.F = constant_velocity(cfg.dt)
        kf.H = np.eye(7, 10)
        kf.R = np.diag(np.square(cfg.measurement_std))
        kf.Q = np.diag(np.square(cfg.process_std))
        kf.P = np.diag(np.square(cfg.initial_std))
        kf.x = np.concatenate([box[[0, 1, 2, 6, 3, 4, 5]], np.zeros(3)])[:, None]
        self.kf = kf
        self.id = tid
        self.hits = 1
        self.misses = 0
        self.score = score
        self.label = label

    def box(self) -> np.ndarray:
        x = self.kf.x[:, 0]
        return np.array([x[0], x[1], x[2], x[4], x[5], x[6], wrap_angle(x[3])])


class AB3DMOT:
    """Tracks boxes in one frame of reference (world or ego), frame by frame."""

    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self.tracks: list[_Track] = []
        self._next_id = 1
        self.frame = -1
        self.warnings: dict[str, int] = {}

    def step(self, detections: Boxes, frame: int | None = None) -> Boxes:
        """Predict, associate, update; returns the confirmed tracks updated this frame."""
        frame = self.frame + 1 if frame is None else frame
        if frame <= self.frame:
            self.warnings["frame_out_of_order"] = self.warnings.get("frame_out_of_order", 0) + 1
            return Boxes.empty(with_scores=True)
        steps = frame - self.frame if self.frame >= 0 else 1
        self.frame = frame
        dets, dropped = sanitize_detections(detections)
        if dropped:
            self.warnings["bad_detection"] = self.warnings.get("bad_detection", 0) + dropped
        for t in self.tracks:
            for _ in range(steps):
                t.kf.predict()
            t.kf.x[3, 0] = wrap_angle(t.kf.x[3, 0])
        predicted = np.array([t.box() for t in self.tracks]).reshape(-1, 7)
        giou = giou3d_matrix(predicted, dets.xyzlwhy)
        pairs, lost, new = hungarian(giou, self.cfg.giou_threshold)
        for ti, di in pairs:
            t = self.tracks[ti]
            z = dets.xyzlwhy[di]
            meas = np.array([z[0], z[1], z[2], align_heading(z[6], t.kf.x[3, 0]), z[3], z[4], z[5]])
            t.kf.update(meas[:, None])
            t.kf.x[3, 0] = wrap_angle(t.kf.x[3, 0])
            t.hits += 1
            t.misses = 0
            t.score = float(dets.scores[di]) if dets.scores is not None else 1.0
        for ti in lost:
            self.tracks[ti].misses += 1
        for di in new:
            score = float(dets.scores[di]) if dets.scores is not None else 1.0
            self.tracks.append(_Track(self._next_id, dets.xyzlwhy[di], score, int(dets.labels[di]), self.cfg))
            self._next_id += 1
        self.tracks = [t for t in self.tracks if t.misses <= self.cfg.max_misses]
        shown = [
            t
            for t in self.tracks
            if t.misses == 0 and (t.hits >= self.cfg.min_hits or frame < self.cfg.min_hits)
        ]
        return Boxes(
            np.array([t.box() for t in shown]).reshape(-1, 7),
            labels=[t.label for t in shown],
            track_ids=[t.id for t in shown],
            scores=[t.score for t in shown],
        )
