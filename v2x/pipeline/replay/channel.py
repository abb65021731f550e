"""The channel node as the replay uses it: :class:`~v2x.comm.channel_node.ChannelNode` plus
what a replay needs.

* Positions from the player each frame, so range models see where every agent is *now* (the
  plain node knows a receiver's position only from the last packet it sent, which for the
  ego's demand is the previous frame's).
* Its emulator's counts on request (``/replay/channel/request`` -> ``/replay/channel/stats``),
  so the ego's results carry the channel's own counts, as ``run_frames`` carries its emulator's.
  The ego asks after every frame (so a run cut short keeps them) and once more at the end.
* The replay's ready message, so the player starts only once it listens.
* Stopping when the ego has written its results (``/replay/ego/finished``): the ego asks for the
  final counts after the player's end, so the channel outlives the end by that much, and a plain
  ``v2x launch`` of a replay file ends by itself.
* Who may speak for which agent id. A ``Packet``'s ``sender`` (the log's agent id) is data, not
  the key: an agent node with a valid key could spend another agent's link budget by naming it.
  The player's positions (from the ``player`` node only) say, per frame, which slot plays which
  agent and which id the ego has; a packet is forwarded only when the node that sent it (the
  header's ``src``, bound to its key on a secured inbox) plays its ``sender`` in its ``frame``:
  slot ``i`` is node ``slot_nodes[i]`` (default ``agent<i>``, as ``v2x replay`` names them), the
  ego is node ``ego_node`` (``ego``). Others are refused and counted (``refused:channel.<reason>``
  and ``...:<agent>``). A packet that overtook its frame's positions is held until they come.
"""

from __future__ import annotations

import numpy as np

from v2x.comm.channel_node import ChannelNode
from v2x.comm.envelope import Json, Packet
from v2x.comm.errors import DecodeError, count_refusal
from v2x.pipeline.replay.base import ReplayNode
from v2x.pipeline.replay.protocol import (
    CHANNEL_STATS,
    CHANNEL_STATS_REQUEST,
    EGO_FINISHED,
    POSITIONS,
    READY,
)

__all__ = ["RefusedPacketError", "ReplayChannelNode"]

#: frames whose speakers are remembered: a packet for an older frame is refused (``unknown_frame``)
SPEAKER_FRAMES = 256
#: packets held for a frame whose positions have not come yet (``early_limit`` beyond); the inbox's
#: frame gate already bounds their bytes, this bounds their number where no frame source is set
MAX_EARLY = 1024


class RefusedPacketError(DecodeError):
    """A packet the replay's channel refuses; counted like the decoders' refusals, by reason and
    claimed agent: ``impersonation`` (its node does not play that agent in that frame),
    ``unknown_frame`` (a frame it has no slot assignment for), ``early_limit`` (too many packets
    wait for their frame's positions), ``not_player`` (positions from a node other than the player)."""

    decoder = "channel"


class ReplayChannelNode(ChannelNode, ReplayNode):
    role = "channel"

    def on_configure(self) -> None:
        super().on_configure()
        self.started = False
        self._ready = self.create_publisher(Json, READY)
        self._stats = self.create_publisher(Json, CHANNEL_STATS)
        self.create_subscription(Json, POSITIONS, self.on_positions, depth=64)
        self.create_subscription(Json, CHANNEL_STATS_REQUEST, self.on_request)
        self.create_subscription(Json, EGO_FINISHED, lambda _topic, _msg: self.request_stop())
        self.player = str(self.param("player", "player"))
        self.slot_nodes = [str(n) for n in self.param("slot_nodes", [])]
        self.ego_node = str(self.param("ego_node", "ego"))
        #: frame -> {agent id: the node that may send for it}, from the player's positions
        self.speakers: dict[int, dict[str, str]] = {}
        self.newest = -1  # the newest frame with positions
        self._early: list[tuple[str, Packet, str]] = []  # (topic, packet, sending node)

    def _slot_node(self, slot: int) -> str:
        return self.slot_nodes[slot] if 0 <= slot < len(self.slot_nodes) else f"agent{slot}"

    def on_positions(self, _topic: str, msg: Json) -> None:
        src = self.current.source if self.current is not None else ""
        if src != self.player:  # only the player says who is where, and who plays whom
            self._refuse("not_player", src, "node %r sent positions; only %r may", src, self.player)
            return
        self.started = True
        for agent_id, xyz in msg.data.get("positions", {}).items():
            self.positions[str(agent_id)] = np.asarray(xyz, dtype=np.float64)
        k = int(msg.data.get("k", -1))
        if k < 0:
            return
        speakers = {str(a): self._slot_node(int(s)) for a, s in (msg.data.get("slots") or {}).items()}
        if msg.data.get("ego_id") is not None:
            speakers[str(msg.data["ego_id"])] = self.ego_node
        self.speakers[k] = speakers
        self.newest = max(self.newest, k)
        for old in [f for f in self.speakers if f <= self.newest - SPEAKER_FRAMES]:
            del self.speakers[old]
        due = [e for e in self._early if e[1].frame <= self.newest]
        if due:
            self._early = [e for e in self._early if e[1].frame > self.newest]
            for topic, pkt, sender in due:
                self._admit(topic, pkt, sender)

    def on_packet(self, topic: str, pkt: Packet) -> None:
        """Forward a packet only if the node that sent it plays its ``sender`` in its frame."""
        src = self.current.source if self.current is not None else ""
        if int(pkt.frame) > self.newest:  # it overtook the player's word on its frame: hold it
            if len(self._early) >= MAX_EARLY:
                self._refuse("early_limit", pkt.sender, "%d packets wait for positions", len(self._early))
                return
            self.counters["early_packets"] += 1
            self._early.append((topic, pkt, src))
            return
        self._admit(topic, pkt, src)

    def _admit(self, topic: str, pkt: Packet, src: str) -> None:
        speakers = self.speakers.get(int(pkt.frame))
        if speakers is None:
            self._refuse("unknown_frame", pkt.sender, "%s: no slot assignment for frame %d", src, pkt.frame)
        elif speakers.get(str(pkt.sender)) != src:
            self._refuse(
                "impersonation",
                pkt.sender,
                "node %r sent a packet as agent %r, which it does not play in frame %d",
                src,
                pkt.sender,
                pkt.frame,
            )
        else:
            super().on_packet(topic, pkt)

    def _refuse(self, reason: str, claimed: str, text: str, *args: object) -> None:
        """Count a refusal by reason and claimed agent (or node), and log it (rate-limited)."""
        count_refusal(self.counters, RefusedPacketError(text % args, reason=reason), claimed)
        self._problems.warning(f"channel.{reason}", "refused: " + text, *args)

    def on_request(self, _topic: str, msg: Json) -> None:
        self._stats.publish(
            Json(
                {
                    "k": msg.data.get("k"),
                    "final": bool(msg.data.get("final")),  # the ego's request at the end
                    "totals": self.emulator.totals(),
                    "links": self.emulator.summary(),
                }
            )
        )
