"""The motion model and the heading bookkeeping both trackers share.

A box and the same box turned by 180 degrees are one box, and detectors flip headings. Before
an update, AB3DMOT turns the *track's* heading by 180 degrees when the detection points the
other way (more than 90 degrees off), and by 360 when the two sit on either side of the +-pi
cut, so the innovation is never more than 90 degrees. Both trackers do exactly that.
"""

from __future__ import annotations

import numpy as np

from v2x.core.boxes import wrap_angle
from v2x.tracking.config import BOX_FROM_STATE, STATE_FROM_BOX

__all__ = [
    "boxes_from_states",
    "constant_velocity",
    "heading_correction",
    "states_from_boxes",
    "within_pi",
]


def constant_velocity(dt: float) -> np.ndarray:
    """(10, 10) transition: positions move by velocity x dt, everything else stays."""
    F = np.eye(10)
    F[0, 7] = F[1, 8] = F[2, 9] = dt
    return F


def within_pi(theta):
    """AB3DMOT's ``within_range``: one turn added or removed to land in [-pi, pi)."""
    theta = np.asarray(theta, dtype=np.float64)
    theta = np.where(theta >= np.pi, theta - 2 * np.pi, theta)
    return np.where(theta < -np.pi, theta + 2 * np.pi, theta)


def heading_correction(predicted: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offset to add to the track's heading, observed heading in [-pi, pi)).

    After adding the offset, the track's heading is within 90 degrees of the observation,
    the same turn-by-pi and turn-by-2pi rules as AB3DMOT's ``orientation_correction``.
    """
    pre0 = np.asarray(predicted, dtype=np.float64)
    pre = within_pi(pre0)
    obs = within_pi(observed)
    d = np.abs(obs - pre)
    flip = (d > np.pi / 2) & (d < 3 * np.pi / 2)
    pre = np.where(flip, within_pi(pre + np.pi), pre)
    wrap = np.abs(obs - pre) >= 3 * np.pi / 2
    pre = np.where(wrap, pre + np.where(obs > 0, 2 * np.pi, -2 * np.pi), pre)
    return pre - pre0, obs


def states_from_boxes(xyzlwhy: np.ndarray) -> np.ndarray:
    """(N, 10) states with zero velocity from (N, 7) boxes."""
    b = np.asarray(xyzlwhy, dtype=np.float64).reshape(-1, 7)
    return np.concatenate([b[:, STATE_FROM_BOX], np.zeros((len(b), 3))], axis=1)


def boxes_from_states(states: np.ndarray) -> np.ndarray:
    """(N, 7) boxes (heading wrapped) from (N, >= 7) states."""
    s = np.asarray(states, dtype=np.float64)
    b = s.reshape(-1, s.shape[-1])[:, :7][:, BOX_FROM_STATE].copy()
    b[:, 6] = wrap_angle(b[:, 6])
    return b


class FrameClock:
    """Orders frames and gives the time step; out-of-order and repeated frames are refused.

    With ``timing="frames"`` the step is the frame-number difference times the nominal period
    (every log here is 10 Hz); with ``"timestamps"`` it is the time-stamp difference.
    """

    def __init__(self, dt: float, timing: str = "frames") -> None:
        self.dt = dt
        self.timing = timing
        self.last_frame: int | None = None
        self.last_stamp: int | None = None
        self.count = 0

    def advance(self, frame: int | None, timestamp_ns: int | None, warnings) -> float | None:
        """Seconds since the previous accepted frame (0 for the first), or None if refused."""
        if frame is None:
            frame = 0 if self.last_frame is None else self.last_frame + 1
        if self.timing == "timestamps":
            if timestamp_ns is None:
                raise ValueError("timing='timestamps' needs a timestamp_ns per frame")
            key, last = int(timestamp_ns), self.last_stamp
        else:
            key, last = int(frame), self.last_frame
        if last is not None and key <= last:
            warnings.add("frame_repeated" if key == last else "frame_out_of_order")
            return None
        if self.timing == "timestamps":
            dt = 0.0 if last is None else (key - last) * 1e-9
        else:
            dt = 0.0 if last is None else (key - last) * self.dt
        self.last_frame, self.last_stamp = int(frame), timestamp_ns
        self.count += 1
        return dt
