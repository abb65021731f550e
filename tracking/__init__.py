"""Multi-sensor Kalman tracking with learned measurement noise, baseline and metrics (``v2x.tracking``)."""
