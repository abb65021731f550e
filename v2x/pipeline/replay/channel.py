"""The channel node as the replay uses it: :class:`~v2x.comm.channel_node.ChannelNode` plus
three things a replay needs.

* Positions from the player each frame, so range models see where every agent is *now* (the
  plain node knows a receiver's position only from the last packet it sent, which for the
  ego's demand is the previous frame's).
* Its emulator's counts on request (``/replay/channel/request`` -> ``/replay/channel/stats``),
  so the ego's results carry the channel's own counts, as ``run_frames`` carries its emulator's.
* The replay's ready message, so the player starts only once it listens.
"""

from __future__ import annotations

import numpy as np

from v2x.comm.channel_node import ChannelNode
from v2x.comm.envelope import Json
from v2x.pipeline.replay.base import ReplayNode
from v2x.pipeline.replay.protocol import CHANNEL_STATS, CHANNEL_STATS_REQUEST, POSITIONS, READY

__all__ = ["ReplayChannelNode"]


class ReplayChannelNode(ChannelNode, ReplayNode):
    role = "channel"

    def on_configure(self) -> None:
        super().on_configure()
        self.started = False
        self._ready = self.create_publisher(Json, READY)
        self._stats = self.create_publisher(Json, CHANNEL_STATS)
        self.create_subscription(Json, POSITIONS, self.on_positions, depth=64)
        self.create_subscription(Json, CHANNEL_STATS_REQUEST, self.on_request)

    def on_positions(self, _topic: str, msg: Json) -> None:
        self.started = True
        for agent_id, xyz in msg.data.get("positions", {}).items():
            self.positions[str(agent_id)] = np.asarray(xyz, dtype=np.float64)

    def on_request(self, _topic: str, msg: Json) -> None:
        self._stats.publish(
            Json(
                {
                    "k": msg.data.get("k"),
                    "totals": self.emulator.totals(),
                    "links": self.emulator.summary(),
                }
            )
        )
