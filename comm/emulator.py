"""The network between agents, applied to real messages: per-link budgets, channel models and
pose noise, with every packet's fate accounted for and traced.

Pure logic with explicit times, shared by the in-process pipeline (simulated clock) and the
channel node (which adds sockets and, in real time, waits until each delivery time).
Accounting always closes: ``sent = delivered + dropped_channel + dropped_budget``.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from v2x.comm.budget import LinkBudget
from v2x.comm.wire import HEADER, MAGIC
from v2x.comm.wire_points import HEADER_BYTES as POINTS_HEADER_BYTES
from v2x.comm.wire_points import MAGIC as POINTS_MAGIC
from v2x.comm.wire_points import pose_of, with_pose
from v2x.sim.channel import Channel, ChannelConfig, noisy_pose, preset

__all__ = ["ChannelEmulator", "Delivery", "perturb_pose"]

_POSE = struct.Struct("<ddff")  # x, y, z, yaw at byte 24 of a wire header


def perturb_pose(data: bytes, cfg: ChannelConfig, rng: np.random.Generator) -> bytes:
    """The same message with its sender pose as the receiver's error model sees it (CRC redone):
    wire-format messages (``V2XM``) and points messages (``V2XP``, early fusion). Other bytes
    carry no pose and pass unchanged."""
    if cfg.pose_sigma_xyz <= 0 and cfg.pose_sigma_yaw_deg <= 0:
        return data
    if data[:4] == POINTS_MAGIC and len(data) >= POINTS_HEADER_BYTES:
        return with_pose(data, noisy_pose(pose_of(data), cfg, rng))
    if data[:4] != MAGIC or len(data) < HEADER.size:
        return data
    buf = bytearray(data)
    x, y, z, yaw = _POSE.unpack_from(buf, 24)
    dx, dy, dz = rng.normal(0.0, cfg.pose_sigma_xyz, 3)
    dyaw = np.radians(rng.normal(0.0, cfg.pose_sigma_yaw_deg))
    _POSE.pack_into(buf, 24, x + dx, y + dy, z + dz, yaw + dyaw)
    struct.pack_into("<I", buf, 60, zlib.crc32(bytes(buf[:60]) + bytes(buf[HEADER.size :])) & 0xFFFFFFFF)
    return bytes(buf)


@dataclass
class Delivery:
    sender: str
    receiver: str
    data: bytes
    sent_s: float
    delivered_s: float | None
    reason: str | None  # None when delivered; budget / range / prr / loss / burst / queue


@dataclass
class _LinkStats:
    sent: int = 0
    delivered: int = 0
    dropped_channel: int = 0
    dropped_budget: int = 0
    delayed_budget: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0
    latency_s: list[float] = field(default_factory=list)


class ChannelEmulator:
    """All directed links between agents, created on first use, each seeded from (seed, link)."""

    def __init__(
        self,
        cfg: ChannelConfig | str = "ideal",
        seed: int = 0,
        budget_bps: float | None = None,
        budget_policy: str = "drop",
        frame_hz: float = 10.0,
        trace: str | Path | IO[str] | None = None,
    ) -> None:
        self.cfg = preset(cfg) if isinstance(cfg, str) else cfg
        self.seed = seed
        self.budget_bps = budget_bps
        self.budget_policy = budget_policy
        self.frame_hz = frame_hz
        self._links: dict[tuple[str, str], tuple[Channel, LinkBudget | None, np.random.Generator]] = {}
        self.stats: dict[tuple[str, str], _LinkStats] = {}
        self._trace_fh = open(trace, "a") if isinstance(trace, str | Path) else trace  # noqa: SIM115

    def _link(self, sender: str, receiver: str):
        key = (sender, receiver)
        if key not in self._links:
            h = zlib.crc32(f"{sender}->{receiver}".encode())
            rng = np.random.default_rng([self.seed, h])
            # its bucket's burst is the per-frame allowance that senders fit their messages to
            budget = (
                LinkBudget(self.budget_bps, self.frame_hz, self.budget_policy) if self.budget_bps else None
            )
            self._links[key] = (Channel(self.cfg, np.random.default_rng([self.seed, h, 1])), budget, rng)
            self.stats[key] = _LinkStats()
        return self._links[key]

    def send(self, sender: str, receiver: str, data: bytes, now_s: float, distance: float = 0.0) -> Delivery:
        channel, budget, rng = self._link(sender, receiver)
        st = self.stats[(sender, receiver)]
        st.sent += 1
        st.bytes_sent += len(data)
        t = now_s
        if budget is not None:
            ok, wait = budget.admit(len(data), now_s)
            if not ok:
                st.dropped_budget += 1
                return self._trace(Delivery(sender, receiver, data, now_s, None, "budget"), distance)
            if wait > 0:
                st.delayed_budget += 1
                t = now_s + wait
        fate = channel.send(t, len(data), distance)
        if not fate.delivered:
            st.dropped_channel += 1
            return self._trace(
                Delivery(sender, receiver, data, now_s, None, fate.reason), distance, fate.fragments
            )
        st.delivered += 1
        st.bytes_delivered += len(data)
        st.latency_s.append(fate.delivered_s - now_s)
        out = perturb_pose(data, self.cfg, rng)
        return self._trace(
            Delivery(sender, receiver, out, now_s, fate.delivered_s, None), distance, fate.fragments
        )

    def _trace(self, d: Delivery, distance: float, fragments: int = 0) -> Delivery:
        if self._trace_fh is not None:
            self._trace_fh.write(
                json.dumps(
                    {
                        "link": f"{d.sender}->{d.receiver}",
                        "sent_s": round(d.sent_s, 6),
                        "size": len(d.data),
                        "fragments": fragments,
                        "distance": round(distance, 2),
                        "delivered": d.reason is None,
                        "delivered_s": None if d.delivered_s is None else round(d.delivered_s, 6),
                        "reason": d.reason,
                    }
                )
                + "\n"
            )
        return d

    def summary(self) -> dict:
        out = {}
        for (s, r), st in self.stats.items():
            lat = np.array(st.latency_s) * 1000 if st.latency_s else np.zeros(0)
            out[f"{s}->{r}"] = {
                "sent": st.sent,
                "delivered": st.delivered,
                "dropped_channel": st.dropped_channel,
                "dropped_budget": st.dropped_budget,
                "delayed_budget": st.delayed_budget,
                "bytes_sent": st.bytes_sent,
                "bytes_delivered": st.bytes_delivered,
                "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
                "latency_ms_p95": float(np.percentile(lat, 95)) if len(lat) else None,
            }
        return out

    def totals(self) -> dict[str, int]:
        t = {"sent": 0, "delivered": 0, "dropped_channel": 0, "dropped_budget": 0}
        for st in self.stats.values():
            t["sent"] += st.sent
            t["delivered"] += st.delivered
            t["dropped_channel"] += st.dropped_channel
            t["dropped_budget"] += st.dropped_budget
        return t

    def close(self) -> None:
        if self._trace_fh is not None:
            self._trace_fh.flush()
