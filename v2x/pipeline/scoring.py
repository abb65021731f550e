"""The scorer of a run: detection AP, tracking sequences, bytes per link and frame, latencies;
kept alike by the simulated clock and the replay's ego node."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from v2x.comm.emulator import ChannelEmulator
from v2x.core.boxes import Boxes
from v2x.metrics.detection import DetectionEvaluator
from v2x.pipeline.config import RunConfig
from v2x.pipeline.detections import in_ego_range
from v2x.pipeline.frames import starts_sequence
from v2x.pipeline.stages import Arrival, EgoOutput
from v2x.tracking import TrackingSequence, evaluate_tracking


@dataclass
class _Accounting:
    link_bytes: list[int] = field(default_factory=list)  # per (collaborator, frame)
    latency_ms: list[float] = field(default_factory=list)  # capture -> delivery at the ego
    frame_ms: list[float] = field(default_factory=list)  # compute per frame (wall clock)
    fused: int = 0
    fused_stale: int = 0


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
        "latency_ms": percentiles(acc.latency_ms),
        "compute_ms_per_frame": percentiles(acc.frame_ms),
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
    """Scores one run frame by frame: detection AP, tracking sequences, bytes per link per
    frame, capture-to-delivery latencies. The in-process run and the replay's ego node both score
    with it, so both report the same figures for the same detections."""

    def __init__(self, cfg: RunConfig, xy_range) -> None:
        self.cfg = cfg
        self.xy_range = xy_range
        self.det_eval = DetectionEvaluator(eval_range=xy_range)
        self.acc = _Accounting()
        self.sequences: list[TrackingSequence] = []
        self.seq: TrackingSequence | None = None

    def needs_new_sequence(self, scenario: str, ego_id: str, current_ego: str | None) -> bool:
        """A new scenario or another ego starts fresh tracks (the rule :func:`drive` applies too)."""
        previous = None if current_ego is None or self.seq is None else (self.seq.name, current_ego)
        return starts_sequence(scenario, ego_id, previous)

    def new_sequence(self, scenario: str) -> None:
        self.seq = TrackingSequence(scenario, 0)
        self.sequences.append(self.seq)

    def add(
        self,
        result: EgoOutput,
        fused: list[tuple[Arrival, bool]],
        spent: dict[str, int],
        gt_eval: Boxes,
        gt_track: Boxes | None,
        world_from_ego_bev: np.ndarray,
    ) -> None:
        acc, seq = self.acc, self.seq
        acc.latency_ms.extend((a.delivered_s - a.captured_s) * 1000 for a, _ in fused)
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


def percentiles(values: list[float]) -> dict:
    """p50, p95 and mean (rounded to 3 decimals) and the count, as results report them."""
    if not values:
        return {"p50": None, "p95": None, "mean": None, "n": 0}
    v = np.asarray(values)
    return {
        "p50": round(float(np.percentile(v, 50)), 3),
        "p95": round(float(np.percentile(v, 95)), 3),
        "mean": round(float(v.mean()), 3),
        "n": int(v.size),
    }
