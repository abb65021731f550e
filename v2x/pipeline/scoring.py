"""The scorer of a run: detection AP, tracking sequences, bytes per link and frame, latencies;
kept alike by the simulated clock and the replay's ego node.

Tracking is scored against ground-truth track ids where the log has them. DAIR-V2X-C's labels
have none (every id is -1): such sequences are scored *detection-only* (see
:func:`score_tracking`), and the results say so (``tracking_scoring``), rather than refusing the
run or inventing identities across frames."""

from __future__ import annotations

from collections.abc import Sequence
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
    scan_offset_ms: list[float] = field(default_factory=list)  # sender's scan - ego's, per fused
    offsets_over_limit: int = 0
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
    with_ids: Sequence[bool] | None = None,
) -> dict:
    """The run's figures; ``with_ids``: per sequence, whether its ground truth has track ids
    (all, when None; see :func:`score_tracking`)."""
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
        "scan_offset_ms": scan_offsets_summary(acc.scan_offset_ms, acc.offsets_over_limit),
        "compute_ms_per_frame": percentiles(acc.frame_ms),
        "links": em.summary(),
    }
    ids = list(with_ids) if with_ids is not None else [True] * len(sequences)
    scored = [(s, known) for s, known in zip(sequences, ids, strict=True) if s.tracks]
    if cfg.tracker != "none" and scored:
        tr = score_tracking([s for s, _ in scored], [known for _, known in scored])
        out["amota"], out["mota"] = tr["amota"], tr["mota"]
        out["tracking"] = tr
        out["tracking_scoring"] = tr["scoring"]
    else:
        out["amota"] = out["mota"] = out["tracking_scoring"] = None
    return out


#: ``tracking_scoring`` of a run whose ground truth has track ids, and of one whose has none
FULL, DETECTION_ONLY = "full", "detection-only"
#: what needs ground-truth identities to mean anything: reported null when they are missing
IDENTITY_METRICS = ("ids", "frag", "mt", "pt", "ml", "gt_trajectories")


def score_tracking(sequences: list[TrackingSequence], with_ids: Sequence[bool] | None = None) -> dict:
    """Tracking scores of the sequences (comparable mode). Sequences whose ``with_ids`` is False
    have ground truth without track ids (DAIR-V2X-C's labels carry none): their boxes are given
    one fresh id each, per box and frame, so the tracker's output is matched frame by frame as
    detections. AMOTA, MOTA, MOTP, recall and precision then count misses and false tracks but
    no identity errors (``scoring: detection-only``), and the metrics that need identities
    (:data:`IDENTITY_METRICS`) are null."""
    known = list(with_ids) if with_ids is not None else [True] * len(sequences)
    lacking = [s for s, k in zip(sequences, known, strict=True) if not k]
    seqs = [s if k else _fresh_ids(s) for s, k in zip(sequences, known, strict=True)]
    tr = evaluate_tracking(seqs, mode="comparable")
    tr.pop("curve", None)
    tr["scoring"] = DETECTION_ONLY if lacking else FULL
    if lacking:
        tr.update(dict.fromkeys(IDENTITY_METRICS))
        tr["sequences_without_ids"] = sorted({s.name for s in lacking})
    return tr


def has_track_ids(gt: Boxes) -> bool:
    """Whether ground-truth boxes carry identities: every id known (>= 0) and none repeated."""
    ids = gt.track_ids
    return bool(np.all(ids >= 0)) and len(np.unique(ids)) == len(ids)


def _fresh_ids(seq: TrackingSequence) -> TrackingSequence:
    """The sequence with each ground-truth box given an id of its own (unique over the sequence)."""
    gt, next_id = {}, 0
    for f in sorted(seq.gt):
        b = seq.gt[f].copy()
        b.track_ids = np.arange(next_id, next_id + len(b), dtype=np.int64)
        next_id += len(b)
        gt[f] = b
    return TrackingSequence(seq.name, seq.n_frames, gt, seq.tracks, seq.track_heights_px)


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
        #: per sequence: whether its tracking ground truth carried track ids in every frame
        self.with_ids: list[bool] = []
        self.seq: TrackingSequence | None = None

    def needs_new_sequence(self, scenario: str, ego_id: str, current_ego: str | None) -> bool:
        """A new scenario or another ego starts fresh tracks (the rule :func:`drive` applies too)."""
        previous = None if current_ego is None or self.seq is None else (self.seq.name, current_ego)
        return starts_sequence(scenario, ego_id, previous)

    def new_sequence(self, scenario: str) -> None:
        self.seq = TrackingSequence(scenario, 0)
        self.sequences.append(self.seq)
        self.with_ids.append(True)

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
        acc.scan_offset_ms.extend(a.scan_offset_s * 1000 for a, _ in fused)
        acc.offsets_over_limit += result.offsets_over_limit
        acc.fused += result.fused
        acc.fused_stale += result.stale
        acc.link_bytes.extend(spent.values())
        self.det_eval.add(result.boxes, gt_eval)
        if result.tracks is not None and gt_track is not None:
            n = seq.n_frames
            if not has_track_ids(gt_track):
                self.with_ids[-1] = False
            seq.gt[n] = in_ego_range(gt_track, world_from_ego_bev, self.xy_range)
            seq.tracks[n] = in_ego_range(result.tracks, world_from_ego_bev, self.xy_range)
        seq.n_frames += 1

    def ap_so_far(self) -> dict:
        return self.det_eval.result()["ap_bev"]

    def summary(self, links, malformed: int, late: int, expired: int) -> dict:
        """``links``: the channel's counts (a :class:`ChannelEmulator`, or anything with its
        ``totals()`` and ``summary()``)."""
        return summarise(
            self.cfg, self.det_eval, self.sequences, links, self.acc, malformed, late, expired, self.with_ids
        )


def scan_offsets_summary(offsets_ms: list[float], over_limit: int) -> dict:
    """The fused messages' scan offsets from the ego's (signed, ms), and how many exceeded
    ``max_scan_offset_s`` (fused uncompensated). All zero on simulated logs."""
    if not offsets_ms:
        return {"min": None, "mean": None, "max": None, "n": 0, "over_limit": over_limit}
    v = np.asarray(offsets_ms)
    return {
        "min": round(float(v.min()), 3),
        "mean": round(float(v.mean()), 3),
        "max": round(float(v.max()), 3),
        "n": int(v.size),
        "over_limit": int(over_limit),
    }


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
