"""The ego node: :class:`~v2x.pipeline.stages.EgoStage` on real messages. Wiring only: its
settings, subscriptions, publishers and timer, and the frame's steps.

Per frame: perceive its scan, send its demand to each collaborator (through the channel), gather
what the collaborators sent, fuse at ``t + deadline_s``, detect, track, publish the output, score
it and write the frame to ``detections.jsonl``, and tell the player it is done.

What has arrived for each frame, which agents are alive, and when a frame is ready to fuse (or
its deadline passed) is :class:`~v2x.pipeline.replay.ego_frames.FrameCollector`'s to decide (see
there for the simulated clock's and real time's rules); messages for frames already fused go
from it to the late policy (``EgoStage.take_fusable``). Scoring and the run's files are
:class:`~v2x.pipeline.replay.scoring.EgoResults`'.

*Real time*: it fuses at ``t + deadline_s`` on the wall clock (or as soon as everything is in),
or as soon as its own perception is done when that is later (a deadline miss). Scoring an output
frame waits for a moment between frames, so a frame that runs late does not make the next one
later.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from v2x.comm.envelope import Boxes3D, Heartbeat, Json, Packet, PointCloud
from v2x.pipeline.replay.base import WAKE_PERIOD_S, ReplayNode
from v2x.pipeline.replay.ego_frames import EgoFrame, FrameCollector, RunCounters
from v2x.pipeline.replay.protocol import (
    ABSENT_NOTE,
    ALIVE_TOPIC,
    CHANNEL_STATS,
    CHANNEL_STATS_REQUEST,
    DEMAND_NOTE,
    EGO_DETECTIONS,
    EGO_DONE,
    EGO_FINISHED,
    EGO_FRAME,
    EGO_GT,
    EGO_GT_TRACK,
    EGO_LINKS,
    EGO_SCAN,
    EGO_TRACKS,
    NODES,
    OFFER_NOTE,
    READY,
    boxes_from_message,
    boxes_message,
    scan_from_message,
    slot_status,
)
from v2x.pipeline.replay.scoring import EgoResults

__all__ = ["EgoNode"]

#: frames whose scan offsets the ego keeps for messages that arrive after their frame was fused
MAX_HELD_FRAMES = 16


class EgoNode(ReplayNode):
    role = "ego"

    def on_configure(self) -> None:
        self.setup()
        self.slots = self.param("slots", 0)
        self.agent_nodes = list(self.param("agent_nodes", [f"agent{i}" for i in range(self.slots)]))
        self.out = Path(self.param("out", "", required=True))
        self.data = self.param("data", "")
        self.dead_after_s = self.param("dead_after_s", 5.0)
        self.round_s = self.param("round_s", 10.0)
        self.progress_every = self.param("progress_every", 10)
        depth = 2 if self.realtime else 64
        for topic, kind, cb in (
            (EGO_SCAN, PointCloud, self.on_scan),
            (EGO_GT, Boxes3D, self.on_gt),
            (EGO_GT_TRACK, Boxes3D, self.on_gt_track),
            (EGO_FRAME, Json, self.on_frame),
        ):
            self.create_subscription(kind, topic, cb, depth=depth)
        for i in range(self.slots):
            self.create_subscription(Json, slot_status(i), functools.partial(self.on_status, i), depth=256)
        if self.cfg.spec.uses_offers:  # an agent's offer note: it has done its part of the round
            self.create_subscription(Json, OFFER_NOTE, self.on_offer_note, depth=256)
        self.create_subscription(Packet, "/rx/*/agents/", self.on_packet, depth=256)
        self.create_subscription(Json, NODES, self.on_nodes, depth=64)
        self.create_subscription(Json, READY, self.on_ready, depth=64)
        self.create_subscription(Heartbeat, ALIVE_TOPIC, self.on_heartbeat, depth=64)
        self.create_subscription(Json, CHANNEL_STATS, self.on_channel_stats)
        self.demand_note = self.create_publisher(Json, DEMAND_NOTE)
        self.absent_note = self.create_publisher(Json, ABSENT_NOTE)
        self.done_pub = self.create_publisher(Json, EGO_DONE)
        self.det_pub = self.create_publisher(Boxes3D, EGO_DETECTIONS)
        self.track_pub = self.create_publisher(Boxes3D, EGO_TRACKS)
        self.links_pub = self.create_publisher(Json, EGO_LINKS)
        self.stats_request = self.create_publisher(Json, CHANNEL_STATS_REQUEST)
        self.finished_pub = self.create_publisher(Json, EGO_FINISHED)
        self._demand_pubs: dict[str, object] = {}
        self.models = self.load_models()
        self.ego = None
        #: the last frames' scan offsets per collaborator (player's frame info), for late messages
        self._scan_offsets: dict[int, dict] = {}
        #: the run's counters, kept by the collector and the node, reported in results.json
        self.run_counts = RunCounters()
        self.collector = FrameCollector(
            self.agent_nodes,
            realtime=self.realtime,
            deadline_s=self.cfg.deadline_s,
            dead_after_s=self.dead_after_s,
            wait_s=self.wait_s,
            late=self._late,
            round_s=self.round_s,
            absent=self._absent,
            uses_offers=self.cfg.spec.uses_offers,
            counters=self.run_counts,
            log=self.log,
        )
        self.results = EgoResults(
            self.cfg,
            self.models.codec.grid,
            self.out,
            self.run_counts,
            realtime=self.realtime,
            data=self.data,
            progress_every=self.progress_every,
        )
        self.work: EgoFrame | None = None
        self.end_reason: str | None = None
        #: the channel's counts, asked for after every frame so a run cut short keeps them
        self.channel_stats: dict | None = None
        self.final_stats = False  # the answer to the request made at the end has come
        self._stats_asked = -math.inf
        # as in the agent node: messages call advance(), a wait for the deadline sets the timer
        self._advance_timer = self.create_timer(WAKE_PERIOD_S, self.advance, clock="wall")
        #: real time: output frames whose scoring and records wait for a moment between frames
        self.scoring_due: deque[Callable[[], None]] = deque()

    # -- messages -----------------------------------------------------------------------------------
    def on_scan(self, _t: str, msg: PointCloud) -> None:
        self.collector.add_scan(int(msg.frame), scan_from_message(msg))
        self.advance()

    def on_gt(self, _t: str, msg: Boxes3D) -> None:
        self.collector.add_gt(int(msg.frame), boxes_from_message(msg, with_scores=False))
        self.advance()

    def on_gt_track(self, _t: str, msg: Boxes3D) -> None:
        self.collector.add_gt_track(int(msg.frame), boxes_from_message(msg, with_scores=False))
        self.advance()

    def on_frame(self, _t: str, msg: Json) -> None:
        self.started = True
        self.collector.add_info(dict(msg.data))
        self.advance()

    def on_status(self, slot: int, _t: str, msg: Json) -> None:
        d = dict(msg.data)
        self.collector.add_status(d, self.collector.node_of(slot))
        self.results.agent_status(d)
        self.advance()

    def on_offer_note(self, _t: str, msg: Json) -> None:
        self.collector.add_offer_note(int(msg.data["k"]), str(msg.data["sender"]))
        self.advance()

    def _absent(self, k: int, agents: list[str]) -> None:
        """The collector's hook: tell the collaborators not to wait for these peers in frame ``k``."""
        self.absent_note.publish(Json({"k": k, "agents": agents}))

    def on_packet(self, topic: str, pkt: Packet) -> None:
        if topic.endswith("/offer"):  # the agents' offers to each other pass here too
            return
        received = (self.current.received_ns if self.current else time.time_ns()) / 1e9
        if self.collector.add_packet(pkt, received):
            self.advance()

    def diagnostics(self) -> dict:
        """The node's diagnostics plus the messages the ego refused, by reason and sender."""
        d = super().diagnostics()
        if self.ego is not None:
            d["counters"] = dict(d["counters"]) | dict(self.ego.refused)
        return d

    def _late(self, pkt: Packet, received: float) -> None:
        """Real time: the collector's hook for a message to this ego for a frame fused already, or
        skipped: the late policy (held for the next frame and motion-compensated, or dropped and
        counted)."""
        from v2x.pipeline.stages import Arrival

        captured = pkt.stamp_ns / 1e9  # in real time a frame's stamp is its capture on the wall clock
        offset = float(self._scan_offsets.get(int(pkt.frame), {}).get(pkt.sender, 0.0))
        self.ego.take_fusable(
            [Arrival(pkt.data, pkt.sender, captured, received, int(pkt.frame), offset)], received, -math.inf
        )

    def on_nodes(self, _t: str, msg: Json) -> None:
        self.collector.mark_dead(msg.data.get("dead", []))
        self.collector.mark_stopped(msg.data.get("stopped", []))
        self.advance()

    def on_ready(self, _t: str, msg: Json) -> None:
        self.collector.mark_ready(str(msg.data.get("node")))

    def on_heartbeat(self, _t: str, msg: Heartbeat) -> None:
        self.collector.heard_from(msg.node)

    def on_channel_stats(self, _t: str, msg: Json) -> None:
        self.channel_stats = dict(msg.data)
        if self.channel_stats.get("final"):
            self.final_stats = True
        self.advance()

    # -- the frame's steps --------------------------------------------------------------------------
    def advance(self) -> None:
        if self.results.written:
            return
        while True:
            if self.work is None and not self._next_work():
                break
            if not self._step(self.work):
                break
        if self.work is None:  # no frame to work on: score frames already output
            self._score_one_due()
        if self.ended and self.work is None:
            self._close()

    def _next_work(self) -> bool:
        self.work = self.collector.next_frame()
        return self.work is not None

    def _step(self, w: EgoFrame) -> bool:
        if w.phase == "perceive":
            self._perceive(w)
            return True
        if w.phase == "collect":
            if not self.collector.collected(w):
                if self.realtime:  # come back at the deadline
                    self._advance_timer.fire_by(w.t + self.cfg.deadline_s)
                return False
            w.phase = "fuse"
            return True
        self._fuse(w)
        self.work = None
        return True

    def _perceive(self, w: EgoFrame) -> None:
        from v2x.pipeline.stages import EgoStage

        info = w.info
        ego_id = info["ego_id"]
        self._scan_offsets[w.k] = dict(info.get("scan_offsets_s", {}))
        for k in [k for k in self._scan_offsets if k < w.k - MAX_HELD_FRAMES]:
            del self._scan_offsets[k]
        scorer = self.results.scorer
        if scorer.needs_new_sequence(info["scenario"], ego_id, self.ego.ego_id if self.ego else None):
            self.ego = EgoStage(ego_id, self.models, self.cfg, self.ego)
            self.collector.ego_id = self.ego.ego_id
            scorer.new_sequence(info["scenario"])
        w.me = self.ego.perceive(w.scan)
        demand = self.ego.demand(w.me)
        if demand is not None:
            self.demand_note.publish(Json({"k": w.k, "bytes": len(demand)}))
            pub = self._demand_pubs.get(ego_id)
            if pub is None:
                pub = self._demand_pubs[ego_id] = self.create_publisher(Packet, f"/ego/{ego_id}/demand")
            sent_ns = time.time_ns() if self.realtime else round(w.t * 1e9)
            for a, _ in w.collab:
                w.spent[a] += len(demand)
                pub.publish(
                    Packet.of(
                        demand,
                        sender=ego_id,
                        receiver=a,
                        kind="demand",
                        frame=w.k,
                        stamp_ns=int(info["t_ns"]),
                        sent_ns=sent_ns,
                        sender_position=w.scan.position.tolist(),
                    )
                )
        self.collector.expect(w)
        w.phase = "collect"
        w.perceived_wall = time.time()

    def _fuse(self, w: EgoFrame) -> None:
        w.phase = "done"
        captured = float(w.info["wall"])
        fuse_wall = time.time()
        got = self.collector.take_messages(w)
        self.results.agents_sent(captured, got.sent_walls)
        now = time.time()
        fuse_s = w.t + self.cfg.deadline_s
        if self.realtime:
            fuse_s = max(fuse_s, now)
            if now > w.t + self.cfg.deadline_s:
                self.run_counts.deadline_misses += 1
            self.results.links_spent(w.k, [(a, w.spent[a]) for a, _ in w.collab])
        fusable = self.ego.take_fusable(got.arrivals, w.t, fuse_s)
        result = self.ego.fuse(w.me, w.scan, w.t, fusable)
        self._publish_output(w, result)
        out_wall = time.time()
        self.collector.fused(w)
        self._ask_channel_stats(w.k)
        stages = self.results.output_timing(w, fuse_wall, out_wall)  # ms after capture (real time)
        # the output is out. Scoring it against the ground truth and writing its records is the
        # harness's work, not the product's: not in the output latency, and in real time done
        # between frames (advance), so a frame that runs late does not make the next one later
        score = functools.partial(
            self._score_frame, w, result, fusable, got.links, stages, out_wall - w.wall_start
        )
        if self.realtime:
            self.scoring_due.append(score)
        else:
            score()

    def _score_frame(
        self, w: EgoFrame, result, fusable, links: dict, stages: dict | None, to_output_s: float
    ) -> None:
        """Score one output frame, write its records and tell the player it is done (see _fuse)."""
        self.results.score(w, result, fusable, stages, to_output_s)
        info = w.info
        self.links_pub.publish(
            Json({"k": w.k, "stamp_ns": int(info["timestamp_ns"]), "ego_id": info["ego_id"], "links": links})
        )
        progress = self.results.progress(w.k, self.collector.total, self.ego.late_dropped if self.ego else 0)
        self.done_pub.publish(Json(progress))
        self.results.write_progress(progress)

    def _ask_channel_stats(self, k: int) -> None:
        """The channel's counts so far, after each frame (in real time at most once a second):
        if the run is cut short, results.json keeps the counts it had."""
        now = time.monotonic()
        if not self.realtime or now - self._stats_asked >= 1.0:
            self._stats_asked = now
            self.stats_request.publish(Json({"k": k}))

    def _score_one_due(self) -> None:
        """Between frames in real time: score the oldest output frame; if more are due, come
        back at once (messages that arrived meanwhile are handled first)."""
        if self.scoring_due:
            self.scoring_due.popleft()()
        if self.scoring_due:
            self._advance_timer.fire_by(time.time())

    def _publish_output(self, w: EgoFrame, result) -> None:
        """The frame's detections and tracks, in the world frame: the ego's output."""
        stamp = int(w.info["timestamp_ns"])
        self.det_pub.publish(boxes_message(result.boxes.transformed(w.me.world_from_bev), w.k, stamp))
        if result.tracks is not None:
            self.track_pub.publish(boxes_message(result.tracks, w.k, stamp))

    # -- the end ------------------------------------------------------------------------------------
    def on_end(self, data: dict) -> None:
        self.end_reason = data.get("reason") or None
        self.run_counts.player_late_frames = int(data.get("late_frames", 0))
        self.collector.played(int(data.get("frames", 0)))
        self.stats_request.publish(Json({"k": self.collector.last_fused, "final": True}))
        self.end_asked = time.monotonic()
        self.advance()

    def _close(self) -> None:
        if not self.final_stats and time.monotonic() - self.end_asked < 5.0:
            return  # a moment for the channel's final counts
        total = self.collector.total
        partial = bool(self.end_reason) or (total is not None and self.run_counts.frames_fused < total)
        reason = self.end_reason or ("" if not partial else "fewer frames than the log has")
        if self.realtime and not self.end_reason:
            partial, reason = False, ""  # skipped frames are the point of real time, not a failure
        try:
            self.write_results(partial, reason)
        except Exception as exc:  # the run ends all the same (the timer would call this again)
            self.log.exception("could not write the results")
            partial, reason = True, f"could not write the results: {exc}"
        self.finished_pub.publish(Json({"partial": partial, "reason": reason, "out": str(self.out)}))
        self.request_stop()

    def write_results(self, partial: bool, reason: str) -> None:
        if self.results.written:
            return
        while self.scoring_due:  # every output frame is scored, however the run ends
            self.scoring_due.popleft()()
        if self.realtime:  # messages for frames after the last one fused
            self.collector.flush_late()
        if self.ego is not None:
            self.ego.expire_held()
        self.results.write(self.ego, self.channel_stats, partial, reason, self.collector.total)
        self.log.info("results written to %s (partial: %s)", self.out, partial)

    def on_shutdown(self) -> None:
        if not self.results.written:
            try:
                self.write_results(True, self.end_reason or "stopped before the end")
            except Exception:
                self.log.exception("could not write partial results")
        self.results.close()
