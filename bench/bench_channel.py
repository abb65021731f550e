"""Channel: what the emulator costs, how exactly budgets hold their rate, and what the kernel does.

* Emulator throughput: packets per second through :meth:`ChannelEmulator.send` for every preset,
  at 1 KB (one datagram) every 10 ms and 100 KB (68 datagrams, each drawn for loss) every 0.5 s,
  so the offered load fits every preset's rate; senders 0..300 m away. Once more on ``dsrc`` with
  a 20 Mbit/s budget and a JSON-lines trace.
* Token bucket: a :class:`LinkBudget` offered twice its rate for 30 s of simulated time, in
  messages of 20..100 % of the per-frame allowance, under both policies; achieved vs configured.
* Kernel (root and iproute2 only): tbf on a veth between two namespaces, bulk TCP (and ZeroMQ
  PUSH/PULL at 20 Mbit/s) for 3 s; the rate on the wire (tbf's byte counter) and the
  application's goodput vs configured. With netem in the kernel, also a 50 ms / 10 % UDP probe.

Writes bench/results/channel.json. Run: ``python -m bench.bench_channel``.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from v2x.comm.budget import LinkBudget
from v2x.comm.emulator import ChannelEmulator
from v2x.comm.netem import NetnsLink, NetnsUnavailableError, cleanup_stale, kernel_capabilities
from v2x.sim.channel import PRESETS

HERE = Path(__file__).resolve().parent
SIZES = {"1KB": (1_000, 0.01), "100KB": (100_000, 0.5)}  # bytes, seconds apart
BUCKET_RATES = ["200kbps", "2Mbps", "27Mbps"]
TBF_RATES = [2e6, 10e6, 20e6, 50e6]


def emulator_throughput(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    distances = rng.uniform(0, 300, n)
    rows = []
    runs = [(name, label, None, False) for name in PRESETS for label in SIZES]
    runs += [("dsrc", label, 20e6, True) for label in SIZES]
    for name, label, budget, traced in runs:
        size, step = SIZES[label]
        data = bytes(size)
        with tempfile.TemporaryDirectory(prefix="bench-channel-") as tmp:
            em = ChannelEmulator(
                name, seed=0, budget_bps=budget, trace=Path(tmp) / "t.jsonl" if traced else None
            )
            t0 = time.perf_counter()
            for i in range(n):
                em.send("1", "0", data, i * step, float(distances[i]))
            dt = time.perf_counter() - t0
            em.close()
        t = em.totals()
        rows.append(
            {
                "preset": name,
                "size": label,
                "budget_bps": budget,
                "trace": traced,
                "packets": n,
                "packets_per_s": round(n / dt),
                "us_per_packet": round(dt / n * 1e6, 1),
                "delivered": round(t["delivered"] / n, 3),
            }
        )
        r = rows[-1]
        extra = " budget 20Mbps + trace" if traced else ""
        print(
            f"   emulator {name:>11} {label:>5}{extra}: {r['packets_per_s']:>8} packets/s "
            f"({r['us_per_packet']} us), delivered {r['delivered']:.3f}",
            flush=True,
        )
    return rows


def bucket_accuracy(seconds: float = 30.0, frame_hz: float = 10.0) -> list[dict]:
    rows = []
    for rate in BUCKET_RATES:
        for policy in ("drop", "delay"):
            budget = LinkBudget.of(rate, frame_hz, policy)
            frame = budget.frame_bytes
            rng = np.random.default_rng(1)
            # offered: twice the rate, in messages of 20..100 % of a frame's allowance
            mean = 0.6 * frame
            step = mean * 8 / (2 * budget.rate_bps)
            t, sent = 0.0, 0
            while t < seconds:
                size = int(rng.uniform(0.2, 1.0) * frame)
                if budget.admit(size, t)[0]:
                    sent += size
                t += step
            achieved = sent * 8 / seconds
            rows.append(
                {
                    "rate": rate,
                    "rate_bps": budget.rate_bps,
                    "policy": policy,
                    "offered_x": 2.0,
                    "achieved_bps": round(achieved, 1),
                    "error_pct": round(100 * (achieved - budget.rate_bps) / budget.rate_bps, 3),
                    "counts": dict(budget.counts),
                }
            )
            print(
                f"   bucket {rate:>8} {policy:>5}: achieved {achieved / 1e6:.4f} Mbit/s "
                f"({rows[-1]['error_pct']:+.2f} %)",
                flush=True,
            )
    return rows


def kernel(seconds: float = 3.0) -> dict:
    caps = kernel_capabilities()
    out: dict = {"capabilities": {k: getattr(caps, k) for k in ("netns", "tbf", "htb", "netem")}}
    out["reasons"] = caps.reasons
    if not caps.netns or not caps.tbf:
        out["skipped"] = caps.reasons.get("netns") or caps.reasons.get("tbf")
        print(f"   kernel: skipped ({out['skipped']})", flush=True)
        return out
    cleanup_stale()
    rows = []
    runs = [(r, "tcp") for r in TBF_RATES] + [(20e6, "zmq")]
    for rate, transport in runs:
        with NetnsLink() as link:
            link.shape(rate_bps=rate)
            m = link.measure_throughput(seconds=seconds, warmup_s=0.5, transport=transport)
        rows.append(
            {
                "rate_bps": rate,
                "transport": transport,
                "seconds": m["seconds"],
                "wire_bps": round(m["wire_bps"]),
                "wire_error_pct": round(100 * (m["wire_bps"] - rate) / rate, 2),
                "goodput_bps": round(m["goodput_bps"]),
                "goodput_pct_of_rate": round(100 * m["goodput_bps"] / rate, 2),
            }
        )
        r = rows[-1]
        print(
            f"   tbf {rate / 1e6:>5.0f} Mbit/s {transport}: wire {r['wire_bps'] / 1e6:.2f} "
            f"({r['wire_error_pct']:+.2f} %), goodput {r['goodput_bps'] / 1e6:.2f} "
            f"({r['goodput_pct_of_rate']:.1f} % of the rate)",
            flush=True,
        )
    out["tbf"] = rows
    if caps.netem:
        with NetnsLink() as link:
            link.shape(delay_ms=50, loss=0.1)
            m = link.measure_udp(n=1000, spacing_s=0.002)
        out["netem"] = {
            "delay_ms": 50,
            "loss": 0.1,
            "measured_loss": round(m["loss"], 4),
            "rtt_ms_p50": round(1e3 * m["rtt_s_p50"], 2),
            "rtt_ms_p95": round(1e3 * m["rtt_s_p95"], 2),
        }
    else:
        out["netem"] = {"skipped": caps.reasons.get("netem")}
    print(f"   netem: {out['netem']}", flush=True)
    return out


def main(quick: bool = False) -> dict:
    result = {
        "what": "channel emulator cost, token-bucket accuracy, tbf shaping between network namespaces",
        "machine": {
            "cpus": os.cpu_count(),
            "load_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "emulator": emulator_throughput(2_000 if quick else 20_000),
        "token_bucket": bucket_accuracy(5.0 if quick else 30.0),
    }
    try:
        result["kernel"] = kernel(1.5 if quick else 3.0)
    except NetnsUnavailableError as exc:
        result["kernel"] = {"skipped": str(exc)}
    if not quick:
        write_result("channel", result)
    return result


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
