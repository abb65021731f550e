"""A budget's walk from the command line's spelling to the wire: RunConfig, the sweep's check and
the channel all read it with comm.budget.parse_budget, and the sender's fit and the channel's
token bucket use the same per-frame allowance (comm.budget.frame_allowance)."""

import pytest

from v2x.comm.budget import frame_allowance
from v2x.comm.emulator import ChannelEmulator
from v2x.experiments.sweep import UNLIMITED, _budget
from v2x.pipeline.config import PipelineError, RunConfig


def test_run_config_fits_messages_to_the_allowance_the_bucket_holds():
    cfg = RunConfig.from_options(method="raw", budget="200kbps", tracker="none")
    assert cfg.budget_bps == 200e3
    assert cfg.frame_bytes == frame_allowance(200e3, 10.0) == 2500
    # the emulator run_frames builds from the same config holds exactly that burst
    em = ChannelEmulator(cfg.channel, seed=cfg.seed, budget_bps=cfg.budget_bps, frame_hz=cfg.frame_hz)
    _, budget, _ = em._link("1", "0")
    assert budget.frame_bytes == budget.bucket.burst_bytes == cfg.frame_bytes


@pytest.mark.parametrize(("bps", "hz"), [(1e3, 10.0), (17.78e3, 10.0), (1.5e6, 12.5), (27e6, 20.0)])
def test_run_config_allowance_is_the_rate_over_the_frame_rate_rounded_down(bps, hz):
    cfg = RunConfig(method="raw", budget_bps=bps, frame_hz=hz, tracker="none")
    assert cfg.frame_bytes == frame_allowance(bps, hz) == int(bps / 8 / hz)


def test_no_budget_means_no_allowance():
    for spelling in (None, "none", "unlimited"):
        assert RunConfig.from_options(method="raw", budget=spelling, tracker="none").frame_bytes is None


def test_run_config_and_the_sweep_read_a_budget_alike():
    assert _budget("0.2Mbps") == _budget(200e3) == "200kbps"
    assert _budget("unlimited") == _budget(None) == UNLIMITED
    with pytest.raises(PipelineError, match=r"budget: .*must be positive"):
        RunConfig.from_options(method="raw", budget="0kbps", tracker="none")
    with pytest.raises(ValueError, match="must be positive"):
        _budget("0kbps")
