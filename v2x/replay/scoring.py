"""The ego node's scoring, frame by frame, as ``run_frames`` does it.

:class:`Scorer` keeps the same books as :func:`v2x.pipeline.run_frames` (detection evaluator,
tracking sequences, bytes per link per frame, capture-to-delivery latencies) in the same order,
and ends in the same :func:`v2x.pipeline.summarise`, so both paths report the same figures for
the same detections; the equivalence test in ``tests/e2e/test_replay.py`` holds them to that.
The channel's counts come from the channel node's own emulator (:class:`LinkBook`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from v2x.boxes import Boxes
from v2x.detection_metrics import DetectionEvaluator
from v2x.detections import in_ego_range
from v2x.pipeline import Arrival, EgoOutput, RunConfig, _Accounting, summarise
from v2x.tracking import TrackingSequence

__all__ = ["LinkBook", "Scorer"]


@dataclass
class LinkBook:
    """The channel node's per-link counts, standing in for its :class:`ChannelEmulator`."""

    total: dict[str, int] = field(
        default_factory=lambda: {"sent": 0, "delivered": 0, "dropped_channel": 0, "dropped_budget": 0}
    )
    links: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        return dict(self.total)

    def summary(self) -> dict[str, Any]:
        return dict(self.links)


class Scorer:
    def __init__(self, cfg: RunConfig, xy_range) -> None:
        self.cfg = cfg
        self.xy_range = xy_range
        self.det_eval = DetectionEvaluator(eval_range=xy_range)
        self.acc = _Accounting()
        self.sequences: list[TrackingSequence] = []
        self.seq: TrackingSequence | None = None

    def needs_new_sequence(self, scenario: str, ego_id: str, current_ego: str | None) -> bool:
        """run_frames' rule: a new scenario or another ego starts fresh tracks."""
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

    def summary(self, links: LinkBook, malformed: int, late: int, expired: int) -> dict:
        return summarise(self.cfg, self.det_eval, self.sequences, links, self.acc, malformed, late, expired)
