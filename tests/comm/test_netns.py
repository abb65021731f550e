"""Kernel backend: real traffic between two network namespaces shaped by tc.

Needs root and iproute2; skipped, with the reason, elsewhere. Traffic runs only inside the
namespaces a test made, and the fixture's finaliser deletes them whatever happens. The netem test
runs only where the kernel has netem (this project's machine has not: it is skipped with tc's
answer, "Specified qdisc kind is unknown").
"""

import os
import shutil
import subprocess

import pytest
from scipy import stats

from v2x.comm.netem import (
    NETNS_DIR,
    NS_PREFIX,
    NetnsLink,
    NetnsUnavailableError,
    cleanup_stale,
    kernel_capabilities,
    netem_args,
    tbf_args,
)
from v2x.sim.channel import PRESETS, GilbertElliott, preset

RATE = 20e6


def _namespaces() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


@pytest.fixture
def caps():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("iproute2 (ip, tc) is not installed")
    c = kernel_capabilities()
    if not c.netns:
        pytest.skip(f"network namespaces unavailable: {c.reasons.get('netns')}")
    return c


@pytest.fixture
def link(caps, request):
    cleanup_stale()
    ln = NetnsLink()
    request.addfinalizer(ln.delete)  # registered before create: a half-made link goes too
    ln.create()
    return ln


def test_qdisc_arguments():
    assert tbf_args(20e6) == ["tbf", "rate", "20000000bit", "burst", "16384", "latency", "500ms"]
    assert tbf_args(1e9, latency_s=0.2)[4] == "250000"  # 2 ms of the rate
    assert netem_args() == []
    assert netem_args(0.05, 0.0125, "normal", 0.02) == [
        *("delay", "50ms", "12.5ms", "distribution", "normal"),
        *("loss", "random", "2%"),
    ]
    ge = GilbertElliott(p=0.015, r=0.3, loss_bad=1.0, loss_good=0.001)
    assert netem_args(burst=ge) == ["loss", "gemodel", "1.5%", "30%", "100%", "0.1%"]
    # Bernoulli loss on top of the burst model is folded into both states
    assert netem_args(loss=0.5, burst=ge)[-2:] == ["100%", "50.05%"]
    with pytest.raises(ValueError):
        tbf_args(0)


@pytest.mark.netns
def test_capabilities_are_probed_in_a_throwaway_namespace(caps):
    before = _namespaces()
    c = kernel_capabilities(refresh=True)
    print("kernel:", c.summary())
    assert c.netns and c.tbf
    assert c.netem or c.reasons["netem"]  # a missing qdisc comes with tc's answer
    assert _namespaces() == before  # the probe namespace is gone


@pytest.mark.netns
@pytest.mark.parametrize("transport", ["tcp", "zmq"])
def test_tbf_shapes_real_traffic_to_the_configured_rate(link, transport):
    assert link.shape(rate_bps=RATE) == ["tbf"]
    m = link.measure_throughput(seconds=3.0, warmup_s=0.5, transport=transport)
    print(f"{transport}: wire {m['wire_bps'] / 1e6:.2f} Mbit/s, goodput {m['goodput_bps'] / 1e6:.2f} Mbit/s")
    # on the wire (link-layer bytes, what tbf counts): within 5 % of the rate
    assert abs(m["wire_bps"] - RATE) / RATE < 0.05
    # the application's payload: the rate less the TCP/IP/Ethernet headers (1448 of 1514 bytes)
    assert 0.90 * RATE < m["goodput_bps"] < 1.01 * RATE


@pytest.mark.netns
def test_netem_delay_and_loss_where_the_kernel_has_netem(link, caps):
    if not caps.netem:
        pytest.skip(f"this kernel has no netem qdisc: tc says {caps.reasons.get('netem')!r}")
    assert link.shape(delay_ms=50, loss=0.1) == ["netem"]
    m = link.measure_udp(n=1000, spacing_s=0.002)
    print(f"udp: loss {m['loss']:.3f}, rtt p50 {1e3 * m['rtt_s_p50']:.1f} ms")
    assert 0.050 <= m["rtt_s_p50"] < 0.065  # the delay is on a -> b only
    assert stats.binomtest(m["sent"] - m["received"], m["sent"], 0.1).pvalue > 0.001
    assert link.shape(rate_bps=RATE, delay_ms=20) == ["netem", "tbf"]
    assert 0.020 <= link.measure_udp(n=200)["rtt_s_p50"] < 0.035


@pytest.mark.netns
def test_netem_arguments_are_accepted_by_tc(link, caps):
    """tc parses netem's arguments before asking the kernel: a syntax error comes back from tc
    itself, a kernel without netem answers 'Specified qdisc kind is unknown'."""
    cases = [
        netem_args(0.1),
        netem_args(0.02, 0.01, "normal", 0.02),
        netem_args(0.005, 0.002, "pareto"),
        netem_args(burst=GilbertElliott(p=0.015, r=0.3, loss_bad=1.0, loss_good=0.001), loss=0.01),
    ]
    for args in cases:
        r = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                link.ns_a,
                "tc",
                "qdisc",
                "add",
                "dev",
                link.dev_a,
                "root",
                "netem",
                *args,
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0 or "Specified qdisc kind is unknown" in r.stderr, (args, r.stderr)
        link.unshape()


@pytest.mark.netns
def test_presets_apply_rate_here_and_report_what_is_left_to_the_emulator(link, caps):
    for name in PRESETS:
        report = link.apply(preset(name))
        cfg = preset(name)
        wants_netem = bool(cfg.latency_s or cfg.jitter_s or cfg.loss or cfg.burst)
        expected = (["netem"] if wants_netem and caps.netem else []) + (["tbf"] if cfg.rate_bps else [])
        assert report["qdiscs"] == expected, name
        if cfg.prr:
            assert report["skipped"]["prr"] == "in-process emulator only"
        if cfg.latency_s and not caps.netem:
            assert "no netem" in report["skipped"]["latency_s"]
    shown = subprocess.run(
        ["ip", "netns", "exec", link.ns_a, "tc", "qdisc", "show", "dev", link.dev_a],
        capture_output=True,
        text=True,
    ).stdout
    assert "rate 27Mbit" in shown  # the last preset, lossy-burst
    if not caps.netem:
        with pytest.raises(NetnsUnavailableError, match="no netem"):
            link.shape(delay_ms=10)


@pytest.mark.netns
def test_namespaces_are_deleted_on_error_and_stale_ones_cleaned(caps):
    with pytest.raises(RuntimeError, match="boom"), NetnsLink() as ln:
        names = {ln.ns_a, ln.ns_b}
        assert names <= _namespaces()
        raise RuntimeError("boom")
    assert not names & _namespaces()
    # a namespace left by a process that is gone (named as this module names them) is removed
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{NS_PREFIX}{dead.pid}-000000-a"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in cleanup_stale()
        assert stale not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
