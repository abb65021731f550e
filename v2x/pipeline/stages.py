"""The agent's and the ego's per-frame work (:class:`AgentStage`, :class:`EgoStage`) and the models
they load once. The simulated clock (``v2x.pipeline.clock``) and the node processes
(``v2x.pipeline.replay``) both run these, so both paths make the same decisions from the same inputs;
only the transport differs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from v2x import WEIGHTS
from v2x.comm.errors import DecodeError, count_refusal
from v2x.comm.wire import WireError
from v2x.comm.wire_points import decode_points, encode_points
from v2x.core.boxes import Boxes
from v2x.core.frame import AgentScan
from v2x.core.geometry import inverse, transform_points
from v2x.messages.codec import Demand, MessageCodec, Offer, hybrid_boxes, sender_code
from v2x.messages.scheme import Selection
from v2x.perception.compensation import MotionModel, compensate_boxes, compensate_features, compensate_points
from v2x.perception.cooperative import (
    AgentPerception,
    Perception,
    SharedBoxes,
    SharedFeatures,
    with_own_boxes,
)
from v2x.perception.detector import DEFAULT_WEIGHTS, load_detector, resolve_weights
from v2x.perception.encoder import sanitize_points
from v2x.perception.fusion_kind import FusionKind
from v2x.perception.settings import box_fusion_iou, encodes_on_ego_grid
from v2x.pipeline.config import PipelineError, RunConfig
from v2x.pipeline.detections import agent_detections, crop_patches
from v2x.pipeline.methods import Sends
from v2x.pipeline.timing import within
from v2x.tracking import AB3DMOT, AgentDetections, FrameDetections, MultiSensorKF, Tracker, load_tracker


@dataclass
class Models:
    """What every stage loads once: the detector, the message codec, the tracker's noise model."""

    perception: Perception
    codec: MessageCodec
    tracker_cfg: Any = None
    noise: Any = None
    #: the ego's fusion, neck and head for code messages (message weights), if loaded
    decoder: Any = None

    @classmethod
    def load(cls, cfg: RunConfig, log_format: str | None = None) -> Models:
        """The models of ``cfg``; without ``cfg.weights``, the shipped detector for a log of
        ``log_format`` (``resolve_weights``)."""
        model = load_detector(cfg.weights, precision=cfg.precision, log_format=log_format)
        codebook = decoder = codebook_id = None
        if cfg.spec.needs_codebook:
            from v2x.messages.codebook import load_codebook
            from v2x.messages.message_weights import load_message_weights, message_weights_path
            from v2x.messages.pairing import resolve_codebook, warn_if_mispaired

            detector_path = resolve_weights(cfg.weights, log_format)
            try:
                mw_path = message_weights_path(cfg.message_weights, cfg.codebook, detector_path)
                mw = load_message_weights(mw_path, model) if mw_path is not None else None
            except (OSError, ValueError) as exc:
                raise PipelineError(f"message_weights: {exc}") from exc
            if mw is not None:
                codebook, decoder, codebook_id = mw.codebook, mw.decoder, mw.identity()
            else:
                path = resolve_codebook(cfg.codebook, detector_path)
                if not path.is_file():
                    raise PipelineError(f"codebook: {path} does not exist (train one: v2x train codebook)")
                codebook = load_codebook(path)
                if cfg.precision == "fp32":  # identities of other precisions differ by design
                    warn_if_mispaired(path, model.identity())
        tracker_cfg = noise = None
        if cfg.tracker == "dmstrack":
            path = Path(cfg.tracker_weights) if cfg.tracker_weights else WEIGHTS / "noise.pt"
            if path.is_file():
                tracker_cfg, noise = load_tracker(path)
        codec = MessageCodec(model.cfg.grid, codebook, codebook_id=codebook_id)
        perception = Perception(model, box_fusion_iou=box_fusion_iou(cfg.box_merge))
        return cls(perception, codec, tracker_cfg, noise, decoder)


def for_log_format(cfg: RunConfig, log_format: str | None) -> RunConfig:
    """``cfg`` with the detector weights of a log of ``log_format`` spelled out, when they are
    not the default ones (``resolve_weights``: a DAIR-V2X-C log gets the DAIR detector), so that
    node processes and model caches, which never see the log, load the same weights."""
    path = resolve_weights(cfg.weights, log_format)
    return cfg if cfg.weights or path == DEFAULT_WEIGHTS else replace(cfg, weights=str(path))


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
        self.refused: Counter[str] = Counter()  # malformed ones by reason (comm.errors.count_refusal)
        self.bad_ego_poses = 0
        self._noise_filter: MultiSensorKF | None = None

    def perceive(self, scan: AgentScan, world_from_ego: ArrayLike | None = None) -> AgentPerception | None:
        """None where the method sends nothing or raw points: encoding would be wasted work, and
        in real time it would take the cores the ego needs.

        Features to share are encoded in the ego's BEV frame when ``share_frame`` is "ego" and
        the ego's pose ``world_from_ego`` is known (from its pose beacon; without one, in the
        agent's own frame); boxes for late fusion always in the agent's own."""
        spec = self.cfg.spec
        if spec.sends not in (Sends.BOXES, Sends.FEATURES):
            return None
        into = None
        if (
            spec.sends is Sends.FEATURES
            and encodes_on_ego_grid(self.cfg.share_frame)
            and world_from_ego is not None
        ):
            into = np.asarray(world_from_ego, dtype=np.float64)
            if into.shape != (4, 4) or not np.isfinite(into).all():
                self.bad_ego_poses += 1  # counted; this frame is encoded in the agent's own frame
                into = None
        # boxes are decoded only where they are sent (late fusion, the hybrid): other feature
        # methods select cells by confidence alone
        perception = self.models.perception
        if spec.attaches_boxes and into is not None:
            # the hybrid's boxes from the scan in its own frame: on the ego's grid they are less precise
            shared = perception.agent_step(scan, True, into, boxes=False)
            return with_own_boxes(shared, perception.agent_step(scan, True, None, boxes=True))
        return perception.agent_step(scan, spec.agent_detects, into, boxes=spec.sends_boxes)

    def variances(self, percept: AgentPerception) -> np.ndarray | None:
        """(N, 7) measurement variances of the agent's boxes from the learned noise model, sent
        with them so the ego's multi-sensor filter weighs each detection (DMSTrack); None
        without a noise model."""
        if self.models.noise is None or self.cfg.tracker != "dmstrack" or percept.boxes is None:
            return None
        if self._noise_filter is None:
            self._noise_filter = MultiSensorKF(self.models.tracker_cfg, noise=self.models.noise)
        det = agent_detections(percept, self.models.codec.grid)
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
        except WireError as exc:
            self.malformed += 1
            count_refusal(self.refused, exc)

    def hold_demand(self, data: bytes, delivered_s: float) -> None:
        """A demand that came too late to act on this frame: keep it for a later one (it is
        still word of what the ego lacks). Held in frame order; on a link slower than a frame
        several are on their way at once."""
        self._late_demands.append((delivered_s, data))
        del self._late_demands[:-MAX_HELD_DEMANDS]

    def refresh_demand(self, now_s: float) -> None:
        """At a frame's start: take the newest held demand that has arrived by ``now_s``, and
        forget the older ones."""
        arrived = [k for k, (t, _) in enumerate(self._late_demands) if within(t, now_s)]
        if arrived:
            newest = arrived[-1]
            data = self._late_demands[newest][1]
            del self._late_demands[: newest + 1]
            self._read_demand(data)

    def offer(self, percept: AgentPerception) -> bytes | None:
        if not self.cfg.spec.uses_offers or self.demand is None:
            return None
        return self.models.codec.offer_message(percept, self.demand)

    def assigned(
        self, percept: AgentPerception, own_offer: bytes | None, offers: Iterable[bytes]
    ) -> np.ndarray | None:
        """Blocks information filling gives this agent, from its own and the offers it received."""
        if not self.cfg.spec.uses_offers or self.demand is None or own_offer is None:
            return None
        codec = self.models.codec
        read: list[Offer] = [codec.read_offer(own_offer)]
        for data in offers:
            try:
                read.append(codec.read_offer(data))
            except WireError as exc:
                self.malformed += 1
                count_refusal(self.refused, exc)
        plan = codec.assign(read, self.demand)
        return plan.get(codec.sender_of(percept), np.zeros(0, np.int64))

    def message(
        self,
        percept: AgentPerception | None,
        scan: AgentScan,
        spent: int = 0,
        assigned: np.ndarray | None = None,
    ) -> bytes | None:
        """The frame's message, at most the link's per-frame allowance less ``spent`` bytes."""
        cfg, codec, spec = self.cfg, self.models.codec, self.cfg.spec
        allowance = None if cfg.frame_bytes is None else cfg.frame_bytes - spent
        if spec.sends is Sends.NOTHING or (allowance is not None and allowance <= 0):
            return None
        if spec.sends in (Sends.BOXES, Sends.POINTS):
            data = (
                codec.detections_message(percept, allowance, self.variances(percept))
                if spec.sends is Sends.BOXES
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
        scheme = spec.features
        if scheme.uses_offers and (self.demand is None or assigned is None):
            # no demand yet (or no offer accepted): the most confident cells, in the same encoding
            scheme = replace(scheme, selection=Selection.CONFIDENT)
        blocks = assigned if scheme.uses_offers else None
        boxes = hybrid_boxes(percept) if spec.attaches_boxes else None
        enc = codec.feature_message(scheme, percept, allowance, self.demand, blocks, cfg.threshold, boxes)
        if enc.data is None or (len(enc.cells) == 0 and enc.boxes == 0):
            return None
        return enc.data


# -- the ego -----------------------------------------------------------------------------------------
#: scan offsets below this are not worth moving objects for (at 30 m/s, 3 cm)
MIN_COMPENSATED_OFFSET_S = 0.001


@dataclass
class Arrival:
    """A collaborator's message at the ego: what, from whom, captured and delivered when.

    ``captured_s`` is its frame's time on the run's clock; ``scan_offset_s`` is how much later
    the sender's scan was taken than the ego's of that frame (real logs: see
    :func:`v2x.pipeline.frames.scan_offsets_s`), so what it saw dates from their sum."""

    data: bytes
    sender: str
    captured_s: float
    delivered_s: float
    frame: int
    scan_offset_s: float = 0.0


@dataclass
class EgoOutput:
    boxes: Boxes  # ego BEV frame, with scores
    tracks: Boxes | None  # world frame, with track ids
    fused: int  # messages fused
    stale: int  # of which late ones, motion-compensated
    #: per sender whose features were fused: (its world_from_bev as received, flat cells it sent)
    sent_cells: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: fused messages whose scan offset from the ego's exceeded ``max_scan_offset_s``: fused
    #: as if simultaneous, and counted
    offsets_over_limit: int = 0


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
        # malformed messages by reason and by sender (comm.errors.count_refusal), kept across sequences
        self.refused: Counter[str] = previous.refused if previous is not None else Counter()
        if previous is not None:
            previous.expire_held()
            self.malformed, self.late_dropped = previous.malformed, previous.late_dropped
            self.expired = previous.expired
        self.held: dict[str, Arrival] = {}
        self.reset_tracking()

    def expire_held(self) -> None:
        """The run or sequence is over: held late messages will never be fused (counted expired)."""
        self.expired += len(self.held)
        self.held.clear()

    def reset_tracking(self) -> None:
        """A new sequence: fresh tracks, no motion model, no held messages."""
        self.tracker: Tracker | None = None
        if self.cfg.tracker == "dmstrack":
            self.tracker = MultiSensorKF(self.models.tracker_cfg, noise=self.models.noise)
        elif self.cfg.tracker == "ab3dmot":
            self.tracker = AB3DMOT(self.models.tracker_cfg)
        self.motion = MotionModel.empty()
        self._tracked = 0
        self._last_tracks: tuple[Boxes, float] | None = None
        self.expire_held()

    def perceive(self, scan: AgentScan) -> AgentPerception:
        # the ego detects on its own map for no fusion, late fusion and its demand map; for the
        # demand alone its boxes are decoded only if nothing arrives to fuse (fuse, boxes_of)
        spec = self.cfg.spec
        detect = spec.ego_detects_alone or spec.uses_demand
        return self.models.perception.agent_step(scan, detect, boxes=spec.ego_detects_alone)

    def demand(self, percept: AgentPerception) -> bytes | None:
        return self.models.codec.demand_message(percept) if self.cfg.spec.uses_demand else None

    def take_fusable(
        self, arrivals: list[Arrival], now_s: float, fuse_s: float
    ) -> list[tuple[Arrival, bool]]:
        """Take ``arrivals`` in and return the (message, stale?) pairs to fuse at ``fuse_s``: this
        frame's on-time ones, else the newest held late one per sender (compensate policy).
        Changes the ego's state: late arrivals are held for a later frame or counted as dropped,
        and held ones taken, superseded or too old leave ``held`` (the last two counted expired)."""
        chosen: dict[str, tuple[Arrival, bool]] = {}
        for a in arrivals:
            if within(a.delivered_s, fuse_s):
                chosen[a.sender] = (a, False)
        # held late messages that have arrived by now, unless a fresher one came in time
        for sender, a in list(self.held.items()):
            if not within(a.delivered_s, fuse_s):
                continue
            del self.held[sender]
            if sender in chosen or not within(now_s - a.captured_s, self.cfg.max_age_s):
                self.expired += 1
                continue
            chosen[sender] = (a, True)
        for a in arrivals:
            if within(a.delivered_s, fuse_s):
                continue
            if self.cfg.late_policy == "compensate":
                if a.sender in self.held:
                    self.expired += 1  # superseded before it could be used
                self.held[a.sender] = a
            else:
                self.late_dropped += 1
        return list(chosen.values())

    def fuse(
        self, percept: AgentPerception, scan: AgentScan, now_s: float, messages: list[tuple[Arrival, bool]]
    ) -> EgoOutput:
        cfg, codec, perception = self.cfg, self.models.codec, self.models.perception
        spec = cfg.spec
        shared: list[SharedFeatures] = []
        boxes_in: list[SharedBoxes] = []
        clouds: list[torch.Tensor] = []
        sent_cells: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        stale = used = over_limit = 0
        for arrival, is_stale in messages:
            over = abs(arrival.scan_offset_s) > cfg.max_scan_offset_s
            offset = 0.0 if over else arrival.scan_offset_s
            seen_s = arrival.captured_s + offset  # when the sender's scan was taken
            age = now_s - seen_s
            move = is_stale or abs(offset) >= MIN_COMPENSATED_OFFSET_S
            try:
                if spec.sends is Sends.BOXES:
                    got = codec.read_detections(arrival.data)
                    if move:
                        got = compensate_boxes(got, self.motion, seen_s, age)
                    boxes_in.append(got)
                elif spec.sends is Sends.POINTS:
                    msg = decode_points(arrival.data)
                    pts = msg.points
                    if move:
                        pts = compensate_points(pts, msg.world_from_lidar, self.motion, seen_s, age)
                    local = transform_points(inverse(percept.world_from_bev) @ msg.world_from_lidar, pts)
                    clouds.append(sanitize_points(local, perception.cfg))
                else:
                    feats, bx = codec.read_features(arrival.data, percept.features.shape[0])
                    if move:
                        feats = compensate_features(feats, self.motion, seen_s, age, codec.grid)
                    shared.append(feats)
                    sent_cells[arrival.sender] = (
                        feats.world_from_bev,
                        np.flatnonzero(feats.valid.numpy()).astype(np.int32),
                    )
                    if bx is not None:  # the hybrid's boxes: moved on like its cells when late
                        if move:
                            bx = compensate_boxes(bx, self.motion, seen_s, age)
                        boxes_in.append(bx)
            except DecodeError as exc:  # wire, codec and points refusals alike
                self.malformed += 1
                count_refusal(self.refused, exc, arrival.sender)
                continue
            stale += is_stale
            over_limit += over
            used += 1
        fused_map = None
        with torch.no_grad():
            if spec.fusion is FusionKind.EARLY:
                own = sanitize_points(scan.points_in_bev(), perception.cfg)
                merged = torch.cat([own, *clouds])
                bev = perception.model.encode([merged])
                out = perception.model.detect(bev.features)
                boxes = perception.model.decode(out, [merged])[0]
                fused_map = bev.features[0]
            elif spec.ego_detects_alone:
                boxes = (
                    perception.merge_boxes(percept.world_from_bev, percept.boxes, boxes_in)
                    if boxes_in
                    else percept.boxes
                )
            elif (
                not shared
                and not boxes_in
                and self.models.decoder is None
                and (own := perception.boxes_of(percept)) is not None
            ):
                # nothing usable arrived and the ego detected on its own map already (for its
                # demand): fusing its map alone would give that map and those boxes again. With
                # message weights the decoder reads the ego's map, arrivals or not, as in
                # `v2x eval comm`: the ego's detector does not change from frame to frame
                boxes, fused_map = own, percept.features
            else:
                res = perception.ego_step(
                    percept,
                    shared,
                    boxes_in,
                    self.models.decoder,
                    in_each_frame=spec.reads_in_senders_frame(self.cfg.share_frame),
                    boxes_first=spec.attaches_boxes,
                )
                boxes, fused_map = res.boxes, res.features
        tracks = self._track(percept, boxes, boxes_in, fused_map, now_s)
        return EgoOutput(boxes, tracks, used, stale, sent_cells, over_limit)

    def _track(
        self, percept: AgentPerception, boxes: Boxes, received: list[SharedBoxes], fused_map, now_s: float
    ) -> Boxes | None:
        if self.tracker is None:
            return None
        world = boxes.transformed(percept.world_from_bev)
        grid = self.models.codec.grid
        per_agent = self.tracker.per_agent
        if per_agent and self.cfg.spec.fusion is FusionKind.LATE:
            # a multi-sensor filter weighs each agent's boxes itself: hand them over apart
            agents = [agent_detections(percept, grid)] + [
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
            # one stream, the ego's (fused) detections; patches only feed a per-agent noise model
            patches = (
                crop_patches(fused_map, boxes.xyzlwhy[:, :2], grid, 5)
                if per_agent and fused_map is not None
                else None
            )
            agents = [
                AgentDetections(self.ego_id, percept.kind.value, percept.world_from_bev, world, patches)
            ]
        tracks = self.tracker.step(FrameDetections(self._tracked, percept.timestamp_ns, agents)).boxes
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
        percept = ego.perceive(ego_scan)
        demand = ego.demand(percept)
        if demand is not None:
            agent.take_demand(demand)
        collaborator = agent.perceive(other, percept.world_from_bev)
        offer = agent.offer(collaborator) if collaborator is not None else None
        data = agent.message(
            collaborator, other, 0, agent.assigned(collaborator, offer, []) if offer else None
        )
        arrivals = [(Arrival(data, "990002", k * 0.1, k * 0.1, k), k > 0)] if data else []
        fused += ego.fuse(percept, ego_scan, k * 0.1, arrivals).fused
    return fused
