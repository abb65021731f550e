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

import time
from collections.abc import Callable, Iterable

import numpy as np

from v2x.comm.emulator import ChannelEmulator
from v2x.core.frame import AgentScan, Frame
from v2x.perception.cooperative import AgentPerception, evaluation_ground_truth
from v2x.pipeline.config import RunConfig
from v2x.pipeline.detections import tracking_ground_truth
from v2x.pipeline.scoring import Scorer
from v2x.pipeline.stages import AgentStage, Arrival, EgoStage, Models


# -- the in-process run -----------------------------------------------------------------------------
def _distance(a: AgentScan, b: AgentScan) -> float:
    return float(np.linalg.norm(a.world_from_lidar[:2, 3] - b.world_from_lidar[:2, 3]))


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
