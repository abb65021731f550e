import numpy as np
import pytest
import torch

from v2x.boxes import Boxes
from v2x.tracking.ab3dmot import AB3DMOT, TrackerConfig
from v2x.tracking.association import giou3d_matrix, hungarian
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.noise_net import NoiseNet
from v2x.tracking.records import AgentDetections, FrameDetections


def _dets(rows, scores=None):
    rows = np.asarray(rows, dtype=float).reshape(-1, 7)
    return Boxes(rows, labels=0, scores=np.full(len(rows), 0.9) if scores is None else scores)


def _frame(i, boxes, agent_id="ego", pose=np.eye(4), kind="vehicle", variances=None):
    return FrameDetections(
        i, i * 100_000_000, [AgentDetections(agent_id, kind, pose, boxes, None, variances)]
    )


def _moving_targets(n_frames=12, rng=None):
    rng = rng or np.random.default_rng(0)
    out = []
    for k in range(n_frames):
        t = k * 0.1
        rows = [
            [5 + 8 * t, 2, 0.8, 4.5, 1.9, 1.5, 0.0],
            [30 - 6 * t, -3, 0.8, 4.2, 1.8, 1.5, np.pi],
            [12, 20 + 3 * t, 0.9, 5, 2, 2, 1.57],
        ]
        rows = np.array(rows) + rng.normal(0, [0.15, 0.15, 0.05, 0.05, 0.05, 0.05, 0.03], (3, 7))
        out.append(rows)
    return out


def test_filterpy_and_torch_filters_agree_to_1e6():
    seq = _moving_targets()
    base, kf = AB3DMOT(), MultiSensorKF()
    for i, rows in enumerate(seq):
        a = base.step(_dets(rows), i)
        b = kf.step(_frame(i, _dets(rows))).boxes
        assert a.track_ids.tolist() == b.track_ids.tolist()
        assert np.allclose(a.xyzlwhy, b.xyzlwhy, atol=1e-6)
    states_filterpy = np.array([t.kf.x[:, 0] for t in base.tracks])
    assert np.allclose(states_filterpy, kf.X.numpy(), atol=1e-6)
    covs = np.array([t.kf.P for t in base.tracks])
    assert np.allclose(covs, kf.P.numpy(), atol=1e-6)
    assert abs(kf.X[0, 7].item() - 8.0) < 1.5  # the velocity is estimated


def test_crossing_targets_keep_their_ids():
    # two cars crossing at an intersection: paths cross at t = 1 s
    frames = []
    for k in range(25):
        t = k * 0.1
        frames.append(
            [[-10 + 10 * t, 0, 0.8, 4.5, 1.9, 1.5, 0.0], [0, -10 + 10 * t, 0.8, 4.5, 1.9, 1.5, np.pi / 2]]
        )
    for tracker in (AB3DMOT(), MultiSensorKF()):
        first = {}
        for i, rows in enumerate(frames):
            out = (
                tracker.step(_dets(rows), i)
                if isinstance(tracker, AB3DMOT)
                else tracker.step(_frame(i, _dets(rows))).boxes
            )
            for tid, box in zip(out.track_ids, out.xyzlwhy, strict=True):
                which = 0 if abs(box[6]) < 0.5 else 1  # heading tells the cars apart
                first.setdefault(which, tid)
                assert first[which] == tid, f"id swap at frame {i}"
        assert len(first) == 2


def test_sequential_multi_agent_update_uses_each_agents_noise():
    """Two agents see one car; the filter leans towards the low-variance measurement."""
    kf = MultiSensorKF(TrackerConfig(min_hits=1))
    truth = np.array([10.0, 0, 0.8, 4.5, 1.9, 1.5, 0])
    for i in range(3):
        good = _dets(truth + [0.0, 0, 0, 0, 0, 0, 0])
        bad = _dets(truth + [1.0, 0, 0, 0, 0, 0, 0])
        agents = [
            AgentDetections("a", "vehicle", np.eye(4), good, None, np.full((1, 7), 0.01)),
            AgentDetections("b", "vehicle", np.eye(4), bad, None, np.full((1, 7), 10.0)),
        ]
        out = kf.step(FrameDetections(i, i, agents)).boxes
    assert len(out) == 1 and abs(out.xyzlwhy[0, 0] - 10.0) < 0.1


def test_gradient_reaches_the_noise_network():
    torch.manual_seed(0)
    net = NoiseNet(feature_channels=4, patch=3)
    for p in net.parameters():  # away from the zero init so every layer gets a gradient
        torch.nn.init.normal_(p, 0, 0.1)
    kf = MultiSensorKF(noise=net)
    seq = _moving_targets(4)
    loss = torch.zeros((), dtype=torch.float64)
    for i, rows in enumerate(seq):
        boxes = _dets(rows)
        feats = np.random.default_rng(i).normal(size=(len(boxes), 4, 3, 3)).astype(np.float32)
        out = kf.step(FrameDetections(i, i, [AgentDetections("ego", "vehicle", np.eye(4), boxes, feats)]))
        loss = loss + (out.states[:, :2] - torch.from_numpy(rows[: len(out.states), :2])).pow(2).sum()
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_bad_input_is_repaired_or_dropped_and_tracks_stay_finite():
    kf, base = MultiSensorKF(), AB3DMOT()
    rows = np.array(
        [
            [5, 2, 0.8, 4.5, 1.9, 1.5, 0.0],
            [np.nan, 1, 1, 4, 2, 1.5, 0],
            [8, 8, 1, -4, 2, 1.5, 0],
            [9, 9, 1, 0, 2, 1.5, 0],
        ]
    )
    bad_var = np.array([[0.1] * 7, [0.1] * 7, [0.1] * 7, [0.1] * 7])
    bad_var[0, 2] = -1.0  # not positive definite
    for i in range(4):
        out = kf.step(_frame(i, _dets(rows), variances=bad_var)).boxes
        base.step(_dets(rows), i)
    assert kf.warnings["bad_detection"] == 12 and kf.warnings["repaired_covariance"] == 4
    assert base.warnings["bad_detection"] == 12
    assert len(out) == 1 and np.isfinite(out.xyzlwhy).all() and torch.isfinite(kf.P).all()
    # frames out of order or repeated are refused and counted
    kf.step(_frame(2, _dets(rows[:1])))
    base.step(_dets(rows[:1]), 3)
    assert kf.warnings["frame_out_of_order"] == 1 and base.warnings["frame_out_of_order"] == 1
    assert np.isfinite(kf.X.numpy()).all()


def test_giou_matches_definition():
    a = np.array([[0, 0, 0, 2, 2, 2, 0.0]])
    b = np.array([[3, 0, 0, 2, 2, 2, 0.0]])  # 1 m gap: hull 5 x 2 x 2 = 20, union 16
    assert giou3d_matrix(a, b)[0, 0] == pytest.approx(0 - (20 - 16) / 20)
    assert giou3d_matrix(a, a)[0, 0] == pytest.approx(1.0)
    pairs, rows, cols = hungarian(np.array([[0.5, -0.5], [-0.3, -0.1]]), -0.2)
    assert pairs.tolist() == [[0, 0], [1, 1]] and rows.size == 0 and cols.size == 0
