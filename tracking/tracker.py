"""What every tracker offers its callers: ``step`` once per frame with every agent's detections,
and the same kind of answer back.

The ego, the sequence runner and the experiments drive :class:`~v2x.tracking.ab3dmot.AB3DMOT`
and :class:`~v2x.tracking.dmstrack.MultiSensorKF` through this one interface, so none of them
needs to know which tracker it holds. What differs is what a tracker makes of a frame's agents:
a multi-sensor tracker (``per_agent``) fuses each agent's detections in turn and wants them
apart; a single-stream tracker tracks the union of the frame's boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from v2x.core.boxes import Boxes
from v2x.tracking.records import FrameDetections

__all__ = ["StepOutput", "Tracker"]


@dataclass
class StepOutput:
    """One frame's answer from a tracker."""

    boxes: Boxes  # reported tracks this frame, world frame, with ids and scores
    states: torch.Tensor  # (N, 10) every live track after the frame (differentiable when training)
    covariances: torch.Tensor  # (N, 10, 10)
    ids: np.ndarray  # (N,) track ids of ``states``
    updated: np.ndarray  # (N,) bool: updated by some agent this frame
    gt_ids: np.ndarray  # (N,) ground-truth id of the track's last detection (-1: unknown)
    accepted: bool = True  # False: the frame was refused (repeated or out of order)


@runtime_checkable
class Tracker(Protocol):
    """A multi-object tracker driven one frame at a time (frames in order; a repeated or older
    frame is refused and counted, and its output has ``accepted`` False)."""

    #: True: each agent's detections update the tracks in turn, so callers keep the agents apart;
    #: False: the tracker sees the union of the frame's boxes as one stream
    per_agent: bool

    def reset(self) -> None:
        """Forget every track (a new sequence)."""
        ...

    def step(self, frame: FrameDetections) -> StepOutput:
        """Predict, associate and update with one frame's detections; the reported tracks."""
        ...
