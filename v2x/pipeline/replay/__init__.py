"""``v2x replay``: a log played through the system as separate processes (see ``docs/replay.md``).

One process per role, talking over ZeroMQ through the channel node::

    player ──scans──> agent0..agentN ──features──> channel ──> ego ──> results.json
       └────scan, ground truth──────────────────────────────────> ego
                      agent <──demand, offers── channel <──demand── ego

The agents and the ego run :class:`~v2x.pipeline.stages.AgentStage` and
:class:`~v2x.pipeline.stages.EgoStage`, the code ``run_frames`` runs in one process, so with an ideal
channel both paths give the same detections (``tests/e2e/test_replay.py`` holds them to it).
"""

from __future__ import annotations

__all__: list[str] = []
