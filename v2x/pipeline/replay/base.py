"""What every replay node shares: its settings, the models, and saying it is ready."""

from __future__ import annotations

import gc
import os
import time

from v2x.comm.envelope import Json
from v2x.comm.node import Node
from v2x.pipeline.replay.protocol import END, READY, config_from_dict

__all__ = ["WAKE_PERIOD_S", "ReplayNode"]


#: the wall-clock timer period of the replay's nodes: a safety net only. Messages that move a
#: frame on call the node's step at once, and a node waiting for a moment on the wall clock (a
#: deadline, a frame's due time) sets its timer to fire then; polling every few milliseconds
#: instead cost each idle node about a tenth of a core, which real time on two cores cannot spare
WAKE_PERIOD_S = 0.1


class ReplayNode(Node):
    """A node of the replay: it says on ``/replay/ready`` (every second, until its first frame)
    that it is up, so the player starts only when everyone listens, and a restarted node is
    counted back in."""

    role = "node"

    def setup(self) -> None:
        """Call first in ``on_configure``: settings every replay node reads."""
        self.cfg = config_from_dict(self.param("run", {}, required=True))
        self.realtime = self.param("realtime", False)
        self.wait_s = self.param("wait_s", 120.0)  # the longest wait for a live peer, wall clock
        self.started = False
        self.ended = False
        self._ready = self.create_publisher(Json, READY)
        self.create_subscription(Json, END, self._on_end)

    def load_models(self):
        """The models, on the thread count the launch gives (one per node on a small machine)."""
        import torch

        from v2x.pipeline.stages import Models, warm_up

        torch.set_num_threads(max(1, self.param("threads", 1)))
        t0 = time.perf_counter()
        models = Models.load(self.cfg)
        if self.realtime:  # the first frames must not pay one-time costs
            warm_up(models, self.cfg)
        self.log.info("models loaded in %.1f s", time.perf_counter() - t0)
        # everything loaded so far (modules, weights, codebooks) lives as long as the node: out of
        # the garbage collector's sight, a full collection no longer walks it (it took 140 ms, a
        # frame and a half, every few seconds in a real-time ego node)
        gc.freeze()
        return models

    def on_activate(self) -> None:
        self.say_ready()
        self._ready_timer = self.create_timer(1.0, self.say_ready, clock="wall")

    def say_ready(self) -> None:
        if self.started:
            self._ready_timer.cancel()
            return
        self._ready.publish(
            Json({"node": self.name, "role": self.role, "pid": os.getpid()} | self.ready_info())
        )

    def ready_info(self) -> dict:
        """More to say in the ready message (an agent node: its slot)."""
        return {}

    def _on_end(self, _topic: str, msg: Json) -> None:
        self.ended = True
        self.on_end(msg.data)

    def on_end(self, data: dict) -> None:
        """The player has played every frame (or gave up); default: stop."""
        self.request_stop()
