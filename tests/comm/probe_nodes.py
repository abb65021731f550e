"""A node for the security probes, loaded by node processes from this folder (PYTHONPATH).

:class:`Hoarder` keeps what the replay's ego keeps: every packet for a frame its frame source
has not reached yet, freed once the source gets there. Such a node is what a flood of
future-frame messages used to grow without bound; with the inbox's frame gate it can only be
made to keep the budgets' worth.

:class:`SlotPlayer` is the part of the replay's player the channel listens to: per frame
``/clock`` and the positions message saying which slot plays which agent and who the ego is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from v2x.comm.demo_nodes import Listener
from v2x.comm.envelope import Clock, Json, Packet
from v2x.comm.node import Node
from v2x.pipeline.replay.protocol import POSITIONS


class Hoarder(Listener):
    """A :class:`Listener` that also keeps each packet for a frame ahead of its source's newest."""

    def on_configure(self) -> None:
        super().on_configure()
        self.source = self.param("frame_source", "")
        self.kept: dict[int, list[Packet]] = {}
        self.newest = -1
        self.kept_max = 0

    def on_packet(self, topic: str, msg: Packet) -> None:
        super().on_packet(topic, msg)
        frame = int(msg.frame)
        if self.current is not None and self.current.source == self.source:
            self.newest = max(self.newest, frame)
            for f in [f for f in self.kept if f <= self.newest]:
                del self.kept[f]
        elif frame > self.newest:
            self.kept.setdefault(frame, []).append(msg)  # the payload is a view of the received frame
        self.kept_max = max(self.kept_max, self.kept_bytes())

    def kept_bytes(self) -> int:
        return sum(int(m.payload.nbytes) for ms in self.kept.values() for m in ms)

    def on_shutdown(self) -> None:
        super().on_shutdown()
        if self.out:
            path = Path(self.out)
            summary = json.loads(path.read_text())
            status = Path(f"/proc/{os.getpid()}/status").read_text()
            peak_kb = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM"))
            summary |= {
                "kept_bytes": self.kept_bytes(),
                "kept_max": self.kept_max,
                "peak_rss_mb": peak_kb / 1024,
            }
            path.write_text(json.dumps(summary))


class SlotPlayer(Node):
    """Plays ``frames`` (each ``{"slots": {agent id: slot}, "ego_id": id}``) at 20 Hz once the
    channel listens: ``/clock`` and the positions, as the replay's player sends them. After
    ``pause_at`` frames it waits for the file ``go``, so a test can send packets that come
    before their frame's positions."""

    def on_configure(self) -> None:
        self.frames: list[dict] = list(self.param("frames", []))
        self.pause_at = int(self.param("pause_at", len(self.frames)))
        self.go = Path(self.param("go", "/nonexistent"))
        self.k = 0
        self.paused = False
        self.clock = self.create_publisher(Clock, "/clock")
        self.positions = self.create_publisher(Json, POSITIONS)
        self.create_timer(0.05, self.tick, clock="wall")

    def on_activate(self) -> None:
        self.wait_for_subscribers(POSITIONS, 1, 20.0)

    def tick(self) -> None:
        if self.k >= len(self.frames):
            return
        if self.k >= self.pause_at and not self.go.is_file():
            if not self.paused:
                self.paused = True
                self.log.info("paused before frame %d", self.k)
            return
        self.clock.publish(Clock(self.k * 100_000_000, self.k))
        self.positions.publish(Json({"k": self.k, "positions": {}} | self.frames[self.k]))
        self.log.info("played frame %d", self.k)
        self.k += 1
