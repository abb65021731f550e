"""Kernel backend: the same link conditions applied by Linux ``tc`` between network namespaces.

Two namespaces joined by a veth pair form one link; the sender side's egress gets the qdiscs.
``tbf`` shapes the rate; ``netem`` (when the kernel has it) adds delay, jitter and loss. What the
kernel offers is detected at start: this project's CI kernel has ``tbf`` and ``htb`` but no
``netem`` ("Specified qdisc kind is unknown"). Namespaces and links are made with pyroute2, qdiscs
with the ``tc`` command. Needs root.

Why message loss is not done here: ZeroMQ runs over TCP, so a datagram the kernel drops is
retransmitted and shows up as delay, never as a lost message. V2X broadcast has no
retransmission, which is why loss and reception ratio belong to the in-process emulator
(:mod:`v2x.comm.emulator`); this backend is for real shaping of rate and delay.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

__all__ = ["KernelCapabilities", "NetnsLink", "NetnsUnavailableError", "kernel_capabilities"]


class NetnsUnavailableError(RuntimeError):
    """Namespaces or qdiscs cannot be used here (not root, no iproute2, kernel without them)."""


@dataclass
class KernelCapabilities:
    netns: bool = False
    tbf: bool = False
    htb: bool = False
    netem: bool = False
    reasons: dict[str, str] = field(default_factory=dict)


def _run(cmd: list[str], ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + cmd
    return subprocess.run(full, capture_output=True, text=True, check=check, timeout=20)


def kernel_capabilities() -> KernelCapabilities:
    """Probe, in a throwaway namespace, which qdiscs this kernel offers."""
    caps = KernelCapabilities()
    if os.geteuid() != 0:
        caps.reasons["netns"] = "needs root"
        return caps
    if not shutil.which("ip") or not shutil.which("tc"):
        caps.reasons["netns"] = "iproute2 (ip, tc) not installed"
        return caps
    ns = f"v2xprobe{uuid.uuid4().hex[:6]}"
    try:
        r = _run(["ip", "netns", "add", ns], check=False)
        if r.returncode:
            caps.reasons["netns"] = r.stderr.strip()
            return caps
        caps.netns = True
        _run(["ip", "link", "set", "lo", "up"], ns)
        for kind, args in (
            ("netem", ["netem", "delay", "10ms"]),
            ("tbf", ["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"]),
            ("htb", ["htb", "default", "1"]),
        ):
            r = _run(["tc", "qdisc", "add", "dev", "lo", "root", *args], ns, check=False)
            ok = r.returncode == 0
            setattr(caps, kind, ok)
            if not ok:
                caps.reasons[kind] = r.stderr.strip()
            _run(["tc", "qdisc", "del", "dev", "lo", "root"], ns, check=False)
    finally:
        _run(["ip", "netns", "del", ns], check=False)
    return caps


class NetnsLink:
    """Two namespaces ``a`` and ``b`` joined by veth, addresses 10.<x>.<y>.1 and .2 (inside them only)."""

    def __init__(self, subnet_id: int | None = None) -> None:
        caps = kernel_capabilities()
        if not caps.netns:
            raise NetnsUnavailableError(caps.reasons.get("netns", "network namespaces unavailable"))
        self.caps = caps
        tag = uuid.uuid4().hex[:6]
        self.ns_a, self.ns_b = f"v2xa{tag}", f"v2xb{tag}"
        sid = subnet_id if subnet_id is not None else int(tag[:4], 16) % 250 + 1
        self.addr_a, self.addr_b = f"10.231.{sid}.1", f"10.231.{sid}.2"
        self._created = False

    def __enter__(self) -> NetnsLink:
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def create(self) -> None:
        from pyroute2 import IPRoute, NetNS, netns

        netns.create(self.ns_a)
        netns.create(self.ns_b)
        self._created = True
        va, vb = f"va{self.ns_a[4:]}", f"vb{self.ns_b[4:]}"
        with IPRoute() as ip:
            ip.link("add", ifname=va, kind="veth", peer=vb)
            ip.link("set", index=ip.link_lookup(ifname=va)[0], net_ns_fd=self.ns_a)
            ip.link("set", index=ip.link_lookup(ifname=vb)[0], net_ns_fd=self.ns_b)
        for ns, dev, addr in ((self.ns_a, va, self.addr_a), (self.ns_b, vb, self.addr_b)):
            with NetNS(ns) as ip:
                idx = ip.link_lookup(ifname=dev)[0]
                ip.addr("add", index=idx, address=addr, prefixlen=24)
                ip.link("set", index=idx, state="up")
                ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        self.dev_a, self.dev_b = va, vb

    def shape(
        self, rate_bps: float | None = None, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss: float = 0.0
    ) -> list[str]:
        """Apply conditions on a -> b. Returns the qdiscs used; refuses what the kernel lacks."""
        used = []
        netem_args = []
        if delay_ms or jitter_ms:
            netem_args += ["delay", f"{delay_ms}ms"] + ([f"{jitter_ms}ms"] if jitter_ms else [])
        if loss:
            netem_args += ["loss", f"{100 * loss}%"]
        if netem_args and not self.caps.netem:
            raise NetnsUnavailableError(
                f"this kernel has no netem qdisc ({self.caps.reasons.get('netem', '')}): delay/loss unavailable"
            )
        if rate_bps and netem_args:
            _run(
                ["tc", "qdisc", "add", "dev", self.dev_a, "root", "handle", "1:", "netem", *netem_args],
                self.ns_a,
            )
            _run(
                [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    self.dev_a,
                    "parent",
                    "1:1",
                    "handle",
                    "10:",
                    "tbf",
                    "rate",
                    f"{int(rate_bps)}bit",
                    "burst",
                    "64kbit",
                    "latency",
                    "500ms",
                ],
                self.ns_a,
            )
            used = ["netem", "tbf"]
        elif rate_bps:
            _run(
                [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    self.dev_a,
                    "root",
                    "tbf",
                    "rate",
                    f"{int(rate_bps)}bit",
                    "burst",
                    "64kbit",
                    "latency",
                    "500ms",
                ],
                self.ns_a,
            )
            used = ["tbf"]
        elif netem_args:
            _run(["tc", "qdisc", "add", "dev", self.dev_a, "root", "netem", *netem_args], self.ns_a)
            used = ["netem"]
        return used

    def exec(self, ns: str, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)

    def delete(self) -> None:
        if not self._created:
            return
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self._created = False
