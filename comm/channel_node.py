"""The channel node: sits between senders and receivers and applies the network to real traffic.

It subscribes to the packet topics of every agent (``/agents/...``) and of the ego
(``/ego/...``), and republishes each packet, per receiver, on ``/rx/<receiver><topic>`` after
:class:`~v2x.comm.emulator.ChannelEmulator` decided its fate. Receivers of a packet are its
``receiver`` field, else every node in ``receivers`` other than its sender.

* ``clock: wall`` — a packet is held until its delivery time, then published (real delay);
* ``clock: sim`` — it is published at once with ``delivered_ns`` stamped in simulated time, so
  runs are reproducible; a lost packet is announced by an empty packet of kind ``lost:<why>``,
  so a lock-step receiver knows not to wait for it.

Parameters: ``preset`` (ideal, dsrc, cv2x, opencood, congested, lossy-burst) and overrides of
its fields under ``channel``, ``seed``, ``budget`` (e.g. ``200kbps``, bit/s or ``unlimited``; read
by :func:`~v2x.comm.budget.parse_budget`), ``budget_policy``, ``frame_hz``,
``receivers`` (list), ``topics`` (prefixes), ``trace`` (JSON-lines file). Per-link statistics go
to ``/diagnostics``.
"""

from __future__ import annotations

import dataclasses
import heapq
import time

import numpy as np

from v2x.comm.budget import parse_budget
from v2x.comm.emulator import ChannelEmulator
from v2x.comm.envelope import Packet
from v2x.comm.node import Node
from v2x.sim.channel import GilbertElliott, preset

__all__ = ["ChannelNode"]


class ChannelNode(Node):
    def on_configure(self) -> None:
        overrides = dict(self.param("channel", {}) or {})
        if isinstance(overrides.get("burst"), dict):  # from YAML: {p, r, loss_bad, loss_good}
            overrides["burst"] = GilbertElliott(**overrides["burst"])
        cfg = dataclasses.replace(preset(self.param("preset", "ideal")), **overrides)
        self.emulator = ChannelEmulator(
            cfg,
            seed=int(self.param("seed", 0)),
            budget_bps=parse_budget(self.param("budget")),
            budget_policy=self.param("budget_policy", "drop"),
            frame_hz=float(self.param("frame_hz", 10.0)),
            trace=self.param("trace"),
        )
        self.receivers = list(self.param("receivers", []))
        self.positions: dict[str, np.ndarray] = {}
        self._pending: list[tuple[float, int, str, Packet]] = []
        self._n = 0
        self._pubs: dict[str, object] = {}
        for prefix in self.param("topics", ["/agents/", "/ego/"]):
            self.create_subscription(Packet, prefix, self.on_packet)
        # on the wall clock, held packets go out when due: the flush timer is pulled forward to
        # the earliest delivery time (a fixed 1 ms tick kept this node busy: about 40 % of a core)
        self._flush_timer = self.create_timer(float(self.param("tick_s", 0.05)), self.flush)

    def _publisher_for(self, topic: str):
        if topic not in self._pubs:
            self._pubs[topic] = self.create_publisher(Packet, topic)
        return self._pubs[topic]

    def on_packet(self, topic: str, pkt: Packet) -> None:
        if pkt.sender_position:
            self.positions[pkt.sender] = np.asarray(pkt.sender_position, dtype=np.float64)
        targets = [pkt.receiver] if pkt.receiver else [r for r in self.receivers if r != pkt.sender]
        sim = self.spec.clock == "sim"
        now_s = (pkt.sent_ns or self.now_ns()) / 1e9 if sim else time.time()
        data = pkt.data
        for rx in targets:
            a, b = self.positions.get(pkt.sender), self.positions.get(rx)
            distance = float(np.hypot(*(a[:2] - b[:2]))) if a is not None and b is not None else 0.0
            d = self.emulator.send(pkt.sender, rx, data, now_s, distance)
            out_topic = f"/rx/{rx}{topic}"
            if d.reason is not None:
                if sim:
                    self._publisher_for(out_topic).publish(
                        Packet(
                            np.zeros(0, np.uint8),
                            pkt.sender,
                            rx,
                            f"lost:{d.reason}",
                            pkt.frame,
                            pkt.stamp_ns,
                            pkt.sent_ns,
                            0,
                            pkt.sender_position,
                        )
                    )
                continue
            out = Packet.of(
                d.data,
                sender=pkt.sender,
                receiver=rx,
                kind=pkt.kind,
                frame=pkt.frame,
                stamp_ns=pkt.stamp_ns,
                sent_ns=pkt.sent_ns,
                delivered_ns=int(d.delivered_s * 1e9),
                sender_position=pkt.sender_position,
            )
            if sim:
                self._publisher_for(out_topic).publish(out)
            else:
                self._n += 1
                heapq.heappush(self._pending, (d.delivered_s, self._n, out_topic, out))
        self._wake_for_next_delivery()

    def flush(self) -> None:
        now = time.time()
        while self._pending and self._pending[0][0] <= now:
            _, _, topic, pkt = heapq.heappop(self._pending)
            self._publisher_for(topic).publish(pkt)
        self._wake_for_next_delivery()

    def _wake_for_next_delivery(self) -> None:
        """Bring the flush timer forward to the earliest held packet's delivery time (wall clock)."""
        if self._pending:
            self._flush_timer.fire_by(self._pending[0][0])

    def diagnostics(self) -> dict:
        """Node diagnostics plus, per link, sent / delivered / dropped counts and latency."""
        d = super().diagnostics()
        d["counters"] = dict(d["counters"]) | {f"link_{k}": v for k, v in self.emulator.totals().items()}
        d["topics"] = dict(d["topics"]) | {f"link:{k}": v for k, v in self.emulator.summary().items()}
        return d

    def on_shutdown(self) -> None:
        self.emulator.close()
