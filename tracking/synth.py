"""Detections synthesised from ground-truth tracks, for developing and testing the trackers before
(and besides) a real detector.

Each agent sees each object with its own, realistic faults:

* it misses objects more often the farther they are (or the fewer LiDAR points it put on them,
  when the log records that, as our simulator's does) and never sees past its range;
* its box centre errs more along the line of sight than across it (a LiDAR sees the near
  faces), with a pull towards the sensor, and the error grows with range and shrinks with points;
* sizes and headings are noisy, headings sometimes flip by 180 degrees, a few boxes are outliers;
* every agent has its own quality factor (sensor, mounting), unknown to the tracker;
* the detector's score falls with the error it made, so a model can learn from it;
* it reports phantom boxes (Poisson per frame) with low scores;
* collaborators (every agent but the first, the ego) do not know exactly where they are: their
  pose carries a slowly drifting error (the field's usual 0.2 m and 0.2 degrees), so all their
  boxes are displaced together; they report that uncertainty as ``pose_var``.

Optionally each detection gets a synthetic (C, P, P) "BEV feature" patch whose first channels
carry what a real map would (point density, score), the rest noise. Everything is drawn from one
seeded generator: the same seed gives the same detections.

Ground truth comes from :class:`v2x.core.frame.Frame` sequences (simulator logs: world boxes, agent
poses, per-agent LiDAR hit counts) or from :func:`procedural_scenario`, a crossroads with lanes,
parked cars, two cars carrying LiDARs and a roadside unit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from v2x.core.boxes import VEHICLE_CLASSES, Boxes, ObjectClass, wrap_angle
from v2x.core.geometry import inverse, pose_from_xyz_yaw
from v2x.tracking.records import AgentDetections, FrameDetections

__all__ = [
    "AgentView",
    "DetectionSynthesizer",
    "NoiseProfile",
    "frames_from_log",
    "procedural_scenario",
]


@dataclass(frozen=True)
class NoiseProfile:
    """How one agent's detector errs (standard deviations in metres and radians)."""

    pos_std: float = 0.08  # across the line of sight, at zero range
    pos_std_per_m: float = 0.004  # growth with range
    along_factor: float = 2.0  # along the line of sight / across
    pull: float = 0.08  # mean shift towards the sensor (m), grows with range
    z_std: float = 0.05
    size_std: float = 0.05  # relative
    yaw_std: float = 0.03
    yaw_std_per_m: float = 0.0008
    flip_prob: float = 0.03
    outlier_prob: float = 0.02
    outlier_scale: float = 6.0
    max_range: float = 70.0
    p_detect: float = 0.96  # near, well seen
    fade_range: float = 45.0  # range at which detection probability halves (no hit counts)
    points_scale: float = 12.0  # hits at which detection probability is 1 - 1/e of p_detect
    min_points: int = 3
    false_positives: float = 0.3  # per frame, Poisson
    quality: float = 1.0  # multiplies every error


@dataclass
class AgentView:
    """One agent at one instant: who, where, and (optionally) LiDAR hits per object track id."""

    agent_id: str
    kind: str
    world_from_agent: np.ndarray
    hits: dict[int, int] | None = None


def default_profile(kind: str, rng: np.random.Generator) -> NoiseProfile:
    """A plausible profile: vehicles differ in quality (0.7..1.6), roadside units sit high and see well."""
    if kind == "rsu":
        return NoiseProfile(quality=float(rng.uniform(0.6, 0.9)), along_factor=1.5, false_positives=0.2)
    return NoiseProfile(quality=float(rng.uniform(0.7, 1.6)))


class DetectionSynthesizer:
    """Turns ground truth + agent views into per-agent detections (:class:`FrameDetections`)."""

    def __init__(
        self,
        seed: int = 0,
        profiles: dict[str, NoiseProfile] | None = None,
        patch_channels: int = 0,
        patch: int = 5,
        classes: Iterable[int] = VEHICLE_CLASSES,
        pose_std: tuple[float, float, float] = (0.2, 0.2, float(np.deg2rad(0.2))),
        pose_correlation: float = 0.95,
        report_pose_var: bool = True,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.pose_std = np.asarray(pose_std, dtype=np.float64)
        self.pose_correlation = pose_correlation
        self.report_pose_var = report_pose_var
        self._pose_error: dict[str, np.ndarray] = {}
        self.profiles = dict(profiles or {})
        self.patch_channels = patch_channels
        self.patch = patch
        self.classes = frozenset(int(c) for c in classes)

    def profile(self, agent_id: str, kind: str) -> NoiseProfile:
        if agent_id not in self.profiles:
            self.profiles[agent_id] = default_profile(kind, self.rng)
        return self.profiles[agent_id]

    def frame(self, index: int, timestamp_ns: int, gt: Boxes, agents: list[AgentView]) -> FrameDetections:
        keep = np.isin(gt.labels, np.fromiter(self.classes, dtype=np.int16))
        gt = gt[keep]
        dets = [
            self._agent(gt, a, believed=self._believed_pose(a) if i else None) for i, a in enumerate(agents)
        ]
        return FrameDetections(index, timestamp_ns, dets, gt)

    def _believed_pose(self, view: AgentView) -> np.ndarray:
        """Where a collaborator thinks it is: its true pose plus a drifting (AR(1)) error."""
        rho = self.pose_correlation
        fresh = self.rng.normal(0, 1, 3) * self.pose_std
        prev = self._pose_error.get(view.agent_id)
        err = fresh if prev is None else rho * prev + np.sqrt(1 - rho**2) * fresh
        self._pose_error[view.agent_id] = err
        believed = view.world_from_agent @ pose_from_xyz_yaw(0.0, 0.0, 0.0, err[2])  # turned in place
        believed[:2, 3] += err[:2]
        return believed

    def _agent(self, gt: Boxes, view: AgentView, believed: np.ndarray | None = None) -> AgentDetections:
        rng, prof = self.rng, self.profile(view.agent_id, view.kind)
        own = gt.track_ids != _own_track_id(view.agent_id)
        local = gt[own].transformed(inverse(view.world_from_agent))
        rows, ids, scores, density = [], [], [], []
        for box, tid in zip(local.xyzlwhy, local.track_ids, strict=True):
            r = float(np.hypot(box[0], box[1]))
            if r > prof.max_range or r < 1.0:
                continue
            if view.hits is not None:
                hits = int(view.hits.get(int(tid), 0))
                if hits < prof.min_points:
                    continue
                p = prof.p_detect * (1 - np.exp(-hits / prof.points_scale))
                scale = prof.quality * (0.6 + 2.0 / np.sqrt(hits))
                dens = np.log1p(hits)
            else:
                p = prof.p_detect / (1 + np.exp((r - prof.fade_range) / 6.0))
                scale = prof.quality
                dens = np.log1p(4000.0 / max(r, 1.0) ** 2)
            if rng.random() > p:
                continue
            det, err = self._noisy(box, r, scale, prof)
            rows.append(det)
            ids.append(int(tid))
            scores.append(float(1 / (1 + np.exp(-(3.0 - 2.5 * err + rng.normal(0, 0.4))))))
            density.append(dens)
        n_fp = rng.poisson(prof.false_positives * prof.quality)
        for _ in range(n_fp):
            r, a = rng.uniform(5, prof.max_range), rng.uniform(-np.pi, np.pi)
            size = [rng.uniform(3.5, 5.0), rng.uniform(1.6, 2.1), rng.uniform(1.3, 1.8)]
            rows.append([r * np.cos(a), r * np.sin(a), size[2] / 2, *size, rng.uniform(-np.pi, np.pi)])
            ids.append(-1)
            scores.append(float(rng.uniform(0.1, 0.6)))
            density.append(np.log1p(200.0 / r**2))
        boxes_local = Boxes(np.array(rows).reshape(-1, 7), labels=int(ObjectClass.CAR), scores=scores)
        pose = view.world_from_agent if believed is None else believed
        world = boxes_local.transformed(pose)
        feats = self._patches(np.array(density), np.array(scores)) if self.patch_channels else None
        pose_var = self.pose_std**2 if believed is not None and self.report_pose_var else None
        return AgentDetections(view.agent_id, view.kind, pose, world, feats, None, np.array(ids), pose_var)

    def _noisy(
        self, box: np.ndarray, r: float, scale: float, prof: NoiseProfile
    ) -> tuple[list[float], float]:
        """A noisy copy of ``box`` (agent frame) and its normalised error."""
        rng = self.rng
        u = box[:2] / max(r, 1e-6)
        v = np.array([-u[1], u[0]])
        across = (prof.pos_std + prof.pos_std_per_m * r) * scale
        along = prof.along_factor * across
        if rng.random() < prof.outlier_prob:
            across, along = across * prof.outlier_scale, along * prof.outlier_scale
        ea, ec = rng.normal(0, along), rng.normal(0, across)
        pull = prof.pull * scale * (1 + r / 30.0)
        out = box.copy()
        out[:2] += u * (ea - pull) + v * ec
        out[2] += rng.normal(0, prof.z_std * scale)
        out[3:6] *= np.clip(1 + rng.normal(0, prof.size_std * scale, 3), 0.5, 1.5)
        out[6] += rng.normal(0, (prof.yaw_std + prof.yaw_std_per_m * r) * scale)
        if rng.random() < prof.flip_prob:
            out[6] += np.pi
        out[6] = wrap_angle(out[6])
        err = float(np.hypot(ea - pull, ec) / 0.5)
        return out.tolist(), err

    def _patches(self, density: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(N, C, P, P): channel 0 point density (log), channel 1 score, a blob where the object is."""
        n, c, p = len(density), self.patch_channels, self.patch
        out = self.rng.normal(0, 1, (n, c, p, p)).astype(np.float32)
        yy, xx = np.mgrid[:p, :p] - (p - 1) / 2
        blob = np.exp(-(xx**2 + yy**2) / 2.0)
        if c >= 1:
            out[:, 0] = density[:, None, None] * blob[None] + self.rng.normal(0, 0.1, (n, p, p))
        if c >= 2:
            out[:, 1] = scores[:, None, None] * blob[None]
        return out


def _own_track_id(agent_id: str) -> int:
    """A vehicle agent's own ground-truth id when its agent id is numeric (our logs), else none."""
    try:
        return int(agent_id)
    except ValueError:
        return -(2**62)


def frames_from_log(
    frames: Iterable, synth: DetectionSynthesizer, min_points: int = 1
) -> list[FrameDetections]:
    """Synthetic detections for a sequence of :class:`v2x.core.frame.Frame` (one scenario, in order).

    Ground truth keeps the vehicles at least one agent put ``min_points`` LiDAR points on when
    the log records hits (objects nobody could see are not trackable), minus the ego itself.
    """
    out = []
    for k, fr in enumerate(frames):
        views = [AgentView(a.agent_id, a.kind.value, a.world_from_bev, a.hits) for a in fr.agents.values()]
        gt = fr.gt[fr.gt.of_classes(VEHICLE_CLASSES)]
        gt = gt[gt.track_ids != _own_track_id(str(fr.ego_id))]
        if all(v.hits is not None for v in views) and len(gt):
            seen = np.array([sum(v.hits.get(int(t), 0) for v in views) >= min_points for t in gt.track_ids])
            gt = gt[seen]
        fd = synth.frame(fr.index if fr.index is not None else k, fr.timestamp_ns, gt, views)
        out.append(fd)
    return out


# -- a procedural crossroads -------------------------------------------------------------------------


@dataclass
class _Car:
    tid: int
    lane: int  # 0..7: road (x or y), direction, lane
    s: float  # position along the lane
    speed: float
    size: tuple[float, float, float]


_LANES = [  # (axis, direction, lateral offset): two lanes each way on an x road and a y road
    (0, 1, -1.75),
    (0, 1, -5.25),
    (0, -1, 1.75),
    (0, -1, 5.25),
    (1, 1, 1.75),
    (1, 1, 5.25),
    (1, -1, -1.75),
    (1, -1, -5.25),
]


def _lane_pose(lane: int, s: float) -> tuple[float, float, float]:
    axis, direction, offset = _LANES[lane]
    if axis == 0:
        return direction * s, offset, 0.0 if direction > 0 else np.pi
    return offset, direction * s, np.pi / 2 if direction > 0 else -np.pi / 2


def procedural_scenario(
    seed: int,
    n_frames: int = 100,
    moving: int = 24,
    parked: int = 12,
    dt: float = 0.1,
    rsu: bool = True,
    extent: float = 110.0,
) -> tuple[list[Boxes], list[list[AgentView]]]:
    """World ground truth and agent views per frame: cars on a crossroads, the ego (track id 0)
    driving along x, a second car with a LiDAR (id 1) along y, and a roadside unit at the corner.
    Cars leaving the area re-enter as new objects (new track ids)."""
    rng = np.random.default_rng(seed)
    next_id = 2
    cars: list[_Car] = []

    def new_car(s: float | None = None, lane: int | None = None) -> _Car:
        nonlocal next_id
        c = _Car(
            next_id,
            int(rng.integers(0, 8)) if lane is None else lane,
            float(rng.uniform(-extent, extent)) if s is None else s,
            float(rng.uniform(6.0, 14.0)),
            (float(rng.uniform(3.8, 5.2)), float(rng.uniform(1.7, 2.1)), float(rng.uniform(1.4, 1.9))),
        )
        next_id += 1
        return c

    ego = _Car(0, 0, float(rng.uniform(-40, -20)), float(rng.uniform(7, 10)), (4.6, 1.9, 1.6))
    cav = _Car(1, 4, float(rng.uniform(-45, -25)), float(rng.uniform(5, 9)), (4.4, 1.8, 1.5))
    cars = [new_car() for _ in range(moving)]
    parked_boxes = []
    for _ in range(parked):
        axis = int(rng.integers(0, 2))
        s = float(rng.uniform(-extent, extent))
        if abs(s) < 12:
            s += 24 * np.sign(s + 1e-9)
        side = float(rng.choice([-9.0, 9.0]))
        x, y, yaw = (s, side, 0.0) if axis == 0 else (side, s, np.pi / 2)
        yaw += float(rng.choice([0.0, np.pi]))
        parked_boxes.append((next_id, [x, y, 0.75, 4.5, 1.9, 1.5, wrap_angle(yaw)]))
        next_id += 1
    gts, views = [], []
    for _ in range(n_frames):
        rows, ids = [], []
        for c in [cav, *cars]:  # the ego is no object of its own ground truth
            x, y, yaw = _lane_pose(c.lane, c.s)
            rows.append([x, y, c.size[2] / 2, *c.size, yaw])
            ids.append(c.tid)
        for tid, b in parked_boxes:
            rows.append(b)
            ids.append(tid)
        gts.append(Boxes(np.array(rows), labels=int(ObjectClass.CAR), track_ids=ids))
        ex, ey, eyaw = _lane_pose(ego.lane, ego.s)
        cx, cy, cyaw = _lane_pose(cav.lane, cav.s)
        frame_views = [
            AgentView("0", "vehicle", pose_from_xyz_yaw(ex, ey, 0.0, eyaw)),
            AgentView("1", "vehicle", pose_from_xyz_yaw(cx, cy, 0.0, cyaw)),
        ]
        if rsu:
            frame_views.append(AgentView("rsu", "rsu", pose_from_xyz_yaw(10.0, -10.0, 0.0, 3 * np.pi / 4)))
        views.append(frame_views)
        for c in [ego, cav, *cars]:
            c.speed = float(np.clip(c.speed + rng.normal(0, 0.3), 3.0, 16.0))
            c.s += c.speed * dt
        for i, c in enumerate(cars):
            if c.s > extent:
                cars[i] = new_car(s=-extent, lane=c.lane)
    return gts, views


def synthetic_sequence(
    seed: int,
    n_frames: int = 100,
    patch_channels: int = 0,
    profiles: dict[str, NoiseProfile] | None = None,
    **scenario,
) -> list[FrameDetections]:
    """A procedural scenario with synthesised detections (frames 0.1 s apart)."""
    gts, views = procedural_scenario(seed, n_frames, **scenario)
    synth = DetectionSynthesizer(seed + 7919, profiles, patch_channels)
    return [synth.frame(k, k * 100_000_000, g, v) for k, (g, v) in enumerate(zip(gts, views, strict=True))]


def with_profile(profile: NoiseProfile, **changes) -> NoiseProfile:
    return replace(profile, **changes)
