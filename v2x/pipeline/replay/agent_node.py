"""An agent node: one collaborator slot, its own process, running :class:`~v2x.pipeline.stages.AgentStage`.

Per frame it drives the agent's :class:`~v2x.pipeline.exchange.AgentExchange`, the state machine
``exchange_frame`` drives on the simulated clock, with real packets, notes and waits:

1. perceive its scan;
2. demand methods: wait for the ego's demand (delivered, or announced lost by the channel) and
   act on it if it came within ``coord_wait_s``; later ones are held, and at each frame's start
   the newest held demand that has arrived by then is taken (``AgentStage.refresh_demand``);
3. codefilling: offer, then wait for the other collaborators' offers (each says on
   ``/replay/note/offer`` whether it has one, so nobody waits for an offer never sent);
4. send its message, sized to what is left of its link's per-frame allowance, at the time the
   simulated clock says (``max(acted_s, offers' arrival)``), and tell the ego what it sent.

On the simulated clock every wait is for a message or the channel's word that it was lost, so
nothing depends on how fast the processes are. A peer that misses the round (its node dead,
stopped, silent or behind) is not waited for once the ego says it goes on without it
(``/replay/note/absent``, see :mod:`~v2x.pipeline.replay.ego_frames`); a frame the ego has
finished already (this node was stopped, or fell behind) is dropped, and the node says so, which
also tells the ego it is back. ``wait_s`` (wall clock) is the last safety net. In real time the
waits end at ``coord_wait_s`` on the wall clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from v2x.comm.envelope import Json, Packet, PointCloud
from v2x.core.frame import AgentScan
from v2x.pipeline.exchange import AgentExchange, Phase
from v2x.pipeline.replay.base import WAKE_PERIOD_S, ReplayNode
from v2x.pipeline.replay.protocol import (
    ABSENT_NOTE,
    DEMAND_NOTE,
    EGO_DONE,
    OFFER_NOTE,
    message_topic,
    scan_from_message,
    slot_frame,
    slot_scan,
    slot_status,
)

__all__ = ["AgentNode"]


@dataclass
class _AgentFrame:
    """The frame this node is working on: the player's word of it and the agent's exchange."""

    k: int
    info: dict
    exchange: AgentExchange
    #: when the current wait began (wall clock): a live peer is waited for at most ``wait_s``
    since: float = field(default_factory=time.monotonic)

    @property
    def agent_id(self) -> str:
        return self.info["agent_id"]


class AgentNode(ReplayNode):
    role = "agent"

    def on_configure(self) -> None:
        self.setup()
        self.slot = self.param("slot", 0, required=True)
        depth = 2 if self.realtime else 64
        # subscriptions first: they reach the senders while the models load
        self.create_subscription(PointCloud, slot_scan(self.slot), self.on_scan, depth=depth)
        self.create_subscription(Json, slot_frame(self.slot), self.on_frame, depth=depth)
        self.create_subscription(Json, DEMAND_NOTE, self.on_demand_note, depth=64)
        if self.cfg.spec.uses_offers:
            self.create_subscription(Json, OFFER_NOTE, self.on_offer_note, depth=256)
            self.create_subscription(Json, ABSENT_NOTE, self.on_absent_note, depth=256)
        #: the newest frame the ego has finished (simulated clock): older work is dropped
        self.ego_done = -1
        if not self.realtime:
            self.create_subscription(Json, EGO_DONE, self.on_ego_done, depth=256)
        self.listening: set[str] = set()
        for agent_id in self.param("agent_ids", []):
            self._listen(agent_id)
        self.status = self.create_publisher(Json, slot_status(self.slot))
        self.offer_note = self.create_publisher(Json, OFFER_NOTE)
        self.models = self.load_models()
        self.stages: dict = {}
        self.scans: dict[int, AgentScan] = {}
        self.infos: dict[int, dict] = {}
        self.demands: dict[tuple[int, str], Packet] = {}
        self.demand_bytes: dict[int, int] = {}
        self.offers: dict[tuple[int, str, str], Packet] = {}
        self.offer_notes: dict[tuple[int, str], int] = {}
        self.absent_peers: dict[int, set[str]] = {}  # frame -> peers the ego goes on without
        self.work: _AgentFrame | None = None
        self._pubs: dict[str, object] = {}
        # every message that can move a frame on calls advance(); in real time each wait for a
        # moment on the wall clock sets this timer to fire then (fire_by), so the period is only
        # a safety net (a 10 ms poll cost each idle agent node about a tenth of a core)
        self._advance_timer = self.create_timer(WAKE_PERIOD_S, self.advance, clock="wall")

    def ready_info(self) -> dict:
        return {"slot": self.slot}

    def _listen(self, agent_id: str | None) -> None:
        """Receive what the channel delivers to ``agent_id`` (the demand, others' offers)."""
        if agent_id is None or agent_id in self.listening:
            return
        self.listening.add(agent_id)
        self.create_subscription(Packet, f"/rx/{agent_id}/", self.on_packet, depth=64)

    def _publisher(self, topic: str):
        if topic not in self._pubs:
            self._pubs[topic] = self.create_publisher(Packet, topic)
        return self._pubs[topic]

    # -- messages -----------------------------------------------------------------------------------
    def on_scan(self, _topic: str, msg: PointCloud) -> None:
        self.scans[int(msg.frame)] = scan_from_message(msg)
        self.advance()

    def on_frame(self, _topic: str, msg: Json) -> None:
        info = dict(msg.data)
        self.started = True
        self._listen(info.get("next_id"))
        self.infos[int(info["k"])] = info
        self.advance()

    def on_demand_note(self, _topic: str, msg: Json) -> None:
        self.demand_bytes[int(msg.data["k"])] = int(msg.data["bytes"])
        self.advance()

    def on_offer_note(self, _topic: str, msg: Json) -> None:
        self.offer_notes[(int(msg.data["k"]), str(msg.data["sender"]))] = int(msg.data["bytes"])
        self.advance()

    def on_absent_note(self, _topic: str, msg: Json) -> None:
        self.absent_peers.setdefault(int(msg.data["k"]), set()).update(map(str, msg.data["agents"]))
        self.advance()

    def on_ego_done(self, _topic: str, msg: Json) -> None:
        self.ego_done = max(self.ego_done, int(msg.data["k"]))
        self.advance()

    def on_packet(self, topic: str, pkt: Packet) -> None:
        if topic.endswith("/demand"):
            self.demands[(int(pkt.frame), pkt.receiver)] = pkt
        elif topic.endswith("/offer"):
            self.offers[(int(pkt.frame), pkt.receiver, pkt.sender)] = pkt
        self.advance()

    # -- the frame's steps --------------------------------------------------------------------------
    def advance(self) -> None:
        """Take the frame as far as what has arrived allows."""
        while True:
            if self.work is None and not self._next_work():
                return
            if not self._step(self.work):
                return

    def _next_work(self) -> bool:
        ready = sorted(k for k, info in self.infos.items() if info["agent_id"] is None or k in self.scans)
        if not ready:
            return False
        k = ready[-1] if self.realtime else ready[0]  # real time: the newest only
        info = self.infos[k]
        for old in [x for x in self.infos if x <= k]:
            del self.infos[old]
        for store in (self.scans, self.demand_bytes, self.absent_peers):
            for old in [x for x in store if x < k]:
                del store[old]
        for store in (self.demands, self.offers, self.offer_notes):
            for old in [x for x in store if x[0] < k]:
                del store[old]
        if info["agent_id"] is None:
            self.scans.pop(k, None)
            return self._next_work()
        if self._behind(k):
            self._drop(k, info["agent_id"])
            self.scans.pop(k, None)
            return self._next_work()
        exchange = AgentExchange(
            self._stage(info["agent_id"]), self.scans.pop(k), float(info["t"]), info["collaborators"]
        )
        self.work = _AgentFrame(k, info, exchange)
        return True

    def _stage(self, agent_id: str):
        """The agent's stage: what outlives a frame (the demand it follows, held late demands)."""
        from v2x.pipeline.stages import AgentStage

        stage = self.stages.get(agent_id)
        if stage is None:
            stage = self.stages[agent_id] = AgentStage(agent_id, self.models, self.cfg)
        return stage

    def _step(self, w: _AgentFrame) -> bool:
        """One step of the frame (its exchange's phase); False while it waits for something."""
        ex = w.exchange
        if ex.phase in (Phase.DEMAND, Phase.OFFERS) and self._behind(w.k):
            self._drop(w.k, w.agent_id)
            self.work = None
        elif ex.phase is Phase.PERCEIVE:
            self._perceive(w)
        elif ex.phase is Phase.DEMAND:
            if self._waits(w):
                return False
            ex.act_on_demand()
        elif ex.phase is Phase.OFFER:
            self._offer(w)
        elif ex.phase is Phase.OFFERS:
            if self._waits(w):
                return False
            ex.hear_offers()
        else:
            self._send(w)
            self.work = None
        return True

    def _behind(self, k: int) -> bool:
        """Simulated clock: the ego has finished frame ``k`` (it went on without this node)."""
        return not self.realtime and k <= self.ego_done

    def _drop(self, k: int, agent_id: str) -> None:
        """Drop a frame the ego is done with, and say so: the ego waits for this node again."""
        self.counters["frames_behind"] += 1
        self.status.publish(Json({"k": k, "agent_id": agent_id, "sent": False, "skipped": "behind"}))

    def _waits(self, w: _AgentFrame) -> bool:
        """Whether the frame's exchange still waits, told what has come. Real time: until the
        window's end on the wall clock (the timer is set to fire then); simulated clock: for
        every message or the channel's word that it was lost, giving up on a peer after ``wait_s``."""
        ex = w.exchange
        self._tell(w)
        if self.realtime:
            if ex.waits(self._now()):
                self._advance_timer.fire_by(ex.window_end_s)
                return True
            return False
        return ex.waits() and not self._waited_too_long(w, ex.phase.value)

    def _tell(self, w: _AgentFrame) -> None:
        """Pass what has come for the frame's current phase to its exchange: the ego's note of
        the demand's size and the demand, or the peers' offer notes and offers."""
        ex = w.exchange
        if ex.phase is Phase.DEMAND:
            note = self.demand_bytes.get(w.k)
            if note is not None:
                ex.demand_noted(note)
            pkt = self.demands.get((w.k, w.agent_id))
            if pkt is not None and pkt.kind.startswith("lost:"):
                ex.demand_lost()
            elif pkt is not None:
                ex.demand_delivered(pkt.data, pkt.delivered_ns / 1e9)
        elif ex.phase is Phase.OFFERS:
            for sender in ex.peers:
                size = self.offer_notes.get((w.k, sender))
                if size is not None:
                    ex.offer_noted(sender, size)
                pkt = self.offers.get((w.k, w.agent_id, sender))
                if pkt is not None and pkt.kind.startswith("lost:"):
                    ex.offer_lost(sender)
                elif pkt is not None:
                    ex.offer_delivered(sender, pkt.data, pkt.delivered_ns / 1e9)
            for sender in self.absent_peers.get(w.k, ()):  # after its offer, if one came first
                ex.peer_missed(sender)

    def _waited_too_long(self, w: _AgentFrame, what: str) -> bool:
        if time.monotonic() - w.since <= self.wait_s:
            return False
        self.counters[f"{what}_timeouts"] += 1
        self.log.warning("frame %d: gave up waiting for %s after %.0f s", w.k, what, self.wait_s)
        return True

    def _now(self) -> float:
        return time.time()

    def _perceive(self, w: _AgentFrame) -> None:
        if w.agent_id not in self.listening:
            # a node that (re)started mid-run: this frame's demand may have gone by already
            self._listen(w.agent_id)
            self.status.publish(Json({"k": w.k, "agent_id": w.agent_id, "skipped": "joining"}))
            self.work = None
            return
        w.exchange.perceive(w.info.get("world_from_ego"))
        w.since = time.monotonic()

    def _packet(self, w: _AgentFrame, data: bytes, receiver: str, kind: str, sent_s: float) -> Packet:
        sent_ns = time.time_ns() if self.realtime else round(sent_s * 1e9)
        return Packet.of(
            data,
            sender=w.agent_id,
            receiver=receiver,
            kind=kind,
            frame=w.k,
            stamp_ns=int(w.info["t_ns"]),
            sent_ns=sent_ns,
            sender_position=w.exchange.scan.position.tolist(),
        )

    def _offer(self, w: _AgentFrame) -> None:
        """Say whether it offers (so nobody waits for an offer never sent), and broadcast it."""
        ex = w.exchange
        offer = ex.make_offer()
        self.offer_note.publish(Json({"k": w.k, "sender": w.agent_id, "bytes": len(offer) if offer else 0}))
        if offer is not None:
            pub = self._publisher(f"/agents/{w.agent_id}/offer")
            for receiver in ex.peers:
                pub.publish(self._packet(w, offer, receiver, "offer", ex.acted_s))
        w.since = time.monotonic()

    def _send(self, w: _AgentFrame) -> None:
        ex = w.exchange
        out = ex.send()
        stage = ex.stage
        status = {"k": w.k, "agent_id": w.agent_id, "sent": out is not None, "malformed": stage.malformed}
        if stage.bad_ego_poses:
            status["bad_ego_poses"] = stage.bad_ego_poses  # frames encoded in its own frame instead
        if out is not None:
            topic = message_topic(w.agent_id, self.cfg.spec)
            kind = topic.rsplit("/", 1)[1]
            self._publisher(topic).publish(self._packet(w, out.data, w.info["ego_id"], kind, out.send_s))
            status["bytes"] = len(out.data)
        status["spent"] = ex.spent
        status["done_wall"] = time.time()
        self.status.publish(Json(status))

    def on_end(self, data: dict) -> None:
        self.request_stop()
