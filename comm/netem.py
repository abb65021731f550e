"""Kernel backend: link conditions applied by Linux ``tc`` between two network namespaces.

Two namespaces joined by a veth pair form one link, ``a -> b``; the egress of ``a``'s end gets
the qdiscs (the way back, ``b -> a``, carrying TCP acknowledgements, is left alone):

* ``tbf`` shapes the rate (and bounds the queue: a packet may wait at most ``latency`` in it);
* ``netem`` adds delay, jitter and loss (Bernoulli or Gilbert-Elliott) where the kernel has it.
  With both, netem is the root and tbf its child.

What the kernel offers is detected by :func:`kernel_capabilities`, which tries each qdisc on the
loopback of a throw-away namespace. This project's machine has ``tbf`` and ``htb`` but no
``netem``: ``tc`` answers "Error: Specified qdisc kind is unknown." Namespaces and the veth pair
are made with pyroute2, qdiscs with the ``tc`` command. Needs root and iproute2.

Namespaces are named ``v2x-<pid>-<tag>-<role>``. They are deleted by :meth:`NetnsLink.delete`
(also on leaving the ``with`` block, on an error half-way through :meth:`NetnsLink.create`, and
at interpreter exit); :func:`cleanup_stale` deletes those whose creating process is gone.

Why message loss is not done here: ZeroMQ runs over TCP, so a segment the kernel drops is
retransmitted and shows up as delay, never as a lost message. V2X broadcast has no
retransmission, which is why loss and reception ratio belong to the in-process emulator
(:mod:`v2x.comm.emulator`); this backend is for real shaping of rate and delay.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from v2x.comm.procs import pid_alive

__all__ = [
    "KernelCapabilities",
    "NetnsCommandError",
    "NetnsLink",
    "NetnsUnavailableError",
    "cleanup_stale",
    "kernel_capabilities",
    "netem_args",
    "tbf_args",
]

NS_PREFIX = "v2x-"
NETNS_DIR = Path("/run/netns")


class NetnsUnavailableError(RuntimeError):
    """Namespaces or qdiscs cannot be used here (not root, no iproute2, kernel without them)."""


class NetnsCommandError(RuntimeError):
    """An ``ip`` or ``tc`` command failed; the message carries its stderr."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(cmd)} -> exit {returncode}: {stderr.strip()}")
        self.cmd, self.returncode, self.stderr = cmd, returncode, stderr


@dataclass
class KernelCapabilities:
    netns: bool = False
    tbf: bool = False
    htb: bool = False
    netem: bool = False
    reasons: dict[str, str] = field(default_factory=dict)  # why each missing one is missing

    def summary(self) -> str:
        parts = [f"{k}: {'yes' if getattr(self, k) else 'no'}" for k in ("netns", "tbf", "htb", "netem")]
        why = "; ".join(f"{k}: {v}" for k, v in self.reasons.items())
        return ", ".join(parts) + (f" ({why})" if why else "")


def _run(cmd: list[str], ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + cmd
    r = subprocess.run(full, capture_output=True, text=True, check=False, timeout=20)
    if check and r.returncode:
        raise NetnsCommandError(full, r.returncode, r.stderr)
    return r


# -- namespaces this process made, and clean-up ---------------------------------------------------

_LIVE: set[str] = set()


def _ns_name(tag: str, role: str) -> str:
    return f"{NS_PREFIX}{os.getpid()}-{tag}-{role}"


def _delete_ns(name: str) -> None:
    # deleting a namespace also destroys the veth end inside it, and with it the peer
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
    _LIVE.discard(name)


@atexit.register
def _delete_live() -> None:
    for name in list(_LIVE):
        with contextlib.suppress(Exception):
            _delete_ns(name)


def cleanup_stale() -> list[str]:
    """Delete ``v2x-<pid>-...`` namespaces whose creating process no longer exists (left behind by a
    killed run). Namespaces of live processes, and any not named by this module, are left alone."""
    if not NETNS_DIR.is_dir() or os.geteuid() != 0:
        return []
    gone = []
    for name in sorted(os.listdir(NETNS_DIR)):
        if not name.startswith(NS_PREFIX):
            continue
        pid = name[len(NS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            _delete_ns(name)
            gone.append(name)
    return gone


# -- capabilities --------------------------------------------------------------------------------

_PROBES = (
    ("netem", ["netem", "delay", "10ms"]),
    ("tbf", ["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"]),
    ("htb", ["htb", "default", "1"]),
)
_CAPS: KernelCapabilities | None = None


def _probe() -> KernelCapabilities:
    caps = KernelCapabilities()
    if os.geteuid() != 0:
        caps.reasons["netns"] = "needs root"
        return caps
    if not shutil.which("ip") or not shutil.which("tc"):
        caps.reasons["netns"] = "iproute2 (ip, tc) not installed"
        return caps
    ns = _ns_name(uuid.uuid4().hex[:6], "probe")
    _LIVE.add(ns)
    try:
        r = _run(["ip", "netns", "add", ns], check=False)
        if r.returncode:
            caps.reasons["netns"] = r.stderr.strip() or f"ip netns add failed ({r.returncode})"
            return caps
        r = _run(["ip", "link", "set", "lo", "up"], ns, check=False)
        if r.returncode:
            caps.reasons["netns"] = r.stderr.strip() or "cannot run commands in a namespace"
            return caps
        caps.netns = True
        for kind, args in _PROBES:
            r = _run(["tc", "qdisc", "add", "dev", "lo", "root", *args], ns, check=False)
            setattr(caps, kind, r.returncode == 0)
            if r.returncode:
                caps.reasons[kind] = r.stderr.strip()
            _run(["tc", "qdisc", "del", "dev", "lo", "root"], ns, check=False)
    finally:
        _delete_ns(ns)
    return caps


def kernel_capabilities(refresh: bool = False) -> KernelCapabilities:
    """Which of netns, tbf, htb and netem work here, probed once per process in a throw-away
    namespace; ``reasons`` holds the answer of each that failed."""
    global _CAPS
    if _CAPS is None or refresh:
        _CAPS = _probe()
    return dataclasses.replace(_CAPS, reasons=dict(_CAPS.reasons))


# -- qdisc arguments -----------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".") or "0"


def tbf_args(rate_bps: float, burst_bytes: int | None = None, latency_s: float = 0.5) -> list[str]:
    """``tbf rate R burst B latency L``. The default burst is 2 ms of the rate, at least 16 KiB (it
    must hold a full-size packet, and a small one starves the rate when timers fire late)."""
    if rate_bps <= 0:
        raise ValueError(f"rate must be positive, got {rate_bps}")
    burst = int(burst_bytes) if burst_bytes else max(16384, int(rate_bps / 8 * 0.002))
    return [
        "tbf",
        "rate",
        f"{int(rate_bps)}bit",
        "burst",
        str(burst),
        "latency",
        f"{_num(latency_s * 1e3)}ms",
    ]


def netem_args(
    delay_s: float = 0.0,
    jitter_s: float = 0.0,
    distribution: str | None = None,
    loss: float = 0.0,
    burst=None,
) -> list[str]:
    """netem's arguments (empty when there is nothing for netem to do).

    ``distribution``: ``normal``, ``pareto`` or ``paretonormal`` (tables shipped with iproute2);
    without it netem draws jitter uniformly. ``burst``: a :class:`~v2x.sim.channel.GilbertElliott`
    given as ``loss gemodel p r 1-h 1-k`` (percent); Bernoulli ``loss`` on top of it is folded into
    both states' loss, as netem takes one loss model.
    """
    args: list[str] = []
    if delay_s > 0 or jitter_s > 0:
        args += ["delay", f"{_num(delay_s * 1e3)}ms"]
        if jitter_s > 0:
            args += [f"{_num(jitter_s * 1e3)}ms"]
            if distribution:
                args += ["distribution", distribution]
    if burst is not None:
        bad = 1 - (1 - burst.loss_bad) * (1 - loss)
        good = 1 - (1 - burst.loss_good) * (1 - loss)
        args += ["loss", "gemodel", *(f"{_num(100 * p)}%" for p in (burst.p, burst.r, bad, good))]
    elif loss > 0:
        args += ["loss", "random", f"{_num(100 * loss)}%"]
    return args


_DISTRIBUTIONS = {"normal": "normal", "pareto": "pareto"}  # the emulator's exponential has no table


# -- the link ------------------------------------------------------------------------------------

_SINK = r"""
import json, socket, sys, time
port, warmup, kind = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
first = mark = last = None
n = n_mark = 0
if kind == "zmq":
    import zmq
    ctx = zmq.Context(); s = ctx.socket(zmq.PULL); s.bind(f"tcp://*:{port}")
    print("ready", flush=True)
    while True:
        m = s.recv(copy=False)
        if len(m) == 0:
            break
        now = time.monotonic(); n += len(m)
        first = first or now
        if mark is None and now - first >= warmup:
            mark, n_mark = now, n
    last = time.monotonic()
else:
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen(1)
    print("ready", flush=True)
    c, _ = srv.accept(); buf = bytearray(1 << 20)
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        now = time.monotonic(); n += k
        first = first or now
        if mark is None and now - first >= warmup:
            mark, n_mark = now, n
        last = now
print(json.dumps({"bytes": n, "first": first, "mark": mark, "bytes_at_mark": n_mark, "last": last}))
"""

_SOURCE = r"""
import socket, sys, time
host, port, seconds, kind = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
chunk = bytes(65536)
if kind == "zmq":
    import zmq
    ctx = zmq.Context(); s = ctx.socket(zmq.PUSH); s.setsockopt(zmq.SNDHWM, 16)
    s.connect(f"tcp://{host}:{port}")
    send = s.send
else:
    end = time.monotonic() + 10
    while True:
        try:
            s = socket.create_connection((host, port), timeout=10); break
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)
    send = s.sendall
print("go", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    send(chunk)
if kind == "zmq":
    s.send(b""); s.close(linger=30000); ctx.term()
else:
    s.close()
"""


_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65536)
    if data == b"stop":
        break
    s.sendto(data, addr)
"""

_PROBE = r"""
import json, socket, struct, sys, time
host, port, n, spacing, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, port)); s.setblocking(False)
sent, rtt = {}, {}
pad = bytes(max(0, size - 12))
def drain():
    while True:
        try:
            d = s.recv(65536)
        except BlockingIOError:
            return
        k, t = struct.unpack_from("<Id", d)
        rtt.setdefault(k, time.monotonic() - t)
start = time.monotonic()
for k in range(n):
    while time.monotonic() < start + k * spacing:
        drain(); time.sleep(0.0002)
    t = time.monotonic(); sent[k] = t
    s.send(struct.pack("<Id", k, t) + pad)
end = time.monotonic() + 2.0
while time.monotonic() < end and len(rtt) < n:
    drain(); time.sleep(0.001)
print(json.dumps({"sent": n, "received": len(rtt), "rtt_s": [rtt[k] for k in sorted(rtt)]}))
"""


class NetnsLink:
    """Two namespaces ``ns_a`` and ``ns_b`` joined by veth; addresses 10.231.<n>.1 and .2 exist
    inside them only, so the link touches nothing outside."""

    def __init__(self, subnet_id: int | None = None) -> None:
        caps = kernel_capabilities()
        if not caps.netns:
            raise NetnsUnavailableError(caps.reasons.get("netns", "network namespaces unavailable"))
        self.caps = caps
        tag = uuid.uuid4().hex[:6]
        self.ns_a, self.ns_b = _ns_name(tag, "a"), _ns_name(tag, "b")
        self.dev_a, self.dev_b = f"v2x{tag}a", f"v2x{tag}b"
        sid = subnet_id if subnet_id is not None else int(tag[:4], 16) % 250 + 1
        self.addr_a, self.addr_b = f"10.231.{sid}.1", f"10.231.{sid}.2"
        self.qdiscs: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._created = False

    def __enter__(self) -> NetnsLink:
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def create(self) -> None:
        """Make both namespaces and the veth pair; on any error, delete what was made and re-raise."""
        from pyroute2 import IPRoute, NetNS, netns

        self._created = True
        _LIVE.update((self.ns_a, self.ns_b))
        try:
            netns.create(self.ns_a)
            netns.create(self.ns_b)
            with IPRoute() as ip:
                ip.link("add", ifname=self.dev_a, kind="veth", peer=self.dev_b)
                ip.link("set", index=ip.link_lookup(ifname=self.dev_a)[0], net_ns_fd=self.ns_a)
                ip.link("set", index=ip.link_lookup(ifname=self.dev_b)[0], net_ns_fd=self.ns_b)
            for ns, dev, addr in ((self.ns_a, self.dev_a, self.addr_a), (self.ns_b, self.dev_b, self.addr_b)):
                with NetNS(ns) as ip:
                    idx = ip.link_lookup(ifname=dev)[0]
                    ip.addr("add", index=idx, address=addr, prefixlen=24)
                    ip.link("set", index=idx, state="up")
                    ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        except BaseException:
            self.delete()
            raise

    # -- shaping ---------------------------------------------------------------------------------

    def unshape(self) -> None:
        """Remove the qdiscs on ``a -> b`` (back to the default)."""
        _run(["tc", "qdisc", "del", "dev", self.dev_a, "root"], self.ns_a, check=False)
        self.qdiscs = []

    def shape(
        self,
        rate_bps: float | None = None,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        *,
        burst=None,
        distribution: str | None = None,
        burst_bytes: int | None = None,
        queue_s: float = 0.5,
    ) -> list[str]:
        """Replace the conditions on ``a -> b``; returns the qdiscs used. Refuses (with
        :class:`NetnsUnavailableError`) delay, jitter or loss where the kernel has no netem."""
        if rate_bps and not self.caps.tbf:
            raise NetnsUnavailableError(f"this kernel has no tbf qdisc ({self.caps.reasons.get('tbf', '')})")
        nargs = netem_args(delay_ms / 1e3, jitter_ms / 1e3, distribution, loss, burst)
        if nargs and not self.caps.netem:
            raise NetnsUnavailableError(
                f"this kernel has no netem qdisc ({self.caps.reasons.get('netem', '')}): "
                "delay, jitter and loss are unavailable"
            )
        self.unshape()
        dev = ["tc", "qdisc", "add", "dev", self.dev_a]
        targs = tbf_args(rate_bps, burst_bytes, queue_s) if rate_bps else []
        if nargs and targs:
            _run([*dev, "root", "handle", "1:", "netem", *nargs], self.ns_a)
            _run([*dev, "parent", "1:1", "handle", "10:", *targs], self.ns_a)
            used = ["netem", "tbf"]
        elif targs:
            _run([*dev, "root", "handle", "1:", *targs], self.ns_a)
            used = ["tbf"]
        elif nargs:
            _run([*dev, "root", "handle", "1:", "netem", *nargs], self.ns_a)
            used = ["netem"]
        else:
            used = []
        self.qdiscs = used
        return used

    def apply(self, cfg) -> dict:
        """Apply what the kernel can of a :class:`~v2x.sim.channel.ChannelConfig`: rate (tbf, queue
        bound from ``queue_limit_s``) and, with netem, latency, jitter and loss. Returns the qdiscs
        used and, per field left out, why (no netem here, or a model only the emulator has)."""
        skipped: dict[str, str] = {}
        for name in ("prr", "max_range", "pose_sigma_xyz", "pose_sigma_yaw_deg", "queue_limit_bytes"):
            if getattr(cfg, name):
                skipped[name] = "in-process emulator only"
        wants_netem = {
            k: v
            for k, v in (("latency_s", cfg.latency_s), ("jitter_s", cfg.jitter_s), ("loss", cfg.loss))
            if v
        }
        if cfg.burst is not None:
            wants_netem["burst"] = cfg.burst
        if wants_netem and not self.caps.netem:
            for k in wants_netem:
                skipped[k] = f"no netem in this kernel ({self.caps.reasons.get('netem', '')})"
            wants_netem = {}
        dist = _DISTRIBUTIONS.get(cfg.jitter)
        if "jitter_s" in wants_netem and dist is None:
            skipped["jitter"] = f"netem has no {cfg.jitter} table: jitter drawn uniformly"
        used = self.shape(
            cfg.rate_bps,
            1e3 * wants_netem.get("latency_s", 0.0),
            1e3 * wants_netem.get("jitter_s", 0.0),
            wants_netem.get("loss", 0.0),
            burst=wants_netem.get("burst"),
            distribution=dist,
            queue_s=cfg.queue_limit_s if cfg.queue_limit_s is not None else 0.5,
        )
        return {"qdiscs": used, "skipped": skipped}

    # -- processes and measurement -----------------------------------------------------------------

    def exec(self, ns: str, cmd: list[str], **kw) -> subprocess.Popen:
        """Start ``cmd`` inside namespace ``ns``; it is terminated by :meth:`delete` if still running."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self._procs.append(p)
        return p

    def sent_bytes(self) -> int:
        """Bytes sent so far on ``a -> b``: the root qdisc's counter, which counts every segment of a
        TCP super-packet with its link-layer header (the veth's own counter, used when no qdisc is
        set, counts a super-packet's headers once)."""
        r = _run(["tc", "-s", "-j", "qdisc", "show", "dev", self.dev_a, "root"], self.ns_a)
        root = json.loads(r.stdout)[0]
        if root.get("kind") != "noqueue":
            return int(root["bytes"])
        r = _run(["ip", "-j", "-s", "-n", self.ns_a, "link", "show", "dev", self.dev_a])
        return int(json.loads(r.stdout)[0]["stats64"]["tx"]["bytes"])

    def _sample(self) -> tuple[int, float]:
        # the counter is read somewhere inside a command of some milliseconds: date it at the middle
        t = time.monotonic()
        b = self.sent_bytes()
        return b, (t + time.monotonic()) / 2

    def measure_throughput(
        self, seconds: float = 3.0, warmup_s: float = 0.5, transport: str = "tcp", port: int = 5301
    ) -> dict:
        """Push data ``a -> b`` as fast as TCP (``tcp``: a plain socket) or ZeroMQ (``zmq``: PUSH
        -> PULL) allows for ``seconds``, one process in each namespace. Returns the application's
        goodput (bytes received after ``warmup_s``, per second, in bit/s) and the rate on the
        wire (:meth:`sent_bytes` over about the same stretch, link-layer bytes)."""
        if transport not in ("tcp", "zmq"):
            raise ValueError(f"transport must be tcp or zmq, got {transport!r}")
        py = sys.executable
        sink = self.exec(
            self.ns_b,
            [py, "-c", _SINK, str(port), str(warmup_s), transport],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        source = None
        try:
            if sink.stdout.readline().strip() != "ready":
                raise RuntimeError(f"throughput sink did not start: {sink.stderr.read()}")
            source = self.exec(
                self.ns_a,
                [py, "-c", _SOURCE, self.addr_b, str(port), str(seconds), transport],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            if source.stdout.readline().strip() != "go":
                raise RuntimeError(f"throughput source did not start: {source.stderr.read()}")
            t0 = time.monotonic()
            time.sleep(warmup_s)
            b1, t1 = self._sample()
            time.sleep(max(0.1, seconds - warmup_s - 0.1 - (t1 - t0)))
            b2, t2 = self._sample()
            out, err = sink.communicate(timeout=seconds + 30)
            source.wait(timeout=30)
            if sink.returncode:
                raise RuntimeError(f"throughput sink failed: {err}")
            r = json.loads(out.strip().splitlines()[-1])
        finally:
            for p in (source, sink):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        if r["mark"] is None:
            raise RuntimeError(f"less than warmup_s={warmup_s} of traffic arrived: {r}")
        span = r["last"] - r["mark"]
        return {
            "transport": transport,
            "seconds": round(span, 3),
            "bytes": r["bytes"],
            "goodput_bps": (r["bytes"] - r["bytes_at_mark"]) * 8 / span,
            "wire_bps": (b2 - b1) * 8 / (t2 - t1),
        }

    def measure_udp(self, n: int = 500, spacing_s: float = 0.002, size: int = 200, port: int = 5302) -> dict:
        """Send ``n`` UDP datagrams ``a -> b`` every ``spacing_s``, each echoed back by a process in
        ``b``: the fraction lost and the round-trip times (the qdiscs act on ``a -> b`` only, so a
        netem delay shows up once). UDP, unlike TCP, shows kernel loss as loss."""
        py = sys.executable
        echo = self.exec(
            self.ns_b, [py, "-c", _ECHO, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            if echo.stdout.readline().strip() != "ready":
                raise RuntimeError(f"UDP echo did not start: {echo.stderr.read()}")
            probe = self.exec(
                self.ns_a,
                [py, "-c", _PROBE, self.addr_b, str(port), str(n), str(spacing_s), str(size)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            out, err = probe.communicate(timeout=n * spacing_s + 30)
            if probe.returncode:
                raise RuntimeError(f"UDP probe failed: {err}")
        finally:
            if echo.poll() is None:
                echo.kill()
                echo.wait()
        r = json.loads(out.strip().splitlines()[-1])
        rtt = sorted(r["rtt_s"])
        pick = (lambda q: rtt[min(len(rtt) - 1, int(q * len(rtt)))]) if rtt else (lambda q: None)
        return {
            "sent": r["sent"],
            "received": r["received"],
            "loss": 1 - r["received"] / r["sent"],
            "rtt_s_p50": pick(0.5),
            "rtt_s_p95": pick(0.95),
            "rtt_s": r["rtt_s"],
        }

    def delete(self) -> None:
        """Stop the processes started here and delete both namespaces (and with them the veth)."""
        for p in self._procs:
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(Exception):
                    p.wait(5)
        self._procs = []
        if not self._created:
            return
        for ns in (self.ns_a, self.ns_b):
            _delete_ns(ns)
        self._created = False
