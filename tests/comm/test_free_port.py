"""``free_tcp_port``: ports that later binders get, not ones the kernel hands out again.

The clean-clone CI run failed once because a replay's ego found its picked port taken by a
parallel test's socket; the picker now stays out of the kernel's ephemeral range.
"""

from __future__ import annotations

import socket

import zmq

from v2x.comm.transport import _ephemeral_range, free_tcp_port


def test_ports_are_outside_the_kernels_own_range_and_not_repeated():
    lo, hi = _ephemeral_range()
    ports = [free_tcp_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(not lo <= p <= hi for p in ports), [p for p in ports if lo <= p <= hi]


def test_a_picked_port_binds_while_the_kernel_hands_out_many_others():
    port = free_tcp_port()
    held = []
    try:
        for _ in range(300):  # what parallel workers do: bind to 0, connect out
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
        assert port not in {s.getsockname()[1] for s in held}
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        try:
            sub.bind(f"tcp://127.0.0.1:{port}")
        finally:
            sub.close(linger=0)
    finally:
        for s in held:
            s.close()
