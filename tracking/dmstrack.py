"""A differentiable multi-sensor Kalman filter in torch (DMSTrack's design, our code).

Same 10-D constant-velocity state as the baseline. Each frame the tracks are predicted once,
then every agent's detections update them in turn (ego first): associate (Hungarian on 3D GIoU,
optionally gated by Mahalanobis distance), Kalman-update the matched tracks with that
detection's own measurement covariance, start tentative tracks from unmatched detections.
The covariance comes from :class:`~v2x.tracking.noise_net.NoiseNet` (learned) or is the fixed
prior. Updates use the Joseph form and symmetrise, so covariances stay positive definite, and
everything stays differentiable with respect to the noise model (association is a discrete
choice made on detached values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from v2x.boxes import Boxes, wrap_angle
from v2x.tracking.ab3dmot import TrackerConfig, constant_velocity
from v2x.tracking.association import giou3d_matrix, hungarian
from v2x.tracking.noise_net import NoiseNet, detection_features
from v2x.tracking.records import AgentDetections, FrameDetections
from v2x.tracking.sanitize import sanitize_covariances

__all__ = ["MultiSensorKF", "StepOutput"]

_STATE_FROM_BOX = [0, 1, 2, 6, 3, 4, 5]  # box (x y z l w h yaw) -> state order (x y z yaw l w h)


@dataclass
class StepOutput:
    boxes: Boxes  # confirmed tracks updated this frame, world frame
    states: torch.Tensor  # (N, 10) of all live tracks after the frame (differentiable)
    ids: np.ndarray  # (N,) track ids of ``states``


class MultiSensorKF:
    def __init__(
        self,
        cfg: TrackerConfig | None = None,
        noise: NoiseNet | None = None,
        mahalanobis_gate: float | None = None,
    ) -> None:
        self.cfg = cfg or TrackerConfig()
        self.noise = noise
        self.gate = mahalanobis_gate
        self.F = torch.tensor(constant_velocity(self.cfg.dt), dtype=torch.float64)
        self.Q = torch.diag(torch.tensor(self.cfg.process_std, dtype=torch.float64) ** 2)
        self.P0 = torch.diag(torch.tensor(self.cfg.initial_std, dtype=torch.float64) ** 2)
        self.R_prior = torch.tensor(self.cfg.measurement_std, dtype=torch.float64) ** 2
        self.H = torch.eye(7, 10, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        self.X = torch.zeros(0, 10, dtype=torch.float64)
        self.P = torch.zeros(0, 10, 10, dtype=torch.float64)
        self.ids = np.zeros(0, dtype=np.int64)
        self.hits = np.zeros(0, dtype=np.int64)
        self.misses = np.zeros(0, dtype=np.int64)
        self.scores = np.zeros(0)
        self.labels = np.zeros(0, dtype=np.int16)
        self.frame = -1
        self._next_id = 1
        self.warnings: dict[str, int] = {}

    def _warn(self, key: str, n: int = 1) -> None:
        if n:
            self.warnings[key] = self.warnings.get(key, 0) + n

    # -- noise ----------------------------------------------------------------------------------
    def measurement_variances(self, det: AgentDetections, boxes: Boxes) -> torch.Tensor:
        """(N, 7) variances in state order: sent by the agent, learned, or the fixed prior."""
        n = len(boxes)
        if det.variances is not None:
            fixed, repaired = sanitize_covariances(det.variances)
            self._warn("repaired_covariance", repaired)
            return torch.tensor(fixed[:, _STATE_FROM_BOX], dtype=torch.float64)
        prior = self.R_prior.expand(n, 7)
        if self.noise is None or n == 0:
            return prior.clone()
        geo = torch.from_numpy(
            detection_features(boxes.xyzlwhy, boxes.scores, det.world_from_agent, det.kind)
        )
        patches = torch.from_numpy(det.features.astype(np.float32)) if det.features is not None else None
        residual = self.noise(geo, patches).to(torch.float64)
        return prior * torch.exp(residual[:, _STATE_FROM_BOX])

    # -- filter ---------------------------------------------------------------------------------
    def _predict(self, steps: int) -> None:
        for _ in range(steps):
            self.X = self.X @ self.F.T
            self.P = self.F @ self.P @ self.F.T + self.Q

    def _update(self, idx: torch.Tensor, z: torch.Tensor, R: torch.Tensor) -> None:
        """Batched Kalman update of tracks ``idx`` with measurements ``z`` (K, 7) in state order."""
        X, P = self.X[idx], self.P[idx]
        innov = z - X[:, :7]
        innov = torch.cat(
            [innov[:, :3], torch.atan2(torch.sin(innov[:, 3:4]), torch.cos(innov[:, 3:4])), innov[:, 4:]],
            dim=1,
        )
        Pxz = P[:, :, :7]  # P H^T
        S = P[:, :7, :7] + torch.diag_embed(R)
        K = torch.linalg.solve(S, Pxz.transpose(1, 2)).transpose(1, 2)  # (K, 10, 7)
        X_new = X + (K @ innov[:, :, None])[:, :, 0]
        I_KH = torch.eye(10, dtype=torch.float64) - K @ self.H
        P_new = I_KH @ P @ I_KH.transpose(1, 2) + K @ torch.diag_embed(R) @ K.transpose(1, 2)
        P_new = 0.5 * (P_new + P_new.transpose(1, 2))
        X_new = torch.cat(
            [X_new[:, :3], torch.atan2(torch.sin(X_new[:, 3:4]), torch.cos(X_new[:, 3:4])), X_new[:, 4:]],
            dim=1,
        )
        self.X = self.X.index_put((idx,), X_new)  # out of place: gradients flow through
        self.P = self.P.index_put((idx,), P_new)

    def _boxes_of(self, X: torch.Tensor) -> np.ndarray:
        x = X.detach().numpy()
        return np.stack(
            [x[:, 0], x[:, 1], x[:, 2], x[:, 4], x[:, 5], x[:, 6], wrap_angle(x[:, 3])], axis=1
        ).reshape(-1, 7)

    def step(self, frame: FrameDetections) -> StepOutput:
        """One frame: predict, then fuse each agent's detections in turn."""
        if frame.frame <= self.frame:
            self._warn("frame_out_of_order")
            return StepOutput(Boxes.empty(with_scores=True), self.X, self.ids.copy())
        steps = frame.frame - self.frame if self.frame >= 0 else 1
        self.frame = frame.frame
        self._predict(steps)
        self.X = torch.cat(
            [self.X[:, :3], torch.atan2(torch.sin(self.X[:, 3:4]), torch.cos(self.X[:, 3:4])), self.X[:, 4:]],
            dim=1,
        )
        updated = np.zeros(len(self.X), dtype=bool)
        for det in frame.agents:
            boxes = det.boxes
            ok = boxes.finite() & (np.isfinite(boxes.scores) if boxes.scores is not None else True)
            self._warn("bad_detection", int((~ok).sum()))
            boxes = boxes[ok]
            if boxes.scores is None:
                boxes.scores = np.ones(len(boxes), np.float32)
            det_ok = AgentDetections(
                det.agent_id,
                det.kind,
                det.world_from_agent,
                boxes,
                None if det.features is None else det.features[ok],
                None if det.variances is None else det.variances[ok],
            )
            if len(boxes) == 0:
                continue
            R = self.measurement_variances(det_ok, boxes)
            predicted = self._boxes_of(self.X)
            score = giou3d_matrix(predicted, boxes.xyzlwhy)
            if self.gate is not None and len(predicted):
                score = np.where(self._mahalanobis(boxes, R) <= self.gate, score, -2.0)
            pairs, _, new = hungarian(score, self.cfg.giou_threshold)
            if len(pairs):
                ti = torch.from_numpy(pairs[:, 0])
                z = torch.from_numpy(boxes.xyzlwhy[pairs[:, 1]][:, _STATE_FROM_BOX]).to(torch.float64)
                pred_yaw = self.X[ti, 3].detach()
                d = torch.atan2(torch.sin(z[:, 3] - pred_yaw), torch.cos(z[:, 3] - pred_yaw))
                flip = d.abs() > np.pi / 2
                z = torch.cat([z[:, :3], (z[:, 3] + torch.where(flip, np.pi, 0.0))[:, None], z[:, 4:]], dim=1)
                self._update(ti, z, R[pairs[:, 1]])
                newly = ~updated[pairs[:, 0]]
                self.hits[pairs[newly, 0]] += 1
                updated[pairs[:, 0]] = True
                self.scores[pairs[:, 0]] = np.maximum(
                    self.scores[pairs[:, 0]] * ~newly, boxes.scores[pairs[:, 1]]
                )
            if len(new):
                self._birth(boxes[new], R[torch.from_numpy(new)])
                updated = np.concatenate([updated, np.ones(len(new), dtype=bool)])
        self.misses = np.where(updated, 0, self.misses + 1)
        keep = self.misses <= self.cfg.max_misses
        if not keep.all():
            k = torch.from_numpy(np.flatnonzero(keep))
            self.X, self.P = self.X[k], self.P[k]
            self.ids, self.hits, self.misses = self.ids[keep], self.hits[keep], self.misses[keep]
            self.scores, self.labels, updated = self.scores[keep], self.labels[keep], updated[keep]
        shown = updated & ((self.hits >= self.cfg.min_hits) | (self.frame < self.cfg.min_hits))
        out = Boxes(
            self._boxes_of(self.X[torch.from_numpy(np.flatnonzero(shown))]),
            labels=self.labels[shown],
            track_ids=self.ids[shown],
            scores=self.scores[shown],
        )
        return StepOutput(out, self.X, self.ids.copy())

    def _birth(self, boxes: Boxes, R: torch.Tensor) -> None:
        n = len(boxes)
        x0 = torch.zeros(n, 10, dtype=torch.float64)
        x0[:, :7] = torch.from_numpy(boxes.xyzlwhy[:, _STATE_FROM_BOX])
        P0 = self.P0.expand(n, 10, 10).clone()
        del R  # a new track starts from the box with the same prior however it was measured
        self.X = torch.cat([self.X, x0])
        self.P = torch.cat([self.P, P0])
        self.ids = np.concatenate([self.ids, np.arange(self._next_id, self._next_id + n)])
        self._next_id += n
        self.hits = np.concatenate([self.hits, np.ones(n, dtype=np.int64)])
        self.misses = np.concatenate([self.misses, np.zeros(n, dtype=np.int64)])
        self.scores = np.concatenate([self.scores, boxes.scores.astype(np.float64)])
        self.labels = np.concatenate([self.labels, boxes.labels]).astype(np.int16)

    def _mahalanobis(self, boxes: Boxes, R: torch.Tensor) -> np.ndarray:
        """(tracks, detections) squared Mahalanobis distance of the measurement innovation."""
        with torch.no_grad():
            z = torch.from_numpy(boxes.xyzlwhy[:, _STATE_FROM_BOX]).to(torch.float64)
            innov = z[None, :, :] - self.X[:, None, :7]
            innov[..., 3] = torch.atan2(torch.sin(2 * innov[..., 3]), torch.cos(2 * innov[..., 3])) / 2
            S = self.P[:, None, :7, :7] + torch.diag_embed(R)[None]
            d2 = (innov[..., None, :] @ torch.linalg.solve(S, innov[..., None]))[..., 0, 0]
        return d2.numpy()
