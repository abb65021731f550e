"""Which frames of a log a command takes, and the one loop that walks them.

``--frames N`` means N frames everywhere; ``--pick`` says which (:data:`PICKS`): the first N in
log order (``first``, the default: a run on the simulated clock wants consecutive frames), N
evenly spaced over the log (``spread``: a test table that samples every scene) or N drawn at
random (``random``, seeded: training samples). ``v2x eval detection``, ``v2x eval comm``,
``v2x train codebook``'s feature maps and every run of the pipeline (``run_log``, replay,
sweeps) select with :func:`select_frames` and walk the frames with :func:`drive`, so a figure
names its frames the same way whichever command made it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tqdm import tqdm

from v2x.core.frame import Frame
from v2x.pipeline.config import PipelineError

if TYPE_CHECKING:
    from v2x.pipeline.config import RunConfig

__all__ = [
    "PICKS",
    "FrameSelection",
    "FrameStep",
    "drive",
    "scan_offsets_s",
    "select_frames",
    "starts_sequence",
]

#: how ``count`` frames are picked from a log (the command line's ``--pick``)
PICKS = ("first", "spread", "random")

T = TypeVar("T")


@dataclass(frozen=True)
class FrameSelection:
    """``count`` frames (None or 0: all) of a log, or of its ``scenes``, picked by ``pick``;
    ``seed`` seeds ``random``."""

    count: int | None = None
    pick: str = "first"
    seed: int = 0
    scenes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.pick not in PICKS:
            raise PipelineError(f"pick: use one of {', '.join(PICKS)}, not {self.pick!r}")
        if self.count is not None and self.count < 0:
            raise PipelineError(f"frames: expected a count >= 0, got {self.count}")

    @classmethod
    def of_run(cls, cfg: RunConfig, scenes: Iterable[str] | None = None) -> FrameSelection:
        """A run's frames: its ``frames`` and ``pick``, ``random`` seeded with the run's seed."""
        return cls(cfg.frames, cfg.pick, cfg.seed, tuple(scenes or ()))


def _scene_indices(log, scenes: tuple[str, ...]) -> list[int]:
    """Log indices of the named scenes (all frames when none are named), in log order."""
    if not scenes:
        return list(range(len(log)))
    known = log.scenarios()
    resolved, missing = [], []
    for name in scenes:
        # "scene_x" also names "test/scene_x" (a preset root holds its split folders)
        hits = [name] if name in known else [k for k in known if k.endswith("/" + name)]
        if len(hits) == 1:
            resolved.append(hits[0])
        else:
            missing.append(name)
    if missing:
        raise PipelineError(
            f"scene: {', '.join(missing)} not in the log (it has {', '.join(known[:10])} ...)"
        )
    return sorted(i for s in resolved for i in log.scenario_indices(s))


def select_frames(log, selection: FrameSelection) -> list[int]:
    """Log indices of the selected frames, in log order.

    ``spread`` takes ``round(linspace(0, n - 1, N))`` and ``random`` numpy's
    ``default_rng(seed).choice(n, N, replace=False)`` over the n candidate frames: the frames
    the shipped figures were measured on."""
    idx = _scene_indices(log, selection.scenes)
    n = selection.count
    if not n or n >= len(idx):
        return idx
    if selection.pick == "first":
        return idx[:n]
    if selection.pick == "spread":
        at = np.linspace(0, len(idx) - 1, n).round().astype(int).tolist()
    else:
        at = np.random.default_rng(selection.seed).choice(len(idx), n, replace=False).tolist()
    return [idx[j] for j in sorted(set(at))]


def starts_sequence(scenario: str, ego_id: str, previous: tuple[str, str] | None) -> bool:
    """Whether a frame of ``scenario`` seen by ``ego_id`` starts fresh tracks after ``previous``
    (the last frame's scenario and ego; None before the first): another scenario or another ego."""
    return previous is None or (scenario, ego_id) != previous


@dataclass(frozen=True)
class FrameStep:
    """One frame of a walk: its position ``k`` (the simulated clock's tick), its log ``index``,
    and whether it starts a new sequence (the first frame, another scenario or another ego)."""

    k: int
    index: int
    frame: Frame
    new_sequence: bool


def drive(
    frames: Sequence[Frame] | Iterable[Frame],
    step: Callable[[FrameStep], T],
    indices: Sequence[int] | None = None,
    *,
    progress: bool = False,
    desc: str = "frames",
    leave: bool = True,
    postfix: Callable[[T], dict[str, str]] | None = None,
) -> Iterator[T]:
    """``step`` on each frame in order (``frames[i]`` for each of ``indices``; every frame of
    ``frames`` without them), with a progress bar; yields what it returns.

    Lazy, so a caller may stream (``encoder_maps`` yields feature maps as they are made): the
    frames are driven only as far as the result is iterated."""
    if indices is not None:
        walk: Iterable[tuple[int, Frame]] = ((i, frames[i]) for i in indices)  # type: ignore[index]
        total: int | None = len(indices)
    else:
        walk = enumerate(frames)
        total = len(frames) if isinstance(frames, Sequence) else None
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=leave)
    prev: Frame | None = None
    try:
        for k, (i, frame) in enumerate(walk):
            new = starts_sequence(
                frame.scenario, frame.ego_id, None if prev is None else (prev.scenario, prev.ego_id)
            )
            out = step(FrameStep(k, int(i), frame, new))
            bar.update(1)
            if postfix is not None:
                bar.set_postfix(postfix(out))
            prev = frame
            yield out
    finally:
        bar.close()


def scan_offsets_s(frame: Frame) -> dict[str, float]:
    """Each collaborator's scan time minus the ego's, in seconds (0 where either has no stamp).

    Why: real cooperative logs are not simultaneous. DAIR-V2X-C's roadside scan is up to a few
    tens of milliseconds before or after the vehicle's; objects move meanwhile, so the ego moves
    what a collaborator saw by that offset (as it does for late messages). Simulated logs stamp
    every agent alike, so their offsets are all 0.
    """
    ego_ns = int(frame.ego.timestamp_ns)
    return {
        s.agent_id: (int(s.timestamp_ns) - ego_ns) / 1e9 if ego_ns and s.timestamp_ns else 0.0
        for s in frame.collaborators
    }
