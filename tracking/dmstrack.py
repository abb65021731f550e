"""A differentiable multi-sensor Kalman filter in torch (DMSTrack's design, our code).

Same 10-D constant-velocity state, heading rules and track management as the AB3DMOT baseline
(:mod:`v2x.tracking.ab3dmot`), so with one agent and fixed noise the two give the same states
(a test holds them to 1e-6). What differs: each frame the tracks are predicted once, then every
agent's detections update them in turn (ego first), each detection with its own measurement
covariance. The covariance is, in order of preference, what the agent sent, what the noise
network predicts (a residual on the prior it was trained with), or the fixed prior; it is
diagonal in the measuring agent's frame and turned into the world frame here, so range and
bearing errors land where they belong; an agent's own pose uncertainty is added on top.

Numerics: float64 throughout, Joseph-form updates symmetrised afterwards, variances kept within
[floor, ceiling], and an update that would still produce a non-finite value is refused for that
track (counted) instead of poisoning it. Association is a discrete choice on detached values;
gradients flow from the loss through every Kalman gain into the noise network.

Without gradients (tracking, evaluation) the same arithmetic runs in numpy on bare arrays, one
agent's detections at a time, and the noise network runs once per frame on every agent's
detections together; tests hold this path to the differentiable one on a real sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from v2x.core.boxes import Boxes
from v2x.core.geometry import yaw_of
from v2x.core.iou import bev_iou_matrix
from v2x.tracking.association import affinity_matrix, hungarian
from v2x.tracking.config import STATE_FROM_BOX, TrackerConfig
from v2x.tracking.motion import (
    FrameClock,
    boxes_from_states,
    constant_velocity,
    heading_correction,
    within_pi,
)
from v2x.tracking.noise_net import NoiseNet, agent_frame_array, detection_features
from v2x.tracking.records import AgentDetections, FrameDetections
from v2x.tracking.sanitize import Warnings, sanitize_arrays, sanitize_variances
from v2x.tracking.tracker import StepOutput

__all__ = ["MultiSensorKF"]

_F64 = torch.float64
_EYE10 = np.eye(10)
_DIAG = np.arange(7)
_TWO_PI = 2 * math.pi
#: squared distances above this all cost the same to the Hungarian step (they are gated anyway)
_D2_CAP = 1e5
#: the state components the Mahalanobis association compares (``TrackerConfig.mahalanobis_dims``)
_MAHALANOBIS_DIMS = {"box": None, "xy": np.array([0, 1]), "xyyaw": np.array([0, 1, 3])}


def _joseph_np(X: np.ndarray, P: np.ndarray, z: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched Kalman update, Joseph form, symmetrised: (K, 10), (K, 10, 10), (K, 7), (K, 7, 7)."""
    innov = z - X[:, :7]
    S = P[:, :7, :7] + R
    K = np.linalg.solve(S, P[:, :, :7].transpose(0, 2, 1)).transpose(0, 2, 1)
    X_new = X + np.einsum("kij,kj->ki", K, innov)
    I_KH = np.empty_like(P)
    I_KH[:] = _EYE10
    I_KH[:, :, :7] -= K
    P_new = I_KH @ P @ I_KH.transpose(0, 2, 1) + K @ R @ K.transpose(0, 2, 1)
    return X_new, 0.5 * (P_new + P_new.transpose(0, 2, 1))


def _world_cov_np(v_box: np.ndarray, c: float, s: float, extra: np.ndarray | None) -> np.ndarray:
    """(N, 7, 7) state-order covariances from (N, 7) box-order variances, x-y turned by (c, s)."""
    v = v_box[:, STATE_FROM_BOX]
    R = np.zeros((len(v), 7, 7))
    R[:, _DIAG, _DIAG] = v
    vx, vy = v[:, 0], v[:, 1]
    R[:, 0, 0] = c * c * vx + s * s * vy
    R[:, 1, 1] = s * s * vx + c * c * vy
    R[:, 0, 1] = R[:, 1, 0] = c * s * (vx - vy)
    return R if extra is None else R + extra


@dataclass
class _Dets:
    """One agent's usable detections in one frame as bare arrays (world frame, headings wrapped,
    scores in 0..1): what the filter works on, built once per agent and frame."""

    box: np.ndarray
    score: np.ndarray
    label: np.ndarray
    world_from_agent: np.ndarray
    kind: str
    features: np.ndarray | None
    variances: np.ndarray | None
    gt_ids: np.ndarray | None
    pose_var: np.ndarray | None

    @classmethod
    def of(cls, det: AgentDetections) -> _Dets:
        """As given (no sanitising)."""
        b = det.boxes
        return cls(
            b.xyzlwhy, b.scores, b.labels, det.world_from_agent, det.kind,
            det.features, det.variances, det.gt_ids, det.pose_var,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.box)


def _wrap_heading(X: torch.Tensor) -> torch.Tensor:
    """States with the heading moved into [-pi, pi) by whole turns (a constant shift: grad passes)."""
    yaw = X[:, 3:4]
    shift = _TWO_PI * ((yaw < -math.pi).to(_F64) - (yaw >= math.pi).to(_F64))
    return torch.cat([X[:, :3], yaw + shift.detach(), X[:, 4:]], dim=1)


class MultiSensorKF:
    """Multi-agent tracker; ``step`` once per frame with every agent's detections."""

    #: each agent's detections update the tracks in turn (a :class:`~v2x.tracking.tracker.Tracker`)
    per_agent = True

    def __init__(
        self,
        cfg: TrackerConfig | None = None,
        noise: NoiseNet | None = None,
        mahalanobis_gate: float | None = None,
        differentiable: bool = False,
        use_sent_variances: bool = True,
    ) -> None:
        self.cfg = cfg or TrackerConfig()
        if mahalanobis_gate is not None:
            self.cfg = self.cfg.with_(mahalanobis_gate=mahalanobis_gate)
        self.noise = noise
        self.differentiable = differentiable
        self.use_sent_variances = use_sent_variances
        self.H = torch.eye(7, 10, dtype=_F64)
        self.I = torch.eye(10, dtype=_F64)
        self.P0 = torch.tensor(self.cfg.P0(), dtype=_F64)
        self.reset()

    def reset(self) -> None:
        """Forget every track (a new sequence)."""
        self.X = torch.zeros(0, 10, dtype=_F64)
        self.P = torch.zeros(0, 10, 10, dtype=_F64)
        self.ids = np.zeros(0, dtype=np.int64)
        self.hits = np.zeros(0, dtype=np.int64)
        self.misses = np.zeros(0, dtype=np.int64)
        self.scores = np.zeros(0, dtype=np.float32)
        self.labels = np.zeros(0, dtype=np.int16)
        self.gt_ids = np.zeros(0, dtype=np.int64)
        self._next_id = 1
        self.clock = FrameClock(self.cfg.dt, self.cfg.timing)
        self.warnings = Warnings()

    def detach(self) -> None:
        """Cut the autograd history (truncated back-propagation between training windows)."""
        self.X, self.P = self.X.detach(), self.P.detach()

    # -- measurement noise --------------------------------------------------------------------------
    def measurement_variances(self, det: AgentDetections, slot: int = 0) -> torch.Tensor:
        """(N, 7) variances, box order, in the agent's frame: sent by it, learned, or the prior
        (``slot``: the agent's place in the frame, 0 the ego)."""
        return self._variances(_Dets.of(det), slot)

    def _sent_or_prior(self, d: _Dets, slot: int = 0) -> np.ndarray | None:
        """The variances the agent sent, or the fixed prior's (its slot's, when the prior is per
        agent), or None when the net decides."""
        cfg = self.cfg
        scale = cfg.noise_scale
        prior = cfg.prior_for_slot(slot)
        if d.variances is not None and self.use_sent_variances:
            v = sanitize_variances(d.variances, prior, cfg.var_floor, cfg.var_ceiling, self.warnings)
            return np.clip(v * scale, cfg.var_floor, cfg.var_ceiling)
        if self.noise is None or len(d) == 0:
            return np.broadcast_to(np.clip(prior * scale, cfg.var_floor, cfg.var_ceiling), (len(d), 7)).copy()
        return None

    def _patches(self, d: _Dets) -> torch.Tensor | None:
        """The agent's BEV patches for the net (None: not sent, or not usable; counted)."""
        if d.features is None or not self.noise.feature_channels:
            return None
        f = np.asarray(d.features, dtype=np.float32)
        if f.shape[1:] != (self.noise.feature_channels, self.noise.patch, self.noise.patch):
            self.warnings.add("feature_shape_mismatch", len(d))
            return None
        bad = ~np.isfinite(f).all(axis=(1, 2, 3))
        self.warnings.add("non_finite_feature", int(bad.sum()))
        return torch.from_numpy(np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0))

    def _from_residual(self, residual: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        prior = self.noise.prior_var.to(_F64)  # the base the network was trained on
        return (cfg.noise_scale * prior * torch.exp(residual.to(_F64))).clamp(cfg.var_floor, cfg.var_ceiling)

    def _variances(self, d: _Dets, slot: int) -> torch.Tensor:
        """One agent's variances through the network's differentiable forward (training)."""
        v = self._sent_or_prior(d, slot)
        if v is not None:
            return torch.from_numpy(v)
        geo = detection_features(agent_frame_array(d.box, d.world_from_agent), d.score, d.kind)
        return self._from_residual(self.noise(torch.from_numpy(geo), self._patches(d), slot))

    def _variances_batch(self, dets: list[tuple[int, _Dets]]) -> list[np.ndarray]:
        """Every agent's variances of a frame, the network run once on all rows that need it (the
        inference path: the same numbers as :meth:`_variances`, a test holds them together)."""
        out: list = [self._sent_or_prior(d, slot) for slot, d in dets]
        todo = [k for k, v in enumerate(out) if v is None]
        if not todo:
            return out
        if self.noise.feature_channels and any(dets[k][1].features is not None for k in todo):
            # BEV patches: the convolutions run one agent at a time
            for k in todo:
                slot, d = dets[k]
                with torch.inference_mode():
                    out[k] = self._variances(d, slot).numpy()
            return out
        parts = [dets[k][1] for k in todo]
        sizes = [len(d) for d in parts]
        geo = detection_features(
            np.concatenate([agent_frame_array(d.box, d.world_from_agent) for d in parts]),
            np.concatenate([d.score for d in parts]),
            np.repeat([d.kind == "rsu" for d in parts], sizes),
        )
        slots = np.repeat([dets[k][0] for k in todo], sizes)
        with torch.inference_mode():
            v = self._from_residual(torch.from_numpy(self.noise.residual_rows(geo, slots))).numpy()
        for k, rows in zip(todo, np.split(v, np.cumsum(sizes)[:-1])):
            out[k] = rows
        return out

    @staticmethod
    def world_covariance(
        var_box: torch.Tensor | np.ndarray,
        world_from_agent: np.ndarray,
        xy_world: np.ndarray | None = None,
        pose_var=None,
    ) -> torch.Tensor | np.ndarray:
        """(N, 7, 7) state-order covariance in the world from agent-frame variances (box order):
        the x-y block is turned by the agent's heading; height, sizes and heading are unchanged.
        With the agent's pose uncertainty (``pose_var``: x, y, heading variances) the detections
        at ``xy_world`` also inherit it: a heading error moves a detection across its bearing in
        proportion to its range. A numpy ``var_box`` gives a numpy answer (the inference path)."""
        psi = yaw_of(world_from_agent)
        c, s = math.cos(psi), math.sin(psi)
        extra = None
        if pose_var is not None and xy_world is not None:
            r = np.asarray(xy_world, dtype=np.float64) - world_from_agent[:2, 3]
            perp = np.stack([-r[:, 1], r[:, 0]], axis=1)
            extra = np.zeros((len(r), 7, 7))
            extra[:, :2, :2] = np.diag(pose_var[:2]) + pose_var[2] * perp[:, :, None] * perp[:, None, :]
            extra[:, 3, 3] = pose_var[2]
        if isinstance(var_box, np.ndarray):
            return _world_cov_np(var_box, c, s, extra)
        if not var_box.requires_grad:
            return torch.from_numpy(_world_cov_np(var_box.numpy(), c, s, extra))
        v = var_box[:, STATE_FROM_BOX]
        vx, vy = v[:, 0], v[:, 1]
        R = torch.diag_embed(v)
        xy = torch.stack(
            [
                torch.stack([c * c * vx + s * s * vy, c * s * (vx - vy)], dim=1),
                torch.stack([c * s * (vx - vy), s * s * vx + c * c * vy], dim=1),
            ],
            dim=1,
        )
        R = torch.cat([torch.cat([xy, R[:, :2, 2:]], dim=2), R[:, 2:]], dim=1)
        return R if extra is None else R + torch.from_numpy(extra)

    # -- filter -------------------------------------------------------------------------------------
    def _fast(self) -> bool:
        """Numpy arithmetic when no gradient is wanted: the same maths at a fraction of torch's
        per-call overhead on small matrices (a test holds the two paths together)."""
        return not torch.is_grad_enabled()

    def _predict(self, dt: float) -> None:
        if len(self.X) == 0 or dt <= 0:
            return
        F, Q = constant_velocity(dt), self.cfg.Q(dt)
        if self._fast():
            X, P = self.X.numpy(), self.P.numpy()
            X[:] = X @ F.T
            X[:, 3] = within_pi(X[:, 3])
            P[:] = F @ P @ F.T + Q
            return
        F, Q = torch.from_numpy(F), torch.from_numpy(Q)
        self.X = _wrap_heading(self.X @ F.T)
        self.P = F @ self.P @ F.T + Q

    def _update(self, idx: np.ndarray, z: np.ndarray, R: torch.Tensor | np.ndarray) -> None:
        """Joseph-form update of tracks ``idx`` with measurements ``z`` (K, 7, state order);
        ``R`` numpy on the inference path, torch when gradients are wanted."""
        z = z.copy()
        if self._fast():
            X, P = self.X.numpy(), self.P.numpy()
            Xk, Pk = X[idx], P[idx]
            offset, z[:, 3] = heading_correction(Xk[:, 3], z[:, 3])
            Xk[:, 3] += offset
            X_new, P_new = _joseph_np(Xk, Pk, z, R if isinstance(R, np.ndarray) else R.numpy())
            X_new[:, 3] = within_pi(X_new[:, 3])
            ok = np.isfinite(X_new).all(axis=1) & np.isfinite(P_new).all(axis=(1, 2))
            if ok.all():
                X[idx], P[idx] = X_new, P_new
                return
            self.warnings.add("update_refused", int((~ok).sum()))
            X[idx[ok]], P[idx[ok]] = X_new[ok], P_new[ok]
            return
        offset, z[:, 3] = heading_correction(self.X[torch.from_numpy(idx), 3].detach().numpy(), z[:, 3])
        ti = torch.from_numpy(idx)
        X, P = self.X[ti], self.P[ti]
        X = torch.cat([X[:, :3], X[:, 3:4] + torch.from_numpy(offset)[:, None], X[:, 4:]], dim=1)
        innov = torch.from_numpy(z) - X[:, :7]
        S = P[:, :7, :7] + R
        K = torch.linalg.solve(S, P[:, :, :7].transpose(1, 2)).transpose(1, 2)  # (K, 10, 7)
        X_new = _wrap_heading(X + (K @ innov[:, :, None])[:, :, 0])
        I_KH = self.I.expand(len(idx), 10, 10).clone()
        I_KH[:, :, :7] -= K
        P_new = I_KH @ P @ I_KH.transpose(1, 2) + K @ R @ K.transpose(1, 2)
        P_new = 0.5 * (P_new + P_new.transpose(1, 2))
        ok = torch.isfinite(X_new).all(dim=1) & torch.isfinite(P_new).flatten(1).all(dim=1)
        if not bool(ok.all()):
            self.warnings.add("update_refused", int((~ok).sum()))
            X_new = torch.where(ok[:, None], X_new, self.X[ti])
            P_new = torch.where(ok[:, None, None], P_new, self.P[ti])
        self.X = self.X.index_put((ti,), X_new)  # out of place: gradients flow through
        self.P = self.P.index_put((ti,), P_new)

    def _mahalanobis(
        self, ia: np.ndarray, ib: np.ndarray, z: np.ndarray, R: torch.Tensor | np.ndarray, dims=None
    ) -> np.ndarray:
        """Squared Mahalanobis distance of the pairs (track ``ia[k]``, detection ``ib[k]``): the
        innovation (heading taken the short way round, as the update does) against
        S = H P H^T + R, R the detection's own covariance; ``dims`` (state indices): only those
        components (the marginal distance). Detached values only."""
        if len(ia) == 0:
            return np.zeros(0)
        X = self.X.detach().numpy()[ia]
        offset, obs = heading_correction(X[:, 3], z[ib, 3])
        innov = z[ib] - X[:, :7]
        innov[:, 3] = obs - (X[:, 3] + offset)
        Rn = R if isinstance(R, np.ndarray) else R.detach().numpy()
        S = self.P.detach().numpy()[ia, :7, :7] + Rn[ib]
        if dims is not None:
            innov, S = innov[:, dims], S[:, dims][:, :, dims]
        return np.einsum("ki,ki->k", innov, np.linalg.solve(S, innov[:, :, None])[:, :, 0])

    def _gate(self, aff: np.ndarray, z: np.ndarray, R: torch.Tensor | np.ndarray) -> np.ndarray:
        """Pairs allowed by the Mahalanobis gate (only pairs that could match are tested)."""
        allowed = np.ones(aff.shape, dtype=bool)
        ia, ib = np.nonzero(aff >= self.cfg.threshold)
        allowed[ia, ib] = self._mahalanobis(ia, ib, z, R) <= self.cfg.mahalanobis_gate
        return allowed

    def _associate(
        self, d: _Dets, z: np.ndarray, R: torch.Tensor | np.ndarray, floor: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Matched (track, detection) pairs and unmatched detections of one agent's boxes."""
        cfg = self.cfg
        tracks = boxes_from_states(self.X.detach().numpy())
        if cfg.association == "affinity":
            aff = affinity_matrix(cfg.affinity, tracks, d.box, floor)
            allowed = self._gate(aff, z, R) if cfg.mahalanobis_gate is not None else None
            pairs, _, new = hungarian(aff, cfg.threshold, cfg.gate_first, allowed)
            return pairs, new
        # Mahalanobis cost: every pair's distance (or only those the affinity lets through)
        if cfg.association == "mahalanobis+affinity":
            ia, ib = np.nonzero(affinity_matrix(cfg.affinity, tracks, d.box, floor) >= cfg.threshold)
        else:
            ia, ib = np.nonzero(np.ones((len(tracks), len(d)), dtype=bool))
        d2 = np.full((len(tracks), len(d)), np.inf)
        d2[ia, ib] = self._mahalanobis(ia, ib, z, R, _MAHALANOBIS_DIMS[cfg.mahalanobis_dims])
        allowed = d2 <= cfg.mahalanobis_gate
        score = -np.minimum(d2, _D2_CAP)
        pairs, _, new = hungarian(score, -cfg.mahalanobis_gate, cfg.gate_first, allowed)
        return pairs, new

    def _unclaimed(self, boxes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The rows whose footprint overlaps no live track by ``birth_overlap`` (BEV IoU) or more:
        an unmatched box on top of a track is another agent's view of that car (its height or
        heading too far off to associate), not a new car. Counted as ``birth_absorbed``."""
        iou = bev_iou_matrix(boxes, boxes_from_states(self.X.detach().numpy()))
        free = iou.max(axis=1) < self.cfg.birth_overlap
        self.warnings.add("birth_absorbed", int((~free).sum()))
        return rows[free]

    def _birth(self, d: _Dets, rows: np.ndarray) -> None:
        n = len(rows)
        x0 = np.zeros((n, 10))
        x0[:, :7] = d.box[rows][:, STATE_FROM_BOX]
        if self._fast():
            self.X = torch.from_numpy(np.concatenate([self.X.numpy(), x0]))
            self.P = torch.from_numpy(
                np.concatenate([self.P.numpy(), np.broadcast_to(self.P0.numpy(), (n, 10, 10))])
            )
        else:
            self.X = torch.cat([self.X, torch.from_numpy(x0)])
            self.P = torch.cat([self.P, self.P0.expand(n, 10, 10)])
        self.ids = np.concatenate([self.ids, np.arange(self._next_id, self._next_id + n)])
        self._next_id += n
        self.hits = np.concatenate([self.hits, np.ones(n, dtype=np.int64)])
        self.misses = np.concatenate([self.misses, np.zeros(n, dtype=np.int64)])
        self.scores = np.concatenate([self.scores, d.score[rows]])
        self.labels = np.concatenate([self.labels, d.label[rows]]).astype(np.int16)
        gt = d.gt_ids[rows] if d.gt_ids is not None else np.full(n, -1)
        self.gt_ids = np.concatenate([self.gt_ids, gt.astype(np.int64)])

    def _prepare(self, raw: AgentDetections) -> _Dets | None:
        """The agent's usable detections (None: none); bad boxes and pose variances counted."""
        box, score, keep = sanitize_arrays(raw.boxes.xyzlwhy, raw.boxes.scores, self.warnings)
        if len(box) == 0:
            return None
        pose_var = raw.pose_var
        if pose_var is not None and not (np.isfinite(pose_var).all() and (pose_var >= 0).all()):
            self.warnings.add("bad_pose_variance")
            pose_var = None
        every = len(box) == len(keep)

        def rows(v):
            return v if v is None or every else v[keep]

        return _Dets(
            box, score, rows(raw.boxes.labels), raw.world_from_agent, raw.kind,
            rows(raw.features), rows(raw.variances), rows(raw.gt_ids), pose_var,
        )  # fmt: skip

    def step(self, frame: FrameDetections) -> StepOutput:
        """One frame: predict, then fuse each agent's detections in turn."""
        with torch.set_grad_enabled(self.differentiable):
            return self._step(frame)

    def _step(self, frame: FrameDetections) -> StepOutput:
        cfg = self.cfg
        dt = self.clock.advance(frame.frame, frame.timestamp_ns, self.warnings)
        if dt is None:
            n = len(self.X)
            return StepOutput(
                Boxes.empty(with_scores=True),
                self.X,
                self.P,
                self.ids.copy(),
                np.zeros(n, bool),
                self.gt_ids.copy(),
                False,
            )
        self._predict(dt)
        self.misses += 1
        updated = np.zeros(len(self.X), dtype=bool)
        best_score = np.zeros(len(self.X), dtype=np.float32)
        floor = cfg.threshold if cfg.prune else None
        dets = [(slot, d) for slot, raw in enumerate(frame.agents) if (d := self._prepare(raw)) is not None]
        if self._fast():
            variances = self._variances_batch(dets)
        else:
            variances = [self._variances(d, slot) for slot, d in dets]
        for (_, d), var in zip(dets, variances):
            R = self.world_covariance(var, d.world_from_agent, d.box[:, :2], d.pose_var)
            z = d.box[:, STATE_FROM_BOX]
            if len(self.X):
                pairs, new = self._associate(d, z, R, floor)
            else:
                pairs, new = np.zeros((0, 2), dtype=np.int64), np.arange(len(d))
            if len(pairs):
                ti, di = pairs[:, 0], pairs[:, 1]
                self._update(ti, z[di], R[di] if isinstance(R, np.ndarray) else R[torch.from_numpy(di)])
                first = np.ones(len(ti), bool) if cfg.hits_per_agent else ~updated[ti]
                self.hits[ti[first]] += 1
                updated[ti] = True
                self.misses[ti] = 0
                best_score[ti] = np.maximum(best_score[ti], d.score[di])
                if d.gt_ids is not None:
                    self.gt_ids[ti] = d.gt_ids[di]
            if len(new) and cfg.birth_overlap is not None and len(self.X):
                new = self._unclaimed(d.box[new], new)
            if len(new):
                self._birth(d, new)
                updated = np.concatenate([updated, np.ones(len(new), dtype=bool)])
                best_score = np.concatenate([best_score, d.score[new].astype(np.float32)])
        self.scores = np.where(updated, best_score, self.scores).astype(np.float32)
        early = self.clock.count <= cfg.min_hits
        shown = (self.misses < cfg.max_age) & ((self.hits >= cfg.min_hits) | early)
        out = Boxes(
            boxes_from_states(self.X.detach().numpy()[shown]).reshape(-1, 7),
            labels=self.labels[shown],
            track_ids=self.ids[shown],
            scores=self.scores[shown],
        )
        alive = self.misses < cfg.max_age
        if not alive.all():
            if self._fast():
                self.X, self.P = (
                    torch.from_numpy(self.X.numpy()[alive]),
                    torch.from_numpy(self.P.numpy()[alive]),
                )
            else:
                k = torch.from_numpy(np.flatnonzero(alive))
                self.X, self.P = self.X[k], self.P[k]
            self.ids, self.hits, self.misses = self.ids[alive], self.hits[alive], self.misses[alive]
            self.scores, self.labels, self.gt_ids = self.scores[alive], self.labels[alive], self.gt_ids[alive]
            updated = updated[alive]
        # the fast path edits its arrays in place: hand out copies
        X, P = (self.X.clone(), self.P.clone()) if self._fast() else (self.X, self.P)
        return StepOutput(out, X, P, self.ids.copy(), updated, self.gt_ids.copy())
