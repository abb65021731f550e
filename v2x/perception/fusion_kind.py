"""How the ego combines what collaborators send (:class:`FusionKind`): perception's own word for a
method, so this layer never needs the method registry above it (``v2x.pipeline.methods``).

Imports nothing heavy: the command line reads it without loading torch.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["FusionKind", "fusion_kind"]


class FusionKind(Enum):
    """Where the ego's detection meets the collaborators' data."""

    #: the ego detects alone
    NONE = "none"
    #: received boxes are merged with the ego's own by rotated NMS
    LATE = "late"
    #: received points are merged with the ego's scan before encoding
    EARLY = "early"
    #: received BEV features are fused into the ego's map before the head
    INTERMEDIATE = "intermediate"


def fusion_kind(value: FusionKind | str) -> FusionKind:
    """``value`` as a :class:`FusionKind` (a kind or its name), or a ValueError naming the kinds."""
    try:
        return FusionKind(value)
    except ValueError:
        known = ", ".join(k.value for k in FusionKind)
        raise ValueError(f"unknown fusion {value!r}: use one of {known}") from None
