"""One reading of a budget and one per-frame allowance, shared by the sender's fit and the
channel's token bucket (comm/budget.py)."""

import pytest

from v2x.comm.budget import LinkBudget, frame_allowance, parse_budget, parse_rate
from v2x.comm.channel_node import ChannelNode
from v2x.comm.emulator import ChannelEmulator
from v2x.comm.node import NodeSpec
from v2x.comm.transport import free_tcp_port


def test_allowance_is_a_frame_of_the_rate_rounded_down():
    assert frame_allowance(200e3, 10.0) == 2500
    assert frame_allowance(2e6, 10.0) == 25_000
    assert frame_allowance(1e3, 3.0) == 41  # 41.67 bytes: a partial byte is not sent
    for bps, hz in ((17.78e3, 10.0), (1.5e6, 12.5), (27e6, 20.0)):
        assert frame_allowance(bps, hz) == int(bps / 8 / hz)


@pytest.mark.parametrize("spelling", [None, "none", "unlimited", " Unlimited ", "NONE"])
def test_no_budget_spellings_read_as_none(spelling):
    assert parse_budget(spelling) is None


def test_a_budget_is_a_positive_rate():
    for value in ("200kbps", "0.2Mbps", 200e3, 200_000, "200000"):
        assert parse_budget(value) == parse_rate("200kbps") == 200e3
    for value, match in (
        ("0kbps", "must be positive"),
        (0, "must be positive"),
        (True, "not a rate"),
        ("fast", "not a rate"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_budget(value)
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_budget(-1.0)


def test_the_link_budgets_bucket_holds_one_frame_allowance():
    budget = LinkBudget(200e3, frame_hz=10.0)
    assert budget.frame_bytes == budget.bucket.burst_bytes == frame_allowance(200e3, 10.0) == 2500


def test_the_emulators_bucket_admits_exactly_one_allowance_at_once():
    em = ChannelEmulator("ideal", seed=0, budget_bps=200e3, frame_hz=10.0)
    assert em.send("a", "ego", bytes(2500), 0.0).reason is None
    assert em.send("a", "ego", bytes(1), 0.0).reason == "budget"  # the burst is spent
    assert em.send("b", "ego", bytes(2501), 0.0).reason == "budget"  # more than a burst: never
    _, budget, _ = em._link("a", "ego")
    assert budget.bucket.burst_bytes == frame_allowance(200e3, 10.0)


@pytest.mark.parametrize(
    ("param", "bps"), [("200kbps", 200e3), (200e3, 200e3), ("unlimited", None), (None, None)]
)
def test_the_channel_node_reads_its_budget_with_the_same_parser(param, bps):
    node = ChannelNode(
        NodeSpec("channel", f"tcp://127.0.0.1:{free_tcp_port()}", params={"budget": param, "frame_hz": 10.0})
    )
    try:
        node.configure()
        assert node.emulator.budget_bps == bps
        if bps is not None:
            _, budget, _ = node.emulator._link("a", "ego")
            assert budget.bucket.burst_bytes == 2500
    finally:
        node.shutdown()
