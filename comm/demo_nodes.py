"""Small nodes that show the framework before the perception nodes run: a talker publishing
stand-in payloads of realistic sizes, a listener that checks and counts what arrives, and a
clock that publishes simulated time.

Payload sizes to try (``size`` parameter): a codebook message is about 1-10 KB, a Where2comm
sparse feature message about 100 KB, a raw 64-channel BEV feature map about 4 MB.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from v2x.comm.envelope import Clock, Packet, PointCloud
from v2x.comm.node import Node

__all__ = ["Listener", "SimClock", "Talker", "payload_for"]


def payload_for(seq: int, size: int, seed: int = 0) -> np.ndarray:
    """A reproducible stand-in payload: its first 8 bytes are ``seq``, the rest pseudo-random,
    so a receiver can check each message bit for bit."""
    size = max(size, 8)
    out = np.random.default_rng([seed, seq]).integers(0, 256, size, dtype=np.uint8)
    out[:8] = np.frombuffer(np.int64(seq).tobytes(), dtype=np.uint8)
    return out


class Talker(Node):
    """Publishes ``size``-byte packets on ``topic`` at ``rate_hz`` (``count`` 0: forever), and
    with ``points: true`` a 60k-point cloud per tick too. With ``wait_subscribers: N`` it first
    waits (up to ``wait_s``) until N subscribers have joined, so none misses the first message."""

    def on_configure(self) -> None:
        self.topic = self.param("topic", f"/agents/{self.name}/features")
        self.size = self.param("size", 1000)
        self.limit = self.param("count", 0)
        self.seed = self.param("seed", 0)
        self.count = 0
        self.pub = self.create_publisher(Packet, self.topic)
        self.cloud_pub = None
        if self.param("points", False):
            self.cloud_pub = self.create_publisher(PointCloud, f"/agents/{self.name}/points")
        self.create_timer(1.0 / self.param("rate_hz", 10.0), self.tick)
        self.wait_subscribers = self.param("wait_subscribers", 0)
        self.wait_s = self.param("wait_s", 10.0)

    def on_activate(self) -> None:
        if self.wait_subscribers and not self.wait_for_subscribers(
            self.topic, self.wait_subscribers, self.wait_s
        ):
            self.log.warning(
                "only %d subscriber(s) after %.1f s; starting anyway", self.pub.subscribers(), self.wait_s
            )

    def tick(self) -> None:
        if self.limit and self.count >= self.limit:
            if self.count == self.limit:
                self.log.info("sent all %d messages", self.limit)
                self.count += 1
            return
        now = self.now_ns()
        self.pub.publish(
            Packet(
                payload_for(self.count, self.size, self.seed),
                sender=self.name,
                kind="features",
                frame=self.count,
                stamp_ns=now,
                sent_ns=now,
            )
        )
        if self.cloud_pub is not None:
            pts = np.random.default_rng(self.count).normal(size=(60000, 4)).astype(np.float32)
            self.cloud_pub.publish(
                PointCloud(pts, np.eye(4), agent_id=self.name, stamp_ns=now, frame=self.count)
            )
        self.count += 1


class Listener(Node):
    """Subscribes to ``topic`` (default every agent's features), checks every payload against
    :func:`payload_for`, optionally works ``process_s`` per message, logs ``received all N``
    once ``expect`` messages have come, and writes a summary (sequence numbers seen, corrupted
    count, digests, diagnostics) to ``summary`` on exit."""

    def on_configure(self) -> None:
        self.seen: list[int] = []
        self.senders: list[str] = []
        #: wall-clock time from the original sender's publish to here (channel delay included)
        self.end_to_end_ms: list[float] = []
        self.corrupted = 0
        self.digest = hashlib.sha256()
        self.delay_s = self.param("process_s", 0.0)
        self.seed = self.param("seed", 0)
        self.check = self.param("check", True)
        self.out = self.param("summary", "")
        #: say so in the log once this many messages have come (tests wait for it)
        self.expect = self.param("expect", 0)
        self.create_subscription(
            Packet,
            self.param("topic", "/agents/*/features"),
            self.on_packet,
            keep_latest=self.param("keep_latest", False),
        )

    def on_packet(self, topic: str, msg: Packet) -> None:
        seq = (
            int(np.frombuffer(msg.payload[:8].tobytes(), dtype=np.int64)[0]) if msg.payload.size >= 8 else -1
        )
        if self.check and not np.array_equal(msg.payload, payload_for(seq, msg.payload.size, self.seed)):
            self.corrupted += 1
        self.seen.append(seq)
        self.senders.append(msg.sender)
        if getattr(msg, "sent_ns", 0):
            self.end_to_end_ms.append((time.time_ns() - msg.sent_ns) / 1e6)
        self.digest.update(msg.payload.data)
        if self.expect and len(self.seen) == self.expect:
            self.log.info("received all %d", self.expect)
        if self.delay_s:
            time.sleep(self.delay_s)

    def on_shutdown(self) -> None:
        if self.out:
            summary = {
                "seen": self.seen,
                "senders": self.senders,
                "end_to_end_ms": self.end_to_end_ms,
                "corrupted": self.corrupted,
                "diagnostics": self.diagnostics(),
            }
            Path(self.out).write_text(json.dumps(summary))


class SimClock(Node):
    """Publishes simulated time on ``/clock``: ``step_ms`` per tick, ``rate_hz`` ticks per
    wall second (a replay runs its clock the same way)."""

    def on_configure(self) -> None:
        self.step_ns = int(self.param("step_ms", 100.0) * 1e6)
        self.t_ns = self.param("start_ns", 0)
        self.pub = self.create_publisher(Clock, "/clock")
        self.frame = 0
        self.create_timer(1.0 / self.param("rate_hz", 10.0), self.tick, clock="wall")

    def tick(self) -> None:
        self.pub.publish(Clock(self.t_ns, self.frame))
        self.t_ns += self.step_ns
        self.frame += 1
