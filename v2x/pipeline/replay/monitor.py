"""The command line's own node, run inside the ``v2x replay`` process (not a child): it hears the
ego's progress for the status line and passes the supervisor's news of dead and stopped nodes to
the ego, which then stops waiting for them at once (and tells their peers)."""

from __future__ import annotations

from v2x.comm.envelope import Json
from v2x.comm.node import Node
from v2x.pipeline.replay.protocol import EGO_DONE, EGO_FINISHED, END, NODES, RECORDER_CLOSED

__all__ = ["Monitor"]


class Monitor(Node):
    def on_configure(self) -> None:
        self.progress: dict | None = None
        self.finished: dict | None = None
        self.ended: dict | None = None
        self.recording_closed = False
        self.nodes = self.create_publisher(Json, NODES)
        self.create_subscription(Json, EGO_DONE, self.on_done, keep_latest=True)
        self.create_subscription(Json, EGO_FINISHED, self.on_finished)
        self.create_subscription(Json, END, self.on_end)
        self.create_subscription(Json, RECORDER_CLOSED, self.on_closed)

    def on_done(self, _t: str, msg: Json) -> None:
        self.progress = dict(msg.data)

    def on_finished(self, _t: str, msg: Json) -> None:
        self.finished = dict(msg.data)

    def on_end(self, _t: str, msg: Json) -> None:
        self.ended = dict(msg.data)

    def on_closed(self, _t: str, _msg: Json) -> None:
        self.recording_closed = True

    def report_dead(self, names: list[str]) -> None:
        self.nodes.publish(Json({"dead": list(names)}))

    def report_stopped(self, names: list[str]) -> None:
        """Nodes whose processes are stopped (SIGSTOP, a debugger): alive, but doing nothing."""
        self.nodes.publish(Json({"stopped": list(names)}))
