"""Node framework: throughput through a node pair, and the latency it adds over raw pyzmq.

* Throughput: a sender node (this process) publishes N packets of 1 KB, 100 KB and 4 MB to a
  receiver node in another process over TCP loopback, as fast as the receiver takes them: at
  most ``window`` packets are unacknowledged (the receiver acknowledges every half window), so
  no queue overflows and nothing is dropped; sustained messages/s and MB/s. With and without
  CurveZMQ.
* Latency: ping-pong between this process and an echo process, once with bare pyzmq sockets
  (PUB connect -> SUB bind, the wiring the nodes use) and once through two Nodes; half the
  median round trip is the one-way latency, and the difference is what the framework adds
  (encode, header, sequence checks, the inbox reader thread, callback dispatch).

Writes bench/results/comm.json. Run: ``python -m bench.bench_comm``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from bench.common import write_result
from v2x.comm.envelope import Json, Packet
from v2x.comm.node import Node, NodeSpec, Peer
from v2x.comm.security import generate_keys
from v2x.comm.transport import free_tcp_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {
    "1KB": (1_000, 20_000, 512),
    "100KB": (100_000, 3_000, 64),
    "4MB": (4_000_000, 150, 8),
}  # size, count, window


class BenchSink(Node):
    """Counts /bench/data, acknowledging every ``ack_every``; answers each /bench/done with a
    /bench/report of what it saw."""

    def on_configure(self) -> None:
        self.count, self.nbytes, self.first, self.last = 0, 0, 0, 0
        self.ack_every = self.param("ack_every", 1)
        self.report = self.create_publisher(Json, "/bench/report")
        self.ack = self.create_publisher(Json, "/bench/ack")
        self.create_subscription(Packet, "/bench/data", self.on_data, depth=self.param("depth", 1000))
        self.create_subscription(Json, "/bench/done", self.on_done)

    def on_data(self, _topic: str, msg: Packet) -> None:
        now = time.perf_counter_ns()
        self.first = self.first or now
        self.last = now
        self.count += 1
        self.nbytes += msg.payload.nbytes
        if self.count % self.ack_every == 0:
            self.ack.publish(Json({"count": self.count}))

    def on_done(self, _topic: str, msg: Json) -> None:
        self.report.publish(
            Json({"count": self.count, "bytes": self.nbytes, "span_ns": self.last - self.first})
        )


class BenchEcho(Node):
    """Sends every /bench/ping straight back on /bench/pong."""

    def on_configure(self) -> None:
        self.pong = self.create_publisher(Packet, "/bench/pong")
        self.create_subscription(Packet, "/bench/ping", lambda _t, m: self.pong.publish(m))


RAW_ECHO = """
import sys, zmq
ctx = zmq.Context()
inbox = ctx.socket(zmq.SUB); inbox.bind(sys.argv[1]); inbox.setsockopt(zmq.SUBSCRIBE, b"/bench/ping")
out = ctx.socket(zmq.PUB); out.connect(sys.argv[2])
while True:
    frames = inbox.recv_multipart(copy=False)
    if frames[0].bytes == b"/bench/stop":
        break
    out.send_multipart([b"/bench/pong", *frames[1:]], copy=False)
"""


def _child(
    node: str, name: str, endpoint: str, peer: tuple[str, str], params: dict, keys: str | None, run: Path
):
    spec = NodeSpec(name, endpoint, [Peer(*peer)], params, keys_dir=keys)
    path = run / f"{name}.json"
    path.write_text(json.dumps(json.loads(spec.to_json()) | {"node": node}))
    log = open(run / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
    p = subprocess.Popen([sys.executable, "-m", "v2x.comm.run", str(path)], cwd=ROOT, stdout=log, stderr=log)
    log.close()
    return p


def _local(name: str, endpoint: str, peer: tuple[str, str], params: dict, keys: str | None) -> Node:
    node = Node(NodeSpec(name, endpoint, [Peer(*peer)], params, keys_dir=keys))
    node.configure()
    node.activate()
    return node


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def throughput(run: Path, secure: bool, sizes: dict) -> list[dict]:
    keys = None
    if secure:
        keys = str(run / "keys")
        generate_keys(keys, ["sender", "sink"])
    rows = []
    for label, (size, n, window) in sizes.items():
        s_ep, r_ep = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
        quiet = {"heartbeat_s": 5.0, "diagnostics_s": 5.0, "hwm": 2 * window}
        params = quiet | {"depth": 2 * window, "ack_every": max(1, window // 2)}
        sink = _child("bench.bench_comm:BenchSink", "sink", r_ep, ("sender", s_ep), params, keys, run)
        sender = _local("sender", s_ep, ("sink", r_ep), quiet, keys)
        try:
            reports: list[dict] = []
            acked = [0]
            sender.create_subscription(
                Json, "/bench/report", lambda _t, m, reports=reports: reports.append(m.data)
            )
            sender.create_subscription(
                Json,
                "/bench/ack",
                lambda _t, m, acked=acked: acked.__setitem__(0, m.data["count"]),
                keep_latest=True,
            )
            data = sender.create_publisher(Packet, "/bench/data")
            done = sender.create_publisher(Json, "/bench/done")
            if not sender.wait_for_subscribers("/bench/data", 1, 20):
                raise RuntimeError(f"the sink did not subscribe (see {run}/sink.log)")
            while not reports:  # the way back works (the sink answers /bench/done)
                done.publish(Json({}))
                sender.spin(0.05)
            reports.clear()
            payload = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
            t0 = time.perf_counter_ns()
            k = 0
            while k < n:
                while k < n and k - acked[0] < window:
                    data.publish(Packet(payload, frame=k))
                    k += 1
                sender.spin_once(0.05)
            send_ns = time.perf_counter_ns() - t0
            end = time.monotonic() + 60
            last_count, still = -1, 0
            while time.monotonic() < end:  # ask until the count stops growing
                done.publish(Json({}))
                sender.spin(0.1)
                if reports and reports[-1]["count"] == last_count:
                    still += 1
                    if still >= 2 or last_count == n:
                        break
                last_count = reports[-1]["count"] if reports else -1
            r = reports[-1]
            span = max(r["span_ns"], send_ns, 1) / 1e9
            rows.append(
                {
                    "size": label,
                    "bytes": size,
                    "secure": secure,
                    "sent": n,
                    "received": r["count"],
                    "lost": n - r["count"],
                    "seconds": round(span, 4),
                    "messages_per_s": round(r["count"] / span, 1),
                    "MB_per_s": round(r["bytes"] / span / 1e6, 1),
                    "window": window,
                }
            )
            print(
                f"   throughput {label:>6} secure={secure!s:<5} {rows[-1]['messages_per_s']:>10.0f} msg/s "
                f"{rows[-1]['MB_per_s']:>8.1f} MB/s  lost {rows[-1]['lost']}",
                flush=True,
            )
        finally:
            sender.shutdown()
            _stop(sink)
    return rows


def _pingpong(send, recv, payload: np.ndarray, rounds: int, warmup: int) -> np.ndarray:
    rtts = []
    for k in range(rounds + warmup):
        t0 = time.perf_counter_ns()
        send(payload)
        recv()
        if k >= warmup:
            rtts.append(time.perf_counter_ns() - t0)
    return np.asarray(rtts, dtype=np.float64)


def _round_trips(run: Path, payload: np.ndarray, rounds: int, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-trip times (ns) of ``payload``: bare pyzmq, then through two Nodes."""
    # bare pyzmq: the same wiring (each side binds a SUB, connects a PUB to the other)
    a_ep, b_ep = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.SUB)
    inbox.bind(a_ep)
    inbox.setsockopt(zmq.SUBSCRIBE, b"/bench/pong")
    echo = subprocess.Popen([sys.executable, "-c", RAW_ECHO, b_ep, a_ep], cwd=ROOT)
    outp = ctx.socket(zmq.PUB)
    outp.connect(b_ep)
    try:
        for _ in range(500):  # until the echo answers
            outp.send_multipart([b"/bench/ping", b"x"])
            if inbox.poll(20):
                break
        while inbox.poll(100):
            inbox.recv_multipart()
        raw = _pingpong(
            lambda p: outp.send_multipart([b"/bench/ping", memoryview(p)], copy=False),
            lambda: inbox.recv_multipart(copy=False),
            payload,
            rounds,
            warmup,
        )
        outp.send_multipart([b"/bench/stop"])
    finally:
        _stop(echo)
        inbox.close(0)
        outp.close(0)
        ctx.term()
    # the framework: two Nodes, the echo in its own process
    a_ep, b_ep = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    params = {"heartbeat_s": 5.0, "diagnostics_s": 5.0}
    echo = _child("bench.bench_comm:BenchEcho", "echo", b_ep, ("driver", a_ep), params, None, run)
    driver = _local("driver", a_ep, ("echo", b_ep), params, None)
    try:
        got: list = []
        driver.create_subscription(Packet, "/bench/pong", lambda _t, m: got.append(1))
        ping = driver.create_publisher(Packet, "/bench/ping")
        if not driver.wait_for_subscribers("/bench/ping", 1, 20):
            raise RuntimeError(f"the echo node did not subscribe (see {run}/echo.log)")
        while not got:  # until its outbox reaches us too
            ping.publish(Packet(payload[:8]))
            driver.spin_once(0.02)
        driver.spin(0.2)

        def recv_node() -> None:
            n = len(got)
            while len(got) == n:
                driver.spin_once(1.0)

        node = _pingpong(lambda p: ping.publish(Packet(p)), recv_node, payload, rounds, warmup)
    finally:
        driver.shutdown()
        _stop(echo)
    return raw, node


def latency(run: Path, sizes: dict, rounds: int = 2000, warmup: int = 200) -> dict:
    out = {}
    for label, size in sizes.items():
        payload = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
        raw, node = _round_trips(run, payload, rounds, warmup)
        raw_us, node_us = raw / 2e3, node / 2e3  # one way, microseconds
        out[label] = {
            "rounds": rounds,
            "raw_one_way_us": {
                "p50": round(float(np.median(raw_us)), 1),
                "p95": round(float(np.percentile(raw_us, 95)), 1),
            },
            "node_one_way_us": {
                "p50": round(float(np.median(node_us)), 1),
                "p95": round(float(np.percentile(node_us, 95)), 1),
            },
            "added_us_p50": round(float(np.median(node_us) - np.median(raw_us)), 1),
        }
        print(
            f"   latency {label:>6}: raw {out[label]['raw_one_way_us']['p50']} us, node "
            f"{out[label]['node_one_way_us']['p50']} us one way (median); added {out[label]['added_us_p50']} us",
            flush=True,
        )
    return out


def main(quick: bool = False) -> dict:
    sizes = SIZES if not quick else {k: (s, max(n // 20, 10), w) for k, (s, n, w) in SIZES.items()}
    with tempfile.TemporaryDirectory(prefix="bench-comm-") as tmp:
        run = Path(tmp)
        result = {
            "what": "node pair over TCP loopback: sender in the bench process, receiver/echo in another",
            "machine": {
                "cpus": os.cpu_count(),
                "load_1min": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
                "pyzmq": zmq.__version__,
                "libzmq": zmq.zmq_version(),
            },
            "throughput": throughput(run, False, sizes) + throughput(run, True, sizes),
            "latency": latency(
                run,
                {"1KB": 1_000, "100KB": 100_000},
                rounds=200 if quick else 2000,
                warmup=20 if quick else 200,
            ),
        }
    result["added_latency_target_met"] = all(v["added_us_p50"] < 1000 for v in result["latency"].values())
    if not quick:
        write_result("comm", result)
    return result


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
