"""How a run is set up: the method, the budget, the channel, the tracker, timing and precision
(:class:`RunConfig`), from the command line's or a sweep cell's vocabulary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from v2x.comm.budget import frame_allowance, parse_budget
from v2x.perception.settings import check_box_merge, check_precision, check_share_frame
from v2x.pipeline.methods import DEFAULT_METHOD, METHODS, Method, UnknownMethodError, get_method
from v2x.sim.channel import ChannelConfig, preset

TRACKERS = ("dmstrack", "ab3dmot", "none")
LATE_POLICIES = ("drop", "compensate")
#: where the shipped weights live


class PipelineError(ValueError):
    """A run configuration that cannot be run; names the setting."""


@dataclass
class RunConfig:
    #: a name of the method registry (``v2x.pipeline.methods``; aliases are resolved): kept as a
    #: string so configs serialize as they read; :attr:`spec` is the method itself
    method: str = DEFAULT_METHOD
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
    #: largest offset between a collaborator's scan and the ego's that the ego compensates
    #: (see v2x.pipeline.frames.scan_offsets_s); larger ones are counted, reported and not used
    max_scan_offset_s: float = 0.1
    threshold: float = 0.3
    #: the frame collaborators encode shared features in: "ego" (OpenCOOD's proj_first) or "own"
    share_frame: str = "ego"
    #: inference precision of the detector's neck and head: "fp32" or "bf16" (faster on CPUs
    #: with AMX or AVX512-BF16; see CooperativeDetector.set_precision)
    precision: str = "fp32"
    #: how the ego merges several agents' boxes: "average" (NMS whose kept boxes average their
    #: duplicates) or "nms" (OpenCOOD's plain NMS); v2x.perception.box_merge
    box_merge: str = "average"
    seed: int = 0
    frame_hz: float = 10.0
    max_agents: int = 5
    #: how many frames of the log (None: all), and which (v2x.pipeline.frames.PICKS; ``random``
    #: is seeded with ``seed``)
    frames: int | None = None
    pick: str = "first"
    weights: str | None = None
    codebook: str | None = None
    #: message weights (codebook + the ego's decoder, ``v2x train messages``) for code methods:
    #: None picks the detector's shipped ones when they exist (not with ``codebook`` named),
    #: "none" decodes codes with the detector's own head (v2x.messages.message_weights)
    message_weights: str | None = None
    tracker_weights: str | None = None
    trace: str | None = None

    def __post_init__(self) -> None:
        try:
            self.method = get_method(self.method).name
        except UnknownMethodError:
            raise PipelineError(f"method: unknown {self.method!r}; use one of {', '.join(METHODS)}") from None
        if self.tracker not in TRACKERS:
            raise PipelineError(f"tracker: unknown {self.tracker!r}; use one of {', '.join(TRACKERS)}")
        if self.late_policy not in LATE_POLICIES:
            raise PipelineError(
                f"late_policy: use one of {', '.join(LATE_POLICIES)}, not {self.late_policy!r}"
            )
        if self.budget_bps is not None and self.budget_bps <= 0:
            raise PipelineError(f"budget: must be positive, got {self.budget_bps}")
        from v2x.pipeline.frames import PICKS  # frames.py raises PipelineError: imported here

        if self.pick not in PICKS:
            raise PipelineError(f"pick: use one of {', '.join(PICKS)}, not {self.pick!r}")
        for check, value in (
            (check_share_frame, self.share_frame),
            (check_precision, self.precision),
            (check_box_merge, self.box_merge),
        ):
            try:
                check(value)
            except ValueError as exc:
                raise PipelineError(str(exc)) from None

    @classmethod
    def from_options(
        cls,
        method: str = DEFAULT_METHOD,
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
        try:
            bps = parse_budget(budget)
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
    def spec(self) -> Method:
        """The method's definition: what its agents send, how the ego fuses, what it needs."""
        return get_method(self.method)

    @property
    def frame_bytes(self) -> int | None:
        """Bytes one link may carry per frame (:func:`~v2x.comm.budget.frame_allowance`, the
        channel's token bucket holds the same); None: unlimited."""
        return None if self.budget_bps is None else frame_allowance(self.budget_bps, self.frame_hz)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channel"] = self.channel.to_dict()
        return d
