"""Perception's two run-time settings and their checks, without torch: the command line and
``RunConfig`` validate them before any model is loaded (``v2x --help`` must not pay for torch)."""

from __future__ import annotations

__all__ = ["PRECISIONS", "SHARE_FRAMES", "check_precision", "check_share_frame"]

#: the frame collaborators encode shared features in: the ego's grid (OpenCOOD's proj_first) or their own
SHARE_FRAMES = ("ego", "own")
#: inference precision of the detector's neck and head
PRECISIONS = ("fp32", "bf16")


def check_share_frame(share_frame: str) -> str:
    """``share_frame`` itself, or a ValueError naming the setting and what it may be."""
    if share_frame not in SHARE_FRAMES:
        raise ValueError(f"share_frame: use one of {', '.join(SHARE_FRAMES)}, not {share_frame!r}")
    return share_frame


def check_precision(precision: str) -> str:
    """``precision`` itself, or a ValueError naming the setting and what it may be."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: use one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision
