"""The ego node's frame collection, with no sockets: what has arrived for each frame, which agent
nodes are alive, when a frame is ready to fuse, and where messages for a frame already fused go.

The ego node (:mod:`v2x.pipeline.replay.ego_node`) hands every message it receives to a
:class:`FrameCollector` and asks it for the next frame to work on and whether that frame's
messages are in. Keeping these decisions apart from the transport lets them be tested with plain
inputs and clocks (``tests/pipeline/test_ego_frames.py``).

*Simulated clock*: frames are taken in order. A frame is ready to fuse once every expected
collaborator has said what it sent and each of those messages has arrived or been announced lost
by the channel, so the outcome does not depend on process speed. A collaborator *misses the
round* when its node died or is stopped (the supervisor's word, at once), its node has said
nothing for ``dead_after_s`` (a hung process), or it has not done its part ``round_s`` (wall
clock) after the ego's demand went out (said whether it offers, for offer methods; said what it
sent, for the others); ``wait_s`` is the last safety net for everyone. It is then given up on for
the frame, the other collaborators are told not to wait for it (the ``absent`` callback), its
absence is counted per agent and why, and its node is *out*: not waited for in later frames
until it reports on a frame again (a restarted node, once it has joined). A dead or stuck agent
so costs one wait, not one per frame, and the others' messages still fuse.

*Real time*: the newest complete frame is taken and older ones are skipped; a frame is ready when
everything is in or at ``t + deadline_s`` on the wall clock. Messages for frames already fused or
skipped go to the late policy (the ``late`` callback: held for the next frame, or dropped).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from v2x.comm.envelope import Packet
from v2x.pipeline.stages import Arrival

__all__ = ["EgoFrame", "FrameCollector", "FrameMessages", "LateHandler", "RunCounters"]

#: takes a collaborator's message (and its receive time, s) for a frame fused or skipped already
LateHandler = Callable[[Packet, float], None]
#: told the collaborators a frame goes on without (frame, agent ids), so their peers stop waiting
AbsentHandler = Callable[[int, list[str]], None]

#: why a collaborator missed a round (results.json's ``absence_reasons``)
DIED, STOPPED, SILENT, MISSED = "node died", "node stopped", "silent", "missed the round"


@dataclass
class RunCounters:
    """The replay's own counts of a run, reported in ``results.json`` (in this order)."""

    frames_fused: int = 0
    missing_agent_frames: int = 0  # (frame, collaborator) pairs fused without that collaborator
    agent_timeouts: int = 0  # collaborators given up on for a frame (simulated clock)
    agents_skipped_joining: int = 0
    deadline_misses: int = 0  # real time: fused after t + deadline_s
    frames_skipped: int = 0  # real time: played, never fused
    player_late_frames: int = 0
    after_give_up: int = 0  # simulated clock: messages for a frame fused already
    delivered_to_ego: int = 0
    lost_to_ego: int = 0
    #: per collaborator: frames fused without it because it missed the round
    agent_absences: dict[str, int] = field(default_factory=dict)
    #: the same, by why (DIED, STOPPED, SILENT, MISSED)
    absence_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def absent(self, agent_id: str, why: str) -> None:
        self.missing_agent_frames += 1
        self.agent_absences[agent_id] = self.agent_absences.get(agent_id, 0) + 1
        self.absence_reasons[why] = self.absence_reasons.get(why, 0) + 1


@dataclass
class EgoFrame:
    """The frame the ego is working on: its inputs, its step, and what it waits for."""

    k: int
    t: float
    info: dict
    scan: Any
    gt: Any
    gt_track: Any
    phase: str = "perceive"  # perceive -> collect -> fuse -> done
    me: Any = None  # the ego's own perception
    collab: list[tuple[str, int]] = field(default_factory=list)  # (agent id, slot)
    expected: set[str] = field(default_factory=set)  # collaborators waited for
    given_up: set[str] = field(default_factory=set)
    absent: dict[str, str] = field(default_factory=dict)  # not expected or given up: why
    spent: dict[str, int] = field(default_factory=dict)  # bytes on each collaborator's link
    since: float = field(default_factory=time.monotonic)  # when the wait for messages began
    wall_start: float = field(default_factory=time.time)
    perceived_wall: float | None = None


@dataclass
class FrameMessages:
    """What the collaborators sent for one frame, taken out of the collector for fusion."""

    arrivals: list[Arrival]  # delivered messages, to fuse by the deadline
    links: dict[str, dict]  # per collaborator: bytes, sent, delivered, size, lost, latency_ms, given_up
    sent_walls: list[float]  # real time: when each collaborator said it had sent (wall clock, s)


class FrameCollector:
    """Per frame, what has arrived (scan, ground truth, info, the agents' statuses and messages),
    which agent nodes are alive, and when the frame can be fused; see the module's docstring."""

    def __init__(
        self,
        agent_nodes: list[str],
        *,
        realtime: bool,
        deadline_s: float,
        dead_after_s: float,
        wait_s: float,
        late: LateHandler,
        round_s: float = 10.0,
        absent: AbsentHandler | None = None,
        uses_offers: bool = False,
        counters: RunCounters | None = None,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` measures waits and silences, ``wall`` is the real-time deadline's clock;
        ``uses_offers``: the method's agents say whether they offer (their progress mark)."""
        self.agent_nodes = list(agent_nodes)
        self.realtime = realtime
        self.deadline_s = deadline_s
        self.dead_after_s = dead_after_s
        self.wait_s = wait_s
        self.round_s = round_s
        self.late = late
        self.absent = absent or (lambda _k, _agents: None)
        self.uses_offers = uses_offers
        self.counters = counters if counters is not None else RunCounters()
        self.log = log or logging.getLogger(__name__)
        self.clock, self.wall = clock, wall
        self.scans: dict[int, Any] = {}
        self.gts: dict[int, Any] = {}
        self.gt_tracks: dict[int, Any] = {}
        self.infos: dict[int, dict] = {}
        self.statuses: dict[tuple[int, str], dict] = {}
        self.packets: dict[tuple[int, str, str], tuple[Packet, float]] = {}
        self.offer_notes: set[tuple[int, str]] = set()  # (frame, agent) that said whether it offers
        #: agent nodes not waited for: why, and the frame they went out in (see module docstring)
        self.out: dict[str, tuple[str, int]] = {}
        self.seen: dict[str, float] = {}
        self.ego_id: str | None = None  # the current ego's: late messages to others are ignored
        self.last_fused = -1
        self.last_started = -1
        self.total: int | None = None

    # -- what arrives -------------------------------------------------------------------------------
    def add_scan(self, k: int, scan: Any) -> None:
        self.scans[k] = scan

    def add_gt(self, k: int, gt: Any) -> None:
        self.gts[k] = gt

    def add_gt_track(self, k: int, gt_track: Any) -> None:
        self.gt_tracks[k] = gt_track

    def add_info(self, info: dict) -> None:
        """The player's word on a frame (its time, ego, collaborators and their slots)."""
        self.infos[int(info["k"])] = info
        self.total = info.get("total", self.total)

    def add_status(self, status: dict, node: str | None = None) -> None:
        """An agent's report of what it did for a frame (sent or not, bytes spent, ...), from
        ``node``: a node that was out and reports on a frame since is waited for again."""
        k = int(status["k"])
        self.statuses[(k, str(status["agent_id"]))] = status
        if node is not None:
            self.heard_from(node)
            if node in self.out and k >= self.out[node][1]:
                self.log.info("agent node %s reported on frame %d: waiting for it again", node, k)
                del self.out[node]

    def add_offer_note(self, k: int, agent_id: str) -> None:
        """An agent said whether it offers in frame ``k``: it has done its part of the round."""
        self.offer_notes.add((k, agent_id))

    def add_packet(self, pkt: Packet, received: float) -> bool:
        """A collaborator's message (or the channel's word that it was lost). Returns whether it
        was kept for a frame still to fuse (and may let that frame go on)."""
        if pkt.kind.startswith("lost:"):
            self.counters.lost_to_ego += 1
        else:
            self.counters.delivered_to_ego += 1
        k = int(pkt.frame)
        if k > self.last_fused:
            # kept by receiver too: it may come before the frame has started (or a new scene's
            # ego), and it is looked up with the frame's ego id
            self.packets[(k, pkt.sender, pkt.receiver)] = (pkt, received)
            return True
        # its frame is fused already
        if self.ego_id is None or pkt.receiver != self.ego_id:
            return False
        if not self.realtime:
            self.counters.after_give_up += 1
        else:
            self._to_late_policy(pkt, received)
        return False

    def _to_late_policy(self, pkt: Packet, received: float) -> None:
        if self.ego_id is None or pkt.receiver != self.ego_id or pkt.kind.startswith("lost:"):
            return
        self.late(pkt, received)

    def flush_late(self, below: float = math.inf) -> None:
        """Real time: the waiting messages of frames before ``below`` (skipped ones; all at the
        end) go to the late policy in frame order, so the newest per sender is the one held."""
        for key in sorted((x for x in self.packets if x[0] < below), key=lambda x: x[0]):
            self._to_late_policy(*self.packets.pop(key))

    # -- liveness -----------------------------------------------------------------------------------
    def node_of(self, slot: int) -> str:
        return self.agent_nodes[slot] if slot < len(self.agent_nodes) else f"agent{slot}"

    def _go_out(self, name: str, why: str, k: int) -> None:
        if name in self.agent_nodes and self.out.get(name, ("",))[0] != DIED:
            self.out[name] = (why, k)

    def mark_dead(self, names: list[str]) -> None:
        """The supervisor says these nodes died: their agents are not waited for."""
        for name in names:
            if name in self.agent_nodes:
                self.log.warning("agent node %s died: not waiting for it", name)
                self.out[name] = (DIED, self.last_started)

    def mark_stopped(self, names: list[str]) -> None:
        """The supervisor says these nodes are stopped (SIGSTOP): alive, but not waited for."""
        for name in names:
            if name in self.agent_nodes and name not in self.out:
                self.log.warning("agent node %s is stopped: not waiting for it", name)
                self._go_out(name, STOPPED, self.last_started)

    def mark_ready(self, name: str) -> None:
        """A node says it is ready. A restarted agent node is waited for again once it has
        reported on a frame (:meth:`add_status`): until then it may not hear the frames yet."""
        if name in self.out:
            self.log.info("agent node %s is up: waiting for it once it reports on a frame", name)
        self.heard_from(name)

    def heard_from(self, name: str) -> None:
        self.seen[name] = self.clock()

    # -- the frame's life ---------------------------------------------------------------------------
    def next_frame(self) -> EgoFrame | None:
        """The next frame whose info, scan and ground truth are in (the oldest; in real time the
        newest, older ones skipped and their messages sent to the late policy), or None."""
        ready = sorted(
            k
            for k, info in self.infos.items()
            if k in self.scans and k in self.gts and (k in self.gt_tracks or not info.get("has_track_gt"))
        )
        if not ready:
            return None
        k = ready[-1] if self.realtime else ready[0]
        self.counters.frames_skipped += max(0, k - self.last_started - 1)  # real time only
        self.last_started = k
        for store in (self.infos, self.scans, self.gts, self.gt_tracks):
            for old in [x for x in store if x < k]:
                del store[old]
        for old in [x for x in self.statuses if x[0] < k]:  # frames skipped in real time
            del self.statuses[old]
        self.offer_notes = {x for x in self.offer_notes if x[0] >= k}
        self.flush_late(below=k)
        info = self.infos.pop(k)
        collab = [(str(a), int(s)) for a, s in info["collaborators"]]
        return EgoFrame(
            k,
            float(info["t"]),
            info,
            self.scans.pop(k),
            self.gts.pop(k),
            self.gt_tracks.pop(k, None),
            collab=collab,
            spent={a: 0 for a, _ in collab},
            since=self.clock(),
            wall_start=self.wall(),
        )

    def expect(self, frame: EgoFrame) -> None:
        """Start waiting for the frame's collaborators whose nodes are not out; the others'
        peers are told not to wait for them (their absence is counted if nothing comes)."""
        for a, slot in frame.collab:
            out = self.out.get(self.node_of(slot))
            if out is None:
                frame.expected.add(a)
            else:
                frame.absent[a] = out[0]
        if frame.absent:
            self.absent(frame.k, sorted(frame.absent))
        frame.since = self.clock()

    def _resolved(self, frame: EgoFrame, agent_id: str) -> bool:
        st = self.statuses.get((frame.k, agent_id))
        if st is None:
            return False
        return not st.get("sent") or (frame.k, agent_id, frame.info["ego_id"]) in self.packets

    def collected(self, frame: EgoFrame) -> bool:
        """Whether the frame can be fused now. On the simulated clock, collaborators that miss
        the round are given up on here (see the module's docstring); in real time the caller
        wakes at ``t + deadline_s``."""
        pending = [a for a in frame.expected if a not in frame.given_up and not self._resolved(frame, a)]
        if not pending:
            return True
        if self.realtime:
            return self.wall() >= frame.t + self.deadline_s
        slot_of = dict(frame.collab)
        gone: list[str] = []
        for a in pending:
            node = self.node_of(slot_of[a])
            why = self._missed(frame, a, node)
            if why is None:
                continue
            self.log.warning("frame %d: going on without agent %s (%s)", frame.k, a, why)
            frame.given_up.add(a)
            frame.absent[a] = why
            self.counters.agent_timeouts += 1
            self._go_out(node, why, frame.k)
            gone.append(a)
        if gone:
            self.absent(frame.k, sorted(gone))
        return all(a in frame.given_up or self._resolved(frame, a) for a in frame.expected)

    def _missed(self, frame: EgoFrame, agent_id: str, node: str) -> str | None:
        """Why a pending collaborator misses the frame's round now, or None: it is still waited for."""
        if node in self.out:
            return self.out[node][0]
        now = self.clock()
        if now - max(self.seen.get(node, frame.since), frame.since) > self.dead_after_s:
            return SILENT
        waited = now - frame.since
        if waited > self.wait_s:
            return MISSED
        # a straggler: it has not done its part, where one that has waits only for others
        done_part = self.uses_offers and (frame.k, agent_id) in self.offer_notes
        return MISSED if waited > self.round_s and not done_part else None

    def take_messages(self, frame: EgoFrame) -> FrameMessages:
        """Take the frame's statuses and messages out: the arrivals to fuse and each
        collaborator's link (on the simulated clock its bytes are the ones its agent reported)."""
        arrivals: list[Arrival] = []
        links: dict[str, dict] = {}
        sent_walls: list[float] = []
        for a, _slot in frame.collab:
            st = self.statuses.pop((frame.k, a), None)
            if self.realtime and st is not None and st.get("done_wall") is not None:
                sent_walls.append(float(st["done_wall"]))
            got = self.packets.pop((frame.k, a, frame.info["ego_id"]), None)
            if st is not None and st.get("skipped"):
                self.counters.agents_skipped_joining += 1
            if st is not None and "spent" in st and not self.realtime:
                frame.spent[a] = int(st["spent"])
            link = {"bytes": int(frame.spent[a]), "sent": bool(st and st.get("sent")), "delivered": False}
            if got is not None:
                pkt, received = got
                link["size"] = int(pkt.payload.size)
                if pkt.kind.startswith("lost:"):
                    link["lost"] = pkt.kind[5:]
                else:
                    delivered = received if self.realtime else pkt.delivered_ns / 1e9
                    offset = float(frame.info.get("scan_offsets_s", {}).get(a, 0.0))
                    arrivals.append(Arrival(pkt.data, a, frame.t, delivered, frame.k, offset))
                    link["delivered"] = True
                    link["latency_ms"] = round((delivered - frame.t) * 1000, 3)
            if a in frame.given_up:
                link["given_up"] = True
            if a in frame.absent and not link["delivered"]:
                link["absent"] = frame.absent[a]
                self.counters.absent(a, frame.absent[a])
            links[a] = link
        return FrameMessages(arrivals, links, sent_walls)

    def fused(self, frame: EgoFrame) -> None:
        """The frame is output: later messages for it (or older frames) are late."""
        self.last_fused = frame.k
        self.counters.frames_fused += 1

    def played(self, frames: int) -> None:
        """The player played ``frames`` in all: in real time, those after the newest one started
        were skipped."""
        if self.realtime:
            self.counters.frames_skipped += max(0, frames - 1 - self.last_started)
