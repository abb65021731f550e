"""Small nodes that show the framework before the perception nodes run: a talker publishing
stand-in payloads of realistic sizes, and a listener counting what arrives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from v2x.comm.messages import Packet, PointCloud
from v2x.comm.node import Node


class Talker(Node):
    """Publishes ``size``-byte packets on ``topic`` at ``rate_hz`` (and optionally point clouds)."""

    def on_configure(self) -> None:
        self.topic = self.param("topic", "/agents/1/features")
        self.size = int(self.param("size", 1000))
        self.count = 0
        self.limit = int(self.param("count", 0))
        self.pub = self.create_publisher(self.topic, Packet)
        self.cloud_pub = (
            self.create_publisher("/agents/1/points", PointCloud) if self.param("points", False) else None
        )
        self.create_timer(1.0 / float(self.param("rate_hz", 10.0)), self.tick)
        self.rng = np.random.default_rng(int(self.param("seed", 0)))

    def tick(self) -> None:
        if self.limit and self.count >= self.limit:
            return
        payload = self.rng.integers(0, 256, self.size, dtype=np.uint8)
        payload[:8] = np.frombuffer(np.int64(self.count).tobytes(), dtype=np.uint8)
        self.pub.publish(
            Packet(payload, sender=self.name, kind="features", frame=self.count, stamp_ns=time.time_ns())
        )
        if self.cloud_pub is not None:
            pts = self.rng.normal(size=(60000, 4)).astype(np.float32)
            self.cloud_pub.publish(
                PointCloud(pts, np.eye(4), agent_id=self.name, stamp_ns=time.time_ns(), frame=self.count)
            )
        self.count += 1


class Listener(Node):
    """Counts packets (and checks their sequence) on ``topic``; writes a summary on exit."""

    def on_configure(self) -> None:
        self.seen: list[int] = []
        self.checksums: list[str] = []
        self.create_subscription(
            self.param("topic", "/agents/"),
            Packet,
            self.on_packet,
            keep_latest=bool(self.param("keep_latest", False)),
        )
        self.delay_s = float(self.param("process_s", 0.0))

    def on_packet(self, topic: str, msg: Packet) -> None:
        self.seen.append(int(np.frombuffer(msg.payload[:8].tobytes(), dtype=np.int64)[0]))
        if self.delay_s:
            time.sleep(self.delay_s)

    def on_shutdown(self) -> None:
        out = self.param("summary")
        if out:
            Path(out).write_text(json.dumps({"seen": self.seen, "diagnostics": self.diagnostics()}))
