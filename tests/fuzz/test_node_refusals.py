"""A node that receives what its decoders refuse counts it by reason and sender and carries on:
the frames that used to raise OverflowError and SyntaxError out of the envelope decoder and end
the node are sent to a real node over ZeroMQ, between good messages."""

from __future__ import annotations

import math
import time

import msgpack
import numpy as np
import zmq

from v2x.comm.envelope import PointCloud, encode_frames
from v2x.comm.node import Node, NodeSpec
from v2x.comm.transport import free_tcp_port


class _Scans(Node):
    def on_configure(self) -> None:
        self.got: list[int] = []
        self.create_subscription(PointCloud, "/scan", lambda _t, m: self.got.append(m.frame))


def _sender(endpoint: str) -> zmq.Socket:
    """A bare XPUB connected to the node's inbox, returned once the node has subscribed."""
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(endpoint)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if pub.poll(100) and pub.recv()[:1] == b"\x01":
            return pub
    raise TimeoutError("the node did not subscribe")


def _hostile(frames: list, **header) -> list[bytes]:
    head = msgpack.unpackb(bytes(memoryview(frames[1]))) | header
    return [bytes(memoryview(frames[0])), msgpack.packb(head), *(bytes(memoryview(f)) for f in frames[2:])]


def test_a_node_counts_refused_messages_by_reason_and_sender_and_goes_on():
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    node = _Scans(NodeSpec("scans", endpoint))
    node.configure()
    node.activate()
    pub = _sender(endpoint)
    try:
        for k in range(3):
            good = encode_frames(
                "/scan", PointCloud(np.ones((4, 4), np.float32), frame=k), source="lidar", seq=2 * k
            )
            bad = encode_frames(
                "/scan", PointCloud(np.ones((4, 4), np.float32)), source="mallory", seq=2 * k + 1
            )
            spec = [["<f4", [math.inf, 4]], [",i2", [4, 4]], ["<f4", [5, 4]]][k]  # the last: 64 bytes for 80
            pub.send_multipart(_hostile(bad, a=[spec, ["<f8", [4, 4]]]))
            pub.send_multipart(good)
        end = time.monotonic() + 10
        while len(node.got) < 3 and time.monotonic() < end:
            node.spin_once(0.01)
        c = node.diagnostics()["counters"]
    finally:
        pub.close(0)
        node.shutdown()
    assert node.got == [0, 1, 2]
    assert c["refused:envelope.bad_array"] == 2 and c["refused:envelope.bad_array:mallory"] == 2
    assert c["refused:envelope.size_mismatch:mallory"] == 1 and c["malformed"] == 3
