"""The one tolerance every comparison of moments on the simulated clock uses.

Frame times are ``k / frame_hz`` plus channel delays, and the replay's messages carry them as
integer nanoseconds: a message due exactly at a window's end may come out a hair later after a
round trip. One nanosecond of slack makes it count as in time on both paths (``run_frames`` and
the replay nodes), so the two make the same decisions.
"""

from __future__ import annotations

__all__ = ["TOLERANCE_S", "within"]

#: slack for comparing simulated moments: the nanosecond the replay's times travel in
TOLERANCE_S = 1e-9


def within(t_s: float, start_s: float, window_s: float = 0.0) -> bool:
    """Whether ``t_s`` comes no later than ``window_s`` after ``start_s``, tolerance included: a
    delivery within a wait. With ``window_s`` 0, whether ``t_s`` is no later than ``start_s``: a
    delivery by the fusion time, an age no older than the oldest allowed."""
    return t_s <= start_s + window_s + TOLERANCE_S
