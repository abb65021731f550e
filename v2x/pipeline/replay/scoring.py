"""The ego node's scoring: :class:`v2x.pipeline.scoring.Scorer`, the one ``run_frames`` keeps too, so
both paths report the same figures for the same detections (``tests/e2e/test_replay.py`` holds
them to that). The channel's counts come from the channel node's own emulator (:class:`LinkBook`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from v2x.pipeline.scoring import Scorer

__all__ = ["LinkBook", "Scorer"]


@dataclass
class LinkBook:
    """The channel node's per-link counts, standing in for its :class:`ChannelEmulator`."""

    total: dict[str, int] = field(
        default_factory=lambda: {"sent": 0, "delivered": 0, "dropped_channel": 0, "dropped_budget": 0}
    )
    links: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        return dict(self.total)

    def summary(self) -> dict[str, Any]:
        return dict(self.links)
