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

Each collaborator's side of a frame (demand, offers, message and their times) is an
:class:`~v2x.pipeline.exchange.AgentExchange`, the state machine the agent node drives too.

Bytes per agent per frame count every message on a collaborator's link (the demand it received,
its offer, its message), as :func:`v2x.messages.codec.exchange` and ``v2x eval comm`` count them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from v2x.comm.emulator import ChannelEmulator
from v2x.core.frame import AgentScan, Frame
from v2x.perception.cooperative import AgentPerception, evaluation_ground_truth
from v2x.pipeline.config import RunConfig
from v2x.pipeline.detections import tracking_ground_truth
from v2x.pipeline.exchange import AgentExchange, Phase
from v2x.pipeline.frames import FrameStep, drive, scan_offsets_s
from v2x.pipeline.scoring import Scorer
from v2x.pipeline.stages import AgentStage, Arrival, EgoStage, Models


# -- the in-process run -----------------------------------------------------------------------------
def _distance(a: AgentScan, b: AgentScan) -> float:
    return float(np.linalg.norm(a.world_from_lidar[:2, 3] - b.world_from_lidar[:2, 3]))


def run_frames(
    frames: Sequence[Frame] | Iterable[Frame],
    cfg: RunConfig,
    models: Models | None = None,
    progress: Callable[[int, dict], None] | None = None,
    indices: Sequence[int] | None = None,
    bar: bool = False,
) -> dict:
    """Run frames (``frames[i]`` for each of ``indices``, or all of them, in order; a new
    scenario starts new tracks) and score them; ``bar`` shows a progress bar."""
    models = models or Models.load(cfg, getattr(frames, "format", None))
    grid = models.codec.grid
    em = ChannelEmulator(
        cfg.channel, seed=cfg.seed, budget_bps=cfg.budget_bps, frame_hz=cfg.frame_hz, trace=cfg.trace
    )
    scorer = Scorer(cfg, grid.xy_range)
    agents: dict[str, AgentStage] = {}
    ego: EgoStage | None = None
    min_points = models.perception.cfg.min_points_per_box

    def one(step: FrameStep) -> tuple[dict, float]:
        """One frame on the clock: its detections, and the mean bytes on a collaborator's link."""
        nonlocal ego
        t0 = time.perf_counter()
        frame, k = step.frame, step.k
        t = k / cfg.frame_hz
        if step.new_sequence or ego is None:
            ego = EgoStage(frame.ego_id, models, cfg, ego)  # a new sequence: fresh tracks, nothing held
            scorer.new_sequence(frame.scenario)
        own, arrivals, spent = exchange_frame(frame, k, t, cfg, agents, ego, em)
        fusable = ego.take_fusable(arrivals, t, t + cfg.deadline_s)
        result = ego.fuse(own, frame.ego, t, fusable)
        gt_track = tracking_ground_truth(frame, min_points) if result.tracks is not None else None
        scorer.add(
            result, fusable, spent, evaluation_ground_truth(frame, min_points), gt_track, own.world_from_bev
        )
        detection = {
            "scenario": frame.scenario,
            "index": frame.index,
            "boxes": result.boxes,
            "tracks": result.tracks,
            "sent_cells": result.sent_cells,
        }
        scorer.acc.frame_ms.append((time.perf_counter() - t0) * 1000)
        sent = float(np.mean(list(spent.values()))) if spent else 0.0
        if progress is not None:
            progress(k, {"bytes": sent})
        return detection, sent

    walk = drive(
        frames,
        one,
        indices,
        progress=bar,
        desc=cfg.method,
        leave=False,
        postfix=lambda r: {"bytes_per_agent": f"{r[1]:.0f}"},
    )
    detections = [d for d, _ in walk]
    em.close()
    if ego is not None:
        ego.expire_held()
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
    peers = [s.agent_id for s in collab]
    for s in collab:
        agents.setdefault(s.agent_id, AgentStage(s.agent_id, models, cfg))
    own = ego.perceive(frame.ego)
    exchanges = {s.agent_id: AgentExchange(agents[s.agent_id], s, t, peers) for s in collab}
    for ex in exchanges.values():
        ex.perceive(frame.ego.world_from_bev)
    # the emulator draws its randomness per send: the sends keep this order (demands to each
    # collaborator, then offers sender by sender to each receiver, then messages)
    demand = ego.demand(own)
    if demand is not None:
        for s in collab:
            ex = exchanges[s.agent_id]
            ex.demand_noted(len(demand))
            d = em.send(ego.ego_id, s.agent_id, demand, t, _distance(frame.ego, s))
            if d.reason is None:
                ex.demand_delivered(d.data, d.delivered_s)
            else:
                ex.demand_lost()
            ex.act_on_demand()
    offering = [s for s in collab if exchanges[s.agent_id].phase is Phase.OFFER]
    offers = {s.agent_id: exchanges[s.agent_id].make_offer() for s in offering}
    for s in offering:
        data = offers[s.agent_id]
        if data is None:
            continue
        for r in collab:
            if r.agent_id == s.agent_id:
                continue
            d = em.send(s.agent_id, r.agent_id, data, exchanges[s.agent_id].acted_s, _distance(s, r))
            if d.reason is None:
                exchanges[r.agent_id].offer_delivered(s.agent_id, d.data, d.delivered_s)
            else:
                exchanges[r.agent_id].offer_lost(s.agent_id)
    for s in offering:
        exchanges[s.agent_id].hear_offers()
    arrivals = []
    offsets = scan_offsets_s(frame)
    for s in collab:
        out = exchanges[s.agent_id].send()
        if out is None:
            continue
        d = em.send(s.agent_id, ego.ego_id, out.data, out.send_s, _distance(s, frame.ego))
        if d.reason is None:
            arrivals.append(Arrival(d.data, s.agent_id, t, d.delivered_s, k, offsets[s.agent_id]))
    return own, arrivals, {agent_id: ex.spent for agent_id, ex in exchanges.items()}
