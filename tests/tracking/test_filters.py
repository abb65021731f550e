"""The filterpy baseline and the torch multi-sensor filter: agreement, association, gradients, bad input."""

import math

import numpy as np
import pytest
import torch
from filterpy.kalman import KalmanFilter

from v2x.core.boxes import Boxes
from v2x.core.geometry import pose_from_xyz_yaw
from v2x.tracking.ab3dmot import AB3DMOT
from v2x.tracking.config import TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.noise_net import NoiseNet, parameter_count
from v2x.tracking.records import AgentDetections, FrameDetections


def _dets(rows, scores=None):
    rows = np.asarray(rows, dtype=float).reshape(-1, 7)
    return Boxes(rows, labels=0, scores=np.full(len(rows), 0.9) if scores is None else scores)


def _frame(i, boxes, agent_id="ego", pose=None, kind="vehicle", variances=None, features=None):
    pose = np.eye(4) if pose is None else pose
    return FrameDetections(
        i, i * 100_000_000, [AgentDetections(agent_id, kind, pose, boxes, features, variances)]
    )


def _moving_targets(n_frames=30, seed=0):
    """Three cars, noisy boxes, a few misses and heading flips (what a detector does)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_frames):
        t = k * 0.1
        rows = np.array(
            [
                [5 + 8 * t, 2, 0.8, 4.5, 1.9, 1.5, 0.0],
                [30 - 6 * t, -3, 0.8, 4.2, 1.8, 1.5, np.pi],
                [12, 20 + 3 * t, 0.9, 5, 2, 2, 1.57],
            ]
        )
        rows += rng.normal(0, [0.15, 0.15, 0.05, 0.05, 0.05, 0.05, 0.03], (3, 7))
        if k % 5 == 2:
            rows[1, 6] -= np.pi  # a flipped heading
        keep = rng.random(3) > 0.15
        out.append(rows[keep])
    return out


@pytest.mark.parametrize(
    "cfg", [TrackerConfig(), TrackerConfig(measurement_var=(0.1, 0.2, 0.05, 0.3, 0.1, 0.1, 0.02))]
)
def test_filterpy_and_torch_give_the_same_tracks_states_and_covariances(cfg):
    base, kf = AB3DMOT(cfg), MultiSensorKF(cfg)
    for i, rows in enumerate(_moving_targets()):
        a = base.step(_frame(i, _dets(rows))).boxes
        b = kf.step(_frame(i, _dets(rows))).boxes
        assert a.track_ids.tolist() == b.track_ids.tolist()
        assert np.allclose(a.xyzlwhy, b.xyzlwhy, atol=1e-6)
        ids, X, P = base.states()
        assert ids.tolist() == kf.ids.tolist()
        assert np.allclose(X, kf.X.numpy(), atol=1e-6) and np.allclose(P, kf.P.numpy(), atol=1e-6)
    # the first car's 8 m/s is estimated, roughly under AB3DMOT's loose noise (Q = R = I)
    assert np.abs(kf.X[:, 7].numpy() - 8.0).min() < 2.5


def test_numpy_fast_path_and_differentiable_torch_path_agree():
    net = NoiseNet()
    torch.manual_seed(1)
    for p in net.parameters():
        torch.nn.init.normal_(p, 0, 0.2)
    fast, slow = MultiSensorKF(noise=net), MultiSensorKF(noise=net, differentiable=True)
    for i, rows in enumerate(_moving_targets(20, seed=4)):
        pose = pose_from_xyz_yaw(-20, 5, 0, 0.4)
        a = fast.step(_frame(i, _dets(rows), pose=pose))
        b = slow.step(_frame(i, _dets(rows), pose=pose))
        assert np.allclose(a.states.numpy(), b.states.detach().numpy(), atol=1e-9)
        assert np.allclose(a.covariances.numpy(), b.covariances.detach().numpy(), atol=1e-9)
    assert b.states.requires_grad and not a.states.requires_grad


def test_sequential_update_equals_filterpy_updates_one_agent_after_another():
    """Two agents measure one car with their own covariances, turned into the world frame."""
    cfg = TrackerConfig(min_hits=1)
    kf = MultiSensorKF(cfg)
    truth = np.array([10.0, 0, 0.8, 4.5, 1.9, 1.5, 0])
    pose_b = pose_from_xyz_yaw(30, 10, 0, math.pi / 2)
    var_a = np.array([0.04, 0.01, 0.02, 0.1, 0.05, 0.05, 0.01])
    var_b = np.array([0.5, 0.2, 0.02, 0.1, 0.05, 0.05, 0.05])
    ref = KalmanFilter(dim_x=10, dim_z=7)
    ref.H, ref.P = np.eye(7, 10), cfg.P0()
    rng = np.random.default_rng(2)
    for i in range(6):
        za, zb = (
            truth + rng.normal(0, 0.1, 7) * [1, 1, 0, 0, 0, 0, 0.1],
            truth + rng.normal(0, 0.3, 7) * [1, 1, 0, 0, 0, 0, 0.1],
        )
        agents = [
            AgentDetections("a", "vehicle", np.eye(4), _dets(za), None, var_a[None]),
            AgentDetections("b", "vehicle", pose_b, _dets(zb), None, var_b[None]),
        ]
        kf.step(FrameDetections(i, i, agents))
        if i == 0:
            ref.x = np.r_[za[[0, 1, 2, 6, 3, 4, 5]], np.zeros(3)][:, None]
        else:
            ref.predict(F=np.eye(10) + np.eye(10, k=7) * 0.1, Q=cfg.Q(0.1))
            ref.update(za[[0, 1, 2, 6, 3, 4, 5]][:, None], R=np.diag(var_a[[0, 1, 2, 6, 3, 4, 5]]))
        # agent b is turned by 90 degrees: its x variance lies along the world's y
        Rb = np.diag(var_b[[1, 0, 2, 6, 3, 4, 5]])
        ref.update(zb[[0, 1, 2, 6, 3, 4, 5]][:, None], R=Rb)
        assert np.allclose(kf.X.numpy()[0], ref.x[:, 0], atol=1e-9)
        assert np.allclose(kf.P.numpy()[0], ref.P, atol=1e-9)


def test_the_filter_leans_towards_the_confident_agent():
    kf = MultiSensorKF(TrackerConfig(min_hits=1))
    truth = np.array([10.0, 0, 0.8, 4.5, 1.9, 1.5, 0])
    for i in range(3):
        agents = [
            AgentDetections("a", "vehicle", np.eye(4), _dets(truth), None, np.full((1, 7), 0.01)),
            AgentDetections(
                "b", "vehicle", np.eye(4), _dets(truth + [1.0, 0, 0, 0, 0, 0, 0]), None, np.full((1, 7), 10.0)
            ),
        ]
        out = kf.step(FrameDetections(i, i, agents)).boxes
    assert len(out) == 1 and abs(out.xyzlwhy[0, 0] - 10.0) < 0.1


def test_pose_uncertainty_widens_the_covariance_across_the_bearing():
    var = torch.full((1, 7), 0.01, dtype=torch.float64)
    pose = np.eye(4)
    plain = MultiSensorKF.world_covariance(var, pose, np.array([[40.0, 0.0]]), None)
    widened = MultiSensorKF.world_covariance(var, pose, np.array([[40.0, 0.0]]), np.array([0.04, 0.04, 1e-4]))
    # a detection 40 m ahead: a heading error of 0.01 rad moves it 0.4 m sideways (y)
    assert widened[0, 0, 0] == pytest.approx(0.01 + 0.04)
    assert widened[0, 1, 1] == pytest.approx(0.01 + 0.04 + 1e-4 * 40**2)
    assert widened[0, 3, 3] == pytest.approx(plain[0, 3, 3] + 1e-4)


@pytest.mark.parametrize("gate", [None, 18.48])
def test_crossing_targets_keep_their_ids(gate):
    # two cars crossing at an intersection: their paths cross at t = 1 s; noisy, with misses
    rng = np.random.default_rng(5)
    frames = []
    for k in range(25):
        t = k * 0.1
        rows = np.array(
            [[-10 + 10 * t, 0, 0.8, 4.5, 1.9, 1.5, 0.0], [0, -10 + 10 * t, 0.8, 4.5, 1.9, 1.5, np.pi / 2]]
        )
        rows[:, :2] += rng.normal(0, 0.1, (2, 2))
        frames.append(rows if k not in (9, 11) else rows[:1])
    for tracker in (AB3DMOT(), MultiSensorKF(mahalanobis_gate=gate)):
        first = {}
        for i, rows in enumerate(frames):
            out = tracker.step(_frame(i, _dets(rows))).boxes
            for tid, box in zip(out.track_ids, out.xyzlwhy, strict=True):
                which = 0 if abs(math.sin(box[6])) < 0.5 else 1  # heading tells the cars apart
                first.setdefault(which, tid)
                assert first[which] == tid, f"id swap at frame {i}"
        assert len(first) == 2


def test_track_management_follows_ab3dmot():
    """Reported after 3 hits (everything during the first 3 frames), coasting for one missed
    frame, dropped after 2 misses in a row."""
    car = [0, 0, 0.8, 4.5, 1.9, 1.5, 0]
    for make in (lambda: AB3DMOT(), lambda: MultiSensorKF()):
        tr = make()

        def step(i, rows, tr=tr):
            return tr.step(_frame(i, _dets(rows))).boxes

        assert len(step(0, [car])) == 1  # first frames: reported at once
        assert len(step(1, [car])) == 1
        assert len(step(2, np.zeros((0, 7)))) == 1  # one miss: still reported (predicted)
        assert len(step(3, np.zeros((0, 7)))) == 0  # two misses: gone
        late = [20, 20, 0.8, 4.5, 1.9, 1.5, 0]
        assert len(step(4, [late])) == 0 and len(step(5, [late])) == 0  # a new track needs 3 hits
        out = step(6, [late])
        assert len(out) == 1 and out.track_ids[0] == 2


def test_gradient_reaches_every_parameter_of_the_noise_network():
    torch.manual_seed(0)
    net = NoiseNet(feature_channels=4, patch=3)
    assert parameter_count(NoiseNet(feature_channels=64, patch=7)) < 1_000_000
    for p in net.parameters():  # away from the zero init so every layer gets a gradient
        torch.nn.init.normal_(p, 0, 0.1)
    kf = MultiSensorKF(noise=net, differentiable=True)
    loss = torch.zeros((), dtype=torch.float64)
    for i, rows in enumerate(_moving_targets(8)):
        boxes = _dets(rows)
        feats = np.random.default_rng(i).normal(size=(len(boxes), 4, 3, 3)).astype(np.float32)
        feats = feats if i % 2 else None  # with and without patches
        out = kf.step(_frame(i, boxes, features=feats))
        loss = loss + out.states[:, :2].pow(2).sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_input_is_repaired_or_dropped_counted_and_tracks_stay_finite():
    kf, base = MultiSensorKF(), AB3DMOT()
    rows = np.array(
        [
            [5, 2, 0.8, 4.5, 1.9, 1.5, 0.0],
            [np.nan, 1, 1, 4, 2, 1.5, 0],
            [8, 8, 1, -4, 2, 1.5, 0],
            [9, 9, 1, 0, 2, 1.5, 0],
            [1e12, 9, 1, 4, 2, 1.5, 0],
            [20, 9, 1, 4, 2, 1.5, np.inf],
        ]
    )
    bad_var = np.full((len(rows), 7), 0.1)
    bad_var[0, 2] = -1.0  # not positive definite
    for i in range(4):
        out = kf.step(_frame(i, _dets(rows), variances=bad_var)).boxes
        base.step(_frame(i, _dets(rows)))
    assert kf.warnings["non_finite_box"] == 4 * 2 and kf.warnings["bad_box"] == 4 * 3
    assert kf.warnings["bad_covariance"] == 4
    assert base.warnings["non_finite_box"] == 8 and base.warnings["bad_box"] == 12
    assert len(out) == 1 and np.isfinite(out.xyzlwhy).all() and torch.isfinite(kf.P).all()
    # frames repeated or out of order are refused and counted, and change nothing
    X = kf.X.clone()
    assert kf.step(_frame(3, _dets(rows[:1]))).accepted is False
    assert kf.step(_frame(2, _dets(rows[:1]))).accepted is False
    assert base.step(_frame(1, _dets(rows[:1]))).accepted is False
    assert kf.warnings["frame_repeated"] == 1 and kf.warnings["frame_out_of_order"] == 1
    assert base.warnings["frame_out_of_order"] == 1
    assert torch.equal(kf.X, X)
    # non-finite feature patches and a broken pose variance are counted, not fatal
    net = NoiseNet(feature_channels=2, patch=3)
    kf2 = MultiSensorKF(noise=net)
    feats = np.full((1, 2, 3, 3), np.nan, np.float32)
    frame = _frame(0, _dets(rows[:1]), features=feats)
    frame.agents[0].pose_var = np.array([np.nan, 0.1, 0.1])
    kf2.step(frame)
    assert kf2.warnings["non_finite_feature"] == 1 and kf2.warnings["bad_pose_variance"] == 1
    assert torch.isfinite(kf2.X).all()


def test_a_track_never_becomes_nan_under_extreme_input():
    rng = np.random.default_rng(7)
    kf = MultiSensorKF(TrackerConfig(min_hits=1))
    for i in range(60):
        n = int(rng.integers(0, 6))
        rows = np.c_[
            rng.normal(0, 3, (n, 2)),
            rng.normal(0.8, 0.1, n),
            np.tile([4.5, 1.9, 1.5], (n, 1)),
            rng.uniform(-9, 9, n),
        ]
        var = 10.0 ** rng.uniform(-30, 30, (n, 7))  # from absurdly certain to absurdly unsure
        var[rng.random((n, 7)) < 0.1] = rng.choice([np.nan, -1.0, 0.0, np.inf])
        scores = rng.uniform(-1, 2, n)
        out = kf.step(_frame(i, _dets(rows, scores), variances=var))
        assert torch.isfinite(out.states).all() and torch.isfinite(out.covariances).all()
        P = out.covariances.numpy()
        assert np.allclose(P, P.transpose(0, 2, 1))
        assert (np.linalg.eigvalsh(P) > -1e-6 * np.abs(P).max(axis=(1, 2))[:, None]).all()
        assert (
            np.isfinite(out.boxes.xyzlwhy).all() and ((out.boxes.scores >= 0) & (out.boxes.scores <= 1)).all()
        )


def test_variances_computed_on_the_agent_and_sent_match_the_net_run_at_the_ego():
    """The agent runs the noise net on its own boxes (its frame) and sends float16 variances; the
    ego's filter then gives the same tracks as running the net itself."""
    from v2x.tracking.noise_net import predict_variances

    torch.manual_seed(3)
    net = NoiseNet()
    for p in net.parameters():
        torch.nn.init.normal_(p, 0, 0.2)
    pose = pose_from_xyz_yaw(15, -4, 0, 0.7)
    at_ego, sent = MultiSensorKF(noise=net), MultiSensorKF(noise=net)
    for i, rows in enumerate(_moving_targets(15, seed=8)):
        world = _dets(rows)
        local = world.transformed(np.linalg.inv(pose))
        var16 = predict_variances(net, local, "vehicle").astype(np.float16)
        msg = AgentDetections.from_agent_frame("7", "vehicle", pose, local, variances=var16)
        d = msg.boxes.xyzlwhy - world.xyzlwhy
        assert np.allclose(d[:, :6], 0) and np.allclose(np.sin(d[:, 6]), 0, atol=1e-9)
        a = at_ego.step(FrameDetections(i, i, [AgentDetections("7", "vehicle", pose, world)]))
        b = sent.step(FrameDetections(i, i, [msg]))
        assert a.boxes.track_ids.tolist() == b.boxes.track_ids.tolist()
        assert np.allclose(a.states.numpy(), b.states.numpy(), atol=5e-3)
