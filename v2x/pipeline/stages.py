"""The whole system in one process: agents -> messages -> channel -> ego fusion -> detection ->
tracking -> metrics, on a simulated clock.

The agent and ego *stages* here are the code the node processes run too (``v2x replay``), so
the in-process path and the multi-process path make the same decisions from the same inputs;
only the transport differs. One frame on the simulated clock (``t`` = frame index / frame rate)::

    t            every agent encodes its scan (and detects, when its method needs confidence)
    t            the ego broadcasts its demand            (where2comm, codebook, codefilling)
    t + d1       an agent acts on the newest demand it holds once this frame's has arrived
                 (or, if it is lost or later than ``coord_wait_s``, on an older one)
    t + d1 + d2  codefilling: offers are broadcast; each agent assigns blocks from the offers it
                 received within ``coord_wait_s``, its own included
    ...          each agent sends its message, sized to its link's per-frame byte allowance
    t + deadline the ego fuses what has arrived. Later messages are dropped (``late_policy:
                 drop``) or fused into the next frame, motion-compensated with the ego's track
                 velocities (``late_policy: compensate``), up to ``max_age_s`` old.

Bytes per agent per frame count every message on a collaborator's link (the demand it received,
its offer, its message), as :func:`v2x.messages.codec.exchange` and ``v2x eval comm`` count them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from v2x import WEIGHTS
from v2x.comm.budget import parse_rate
from v2x.comm.emulator import ChannelEmulator
from v2x.comm.wire import WireError
from v2x.comm.wire_points import PointsMessageError, decode_points, encode_points
from v2x.core.boxes import Boxes
from v2x.core.frame import AgentScan, Frame
from v2x.core.geometry import inverse, transform_points
from v2x.messages.codec import CODE_METHODS, DEMAND_METHODS, Demand, MessageCodec, Offer, sender_code
from v2x.metrics.detection import DetectionEvaluator
from v2x.perception.cache import PerceptionCache, memory_share_mb
from v2x.perception.compensation import MotionModel, compensate_boxes, compensate_features, compensate_points
from v2x.perception.cooperative import (
    AgentPerception,
    Perception,
    SharedBoxes,
    SharedFeatures,
    check_share_frame,
    evaluation_ground_truth,
)
from v2x.perception.detector import check_precision, load_detector
from v2x.perception.encoder import sanitize_points
from v2x.pipeline.detections import agent_detections, crop_patches, in_ego_range, tracking_ground_truth
from v2x.pipeline.replay.results import jsonable
from v2x.sim.channel import ChannelConfig, preset
from v2x.tracking import (
    AB3DMOT,
    AgentDetections,
    FrameDetections,
    MultiSensorKF,
    TrackingSequence,
    evaluate_tracking,
    load_tracker,
)

__all__ = [
    "METHODS",
    "AgentStage",
    "Arrival",
    "EgoStage",
    "Models",
    "RunConfig",
    "Scorer",
    "run_cell",
    "run_log",
]

FEATURE_METHODS = ("raw", "raw-fp16", "where2comm", "codebook", "codefilling")
METHODS = ("none", "late", "early", *FEATURE_METHODS)
ALIASES = {"intermediate": "raw", "no-fusion": "none"}
TRACKERS = ("dmstrack", "ab3dmot", "none")
LATE_POLICIES = ("drop", "compensate")
#: where the shipped weights live


class PipelineError(ValueError):
    """A run configuration that cannot be run; names the setting."""


@dataclass
class RunConfig:
    method: str = "codefilling"
    #: bits per second per directed link; None: unlimited
    budget_bps: float | None = 200e3
    channel: ChannelConfig = field(default_factory=lambda: preset("ideal"))
    tracker: str = "dmstrack"
    late_policy: str = "drop"
    deadline_s: float = 0.1
    #: how long an agent waits for this frame's demand / the others' offers before going on
    coord_wait_s: float = 0.05
    #: oldest message the compensate policy still fuses
    max_age_s: float = 0.3
    threshold: float = 0.3
    #: the frame collaborators encode shared features in: "ego" (OpenCOOD's proj_first) or "own"
    share_frame: str = "ego"
    #: inference precision of the detector's neck and head: "fp32" or "bf16" (faster on CPUs
    #: with AMX or AVX512-BF16; see CooperativeDetector.set_precision)
    precision: str = "fp32"
    seed: int = 0
    frame_hz: float = 10.0
    max_agents: int = 5
    frames: int | None = None
    weights: str | None = None
    codebook: str | None = None
    tracker_weights: str | None = None
    trace: str | None = None

    def __post_init__(self) -> None:
        self.method = ALIASES.get(self.method, self.method)
        if self.method not in METHODS:
            raise PipelineError(f"method: unknown {self.method!r}; use one of {', '.join(METHODS)}")
        if self.tracker not in TRACKERS:
            raise PipelineError(f"tracker: unknown {self.tracker!r}; use one of {', '.join(TRACKERS)}")
        if self.late_policy not in LATE_POLICIES:
            raise PipelineError(
                f"late_policy: use one of {', '.join(LATE_POLICIES)}, not {self.late_policy!r}"
            )
        if self.budget_bps is not None and self.budget_bps <= 0:
            raise PipelineError(f"budget: must be positive, got {self.budget_bps}")
        for check, value in ((check_share_frame, self.share_frame), (check_precision, self.precision)):
            try:
                check(value)
            except ValueError as exc:
                raise PipelineError(str(exc)) from None

    @classmethod
    def from_options(
        cls,
        method: str = "codefilling",
        budget: str | float | None = "200kbps",
        channel: str | ChannelConfig = "ideal",
        latency_ms: float | None = None,
        jitter_ms: float | None = None,
        loss: float | None = None,
        deadline_ms: float | None = None,
        **rest: Any,
    ) -> RunConfig:
        """From the command line's or a sweep cell's vocabulary (``200kbps``, preset names, ms)."""
        try:
            cfg = preset(channel) if isinstance(channel, str) else channel
        except (KeyError, ValueError) as exc:
            raise PipelineError(f"channel: {exc}") from exc
        over = {}
        if latency_ms is not None:
            over["latency_s"] = float(latency_ms) / 1000
        if jitter_ms is not None:
            over["jitter_s"] = float(jitter_ms) / 1000
        if loss is not None:
            over["loss"] = float(loss)
        if over:
            cfg = dataclasses.replace(cfg, **over)
        if budget in (None, "none", "unlimited", 0):
            bps = None
        else:
            try:
                bps = parse_rate(budget)
            except ValueError as exc:
                raise PipelineError(f"budget: {exc}") from exc
        if deadline_ms is not None:
            rest["deadline_s"] = float(deadline_ms) / 1000
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(rest) - known)
        if unknown:
            raise PipelineError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(method=method, budget_bps=bps, channel=cfg, **rest)

    @property
    def frame_bytes(self) -> int | None:
        """Bytes one link may carry per frame."""
        return None if self.budget_bps is None else int(self.budget_bps / 8 / self.frame_hz)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channel"] = self.channel.to_dict()
        return d


@dataclass
class Models:
    """What every stage loads once: the detector, the message codec, the tracker's noise model."""

    perception: Perception
    codec: MessageCodec
    tracker_cfg: Any = None
    noise: Any = None

    @classmethod
    def load(cls, cfg: RunConfig) -> Models:
        model = load_detector(cfg.weights, precision=cfg.precision)
        codebook = None
        if cfg.method in CODE_METHODS:
            from v2x.messages.codebook import load_codebook

            path = Path(cfg.codebook) if cfg.codebook else WEIGHTS / "codebook.pt"
            if not path.is_file():
                raise PipelineError(f"codebook: {path} does not exist (train one: v2x train codebook)")
            codebook = load_codebook(path)
        tracker_cfg = noise = None
        if cfg.tracker == "dmstrack":
            path = Path(cfg.tracker_weights) if cfg.tracker_weights else WEIGHTS / "noise.pt"
            if path.is_file():
                tracker_cfg, noise = load_tracker(path)
        return cls(Perception(model), MessageCodec(model.cfg.grid, codebook), tracker_cfg, noise)


def needs_detection(method: str) -> bool:
    """Whether an agent must run its head: for boxes (late) or for its confidence (selection and
    the order of cells under a budget)."""
    return method == "late" or method in FEATURE_METHODS


# -- the agent ---------------------------------------------------------------------------------------
#: late demands an agent keeps at most (a link this many frames slow gets none used)
MAX_HELD_DEMANDS = 16


class AgentStage:
    """One collaborator's per-frame work: perceive, follow the ego's demand, offer, send."""

    def __init__(self, agent_id: str, models: Models, cfg: RunConfig) -> None:
        self.agent_id = str(agent_id)
        self.models = models
        self.cfg = cfg
        self.demand: Demand | None = None
        self._late_demands: list[tuple[float, bytes]] = []  # (delivered_s, demand), frame order
        self.malformed = 0
        self.bad_ego_poses = 0
        self._noise_filter: MultiSensorKF | None = None

    def perceive(self, scan: AgentScan, world_from_ego: ArrayLike | None = None) -> AgentPerception | None:
        """None where the method sends nothing or raw points: encoding would be wasted work, and
        in real time it would take the cores the ego needs.

        Features to share are encoded in the ego's BEV frame when ``share_frame`` is "ego" and
        the ego's pose ``world_from_ego`` is known (from its pose beacon; without one, in the
        agent's own frame); boxes for late fusion always in the agent's own."""
        if self.cfg.method in ("none", "early"):
            return None
        into = None
        if (
            self.cfg.method in FEATURE_METHODS
            and self.cfg.share_frame == "ego"
            and world_from_ego is not None
        ):
            into = np.asarray(world_from_ego, dtype=np.float64)
            if into.shape != (4, 4) or not np.isfinite(into).all():
                self.bad_ego_poses += 1  # counted; this frame is encoded in the agent's own frame
                into = None
        detect = needs_detection(self.cfg.method)
        # only late fusion sends boxes: feature methods select cells by confidence alone
        return self.models.perception.agent_step(scan, detect, into, boxes=self.cfg.method == "late")

    def variances(self, me: AgentPerception) -> np.ndarray | None:
        """(N, 7) measurement variances of the agent's boxes from the learned noise model, sent
        with them so the ego's multi-sensor filter weighs each detection (DMSTrack); None
        without a noise model."""
        if self.models.noise is None or self.cfg.tracker != "dmstrack" or me.boxes is None:
            return None
        if self._noise_filter is None:
            self._noise_filter = MultiSensorKF(self.models.tracker_cfg, noise=self.models.noise)
        det = agent_detections(me, self.models.codec.grid)
        with torch.no_grad():
            return self._noise_filter.measurement_variances(det).numpy()

    def take_demand(self, data: bytes) -> None:
        """Keep the newest demand (held late ones are older: dropped); a malformed one is counted
        and the previous one kept."""
        self._late_demands.clear()
        self._read_demand(data)

    def _read_demand(self, data: bytes) -> None:
        try:
            self.demand = self.models.codec.read_demand(data)
        except WireError:
            self.malformed += 1

    def hold_demand(self, data: bytes, delivered_s: float) -> None:
        """A demand that came too late to act on this frame: keep it for a later one (it is
        still word of what the ego lacks). Held in frame order; on a link slower than a frame
        several are on their way at once."""
        self._late_demands.append((delivered_s, data))
        del self._late_demands[:-MAX_HELD_DEMANDS]

    def refresh_demand(self, now_s: float) -> None:
        """At a frame's start: take the newest held demand that has arrived by ``now_s``, and
        forget the older ones."""
        arrived = [k for k, (t, _) in enumerate(self._late_demands) if t <= now_s + 1e-9]
        if arrived:
            newest = arrived[-1]
            data = self._late_demands[newest][1]
            del self._late_demands[: newest + 1]
            self._read_demand(data)

    def offer(self, me: AgentPerception) -> bytes | None:
        if self.cfg.method != "codefilling" or self.demand is None:
            return None
        return self.models.codec.offer_message(me, self.demand)

    def assigned(
        self, me: AgentPerception, own_offer: bytes | None, offers: Iterable[bytes]
    ) -> np.ndarray | None:
        """Blocks information filling gives this agent, from its own and the offers it received."""
        if self.cfg.method != "codefilling" or self.demand is None or own_offer is None:
            return None
        codec = self.models.codec
        read: list[Offer] = [codec.read_offer(own_offer)]
        for data in offers:
            try:
                read.append(codec.read_offer(data))
            except WireError:
                self.malformed += 1
        plan = codec.assign(read, self.demand)
        return plan.get(codec.sender_of(me), np.zeros(0, np.int64))

    def message(
        self,
        me: AgentPerception | None,
        scan: AgentScan,
        spent: int = 0,
        assigned: np.ndarray | None = None,
    ) -> bytes | None:
        """The frame's message, at most the link's per-frame allowance less ``spent`` bytes."""
        cfg, codec = self.cfg, self.models.codec
        allowance = None if cfg.frame_bytes is None else cfg.frame_bytes - spent
        if cfg.method == "none" or (allowance is not None and allowance <= 0):
            return None
        if cfg.method in ("late", "early"):
            data = (
                codec.detections_message(me, allowance, self.variances(me))
                if cfg.method == "late"
                else encode_points(
                    sender_code(scan.agent_id),
                    scan.timestamp_ns,
                    scan.world_from_lidar,
                    scan.points,
                    allowance,
                )
            )
            # even an empty message has a header: when that alone exceeds the allowance, say nothing
            return None if allowance is not None and len(data) > allowance else data
        method = cfg.method
        if method == "codefilling" and (self.demand is None or assigned is None):
            method = "codebook"  # no demand yet (or no offer accepted): the most confident cells
        blocks = assigned if method == "codefilling" else None
        enc = codec.feature_message(method, me, allowance, self.demand, blocks, cfg.threshold)
        if enc.data is None or (len(enc.cells) == 0 and enc.boxes == 0):
            return None
        return enc.data


# -- the ego -----------------------------------------------------------------------------------------
@dataclass
class Arrival:
    """A collaborator's message at the ego: what, from whom, captured and delivered when."""

    data: bytes
    sender: str
    captured_s: float
    delivered_s: float
    frame: int


@dataclass
class EgoOutput:
    boxes: Boxes  # ego BEV frame, with scores
    tracks: Boxes | None  # world frame, with track ids
    fused: int  # messages fused
    stale: int  # of which late ones, motion-compensated
    #: per sender whose features were fused: (its world_from_bev as received, flat cells it sent)
    sent_cells: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class EgoStage:
    """The ego's per-frame work: demand, decode what arrived, fuse, detect, track."""

    def __init__(self, ego_id: str, models: Models, cfg: RunConfig, previous: EgoStage | None = None) -> None:
        """``previous``: the ego of the run's sequence before this one. Its message counts go on
        here (a new sequence starts fresh tracks, not fresh totals), and what it still held
        expires, so every message handed to an ego is fused, dropped, malformed or expired."""
        self.ego_id = str(ego_id)
        self.models = models
        self.cfg = cfg
        self.malformed = self.late_dropped = self.expired = 0
        if previous is not None:
            previous.close_books()
            self.malformed, self.late_dropped = previous.malformed, previous.late_dropped
            self.expired = previous.expired
        self.held: dict[str, Arrival] = {}
        self.reset_tracking()

    def close_books(self) -> None:
        """The run or sequence is over: held late messages will never be fused."""
        self.expired += len(self.held)
        self.held.clear()

    def reset_tracking(self) -> None:
        """A new sequence: fresh tracks, no motion model, no held messages."""
        self.tracker: MultiSensorKF | AB3DMOT | None = None
        if self.cfg.tracker == "dmstrack":
            self.tracker = MultiSensorKF(self.models.tracker_cfg, noise=self.models.noise)
        elif self.cfg.tracker == "ab3dmot":
            self.tracker = AB3DMOT(self.models.tracker_cfg)
        self.motion = MotionModel.empty()
        self._tracked = 0
        self._last_tracks: tuple[Boxes, float] | None = None
        self.close_books()

    def perceive(self, scan: AgentScan) -> AgentPerception:
        # the ego detects on its own map for no fusion, late fusion and its demand map; for the
        # demand alone its boxes are decoded only if nothing arrives to fuse (fuse, boxes_of)
        method = self.cfg.method
        detect = method in ("none", "late", *DEMAND_METHODS)
        return self.models.perception.agent_step(scan, detect, boxes=method in ("none", "late"))

    def demand(self, me: AgentPerception) -> bytes | None:
        return self.models.codec.demand_message(me) if self.cfg.method in DEMAND_METHODS else None

    def usable(self, arrivals: list[Arrival], now_s: float, fuse_s: float) -> list[tuple[Arrival, bool]]:
        """(message, stale?) to fuse at ``fuse_s``: this frame's on-time ones, else the newest held
        late one per sender (compensate policy). Late ones are held or counted as dropped."""
        chosen: dict[str, tuple[Arrival, bool]] = {}
        for a in arrivals:
            if a.delivered_s <= fuse_s + 1e-9:
                chosen[a.sender] = (a, False)
        # held late messages that have arrived by now, unless a fresher one came in time
        for sender, a in list(self.held.items()):
            if a.delivered_s > fuse_s + 1e-9:
                continue
            del self.held[sender]
            if sender in chosen or now_s - a.captured_s > self.cfg.max_age_s + 1e-9:
                self.expired += 1
                continue
            chosen[sender] = (a, True)
        for a in arrivals:
            if a.delivered_s <= fuse_s + 1e-9:
                continue
            if self.cfg.late_policy == "compensate":
                if a.sender in self.held:
                    self.expired += 1  # superseded before it could be used
                self.held[a.sender] = a
            else:
                self.late_dropped += 1
        return list(chosen.values())

    def fuse(
        self, me: AgentPerception, scan: AgentScan, now_s: float, messages: list[tuple[Arrival, bool]]
    ) -> EgoOutput:
        cfg, codec, perception = self.cfg, self.models.codec, self.models.perception
        shared: list[SharedFeatures] = []
        boxes_in: list[SharedBoxes] = []
        clouds: list[torch.Tensor] = []
        sent_cells: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        stale = used = 0
        for arrival, is_stale in messages:
            age = now_s - arrival.captured_s
            try:
                if cfg.method == "late":
                    got = codec.read_detections(arrival.data)
                    if is_stale:
                        got = compensate_boxes(got, self.motion, arrival.captured_s, age)
                    boxes_in.append(got)
                elif cfg.method == "early":
                    msg = decode_points(arrival.data)
                    pts = msg.points
                    if is_stale:
                        pts = compensate_points(
                            pts, msg.world_from_lidar, self.motion, arrival.captured_s, age
                        )
                    local = transform_points(inverse(me.world_from_bev) @ msg.world_from_lidar, pts)
                    clouds.append(sanitize_points(local, perception.cfg))
                else:
                    feats, bx = codec.read_features(arrival.data, me.features.shape[0])
                    if is_stale:
                        feats = compensate_features(feats, self.motion, arrival.captured_s, age, codec.grid)
                    shared.append(feats)
                    sent_cells[arrival.sender] = (
                        feats.world_from_bev,
                        np.flatnonzero(feats.valid.numpy()).astype(np.int32),
                    )
                    if bx is not None:
                        boxes_in.append(bx)
            except (WireError, PointsMessageError):
                self.malformed += 1
                continue
            stale += is_stale
            used += 1
        fused_map = None
        with torch.no_grad():
            if cfg.method == "early":
                own = sanitize_points(scan.points_in_bev(), perception.cfg)
                bev = perception.model.encode([torch.cat([own, *clouds])])
                out = perception.model.detect(bev.features)
                boxes = perception.model.decode(out)[0]
                fused_map = bev.features[0]
            elif cfg.method in ("none", "late"):
                boxes = (
                    perception.merge_boxes(me.world_from_bev, me.boxes, boxes_in) if boxes_in else me.boxes
                )
            elif not shared and not boxes_in and (own := perception.boxes_of(me)) is not None:
                # nothing usable arrived and the ego detected on its own map already (for its
                # demand): fusing its map alone would give that map and those boxes again
                boxes, fused_map = own, me.features
            else:
                res = perception.ego_step(me, shared, boxes_in)
                boxes, fused_map = res.boxes, res.features
        tracks = self._track(me, boxes, boxes_in, fused_map, now_s)
        return EgoOutput(boxes, tracks, used, stale, sent_cells)

    def _track(
        self, me: AgentPerception, boxes: Boxes, received: list[SharedBoxes], fused_map, now_s: float
    ) -> Boxes | None:
        if self.tracker is None:
            return None
        world = boxes.transformed(me.world_from_bev)
        if isinstance(self.tracker, AB3DMOT):
            tracks = self.tracker.step(world, self._tracked, me.timestamp_ns)
        else:
            grid = self.models.codec.grid
            if self.cfg.method == "late":
                agents = [agent_detections(me, grid)] + [
                    AgentDetections(
                        s.agent_id,
                        "vehicle",
                        s.world_from_bev,
                        s.boxes.transformed(s.world_from_bev),
                        variances=s.variances,
                    )
                    for s in received
                ]
            else:
                patches = (
                    crop_patches(fused_map, boxes.xyzlwhy[:, :2], grid, 5) if fused_map is not None else None
                )
                agents = [AgentDetections(self.ego_id, me.kind.value, me.world_from_bev, world, patches)]
            tracks = self.tracker.step(FrameDetections(self._tracked, me.timestamp_ns, agents)).boxes
        self._tracked += 1  # frame numbers must rise: the trackers refuse a repeated frame
        stamp = now_s  # the clock message ages are measured on, so compensation is consistent
        if self._last_tracks is not None:
            self.motion = MotionModel.from_tracks(self._last_tracks[0], self._last_tracks[1], tracks, stamp)
        self._last_tracks = (tracks, stamp)
        return tracks


def warm_up(models: Models, cfg: RunConfig) -> int:
    """Run two frames of ``cfg``'s agent and ego stages on a synthetic scan, the second message
    stale, so that the first real frames do not pay one-time costs: the CPU convolution kernels
    built per shape and precision, the batch-norm folding, spconv's first call, the codec, the
    motion compensation and the tracker's noise model. In real time those frames took up to
    150 ms more than the rest. Run on the real-time nodes; the synthetic agent ids never match a
    real scan, so a perception cache would only hold two unused entries.
    Returns how many collaborator messages the ego fused (the tests check the path was run)."""
    rng = np.random.default_rng(0)
    n = 60_000  # as many points as a 64-beam scan: buffers of the size real frames need
    r, a = rng.uniform(3.0, 60.0, n), rng.uniform(-np.pi, np.pi, n)
    points = np.c_[r * np.cos(a), r * np.sin(a), rng.uniform(-1.7, 1.0, n), rng.uniform(0, 1, n)]
    points = points.astype(np.float32)
    ego = EgoStage("990001", models, cfg)
    agent = AgentStage("990002", models, cfg)
    fused = 0
    for k in range(2):
        stamp = k * 100_000_000
        ego_scan = AgentScan("990001", "vehicle", points, np.eye(4), timestamp_ns=stamp)
        pose = np.eye(4)
        pose[:2, 3] = (8.0 + k, 3.0)
        other = AgentScan("990002", "vehicle", points, pose, timestamp_ns=stamp)
        me = ego.perceive(ego_scan)
        demand = ego.demand(me)
        if demand is not None:
            agent.take_demand(demand)
        them = agent.perceive(other, me.world_from_bev)
        offer = agent.offer(them) if them is not None else None
        data = agent.message(them, other, 0, agent.assigned(them, offer, []) if offer else None)
        arrivals = [(Arrival(data, "990002", k * 0.1, k * 0.1, k), k > 0)] if data else []
        fused += ego.fuse(me, ego_scan, k * 0.1, arrivals).fused
    return fused


# -- the in-process run -----------------------------------------------------------------------------
def _distance(a: AgentScan, b: AgentScan) -> float:
    return float(np.linalg.norm(a.world_from_lidar[:2, 3] - b.world_from_lidar[:2, 3]))


@dataclass
class _Accounting:
    link_bytes: list[int] = field(default_factory=list)  # per (collaborator, frame)
    latency_ms: list[float] = field(default_factory=list)  # capture -> delivery at the ego
    frame_ms: list[float] = field(default_factory=list)  # compute per frame (wall clock)
    fused: int = 0
    fused_stale: int = 0


def run_frames(
    frames: Iterable[Frame],
    cfg: RunConfig,
    models: Models | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> dict:
    """Run frames (in order; a new scenario starts new tracks) and score them."""
    models = models or Models.load(cfg)
    grid = models.codec.grid
    em = ChannelEmulator(
        cfg.channel, seed=cfg.seed, budget_bps=cfg.budget_bps, frame_hz=cfg.frame_hz, trace=cfg.trace
    )
    scorer = Scorer(cfg, grid.xy_range)
    agents: dict[str, AgentStage] = {}
    ego: EgoStage | None = None
    detections: list[dict] = []
    min_points = models.perception.cfg.min_points_per_box
    for k, frame in enumerate(frames):
        t0 = time.perf_counter()
        t = k / cfg.frame_hz
        if scorer.needs_new_sequence(frame.scenario, frame.ego_id, ego.ego_id if ego else None):
            ego = EgoStage(frame.ego_id, models, cfg, ego)  # a new sequence: fresh tracks, nothing held
            scorer.new_sequence(frame.scenario)
        me, arrivals, spent = exchange_frame(frame, k, t, cfg, agents, ego, em)
        usable = ego.usable(arrivals, t, t + cfg.deadline_s)
        result = ego.fuse(me, frame.ego, t, usable)
        gt_track = tracking_ground_truth(frame, min_points) if result.tracks is not None else None
        scorer.add(
            result, usable, spent, evaluation_ground_truth(frame, min_points), gt_track, me.world_from_bev
        )
        detections.append(
            {
                "scenario": frame.scenario,
                "index": frame.index,
                "boxes": result.boxes,
                "tracks": result.tracks,
                "sent_cells": result.sent_cells,
            }
        )
        scorer.acc.frame_ms.append((time.perf_counter() - t0) * 1000)
        if progress is not None:
            progress(k, {"bytes": float(np.mean(list(spent.values()))) if spent else 0.0})
    em.close()
    if ego is not None:
        ego.close_books()
    malformed = (ego.malformed if ego else 0) + sum(a.malformed for a in agents.values())
    out = scorer.summary(em, malformed, ego.late_dropped if ego else 0, ego.expired if ego else 0)
    out["_detections"] = detections
    return out


def exchange_frame(
    frame: Frame,
    k: int,
    t: float,
    cfg: RunConfig,
    agents: dict[str, AgentStage],
    ego: EgoStage,
    em: ChannelEmulator,
) -> tuple[AgentPerception, list[Arrival], dict[str, int]]:
    """One frame of perception and messaging on the simulated clock: the ego's own perception,
    what reaches it (with delivery times) and the bytes on each collaborator's link."""
    models = ego.models
    collab = frame.collaborators[: max(0, cfg.max_agents - 1)]
    for s in collab:
        agents.setdefault(s.agent_id, AgentStage(s.agent_id, models, cfg))
    me = ego.perceive(frame.ego)
    others = {s.agent_id: agents[s.agent_id].perceive(s, frame.ego.world_from_bev) for s in collab}
    spent = {s.agent_id: 0 for s in collab}
    act = {s.agent_id: t for s in collab}
    demand = ego.demand(me)
    if demand is not None:
        for s in collab:
            stage = agents[s.agent_id]
            stage.refresh_demand(t)
            spent[s.agent_id] += len(demand)
            d = em.send(ego.ego_id, s.agent_id, demand, t, _distance(frame.ego, s))
            if d.reason is not None:
                continue
            if d.delivered_s <= t + cfg.coord_wait_s + 1e-9:
                stage.take_demand(d.data)
                act[s.agent_id] = d.delivered_s
            else:
                stage.hold_demand(d.data, d.delivered_s)
    offers: dict[str, bytes | None] = {}
    heard: dict[str, list[tuple[float, bytes]]] = {s.agent_id: [] for s in collab}
    if cfg.method == "codefilling":
        for s in collab:
            offers[s.agent_id] = agents[s.agent_id].offer(others[s.agent_id])
        for s in collab:
            data = offers[s.agent_id]
            if data is None:
                continue
            spent[s.agent_id] += len(data)
            for r in collab:
                if r.agent_id == s.agent_id:
                    continue
                d = em.send(s.agent_id, r.agent_id, data, act[s.agent_id], _distance(s, r))
                if d.reason is None and d.delivered_s <= act[r.agent_id] + cfg.coord_wait_s + 1e-9:
                    heard[r.agent_id].append((d.delivered_s, d.data))
    arrivals = []
    for s in collab:
        stage, got = agents[s.agent_id], sorted(heard[s.agent_id], key=lambda x: x[0])
        assigned = stage.assigned(others[s.agent_id], offers.get(s.agent_id), [b for _, b in got])
        send_s = max([act[s.agent_id], *[ts for ts, _ in got]])
        data = stage.message(others[s.agent_id], s, spent[s.agent_id], assigned)
        if data is None:
            continue
        spent[s.agent_id] += len(data)
        d = em.send(s.agent_id, ego.ego_id, data, send_s, _distance(s, frame.ego))
        if d.reason is None:
            arrivals.append(Arrival(d.data, s.agent_id, t, d.delivered_s, k))
    return me, arrivals, spent


def summarise(
    cfg: RunConfig,
    det_eval: DetectionEvaluator,
    sequences: list[TrackingSequence],
    em: ChannelEmulator,
    acc: _Accounting,
    malformed: int,
    late: int,
    expired: int,
) -> dict:
    det = det_eval.result()
    totals = em.totals()
    out: dict[str, Any] = {
        "method": cfg.method,
        "config": cfg.to_dict(),
        "frames": det["frames"],
        "ap_bev": det["ap_bev"],
        "ap_3d": det["ap_3d"],
        "detection": det,
        "bytes_per_agent_frame": float(np.mean(acc.link_bytes)) if acc.link_bytes else 0.0,
        "messages": {
            "sent": totals["sent"],
            "delivered": totals["delivered"],
            "dropped": totals["dropped_channel"] + totals["dropped_budget"],
            "dropped_channel": totals["dropped_channel"],
            "dropped_budget": totals["dropped_budget"],
            "late_dropped": late,
            "expired": expired,
            "malformed": malformed,
            "fused": acc.fused,
            "fused_stale": acc.fused_stale,
        },
        "latency_ms": _percentiles(acc.latency_ms),
        "compute_ms_per_frame": _percentiles(acc.frame_ms),
        "links": em.summary(),
    }
    if cfg.tracker != "none" and sequences and any(s.tracks for s in sequences):
        tr = evaluate_tracking([s for s in sequences if s.tracks], mode="comparable")
        tr.pop("curve", None)
        out["amota"], out["mota"] = tr["amota"], tr["mota"]
        out["tracking"] = tr
    else:
        out["amota"] = out["mota"] = None
    return out


class Scorer:
    """The books of one run, frame by frame: detection AP, tracking sequences, bytes per link per
    frame, capture-to-delivery latencies. The in-process run and the replay's ego node both keep
    them here, so both report the same figures for the same detections."""

    def __init__(self, cfg: RunConfig, xy_range) -> None:
        self.cfg = cfg
        self.xy_range = xy_range
        self.det_eval = DetectionEvaluator(eval_range=xy_range)
        self.acc = _Accounting()
        self.sequences: list[TrackingSequence] = []
        self.seq: TrackingSequence | None = None

    def needs_new_sequence(self, scenario: str, ego_id: str, current_ego: str | None) -> bool:
        """A new scenario or another ego starts fresh tracks."""
        return current_ego is None or ego_id != current_ego or self.seq is None or scenario != self.seq.name

    def new_sequence(self, scenario: str) -> None:
        self.seq = TrackingSequence(scenario, 0)
        self.sequences.append(self.seq)

    def add(
        self,
        result: EgoOutput,
        usable: list[tuple[Arrival, bool]],
        spent: dict[str, int],
        gt_eval: Boxes,
        gt_track: Boxes | None,
        world_from_ego_bev: np.ndarray,
    ) -> None:
        acc, seq = self.acc, self.seq
        acc.latency_ms.extend((a.delivered_s - a.captured_s) * 1000 for a, _ in usable)
        acc.fused += result.fused
        acc.fused_stale += result.stale
        acc.link_bytes.extend(spent.values())
        self.det_eval.add(result.boxes, gt_eval)
        if result.tracks is not None and gt_track is not None:
            n = seq.n_frames
            seq.gt[n] = in_ego_range(gt_track, world_from_ego_bev, self.xy_range)
            seq.tracks[n] = in_ego_range(result.tracks, world_from_ego_bev, self.xy_range)
        seq.n_frames += 1

    def ap_so_far(self) -> dict:
        return self.det_eval.result()["ap_bev"]

    def summary(self, links, malformed: int, late: int, expired: int) -> dict:
        """``links``: the channel's counts (a :class:`ChannelEmulator`, or anything with its
        ``totals()`` and ``summary()``)."""
        return summarise(self.cfg, self.det_eval, self.sequences, links, self.acc, malformed, late, expired)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "mean": None, "n": 0}
    v = np.asarray(values)
    return {
        "p50": round(float(np.percentile(v, 50)), 3),
        "p95": round(float(np.percentile(v, 95)), 3),
        "mean": round(float(v.mean()), 3),
        "n": int(v.size),
    }


def select_frames(log, frames: int | None, scenes: list[str] | None = None) -> list[int]:
    """Indices of the first ``frames`` frames (of the named scenes, when given), in log order."""
    if scenes:
        known = log.scenarios()
        resolved, missing = [], []
        for name in scenes:
            # "scene_x" also names "test/scene_x" (a preset root holds its split folders)
            hits = [name] if name in known else [k for k in known if k.endswith("/" + name)]
            if len(hits) == 1:
                resolved.append(hits[0])
            else:
                missing.append(name)
        if missing:
            raise PipelineError(
                f"scene: {', '.join(missing)} not in the log (it has {', '.join(known[:10])} ...)"
            )
        idx = sorted(i for s in resolved for i in log.scenario_indices(s))
    else:
        idx = list(range(len(log)))
    return idx[:frames] if frames else idx


def run_log(
    data: str | Path,
    cfg: RunConfig,
    models: Models | None = None,
    progress: bool = False,
    scenes: list[str] | None = None,
) -> dict:
    """:func:`run_frames` over a log folder (any supported format)."""
    from tqdm import tqdm

    from v2x.datasets import open_log

    log = open_log(data, max_cav=cfg.max_agents)
    idx = select_frames(log, cfg.frames, scenes)
    bar = tqdm(total=len(idx), desc=f"{cfg.method}", disable=not progress, leave=False)

    def tick(_k: int, info: dict) -> None:
        bar.update(1)
        bar.set_postfix(bytes_per_agent=f"{info['bytes']:.0f}")

    try:
        out = run_frames((log[i] for i in idx), cfg, models, tick)
    finally:
        bar.close()
    out["data"] = str(data)
    return out


_MODELS: dict[tuple, Models] = {}
#: a sweep worker's agents' perceptions, shared by every cell it runs (see perception_cache),
#: with the size it was asked for
_PERCEPTION_CACHE: tuple[int, PerceptionCache | None] | None = None
#: its default size per worker process (a frame of five agents takes about 23 MB), capped by
#: the worker's share of the memory (``memory_share_mb``)
PERCEPTION_CACHE_MB = 2048


def _cached_models(cfg: RunConfig, cache_mb: int = PERCEPTION_CACHE_MB) -> Models:
    """A sweep worker runs many cells: load each set of weights once per process, and reuse
    each agent's perception of a scan across cells (``cache_mb`` of it; 0: none)."""
    global _PERCEPTION_CACHE
    needs_codebook = cfg.method in CODE_METHODS
    key = (
        cfg.weights,
        cfg.precision,
        needs_codebook,
        cfg.codebook if needs_codebook else None,
        cfg.tracker,
        cfg.tracker_weights,
    )
    if key not in _MODELS:
        _MODELS[key] = Models.load(cfg)
    models = _MODELS[key]
    if _PERCEPTION_CACHE is None or _PERCEPTION_CACHE[0] != cache_mb:
        share = memory_share_mb(cache_mb)
        _PERCEPTION_CACHE = (cache_mb, PerceptionCache(share << 20) if share > 0 else None)
    models.perception.cache = _PERCEPTION_CACHE[1]
    return models


def run_cell(cell: dict[str, Any]) -> dict:
    """One sweep cell (a flat dict of settings) run in process; JSON-ready metrics."""
    cell = dict(cell)
    data = cell.pop("data")
    scene = cell.pop("scene", None)
    agents = cell.pop("agents", None)
    threads = cell.pop("threads", 1)
    cache_mb = int(cell.pop("perception_cache_mb", PERCEPTION_CACHE_MB))
    for k in ("name",):
        cell.pop(k, None)
    if agents is not None:
        cell["max_agents"] = int(agents)
    torch.set_num_threads(int(threads))
    cfg = RunConfig.from_options(**cell)
    t0 = time.perf_counter()
    out = run_log(data, cfg, models=_cached_models(cfg, cache_mb), scenes=[scene] if scene else None)
    out.pop("_detections", None)
    out.pop("links", None)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return jsonable(out)
