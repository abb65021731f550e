"""Both trackers behind one interface: ``step(FrameDetections) -> StepOutput``; the baseline gives
the tracks it gave before it took frames; tracking/ reads no files and imports only v2x.core."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from v2x.core.boxes import Boxes
from v2x.tracking import AB3DMOT, MultiSensorKF, StepOutput, Tracker
from v2x.tracking.records import AgentDetections, FrameDetections
from v2x.tracking.sequences import run_tracker
from v2x.tracking.synth import synthetic_sequence

REPO = Path(__file__).resolve().parents[2]

CARS = np.array([[5.0, 2.0, 0.8, 4.5, 1.9, 1.5, 0.1], [30.0, -3.0, 0.8, 4.2, 1.8, 1.5, 3.0]])
VELOCITY = np.array([[8.0, 0.5], [-6.0, 0.0]])


def _rows(k: int) -> np.ndarray:
    rows = CARS.copy()
    rows[:, :2] += VELOCITY * 0.1 * k + 0.05 * np.sin(np.arange(14).reshape(2, 7)[:, :2] + k)
    return rows


def _tiny(k: int) -> FrameDetections:
    """The ego sees both cars (not the second in frame 3); a collaborator sees the first, 0.36 m off."""
    ego = _rows(k) if k != 3 else _rows(k)[:1]
    other = _rows(k)[:1] + [0.3, -0.2, 0, 0, 0, 0, 0.05]
    return FrameDetections(
        k,
        k * 100_000_000,
        [
            AgentDetections(
                "ego", "vehicle", np.eye(4), Boxes(ego, 0, scores=np.linspace(0.9, 0.8, len(ego)))
            ),
            AgentDetections("7", "vehicle", np.eye(4), Boxes(other, 0, scores=np.full(1, 0.7))),
        ],
    )


# What AB3DMOT.step(boxes, frame, timestamp_ns) reported on these frames before it took a
# FrameDetections: the ego's boxes alone, and both agents' boxes as one stream.
BEFORE_IDS = {"ego": [1, 2], "all": [1, 2, 3]}
BEFORE_LAST = {
    "ego": [
        [8.95123326504036, 2.218020989428225, 0.8, 4.5, 1.9, 1.5, 0.10000000000000009],
        [26.960756698073837, -2.9959170615061685, 0.8, 4.2, 1.8, 1.5, 3.0],
    ],
    "all": [
        [8.95123326504036, 2.218020989428225, 0.8, 4.5, 1.9, 1.5, 0.10000000000000009],
        [26.960756698073837, -2.9959170615061685, 0.8, 4.2, 1.8, 1.5, 3.0],
        [9.25123326504036, 2.0180209894282246, 0.8, 4.5, 1.9, 1.5, 0.1499999999999999],
    ],
}
BEFORE_COASTING = [28.20528706934657, -3.0694270295698978]  # the ego's second car, missed in frame 3
BEFORE_SCORES = {
    "ego": [0.8999999761581421, 0.800000011920929],
    "all": [0.8999999761581421, 0.800000011920929, 0.699999988079071],
}


def test_both_trackers_are_trackers_and_answer_alike():
    trackers = [AB3DMOT(), MultiSensorKF()]
    for tr in trackers:
        assert isinstance(tr, Tracker)
    assert [tr.per_agent for tr in trackers] == [False, True]
    for k in range(4):
        for tr in trackers:
            out = tr.step(_tiny(k))
            assert isinstance(out, StepOutput) and out.accepted
            n = len(out.ids)
            assert out.states.shape == (n, 10) and out.covariances.shape == (n, 10, 10)
            assert out.states.dtype == torch.float64 and out.updated.shape == out.gt_ids.shape == (n,)
            assert set(out.boxes.track_ids.tolist()) <= set(out.ids.tolist())
    for tr in trackers:  # a repeated frame is refused alike, and changes nothing
        before = tr.step(_tiny(4)).states.clone()
        again = tr.step(_tiny(4))
        assert not again.accepted and len(again.boxes) == 0 and not again.updated.any()
        assert torch.equal(again.states, before)
        tr.reset()
        assert len(tr.step(_tiny(0)).ids) > 0  # a fresh sequence starts from frame 0 again


@pytest.mark.parametrize("stream", ["ego", "all"])
def test_ab3dmot_gives_the_tracks_it_gave_before_it_took_frames(stream):
    tr = AB3DMOT()
    for k in range(6):
        frame = _tiny(k).ego_only() if stream == "ego" else _tiny(k)
        out = tr.step(frame).boxes
        assert out.track_ids.tolist() == BEFORE_IDS[stream]
        if stream == "ego" and k == 3:
            np.testing.assert_allclose(out.xyzlwhy[1, :2], BEFORE_COASTING, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.xyzlwhy, BEFORE_LAST[stream], rtol=0, atol=1e-12)
    assert out.scores.tolist() == BEFORE_SCORES[stream]


def test_ab3dmot_tracks_the_union_of_the_agents_boxes():
    """Several agents in one frame are the same as their boxes as one agent's stream."""
    apart, together = AB3DMOT(), AB3DMOT()
    for f in synthetic_sequence(3, 25):
        a = apart.step(f)
        b = together.step(FrameDetections.of_boxes(f.frame, f.timestamp_ns, f.fused()))
        assert a.boxes.track_ids.tolist() == b.boxes.track_ids.tolist()
        assert np.array_equal(a.boxes.xyzlwhy, b.boxes.xyzlwhy) and np.array_equal(
            a.boxes.scores, b.boxes.scores
        )
        assert torch.equal(a.states, b.states) and torch.equal(a.covariances, b.covariances)


def test_ab3dmot_ego_tracks_the_first_agent_alone():
    seq = synthetic_sequence(5, 20)
    tr = AB3DMOT()
    ego = run_tracker("ab3dmot-ego", seq)
    for f in seq:
        want = tr.step(FrameDetections.of_boxes(f.frame, f.timestamp_ns, f.agents[0].boxes)).boxes
        assert np.array_equal(ego[f.frame].xyzlwhy, want.xyzlwhy)
        assert ego[f.frame].track_ids.tolist() == want.track_ids.tolist()


def test_tracking_imports_nothing_from_v2x_but_core_and_itself():
    """Reading dataset files is the experiments' and the CLI's job (v2x.experiments.tracking_files)."""
    allowed = ("v2x.core", "v2x.tracking")
    for path in sorted((REPO / "tracking").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "v2x" or name.startswith("v2x."):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
