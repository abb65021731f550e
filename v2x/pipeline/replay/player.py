"""The player: reads the log and hands each frame to the agent nodes and the ego.

* ``realtime: false`` (simulated clock, the default): lock-step. Frame ``k`` is played at
  ``t = k / frame_hz`` on the simulated clock, and frame ``k + 1`` only after the ego says it
  finished ``k``, however long the nodes take, so runs are reproducible.
* ``realtime: true``: frames leave at ``frame_hz`` on the wall clock whether or not anyone kept
  up; nodes that lag skip frames (the ego counts them and its deadline misses).

Per frame it sends each collaborator's scan to its agent node (see :mod:`v2x.pipeline.replay.slots`), the
ego its own scan and the frame's ground truth (computed here, where the whole frame is, so the
ego never needs the other agents' points), and the channel node every agent's position. It
starts once every node said it is ready, and ends with ``/replay/end``.
"""

from __future__ import annotations

import queue
import threading
import time

from v2x.comm.envelope import Boxes3D, Clock, Json, PointCloud
from v2x.pipeline.replay.base import ReplayNode
from v2x.pipeline.replay.protocol import (
    EGO_DONE,
    EGO_FINISHED,
    EGO_FRAME,
    EGO_GT,
    EGO_GT_TRACK,
    EGO_SCAN,
    END,
    POSITIONS,
    READY,
    RECORDER_CLOSED,
    boxes_message,
    scan_message,
    slot_frame,
    slot_scan,
)
from v2x.pipeline.replay.slots import SlotMap

__all__ = ["PlayerNode"]

_DONE = object()
#: the player's timer period while nothing calls it sooner (start-up, the end); see WAKE_PERIOD_S
PLAYER_PERIOD_S = 0.05


class PlayerNode(ReplayNode):
    role = "player"

    def on_configure(self) -> None:
        self.setup()
        self.slots = self.param("slots", 0, required=True)
        self.required = set(self.param("required", []))  # nodes to wait for before frame 0
        self.optional = set(self.param("optional", []))  # agent nodes: waited for up to start_s
        self.start_s = self.param("start_s", 300.0)
        self.min_points = self.param("min_points", 1)
        self.recorder = self.param("recorder", False)
        self.ready: set[str] = set()
        self.ready_slots: set[int] = set()
        self.done: dict[int, dict] = {}
        self.finished = self.closed = False
        self.frame_pubs = [self.create_publisher(Json, slot_frame(i)) for i in range(self.slots)]
        self.scan_pubs = [self.create_publisher(PointCloud, slot_scan(i)) for i in range(self.slots)]
        self.ego_frame = self.create_publisher(Json, EGO_FRAME)
        self.ego_scan = self.create_publisher(PointCloud, EGO_SCAN)
        self.ego_gt = self.create_publisher(Boxes3D, EGO_GT)
        self.ego_gt_track = self.create_publisher(Boxes3D, EGO_GT_TRACK)
        self.positions = self.create_publisher(Json, POSITIONS)
        self.clock = self.create_publisher(Clock, "/clock")
        self.end_pub = self.create_publisher(Json, END)
        self.create_subscription(Json, READY, self.on_ready)
        self.create_subscription(Json, EGO_DONE, self.on_done, depth=256)
        self.create_subscription(Json, EGO_FINISHED, lambda _t, _m: setattr(self, "finished", True))
        self.create_subscription(Json, RECORDER_CLOSED, lambda _t, _m: setattr(self, "closed", True))
        self._open_log()
        self.slot_map = SlotMap(self.slots)
        self.phase = "starting"
        self.k = 0
        self.t0_wall = 0.0
        self.created = time.monotonic()
        # messages that let it go on (a node ready, the ego done with a frame) call tick() at
        # once; in real time it sets the timer to each frame's due time (see WAKE_PERIOD_S)
        self._tick_timer = self.create_timer(PLAYER_PERIOD_S, self.tick, clock="wall")

    def _open_log(self) -> None:
        from v2x.datasets import open_log
        from v2x.pipeline.frames import FrameSelection, select_frames

        self.log_ = open_log(self.param("data", "", required=True), max_cav=self.cfg.max_agents)
        self.indices = select_frames(self.log_, FrameSelection.of_run(self.cfg, self.param("scenes", None)))
        # read ahead, off the node's thread; in real time far enough that reading never holds
        # back the 10 Hz (a scan takes a good fraction of a frame period to read)
        self.preload = min(len(self.indices) + 1, self.param("preload", 200)) if self.realtime else 8
        self.loaded = 0
        self.late_frames = 0
        self.frames: queue.Queue = queue.Queue(maxsize=self.preload)
        self._frame_reader = threading.Thread(target=self._read_frames, daemon=True)
        self._frame_reader.start()
        self._next = None

    def _read_frames(self) -> None:
        from v2x.perception.cooperative import evaluation_ground_truth
        from v2x.pipeline.detections import tracking_ground_truth

        try:
            for i in self.indices:
                if self.stopping:
                    return
                frame = self.log_[i]
                gt = evaluation_ground_truth(frame, self.min_points)
                track = tracking_ground_truth(frame, self.min_points) if self.cfg.tracker != "none" else None
                self.frames.put((i, frame, gt, track))
                self.loaded += 1
        except Exception as exc:  # a broken file: end the run, say why
            self.frames.put(exc)
            return
        self.frames.put(_DONE)
        self.loaded += 1

    def _take(self):
        """The next (frame, gt, gt_track), ``_DONE`` or an exception; blocks on the reader."""
        if self._next is None:
            self._next = self.frames.get()
        item, self._next = self._next, None
        return item

    def _peek(self, timeout_s: float = 5.0):
        if self._next is None:
            try:
                self._next = self.frames.get(timeout=timeout_s) if timeout_s > 0 else self.frames.get_nowait()
            except queue.Empty:
                return None
        return self._next

    # -- messages -----------------------------------------------------------------------------------
    def on_ready(self, _topic: str, msg: Json) -> None:
        self.ready.add(str(msg.data.get("node")))
        if msg.data.get("slot") is not None:
            self.ready_slots.add(int(msg.data["slot"]))
        self.tick()

    def _listening(self) -> bool:
        """Every ready node's subscription to its frames has reached this node's outbox."""
        pubs = [self.ego_frame] + [self.frame_pubs[i] for i in self.ready_slots if i < self.slots]
        return all(p.subscribers() >= 1 for p in pubs)

    def on_done(self, _topic: str, msg: Json) -> None:
        self.done[int(msg.data["k"])] = msg.data
        self.tick()

    # -- the loop -----------------------------------------------------------------------------------
    def tick(self) -> None:
        if self.phase == "starting":
            self._try_start()
        elif self.phase == "playing":
            self._play()
        elif self.phase == "ending":
            waited = time.monotonic() - self.end_sent
            if (self.finished and (self.closed or not self.recorder)) or waited > self.wait_s:
                self.phase = "over"
                self.request_stop()

    def _try_start(self) -> None:
        waited = time.monotonic() - self.created
        if not self.required <= self.ready:
            if waited > self.start_s:
                self._end(f"nodes never became ready: {', '.join(sorted(self.required - self.ready))}")
            return
        if (not self.optional <= self.ready or not self._listening()) and waited < self.start_s:
            return
        if self.realtime and self.loaded < self.preload and self._frame_reader.is_alive():
            return  # the read-ahead first
        missing = sorted(self.optional - self.ready)
        if missing:
            self.log.warning("starting without agent node(s) %s (not ready after %.0f s)", missing, waited)
        self.started = True
        self.phase = "playing"
        self.t0_wall = time.time()
        self.log.info("playing %d frame(s) with %d agent slot(s)", len(self.indices), self.slots)

    def _play(self) -> None:
        hz = self.cfg.frame_hz
        if self.realtime:
            due = self.t0_wall + self.k / hz
            if time.time() < due:
                self._tick_timer.fire_by(due)
                return
            item = self._peek(0.0)
            if item is None:
                return  # not read yet: this frame leaves late
            self._next = None
            if item is not _DONE and time.time() - due > 0.5 / hz:
                self.late_frames += 1
        elif self.k > 0 and (self.k - 1) not in self.done:
            return
        else:
            item = self._take()
        if item is _DONE:
            self._finish_playing()
            return
        if isinstance(item, Exception):
            self._end(f"reading the log failed at frame {self.k}: {item}")
            return
        self._publish(self.k, *item)
        self.k += 1
        if self.realtime:
            self._tick_timer.fire_by(self.t0_wall + self.k / hz)

    def _finish_playing(self) -> None:
        """After the last frame: in real time, wait (``wait_s`` at most) for the ego to finish it
        (it always moves on to the newest frame, so that is soon)."""
        if self.realtime:
            last = self.k - 1
            if (
                last >= 0
                and last not in self.done
                and time.time() < self.t0_wall + self.k / self.cfg.frame_hz + self.wait_s
            ):
                self._next = _DONE
                return
        self._end("")

    def _end(self, reason: str) -> None:
        if reason:
            self.log.error("ending the replay: %s", reason)
        self.end_pub.publish(Json({"frames": self.k, "reason": reason, "late_frames": self.late_frames}))
        self.end_sent = time.monotonic()
        self.phase = "ending"

    def _publish(self, k: int, log_index: int, frame, gt, gt_track) -> None:
        from v2x.pipeline.frames import scan_offsets_s

        hz = self.cfg.frame_hz
        t = k / hz  # the simulated clock, as run_frames has it
        wall = time.time()
        if self.realtime:
            t = wall
        t_ns = round(t * 1e9)
        collab = frame.collaborators[: max(0, self.cfg.max_agents - 1)]
        slots = self.slot_map.assign([s.agent_id for s in collab])
        nxt = self._peek(0.5 if not self.realtime else 0.0)
        upcoming: dict[int, str] = {}
        if nxt is not None and not isinstance(nxt, Exception) and nxt is not _DONE:
            later = [c.agent_id for c in nxt[1].collaborators[: max(0, self.cfg.max_agents - 1)]]
            upcoming = {s: a for a, s in self.slot_map.preview(later).items()}
        self.clock.publish(Clock(t_ns, k))
        # with who plays whom this frame: the channel forwards a packet only from the node that
        # plays its sender (slot -> agent node; the ego's id -> the ego node)
        self.positions.publish(
            Json(
                {
                    "k": k,
                    "positions": {a: s.position.tolist() for a, s in frame.agents.items()},
                    "slots": slots,
                    "ego_id": frame.ego_id,
                }
            )
        )
        ids = [s.agent_id for s in collab]
        by_slot = {slots[s.agent_id]: s for s in collab}
        for i in range(self.slots):
            scan = by_slot.get(i)
            if scan is not None:
                self.scan_pubs[i].publish(scan_message(scan, k))
            self.frame_pubs[i].publish(
                Json(
                    {
                        "k": k,
                        "t": t,
                        "t_ns": t_ns,
                        "wall": wall,
                        "agent_id": scan.agent_id if scan is not None else None,
                        "ego_id": frame.ego_id,
                        # the ego's pose, as its V2X pose beacon tells every agent (agents
                        # encode shared features in its frame: share_frame "ego")
                        "world_from_ego": frame.ego.world_from_bev.tolist(),
                        "collaborators": ids,
                        "next_id": upcoming.get(i),
                    }
                )
            )
        self.ego_scan.publish(scan_message(frame.ego, k))
        self.ego_gt.publish(boxes_message(gt, k, frame.timestamp_ns, "ego_bev"))
        if gt_track is not None:
            self.ego_gt_track.publish(boxes_message(gt_track, k, frame.timestamp_ns))
        self.ego_frame.publish(
            Json(
                {
                    "k": k,
                    "t": t,
                    "t_ns": t_ns,
                    "wall": wall,
                    "scenario": frame.scenario,
                    "index": int(frame.index),
                    "log_index": int(log_index),
                    "timestamp_ns": int(frame.timestamp_ns),
                    "ego_id": frame.ego_id,
                    "collaborators": [[a, slots[a]] for a in ids],
                    # real logs: each collaborator's scan time minus the ego's, which the ego
                    # compensates (v2x.pipeline.frames.scan_offsets_s)
                    "scan_offsets_s": scan_offsets_s(frame),
                    "has_track_gt": gt_track is not None,
                    "total": len(self.indices),
                }
            )
        )

    def on_end(self, data: dict) -> None:
        """Its own end message comes back only through a tap; nothing to do."""

    def on_shutdown(self) -> None:
        # unblock the reader thread if it waits on a full queue
        while True:
            try:
                self.frames.get_nowait()
            except queue.Empty:
                break
