"""The ego node: :class:`~v2x.pipeline.stages.EgoStage` on real messages, and the run's scoring.

Per frame: perceive its scan, send its demand to each collaborator (through the channel), gather
what the collaborators sent, fuse at ``t + deadline_s``, detect, track, score (see
:mod:`v2x.pipeline.replay.scoring`), write the frame to ``detections.jsonl`` and tell the player it is done.

*Simulated clock*: it waits until every live collaborator has said what it sent and each of
those messages has arrived or been announced lost, then applies the deadline to the delivery
times the channel stamped, so the outcome does not depend on process speed. A collaborator
whose node died (the supervisor says so on ``/replay/nodes``), whose heartbeat stopped for
``dead_after_s``, or that kept it waiting ``wait_s``, is given up on for the frame and counted:
the run degrades to fewer agents, it never hangs. A restarted node is counted back in from the
first frame after it says it is ready.

*Real time*: it fuses at ``t + deadline_s`` on the wall clock (or as soon as everything is in),
or as soon as its own perception is done when that is later (a deadline miss). Messages that
come later go to the late policy (dropped, or held and motion-compensated into the next frame).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from v2x.comm.envelope import Boxes3D, Heartbeat, Json, Packet, PointCloud
from v2x.pipeline.replay.base import WAKE_PERIOD_S, ReplayNode
from v2x.pipeline.replay.protocol import (
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
    READY,
    boxes_from_message,
    boxes_message,
    scan_from_message,
    slot_status,
)
from v2x.pipeline.replay.results import (
    DETECTIONS,
    detection_record,
    sent_cells_to_json,
    write_detection,
    write_results,
)

__all__ = ["EgoNode"]


@dataclass
class _Work:
    k: int
    t: float
    info: dict
    scan: object
    gt: object
    gt_track: object
    phase: str = "perceive"
    me: object = None
    collab: list[tuple[str, int]] = field(default_factory=list)
    expected: set[str] = field(default_factory=set)
    given_up: set[str] = field(default_factory=set)
    spent: dict[str, int] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)
    wall_start: float = field(default_factory=time.time)
    perceived_wall: float | None = None


def _percentiles(values: list[float]) -> dict:
    from v2x.pipeline.scoring import _percentiles as p

    return p(values)


class EgoNode(ReplayNode):
    role = "ego"

    def on_configure(self) -> None:
        self.setup()
        self.slots = self.param("slots", 0)
        self.agent_nodes = list(self.param("agent_nodes", [f"agent{i}" for i in range(self.slots)]))
        self.out = Path(self.param("out", "", required=True))
        self.data = self.param("data", "")
        self.dead_after_s = self.param("dead_after_s", 30.0)
        self.progress_every = self.param("progress_every", 10)
        depth = 2 if self.realtime else 64
        for topic, kind, cb in (
            (EGO_SCAN, PointCloud, self.on_scan),
            (EGO_GT, Boxes3D, self.on_gt),
            (EGO_GT_TRACK, Boxes3D, self.on_gt_track),
            (EGO_FRAME, Json, self.on_frame),
        ):
            self.create_subscription(topic, kind, cb, depth=depth)
        for i in range(self.slots):
            self.create_subscription(slot_status(i), Json, self.on_status, depth=256)
        self.create_subscription("/rx/*/agents/", Packet, self.on_packet, depth=256)
        self.create_subscription(NODES, Json, self.on_nodes, depth=64)
        self.create_subscription(READY, Json, self.on_ready, depth=64)
        self.create_subscription(ALIVE_TOPIC, Heartbeat, self.on_heartbeat, depth=64)
        self.create_subscription(CHANNEL_STATS, Json, self.on_channel_stats)
        self.demand_note = self.create_publisher(DEMAND_NOTE, Json)
        self.done_pub = self.create_publisher(EGO_DONE, Json)
        self.det_pub = self.create_publisher(EGO_DETECTIONS, Boxes3D)
        self.track_pub = self.create_publisher(EGO_TRACKS, Boxes3D)
        self.links_pub = self.create_publisher(EGO_LINKS, Json)
        self.stats_request = self.create_publisher(CHANNEL_STATS_REQUEST, Json)
        self.finished_pub = self.create_publisher(EGO_FINISHED, Json)
        self._demand_pubs: dict[str, object] = {}
        self.models = self.load_models()
        from v2x.pipeline.replay.scoring import Scorer

        self.scorer = Scorer(self.cfg, self.models.codec.grid.xy_range)
        self.ego = None
        self.scans: dict[int, object] = {}
        self.gts: dict[int, object] = {}
        self.gt_tracks: dict[int, object] = {}
        self.infos: dict[int, dict] = {}
        self.statuses: dict[tuple[int, str], dict] = {}
        self.packets: dict[tuple[int, str, str], tuple[Packet, float]] = {}
        self.alive = {name: True for name in self.agent_nodes}
        self.seen: dict[str, float] = {}
        self.agent_malformed: dict[str, int] = {}
        self.status_spent: dict[tuple[int, str], int] = {}
        self.rt_links: list[tuple[int, str, int]] = []  # real time: (frame, agent, demand bytes)
        self.counts = {
            "frames_fused": 0,
            "missing_agent_frames": 0,
            "agent_timeouts": 0,
            "agents_skipped_joining": 0,
            "deadline_misses": 0,
            "frames_skipped": 0,
            "player_late_frames": 0,
            "after_give_up": 0,
            "delivered_to_ego": 0,
            "lost_to_ego": 0,
        }
        self.output_ms: list[float] = []
        # real time: wall ms after capture at which each step of a frame was done
        self.stage_ms: dict[str, list[float]] = {
            "ego_started": [],
            "ego_perceived": [],
            "agents_sent": [],
            "fuse_started": [],
            "output": [],
        }
        self.last_fused = -1
        self.last_started = -1
        self.total = None
        self.work: _Work | None = None
        self.results_written = False
        self.end_reason: str | None = None
        self.channel_stats: dict | None = None
        self.out.mkdir(parents=True, exist_ok=True)
        self.det_fh = open(self.out / DETECTIONS, "w")  # noqa: SIM115 - open for the node's life
        # as in the agent node: messages call advance(), a wait for the deadline sets the timer
        self._advance_timer = self.create_timer(WAKE_PERIOD_S, self.advance, clock="wall")
        #: real time: output frames whose scoring and records wait for a moment between frames
        self.books_due: deque = deque()

    # -- messages -----------------------------------------------------------------------------------
    def on_scan(self, _t: str, msg: PointCloud) -> None:
        self.scans[int(msg.frame)] = scan_from_message(msg)
        self.advance()

    def on_gt(self, _t: str, msg: Boxes3D) -> None:
        self.gts[int(msg.frame)] = boxes_from_message(msg, with_scores=False)
        self.advance()

    def on_gt_track(self, _t: str, msg: Boxes3D) -> None:
        self.gt_tracks[int(msg.frame)] = boxes_from_message(msg, with_scores=False)
        self.advance()

    def on_frame(self, _t: str, msg: Json) -> None:
        self.started = True
        self.infos[int(msg.data["k"])] = dict(msg.data)
        self.total = msg.data.get("total", self.total)
        self.advance()

    def on_status(self, _t: str, msg: Json) -> None:
        d = dict(msg.data)
        key = (int(d["k"]), str(d["agent_id"]))
        self.statuses[key] = d
        if "malformed" in d:
            self.agent_malformed[key[1]] = int(d["malformed"])
        if "spent" in d:
            self.status_spent[key] = int(d["spent"])
        self.advance()

    def on_packet(self, topic: str, pkt: Packet) -> None:
        if topic.endswith("/offer"):  # the agents' offers to each other pass here too
            return
        k, sender = int(pkt.frame), pkt.sender
        received = (self.current.received_ns if self.current else time.time_ns()) / 1e9
        if pkt.kind.startswith("lost:"):
            self.counts["lost_to_ego"] += 1
        else:
            self.counts["delivered_to_ego"] += 1
        if k > self.last_fused:
            # kept by receiver too: it may come before this node has started the frame (or a
            # new scene's ego), and it is looked up with the frame's ego id
            self.packets[(k, sender, pkt.receiver)] = (pkt, received)
            self.advance()
            return
        # its frame is fused already
        if self.ego is None or pkt.receiver != self.ego.ego_id:
            return
        if not self.realtime:
            self.counts["after_give_up"] += 1
        else:
            self._late(pkt, received)

    def _late(self, pkt: Packet, received: float) -> None:
        """Real time: a collaborator's message for a frame fused already, or skipped, goes to the
        late policy (held for the next frame and motion-compensated, or dropped and counted)."""
        from v2x.pipeline.stages import Arrival

        if self.ego is None or pkt.receiver != self.ego.ego_id or pkt.kind.startswith("lost:"):
            return
        captured = pkt.stamp_ns / 1e9  # in real time a frame's stamp is its capture on the wall clock
        self.ego.usable(
            [Arrival(pkt.data, pkt.sender, captured, received, int(pkt.frame))], received, -math.inf
        )

    def _packets_to_late_policy(self, below: float = math.inf) -> None:
        """Real time: the waiting messages of frames before ``below`` (skipped ones) go to the
        late policy in frame order, so the newest per sender is the one held."""
        for key in sorted((x for x in self.packets if x[0] < below), key=lambda x: x[0]):
            self._late(*self.packets.pop(key))

    def on_nodes(self, _t: str, msg: Json) -> None:
        for name in msg.data.get("dead", []):
            if name in self.alive:
                self.alive[name] = False
                self.log.warning("agent node %s died: not waiting for it", name)
        self.advance()

    def on_ready(self, _t: str, msg: Json) -> None:
        name = str(msg.data.get("node"))
        if name in self.alive and not self.alive[name]:
            self.log.info("agent node %s is back", name)
            self.alive[name] = True
        self.seen[name] = time.monotonic()

    def on_heartbeat(self, _t: str, msg: Heartbeat) -> None:
        self.seen[msg.node] = time.monotonic()

    def on_channel_stats(self, _t: str, msg: Json) -> None:
        self.channel_stats = dict(msg.data)
        self.advance()

    # -- the frame's steps --------------------------------------------------------------------------
    def advance(self) -> None:
        if self.results_written:
            return
        while True:
            if self.work is None and not self._next_work():
                break
            if not self._step(self.work):
                break
        if self.work is None:  # no frame to work on: books of frames already output
            self._book_one_due()
        if self.ended and self.work is None:
            self._close()

    def _next_work(self) -> bool:
        ready = sorted(
            k
            for k, info in self.infos.items()
            if k in self.scans and k in self.gts and (k in self.gt_tracks or not info.get("has_track_gt"))
        )
        if not ready:
            return False
        k = ready[-1] if self.realtime else ready[0]
        self.counts["frames_skipped"] += max(0, k - self.last_started - 1)  # real time only
        self.last_started = k
        for store in (self.infos, self.scans, self.gts, self.gt_tracks):
            for old in [x for x in store if x < k]:
                del store[old]
        for old in [x for x in self.statuses if x[0] < k]:  # frames skipped in real time
            del self.statuses[old]
        self._packets_to_late_policy(below=k)
        info = self.infos.pop(k)
        self.work = _Work(
            k, float(info["t"]), info, self.scans.pop(k), self.gts.pop(k), self.gt_tracks.pop(k, None)
        )
        return True

    def _step(self, w: _Work) -> bool:
        if w.phase == "perceive":
            self._perceive(w)
            return True
        if w.phase == "collect":
            if not self._collected(w):
                return False
            w.phase = "fuse"
            return True
        self._fuse(w)
        self.work = None
        return True

    def _perceive(self, w: _Work) -> None:
        from v2x.pipeline.stages import EgoStage

        info = w.info
        ego_id = info["ego_id"]
        if self.scorer.needs_new_sequence(info["scenario"], ego_id, self.ego.ego_id if self.ego else None):
            self.ego = EgoStage(ego_id, self.models, self.cfg, self.ego)
            self.scorer.new_sequence(info["scenario"])
        w.collab = [(str(a), int(s)) for a, s in info["collaborators"]]
        w.me = self.ego.perceive(w.scan)
        demand = self.ego.demand(w.me)
        w.spent = {a: 0 for a, _ in w.collab}
        if demand is not None:
            self.demand_note.publish(Json({"k": w.k, "bytes": len(demand)}))
            pub = self._demand_pubs.get(ego_id)
            if pub is None:
                pub = self._demand_pubs[ego_id] = self.create_publisher(f"/ego/{ego_id}/demand", Packet)
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
        for a, slot in w.collab:
            if self.alive.get(self._node_of(slot), True):
                w.expected.add(a)
            else:
                self.counts["missing_agent_frames"] += 1
        w.phase, w.since = "collect", time.monotonic()
        w.perceived_wall = time.time()

    def _node_of(self, slot: int) -> str:
        return self.agent_nodes[slot] if slot < len(self.agent_nodes) else f"agent{slot}"

    def _resolved(self, w: _Work, agent_id: str) -> bool:
        st = self.statuses.get((w.k, agent_id))
        if st is None:
            return False
        return not st.get("sent") or (w.k, agent_id, w.info["ego_id"]) in self.packets

    def _collected(self, w: _Work) -> bool:
        pending = [a for a in w.expected if a not in w.given_up and not self._resolved(w, a)]
        if not pending:
            return True
        if self.realtime:
            if time.time() >= w.t + self.cfg.deadline_s:
                return True
            self._advance_timer.fire_by(w.t + self.cfg.deadline_s)
            return False
        slot_of = dict(w.collab)
        now = time.monotonic()
        for a in pending:
            node = self._node_of(slot_of[a])
            quiet = now - max(self.seen.get(node, w.since), w.since)
            if not self.alive.get(node, True) or quiet > self.dead_after_s or now - w.since > self.wait_s:
                why = "its node died" if not self.alive.get(node, True) else "no word from it"
                self.log.warning("frame %d: going on without agent %s (%s)", w.k, a, why)
                w.given_up.add(a)
                self.counts["agent_timeouts"] += 1
                self.counts["missing_agent_frames"] += 1
        return all(a in w.given_up or self._resolved(w, a) for a in w.expected)

    def _fuse(self, w: _Work) -> None:
        from v2x.pipeline.stages import Arrival

        w.phase = "done"
        arrivals = []
        links = {}
        captured = float(w.info["wall"])
        fuse_wall = time.time()
        for a, _slot in w.collab:
            st = self.statuses.pop((w.k, a), None)
            if self.realtime and st is not None and st.get("done_wall") is not None:
                self.stage_ms["agents_sent"].append((float(st["done_wall"]) - captured) * 1000)
            got = self.packets.pop((w.k, a, w.info["ego_id"]), None)
            if st is not None and st.get("skipped"):
                self.counts["agents_skipped_joining"] += 1
            if st is not None and "spent" in st and not self.realtime:
                w.spent[a] = int(st["spent"])
            link = {"bytes": int(w.spent[a]), "sent": bool(st and st.get("sent")), "delivered": False}
            if got is not None:
                pkt, received = got
                link["size"] = int(pkt.payload.size)
                if pkt.kind.startswith("lost:"):
                    link["lost"] = pkt.kind[5:]
                else:
                    delivered = received if self.realtime else pkt.delivered_ns / 1e9
                    arrivals.append(Arrival(pkt.data, a, w.t, delivered, w.k))
                    link["delivered"] = True
                    link["latency_ms"] = round((delivered - w.t) * 1000, 3)
            if a in w.given_up:
                link["given_up"] = True
            links[a] = link
        now = time.time()
        fuse_s = w.t + self.cfg.deadline_s
        if self.realtime:
            fuse_s = max(fuse_s, now)
            if now > w.t + self.cfg.deadline_s:
                self.counts["deadline_misses"] += 1
            self.rt_links.extend((w.k, a, w.spent[a]) for a, _ in w.collab)
        usable = self.ego.usable(arrivals, w.t, fuse_s)
        result = self.ego.fuse(w.me, w.scan, w.t, usable)
        self._publish_output(w, result)
        out_wall = time.time()
        self.last_fused = w.k
        self.counts["frames_fused"] += 1
        self.output_ms.append((out_wall - captured) * 1000)
        stages = None  # ms after capture, kept per frame in detections.jsonl (real time)
        if self.realtime:
            stages = {}
            for name, wall in (
                ("ego_started", w.wall_start),
                ("ego_perceived", w.perceived_wall),
                ("fuse_started", fuse_wall),
                ("output", out_wall),
            ):
                if wall is not None:
                    stages[name] = round((wall - captured) * 1000, 1)
                    self.stage_ms[name].append((wall - captured) * 1000)
        # the output is out. Scoring it against the ground truth and writing its records is the
        # harness's work, not the product's: not in the output latency, and in real time done
        # between frames (advance), so a frame that runs late does not make the next one later
        books = functools.partial(self._book, w, result, usable, links, stages, out_wall - w.wall_start)
        if self.realtime:
            self.books_due.append(books)
        else:
            books()

    def _book(self, w: _Work, result, usable, links: dict, stages: dict | None, to_output_s: float) -> None:
        """Score one output frame and write its records (see _fuse)."""
        t0 = time.time()
        self.scorer.add(
            result, usable, {} if self.realtime else w.spent, w.gt, w.gt_track, w.me.world_from_bev
        )
        # the ego's time on the frame: to its output, then its books (not the wait in between)
        self.scorer.acc.frame_ms.append((to_output_s + time.time() - t0) * 1000)
        if stages is not None:
            stages["scored"] = round((time.time() - float(w.info["wall"])) * 1000, 1)
        self._emit(w, result, links, [a.sender for a, _ in usable], stages)

    def _book_one_due(self) -> None:
        """Between frames in real time: the oldest output frame's books; if more are due, come
        back at once (messages that arrived meanwhile are handled first)."""
        if self.books_due:
            self.books_due.popleft()()
        if self.books_due:
            self._advance_timer.fire_by(time.time())

    def _publish_output(self, w: _Work, result) -> None:
        """The frame's detections and tracks, in the world frame: the ego's output."""
        stamp = int(w.info["timestamp_ns"])
        self.det_pub.publish(boxes_message(result.boxes.transformed(w.me.world_from_bev), w.k, stamp))
        if result.tracks is not None:
            self.track_pub.publish(boxes_message(result.tracks, w.k, stamp))

    def _emit(self, w: _Work, result, links: dict, fused: list[str], stages: dict | None = None) -> None:
        info = w.info
        stamp = int(info["timestamp_ns"])
        write_detection(
            self.det_fh,
            detection_record(
                w.k,
                info["scenario"],
                info["index"],
                result.boxes,
                result.tracks,
                w.me.world_from_bev,
                log_index=info.get("log_index"),
                timestamp_ns=stamp,
                ego_id=info["ego_id"],
                agents=[a for a, _ in w.collab],
                fused=fused,
                sent_cells=sent_cells_to_json(result.sent_cells, self.models.codec.grid),
                **({} if stages is None else {"stage_ms": stages}),
            ),
        )
        self.links_pub.publish(Json({"k": w.k, "stamp_ns": stamp, "ego_id": info["ego_id"], "links": links}))
        progress = self._progress(w.k)
        self.done_pub.publish(Json(progress))
        (self.out / "progress.json").write_text(json.dumps(progress))

    def _link_bytes(self) -> list[int]:
        """Bytes per (collaborator, frame); in real time agents report after the ego has fused,
        so the figures are gathered as they come."""
        if self.realtime:
            return [self.status_spent.get((k, a), d) for k, a, d in self.rt_links]
        return self.scorer.acc.link_bytes

    def _progress(self, k: int) -> dict:
        acc = self.scorer.acc
        n = self.counts["frames_fused"]
        out = {
            "k": k,
            "frames": n,
            "total": self.total,
            "bytes_per_agent_frame": float(np.mean(spent)) if (spent := self._link_bytes()) else 0.0,
            "fused": acc.fused,
            **{c: self.counts[c] for c in ("delivered_to_ego", "lost_to_ego", "missing_agent_frames")},
            "late_dropped": self.ego.late_dropped if self.ego else 0,
        }
        if self.progress_every and (n % self.progress_every == 0 or n == self.total):
            out["ap_bev"] = self.scorer.ap_so_far()
        return out

    # -- the end ------------------------------------------------------------------------------------
    def on_end(self, data: dict) -> None:
        self.end_reason = data.get("reason") or None
        self.counts["player_late_frames"] = int(data.get("late_frames", 0))
        played = int(data.get("frames", 0))
        if self.realtime:  # frames played after the newest one it started
            self.counts["frames_skipped"] += max(0, played - 1 - self.last_started)
        self.stats_request.publish(Json({"k": self.last_fused}))
        self.end_asked = time.monotonic()
        self.advance()

    def _close(self) -> None:
        if self.channel_stats is None and time.monotonic() - self.end_asked < 5.0:
            return  # a moment for the channel's books
        partial = bool(self.end_reason) or (
            self.total is not None and self.counts["frames_fused"] < self.total
        )
        reason = self.end_reason or ("" if not partial else "fewer frames than the log has")
        if self.realtime and not self.end_reason:
            partial, reason = False, ""  # skipped frames are the point of real time, not a failure
        self.write_results(partial, reason)
        self.finished_pub.publish(Json({"partial": partial, "reason": reason, "out": str(self.out)}))
        self.request_stop()

    def write_results(self, partial: bool, reason: str) -> None:
        from v2x.pipeline.replay.scoring import LinkBook

        if self.results_written:
            return
        while self.books_due:  # every output frame is scored, however the run ends
            self.books_due.popleft()()
        if self.realtime:
            self.scorer.acc.link_bytes = self._link_bytes()
        book = LinkBook()
        if self.channel_stats is not None:
            book = LinkBook(dict(self.channel_stats["totals"]), dict(self.channel_stats["links"]))
        ego = self.ego
        if self.realtime:  # messages for frames after the last one fused
            self._packets_to_late_policy()
        if ego is not None:
            ego.close_books()
        malformed = (ego.malformed if ego else 0) + sum(self.agent_malformed.values())
        out = self.scorer.summary(book, malformed, ego.late_dropped if ego else 0, ego.expired if ego else 0)
        out.update(
            {
                "data": self.data,
                "clock": "realtime" if self.realtime else "sim",
                "partial": partial,
                "reason": reason or None,
                "frames_total": self.total,
                "output_latency_ms": _percentiles(self.output_ms),
                "stage_ms": {k: _percentiles(v) for k, v in self.stage_ms.items()} if self.realtime else None,
                "channel_stats": self.channel_stats is not None,
                **self.counts,
            }
        )
        write_results(self.out, out)
        self.results_written = True
        self.log.info("results written to %s (partial: %s)", self.out, partial)

    def on_shutdown(self) -> None:
        if not self.results_written:
            try:
                self.write_results(True, self.end_reason or "stopped before the end")
            except Exception:
                self.log.exception("could not write partial results")
        self.det_fh.close()
