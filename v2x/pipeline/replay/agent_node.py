"""An agent node: one collaborator slot, its own process, running :class:`~v2x.pipeline.stages.AgentStage`.

Per frame (what ``exchange_frame`` does for one agent, with real messages):

1. perceive its scan;
2. demand methods: wait for the ego's demand (delivered, or announced lost by the channel) and
   act on it if it came within ``coord_wait_s``; later ones are held, and at each frame's start
   the newest held demand that has arrived by then is taken (``AgentStage.refresh_demand``);
3. codefilling: offer, then wait for the other collaborators' offers (each says on
   ``/replay/note/offer`` whether it has one, so nobody waits for an offer never sent);
4. send its message, sized to what is left of its link's per-frame allowance, at the time the
   simulated clock says (``max(act time, offers' arrival)``), and tell the ego what it sent.

On the simulated clock every wait is for a message or the channel's word that it was lost, so
nothing depends on how fast the processes are; a peer that is gone is waited for at most
``wait_s`` (wall clock). In real time the waits end at ``coord_wait_s`` on the wall clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from v2x.comm.envelope import Json, Packet, PointCloud
from v2x.core.frame import AgentScan
from v2x.messages.codec import DEMAND_METHODS
from v2x.pipeline.replay.base import WAKE_PERIOD_S, ReplayNode, within
from v2x.pipeline.replay.protocol import (
    DEMAND_NOTE,
    OFFER_NOTE,
    message_topic,
    scan_from_message,
    slot_frame,
    slot_scan,
    slot_status,
)

__all__ = ["AgentNode"]


@dataclass
class _Work:
    """One frame in progress."""

    k: int
    t: float
    info: dict
    scan: AgentScan
    phase: str = "perceive"
    me: object = None
    act: float = 0.0
    spent: int = 0
    offer: bytes | None = None
    heard: list[tuple[float, bytes]] = field(default_factory=list)
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
        self.create_subscription(slot_scan(self.slot), PointCloud, self.on_scan, depth=depth)
        self.create_subscription(slot_frame(self.slot), Json, self.on_frame, depth=depth)
        self.create_subscription(DEMAND_NOTE, Json, self.on_demand_note, depth=64)
        if self.cfg.method == "codefilling":
            self.create_subscription(OFFER_NOTE, Json, self.on_offer_note, depth=256)
        self.listening: set[str] = set()
        for agent_id in self.param("agent_ids", []):
            self._listen(agent_id)
        self.status = self.create_publisher(slot_status(self.slot), Json)
        self.offer_note = self.create_publisher(OFFER_NOTE, Json)
        self.models = self.load_models()
        self.stages: dict = {}
        self.scans: dict[int, AgentScan] = {}
        self.infos: dict[int, dict] = {}
        self.demands: dict[tuple[int, str], Packet] = {}
        self.demand_bytes: dict[int, int] = {}
        self.offers: dict[tuple[int, str, str], Packet] = {}
        self.offer_notes: dict[tuple[int, str], int] = {}
        self.work: _Work | None = None
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
        self.create_subscription(f"/rx/{agent_id}/", Packet, self.on_packet, depth=64)

    def _publisher(self, topic: str):
        if topic not in self._pubs:
            self._pubs[topic] = self.create_publisher(topic, Packet)
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
        for store in (self.scans, self.demand_bytes):
            for old in [x for x in store if x < k]:
                del store[old]
        for store in (self.demands, self.offers, self.offer_notes):
            for old in [x for x in store if x[0] < k]:
                del store[old]
        if info["agent_id"] is None:
            self.scans.pop(k, None)
            return self._next_work()
        self.work = _Work(k, float(info["t"]), info, self.scans.pop(k))
        return True

    def _step(self, w: _Work) -> bool:
        """One step of the frame; False while it waits for something."""
        if w.phase == "perceive":
            return self._perceive(w)
        if w.phase == "demand":
            return self._demand(w)
        if w.phase == "offer":
            return self._offer(w)
        if w.phase == "offers":
            return self._offers(w)
        self._send(w)
        self.work = None
        return True

    def _waited_too_long(self, w: _Work, what: str) -> bool:
        if time.monotonic() - w.since <= self.wait_s:
            return False
        self.counters[f"{what}_timeouts"] += 1
        self.log.warning("frame %d: gave up waiting for %s after %.0f s", w.k, what, self.wait_s)
        return True

    def _now(self) -> float:
        return time.time()

    def _perceive(self, w: _Work) -> bool:
        from v2x.pipeline.stages import AgentStage

        if w.agent_id not in self.listening:
            # a node that (re)started mid-run: this frame's demand may have gone by already
            self._listen(w.agent_id)
            self.status.publish(Json({"k": w.k, "agent_id": w.agent_id, "skipped": "joining"}))
            self.work = None
            return True
        stage = self.stages.get(w.agent_id)
        if stage is None:
            stage = self.stages[w.agent_id] = AgentStage(w.agent_id, self.models, self.cfg)
        w.me = stage.perceive(w.scan, w.info.get("world_from_ego"))
        w.act = w.t
        w.phase = "demand" if self.cfg.method in DEMAND_METHODS else self._after_demand()
        w.since = time.monotonic()
        return True

    def _after_demand(self) -> str:
        return "offer" if self.cfg.method == "codefilling" else "send"

    def _demand(self, w: _Work) -> bool:
        stage = self.stages[w.agent_id]
        stage.refresh_demand(w.t)  # the newest late demand of an earlier frame that has arrived
        pkt = self.demands.get((w.k, w.agent_id))
        note = self.demand_bytes.get(w.k)
        if self.realtime:
            if pkt is None and self._now() < w.t + self.cfg.coord_wait_s:
                self._advance_timer.fire_by(w.t + self.cfg.coord_wait_s)
                return False
        elif (pkt is None or note is None) and not self._waited_too_long(w, "demand"):
            return False
        if note is not None:
            w.spent += note
        elif pkt is not None and not pkt.kind.startswith("lost:"):
            w.spent += int(pkt.payload.size)
        if pkt is not None and not pkt.kind.startswith("lost:"):
            delivered = pkt.delivered_ns / 1e9
            if within(delivered, w.t, self.cfg.coord_wait_s):
                stage.take_demand(pkt.data)
                w.act = delivered
            else:
                stage.hold_demand(pkt.data, delivered)
        w.phase = self._after_demand()
        return True

    def _packet(self, w: _Work, data: bytes, receiver: str, kind: str, sent_s: float) -> Packet:
        sent_ns = time.time_ns() if self.realtime else round(sent_s * 1e9)
        return Packet.of(
            data,
            sender=w.agent_id,
            receiver=receiver,
            kind=kind,
            frame=w.k,
            stamp_ns=int(w.info["t_ns"]),
            sent_ns=sent_ns,
            sender_position=w.scan.position.tolist(),
        )

    def _offer(self, w: _Work) -> bool:
        stage = self.stages[w.agent_id]
        w.offer = stage.offer(w.me)
        size = len(w.offer) if w.offer is not None else 0
        self.offer_note.publish(Json({"k": w.k, "sender": w.agent_id, "bytes": size}))
        if w.offer is not None:
            w.spent += size
            pub = self._publisher(f"/agents/{w.agent_id}/offer")
            for r in w.info["collaborators"]:
                if r != w.agent_id:
                    pub.publish(self._packet(w, w.offer, r, "offer", w.act))
        w.phase, w.since = "offers", time.monotonic()
        return True

    def _offers(self, w: _Work) -> bool:
        others = [s for s in w.info["collaborators"] if s != w.agent_id]
        pending = []
        for s in others:
            size = self.offer_notes.get((w.k, s))
            if size is None or (size > 0 and (w.k, w.agent_id, s) not in self.offers):
                pending.append(s)
        if pending:
            if self.realtime:
                if self._now() < w.act + self.cfg.coord_wait_s:
                    self._advance_timer.fire_by(w.act + self.cfg.coord_wait_s)
                    return False
            elif not self._waited_too_long(w, "offers"):
                return False
        for s in others:
            pkt = self.offers.get((w.k, w.agent_id, s))
            if pkt is None or pkt.kind.startswith("lost:"):
                continue
            delivered = pkt.delivered_ns / 1e9
            if within(delivered, w.act, self.cfg.coord_wait_s):
                w.heard.append((delivered, pkt.data))
        w.phase = "send"
        return True

    def _send(self, w: _Work) -> None:
        stage = self.stages[w.agent_id]
        got = sorted(w.heard, key=lambda x: x[0])
        assigned = stage.assigned(w.me, w.offer, [b for _, b in got])
        send_s = max([w.act, *[ts for ts, _ in got]])
        data = stage.message(w.me, w.scan, w.spent, assigned)
        status = {"k": w.k, "agent_id": w.agent_id, "sent": data is not None, "malformed": stage.malformed}
        if stage.bad_ego_poses:
            status["bad_ego_poses"] = stage.bad_ego_poses  # frames encoded in its own frame instead
        if data is not None:
            w.spent += len(data)
            topic = message_topic(w.agent_id, self.cfg.method)
            kind = topic.rsplit("/", 1)[1]
            self._publisher(topic).publish(self._packet(w, data, w.info["ego_id"], kind, send_s))
            status["bytes"] = len(data)
        status["spent"] = w.spent
        status["done_wall"] = time.time()
        self.status.publish(Json(status))

    def on_end(self, data: dict) -> None:
        self.request_stop()
