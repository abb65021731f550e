"""Multi-object tracking for the ego node (``v2x.tracking``): a differentiable multi-sensor Kalman
filter with learned measurement noise, the filterpy AB3DMOT baseline, AB3DMOT/V2V4Real metrics.

The ego node, once per frame::

    from v2x.tracking import AgentDetections, FrameDetections, MultiSensorKF, load_tracker

    cfg, noise = load_tracker("noise.pt")          # fitted prior + learned noise network
    tracker = MultiSensorKF(cfg, noise=noise)
    out = tracker.step(FrameDetections(frame, stamp_ns, [ego_dets, *collaborator_dets]))
    out.boxes                                      # world-frame Boxes with track ids and scores

Both trackers (``MultiSensorKF`` and the ``AB3DMOT`` baseline) are a :class:`Tracker`: the same
``step(FrameDetections) -> StepOutput``. File reading and writing live outside this package
(``v2x.experiments.tracking_files``).
"""

from v2x.tracking.ab3dmot import AB3DMOT
from v2x.tracking.config import TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.metrics import TrackingSequence, evaluate_tracking
from v2x.tracking.noise_net import NoiseNet
from v2x.tracking.records import AgentDetections, FrameDetections, RecordError, load_sequence, save_sequence
from v2x.tracking.tracker import StepOutput, Tracker
from v2x.tracking.train import load_noise_model, load_tracker

__all__ = [
    "AB3DMOT",
    "AgentDetections",
    "FrameDetections",
    "MultiSensorKF",
    "NoiseNet",
    "RecordError",
    "StepOutput",
    "Tracker",
    "TrackerConfig",
    "TrackingSequence",
    "evaluate_tracking",
    "load_noise_model",
    "load_sequence",
    "load_tracker",
    "save_sequence",
]
