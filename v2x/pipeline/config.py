"""How a run is set up: the method, the budget, the channel, the tracker, timing and precision
(:class:`RunConfig`), from the command line's or a sweep cell's vocabulary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from v2x.comm.budget import parse_rate
from v2x.perception.cooperative import check_share_frame
from v2x.perception.detector import check_precision
from v2x.sim.channel import ChannelConfig, preset

FEATURE_METHODS = ("raw", "raw-fp16", "where2comm", "codebook", "codefilling")
METHODS = ("none", "late", "early", *FEATURE_METHODS)
ALIASES = {"intermediate": "raw", "no-fusion": "none"}
TRACKERS = ("dmstrack", "ab3dmot", "none")
LATE_POLICIES = ("drop", "compensate")
#: where the shipped weights live


class PipelineError(ValueError):
    """A run configuration that cannot be run; names the setting."""


@dataclass
class RunConfig:
    method: str = "codefilling"
    #: bits per second per directed link; None: unlimited
    budget_bps: float | None = 200e3
    channel: ChannelConfig = field(default_factory=lambda: preset("ideal"))
    tracker: str = "dmstrack"
    late_policy: str = "drop"
    deadline_s: float = 0.1
    #: how long an agent waits for this frame's demand / the others' offers before going on
    coord_wait_s: float = 0.05
    #: oldest message the compensate policy still fuses
    max_age_s: float = 0.3
    threshold: float = 0.3
    #: the frame collaborators encode shared features in: "ego" (OpenCOOD's proj_first) or "own"
    share_frame: str = "ego"
    #: inference precision of the detector's neck and head: "fp32" or "bf16" (faster on CPUs
    #: with AMX or AVX512-BF16; see CooperativeDetector.set_precision)
    precision: str = "fp32"
    seed: int = 0
    frame_hz: float = 10.0
    max_agents: int = 5
    frames: int | None = None
    weights: str | None = None
    codebook: str | None = None
    tracker_weights: str | None = None
    trace: str | None = None

    def __post_init__(self) -> None:
        self.method = ALIASES.get(self.method, self.method)
        if self.method not in METHODS:
            raise PipelineError(f"method: unknown {self.method!r}; use one of {', '.join(METHODS)}")
        if self.tracker not in TRACKERS:
            raise PipelineError(f"tracker: unknown {self.tracker!r}; use one of {', '.join(TRACKERS)}")
        if self.late_policy not in LATE_POLICIES:
            raise PipelineError(
                f"late_policy: use one of {', '.join(LATE_POLICIES)}, not {self.late_policy!r}"
            )
        if self.budget_bps is not None and self.budget_bps <= 0:
            raise PipelineError(f"budget: must be positive, got {self.budget_bps}")
        for check, value in ((check_share_frame, self.share_frame), (check_precision, self.precision)):
            try:
                check(value)
            except ValueError as exc:
                raise PipelineError(str(exc)) from None

    @classmethod
    def from_options(
        cls,
        method: str = "codefilling",
        budget: str | float | None = "200kbps",
        channel: str | ChannelConfig = "ideal",
        latency_ms: float | None = None,
        jitter_ms: float | None = None,
        loss: float | None = None,
        deadline_ms: float | None = None,
        **rest: Any,
    ) -> RunConfig:
        """From the command line's or a sweep cell's vocabulary (``200kbps``, preset names, ms)."""
        try:
            cfg = preset(channel) if isinstance(channel, str) else channel
        except (KeyError, ValueError) as exc:
            raise PipelineError(f"channel: {exc}") from exc
        over = {}
        if latency_ms is not None:
            over["latency_s"] = float(latency_ms) / 1000
        if jitter_ms is not None:
            over["jitter_s"] = float(jitter_ms) / 1000
        if loss is not None:
            over["loss"] = float(loss)
        if over:
            cfg = dataclasses.replace(cfg, **over)
        if budget in (None, "none", "unlimited", 0):
            bps = None
        else:
            try:
                bps = parse_rate(budget)
            except ValueError as exc:
                raise PipelineError(f"budget: {exc}") from exc
        if deadline_ms is not None:
            rest["deadline_s"] = float(deadline_ms) / 1000
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(rest) - known)
        if unknown:
            raise PipelineError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(method=method, budget_bps=bps, channel=cfg, **rest)

    @property
    def frame_bytes(self) -> int | None:
        """Bytes one link may carry per frame."""
        return None if self.budget_bps is None else int(self.budget_bps / 8 / self.frame_hz)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channel"] = self.channel.to_dict()
        return d
