"""The ego node's scoring and files (:class:`EgoResults`): each output frame scored with
:class:`v2x.pipeline.scoring.Scorer`, the scorer ``run_frames`` keeps too, so both paths report the
same figures for the same detections (``tests/e2e/test_replay.py`` holds them to that); its line
in ``detections.jsonl``, ``progress.json``, the real-time stage times, and ``results.json`` at the
end. The channel's counts come from the channel node's own emulator (:class:`ChannelCounts`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from v2x.core.grid import BEVGrid
from v2x.pipeline.config import RunConfig
from v2x.pipeline.replay.ego_frames import EgoFrame, RunCounters
from v2x.pipeline.replay.results import (
    DETECTIONS,
    detection_record,
    sent_cells_to_json,
    write_detection,
    write_results,
)
from v2x.pipeline.scoring import Scorer, percentiles

if TYPE_CHECKING:
    from v2x.pipeline.stages import Arrival, EgoOutput, EgoStage

__all__ = ["ChannelCounts", "EgoResults", "Scorer"]

#: real time: the steps of a frame, timed in wall ms after its capture
STAGES = ("ego_started", "ego_perceived", "agents_sent", "fuse_started", "output")


@dataclass
class ChannelCounts:
    """The channel node's per-link counts, standing in for its :class:`ChannelEmulator`."""

    total: dict[str, int] = field(
        default_factory=lambda: {"sent": 0, "delivered": 0, "dropped_channel": 0, "dropped_budget": 0}
    )
    links: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        return dict(self.total)

    def summary(self) -> dict[str, Any]:
        return dict(self.links)


class EgoResults:
    """What the ego node reports of a run: the scorer's figures, one ``detections.jsonl`` line per
    output frame, ``progress.json``, the real-time stage times, and ``results.json``. Scoring is
    the harness's work, not the product's: the node calls :meth:`score` after a frame's output is
    published, so it is not counted in the output latency."""

    def __init__(
        self,
        cfg: RunConfig,
        grid: BEVGrid,
        out: Path,
        counters: RunCounters,
        *,
        realtime: bool,
        data: str = "",
        progress_every: int = 10,
    ) -> None:
        self.grid = grid
        self.out = out
        self.counters = counters
        self.realtime = realtime
        self.data = data
        self.progress_every = progress_every
        self.scorer = Scorer(cfg, grid.xy_range)
        self.agent_malformed: dict[str, int] = {}  # per agent, as its node last reported
        self.status_spent: dict[tuple[int, str], int] = {}  # (frame, agent): bytes it reported
        self.rt_links: list[tuple[int, str, int]] = []  # real time: (frame, agent, demand bytes)
        self.output_ms: list[float] = []
        # real time: wall ms after capture at which each step of a frame was done
        self.stage_ms: dict[str, list[float]] = {name: [] for name in STAGES}
        self.written = False
        self.out.mkdir(parents=True, exist_ok=True)
        self.det_fh = open(self.out / DETECTIONS, "w")  # noqa: SIM115 - open for the node's life

    # -- as frames go -------------------------------------------------------------------------------
    def agent_status(self, status: dict) -> None:
        """An agent's report: its malformed count, and the bytes it spent on a frame (in real time
        it reports after the ego has fused, so they are gathered as they come)."""
        key = (int(status["k"]), str(status["agent_id"]))
        if "malformed" in status:
            self.agent_malformed[key[1]] = int(status["malformed"])
        if "spent" in status:
            self.status_spent[key] = int(status["spent"])

    def agents_sent(self, captured: float, walls: list[float]) -> None:
        """Real time: when the collaborators said they had sent (wall clock, s)."""
        for wall in walls:
            self.stage_ms["agents_sent"].append((wall - captured) * 1000)

    def links_spent(self, k: int, spent: list[tuple[str, int]]) -> None:
        """Real time: each collaborator's link bytes the ego knows of at fusion (its demand);
        :meth:`link_bytes` takes the agent's own figure instead once it has reported."""
        self.rt_links.extend((k, a, n) for a, n in spent)

    def output_timing(self, frame: EgoFrame, fuse_wall: float, out_wall: float) -> dict[str, float] | None:
        """The frame's output latency; in real time also its steps (ms after capture), which
        are returned to be kept in its ``detections.jsonl`` line."""
        captured = float(frame.info["wall"])
        self.output_ms.append((out_wall - captured) * 1000)
        if not self.realtime:
            return None
        stages = {}
        for name, wall in (
            ("ego_started", frame.wall_start),
            ("ego_perceived", frame.perceived_wall),
            ("fuse_started", fuse_wall),
            ("output", out_wall),
        ):
            if wall is not None:
                stages[name] = round((wall - captured) * 1000, 1)
                self.stage_ms[name].append((wall - captured) * 1000)
        return stages

    def score(
        self,
        frame: EgoFrame,
        result: EgoOutput,
        fused: list[tuple[Arrival, bool]],
        stages: dict[str, float] | None,
        to_output_s: float,
    ) -> None:
        """Score one output frame against its ground truth and write its ``detections.jsonl``
        line. ``to_output_s``: the ego's time on the frame up to its output."""
        t0 = time.time()
        self.scorer.add(
            result,
            fused,
            {} if self.realtime else frame.spent,
            frame.gt,
            frame.gt_track,
            frame.me.world_from_bev,
        )
        # the ego's time on the frame: to its output, then its scoring (not the wait in between)
        self.scorer.acc.frame_ms.append((to_output_s + time.time() - t0) * 1000)
        if stages is not None:
            stages["scored"] = round((time.time() - float(frame.info["wall"])) * 1000, 1)
        info = frame.info
        write_detection(
            self.det_fh,
            detection_record(
                frame.k,
                info["scenario"],
                info["index"],
                result.boxes,
                result.tracks,
                frame.me.world_from_bev,
                log_index=info.get("log_index"),
                timestamp_ns=int(info["timestamp_ns"]),
                ego_id=info["ego_id"],
                agents=[a for a, _ in frame.collab],
                fused=[a.sender for a, _ in fused],
                sent_cells=sent_cells_to_json(result.sent_cells, self.grid),
                **({} if stages is None else {"stage_ms": stages}),
            ),
        )

    def link_bytes(self) -> list[int]:
        """Bytes per (collaborator, frame)."""
        if self.realtime:
            return [self.status_spent.get((k, a), d) for k, a, d in self.rt_links]
        return self.scorer.acc.link_bytes

    def progress(self, k: int, total: int | None, late_dropped: int) -> dict:
        """The run so far, after frame ``k`` (AP every ``progress_every`` frames and at the end)."""
        c = self.counters
        n = c.frames_fused
        out = {
            "k": k,
            "frames": n,
            "total": total,
            "bytes_per_agent_frame": float(np.mean(spent)) if (spent := self.link_bytes()) else 0.0,
            "fused": self.scorer.acc.fused,
            "delivered_to_ego": c.delivered_to_ego,
            "lost_to_ego": c.lost_to_ego,
            "missing_agent_frames": c.missing_agent_frames,
            "late_dropped": late_dropped,
        }
        if self.progress_every and (n % self.progress_every == 0 or n == total):
            out["ap_bev"] = self.scorer.ap_so_far()
        return out

    def write_progress(self, progress: dict) -> None:
        (self.out / "progress.json").write_text(json.dumps(progress))

    # -- the end ------------------------------------------------------------------------------------
    def write(
        self,
        ego: EgoStage | None,
        channel_stats: dict | None,
        partial: bool,
        reason: str,
        total: int | None,
    ) -> dict:
        """``results.json``: the scorer's summary with the channel node's counts (zeros without
        them), the ego's message counts and the run's counters. Call once every output frame is
        scored and the ego's held messages have expired."""
        if self.realtime:
            self.scorer.acc.link_bytes = self.link_bytes()
        channel = ChannelCounts()
        if channel_stats is not None:
            channel = ChannelCounts(dict(channel_stats["totals"]), dict(channel_stats["links"]))
        malformed = (ego.malformed if ego else 0) + sum(self.agent_malformed.values())
        out = self.scorer.summary(
            channel, malformed, ego.late_dropped if ego else 0, ego.expired if ego else 0
        )
        out.update(
            {
                "data": self.data,
                "clock": "realtime" if self.realtime else "sim",
                "partial": partial,
                "reason": reason or None,
                "frames_total": total,
                "output_latency_ms": percentiles(self.output_ms),
                "stage_ms": {k: percentiles(v) for k, v in self.stage_ms.items()} if self.realtime else None,
                "channel_stats": channel_stats is not None,
                **self.counters.as_dict(),
            }
        )
        write_results(self.out, out)
        self.written = True
        return out

    def close(self) -> None:
        self.det_fh.close()
