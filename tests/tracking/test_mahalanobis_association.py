"""The multi-sensor filter's Mahalanobis association (issue 21): the cost is each pair's squared
Mahalanobis distance with S = H P H^T + R, R the detection's own covariance, gated by a
chi-square threshold; with the option off the filter associates exactly as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
from v2v4real_helpers import real_frames

from v2x import WEIGHTS
from v2x.core.boxes import Boxes
from v2x.tracking.association import affinity_matrix, hungarian
from v2x.tracking.config import TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.motion import boxes_from_states, heading_correction
from v2x.tracking.records import AgentDetections, FrameDetections
from v2x.tracking.train import load_tracker

CAR = np.array([10.0, 5.0, 0.8, 4.5, 1.9, 1.5, 0.3])

# R = I, P0 = I, Q = 0.01 I per step: after one 0.1 s prediction the track's x variance is
# 1 + 0.1^2 * 1 (velocity) + 0.01 = 1.02, so S_xx = 2.02 and an offset dx alone gives dx^2 / 2.02
BASE = TrackerConfig(
    measurement_var=(1.0,) * 7, initial_var=(1.0,) * 10, process_var=(0.01,) * 10, min_hits=1
)
S_XX = 1.02 + 1.0


def _frame(i, rows, variances=None):
    rows = np.asarray(rows, dtype=float).reshape(-1, 7)
    boxes = Boxes(rows, labels=0, scores=np.full(len(rows), 0.9))
    return FrameDetections(
        i, i * 100_000_000, [AgentDetections("ego", "vehicle", np.eye(4), boxes, None, variances)]
    )


def _two_frames(cfg, second, variances=None) -> np.ndarray:
    """Track ids alive after a car at CAR and then ``second``: one id if they were associated."""
    kf = MultiSensorKF(cfg)
    kf.step(_frame(0, CAR))
    return kf.step(_frame(1, second, variances)).ids


@pytest.mark.parametrize("association", ["mahalanobis", "mahalanobis+affinity"])
def test_the_chi_square_threshold_decides(association):
    moved = CAR + [3.0, 0, 0, 0, 0, 0, 0]
    d2 = 3.0**2 / S_XX  # 4.455
    # the footprints still overlap, so the affinity lets the pair through in both modes
    for gate, matched in ((d2 * 1.01, True), (d2 * 0.99, False)):
        cfg = BASE.with_(association=association, mahalanobis_gate=gate)
        ids = _two_frames(cfg, moved)
        assert (ids.tolist() == [1]) == matched, (gate, ids)
        if not matched:
            assert ids.tolist() == [1, 2]  # the track coasts, the box starts its own


def test_the_components_compared_are_the_chosen_ones():
    # 6 m too high: the whole box is far off, its centre on the ground is not
    high = CAR + [0.5, 0, 6.0, 0, 0, 0, 0]
    gate = 9.21
    assert _two_frames(BASE.with_(association="mahalanobis", mahalanobis_gate=gate), high).tolist() == [1, 2]
    cfg = BASE.with_(association="mahalanobis", mahalanobis_gate=gate, mahalanobis_dims="xy")
    assert _two_frames(cfg, high).tolist() == [1]


def test_a_larger_measurement_covariance_accepts_farther_pairs():
    far = CAR + [6.0, 0, 0, 0, 0, 0, 0]  # d^2 = 36 / 2.02 = 17.8 with R = I
    cfg = BASE.with_(association="mahalanobis", mahalanobis_gate=9.21)
    assert _two_frames(cfg, far).tolist() == [1, 2]
    # the prior's x variance 10: S_xx = 11.02, d^2 = 3.3
    wide = cfg.with_(measurement_var=(10.0,) + (1.0,) * 6)
    assert _two_frames(wide, far).tolist() == [1]
    # the detection's own variance (sent with it) decides, not only the prior
    assert _two_frames(cfg, far, np.array([[10.0] + [1.0] * 6])).tolist() == [1]
    assert _two_frames(wide, far, np.array([[0.5] + [1.0] * 6])).tolist() == [1, 2]


def test_the_cost_prefers_the_statistically_nearer_detection():
    """Two boxes compete for one track: one 1.5 m off where the variances are large, one turned
    0.4 rad where they are small. The affinity takes the better overlap, the distance the other."""
    shifted = CAR + [1.5, 0, 0, 0, 0, 0, 0]  # d^2 = 2.25 / (1.02 + 4) = 0.45
    turned = CAR + [0, 0, 0, 0, 0, 0, 0.4]  # d^2 = 0.16 / (0.001 + 0.01 + 0.001) = 13.3
    aff = affinity_matrix("giou", CAR[None], np.stack([shifted, turned]))[0]
    assert aff[1] > aff[0]  # the turned box overlaps the track more
    cfg = BASE.with_(
        measurement_var=(4.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1e-3),
        initial_var=(1.0, 1.0, 1.0, 1e-3) + (1.0,) * 6,
        threshold=-1.0,
    )
    for association, took in (("affinity", turned), ("mahalanobis", shifted)):
        kf = MultiSensorKF(cfg.with_(association=association, mahalanobis_gate=1e4))
        kf.step(_frame(0, CAR))
        out = kf.step(_frame(1, [turned, shifted]))  # a tie would go to the first
        assert out.ids.tolist() == [1, 2]
        other = turned if took is shifted else shifted
        # track 1 moved towards the box it took; the other box started track 2 where it is
        state = out.states.numpy()
        assert np.allclose(state[1, [0, 1, 2, 3]], other[[0, 1, 2, 6]])
        moved_x, moved_yaw = state[0, 0] - CAR[0], state[0, 3] - CAR[6]
        assert (
            (moved_x > 0.1 and abs(moved_yaw) < 1e-9)
            if took is shifted
            else (moved_yaw > 0.1 and abs(moved_x) < 1e-9)
        )


def test_settings_are_checked_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="needs mahalanobis_gate"):
        TrackerConfig(association="mahalanobis")
    with pytest.raises(ValueError, match="association must be"):
        TrackerConfig(association="nearest", mahalanobis_gate=9.0)
    with pytest.raises(ValueError, match="mahalanobis_dims"):
        TrackerConfig(mahalanobis_dims="z")
    cfg = TrackerConfig(association="mahalanobis+affinity", mahalanobis_gate=100.0, mahalanobis_dims="xy")
    cfg.save(tmp_path / "t.json")
    assert TrackerConfig.load(tmp_path / "t.json") == cfg
    # a configuration written before the option existed reads as the affinity association
    old = json.loads((tmp_path / "t.json").read_text())
    for key in ("association", "mahalanobis_dims"):
        old.pop(key)
    assert TrackerConfig.from_dict(old).association == "affinity"


class _BeforeTheOption(MultiSensorKF):
    """The association as it was before the option: affinity, optional gate, Hungarian (written
    out here from the code it replaced)."""

    def _associate(self, d, z, R, floor):
        cfg = self.cfg
        aff = affinity_matrix(cfg.affinity, boxes_from_states(self.X.detach().numpy()), d.box, floor)
        allowed = None
        if cfg.mahalanobis_gate is not None:
            allowed = np.ones(aff.shape, dtype=bool)
            ia, ib = np.nonzero(aff >= cfg.threshold)
            if len(ia):
                X = self.X.numpy()[ia]
                offset, obs = heading_correction(X[:, 3], z[ib, 3])
                innov = z[ib] - X[:, :7]
                innov[:, 3] = obs - (X[:, 3] + offset)
                S = self.P.numpy()[ia, :7, :7] + R[ib]
                d2 = np.einsum("ki,ki->k", innov, np.linalg.solve(S, innov[:, :, None])[:, :, 0])
                allowed[ia, ib] = d2 <= cfg.mahalanobis_gate
        pairs, _, new = hungarian(aff, cfg.threshold, cfg.gate_first, allowed)
        return pairs, new


@pytest.mark.parametrize(("fixed", "gate"), [(False, None), (True, None), (True, 24.32)])
def test_off_tracks_a_real_sequence_as_before(realdata, fixed, gate):
    cfg, net = load_tracker(WEIGHTS / "noise_v2v4real.pt", fixed=fixed)
    assert cfg.association == "affinity" and cfg.mahalanobis_gate is None
    cfg = cfg.with_(mahalanobis_gate=gate)  # the gate the one-prior fixed noise was shipped with
    now, before = MultiSensorKF(cfg, noise=net), _BeforeTheOption(cfg, noise=net)
    shown = 0
    for frame in real_frames(realdata):
        a, b = now.step(frame), before.step(frame)
        assert a.ids.tolist() == b.ids.tolist() and a.boxes.track_ids.tolist() == b.boxes.track_ids.tolist()
        assert np.array_equal(a.states.numpy(), b.states.numpy())
        shown += len(a.boxes)
    assert shown > 500


def test_on_tracks_a_real_sequence_alike_in_both_paths_and_differently_from_off(realdata):
    cfg, _ = load_tracker(WEIGHTS / "noise_v2v4real.pt", fixed=True)
    on = cfg.with_(association="mahalanobis", mahalanobis_gate=100.0)
    fast, slow, off = MultiSensorKF(on), MultiSensorKF(on, differentiable=True), MultiSensorKF(cfg)
    differs = False
    for frame in real_frames(realdata, n=80):
        a, b, c = fast.step(frame), slow.step(frame), off.step(frame)
        assert a.ids.tolist() == b.ids.tolist()
        assert np.allclose(a.states.numpy(), b.states.detach().numpy(), rtol=0, atol=1e-6)
        differs |= a.ids.tolist() != c.ids.tolist()
    assert differs


def test_search_grid_and_choice_follow_the_duplicates_rule(tmp_path):
    from v2x.experiments.tracking_association import write_checkpoints
    from v2x.tracking.tune import ASSOCIATION_SEARCH, choose, settings_grid

    grid = settings_grid([{}, *ASSOCIATION_SEARCH, ASSOCIATION_SEARCH[0]])
    assert grid[0] == {} and len(grid) == 1 + len(settings_grid(ASSOCIATION_SEARCH))
    for s in grid[1:]:  # every association setting makes a valid configuration
        TrackerConfig(**s)

    def trial(settings, amota, dup):
        return {
            "settings": settings,
            "amota": amota,
            "strict_amota": 0.0,
            "duplicate_boxes": dup,
            "gt_boxes": 1000,
        }

    maha = {"association": "mahalanobis", "mahalanobis_gate": 100.0}
    trials = [trial({}, 30.0, 5), trial(maha, 31.0, 9), trial({**maha, "mahalanobis_gate": 400.0}, 35.0, 11)]
    assert choose(trials) is trials[1]  # 11 duplicates of 1000 boxes break the 1 % rule
    winners = write_checkpoints(WEIGHTS / "noise_v2v4real.pt", {"learned": trials}, tmp_path)
    assert winners["all"]["learned"] is trials[1]
    learned, net = load_tracker(tmp_path / "noise.pt")
    assert net is not None and learned.association == "mahalanobis" and learned.mahalanobis_gate == 100.0
    # the mode not searched keeps the stored settings
    assert (
        load_tracker(tmp_path / "noise.pt", fixed=True)[0]
        == load_tracker(WEIGHTS / "noise_v2v4real.pt", fixed=True)[0]
    )
    trials[1]["duplicate_boxes"] = 20
    winners = write_checkpoints(WEIGHTS / "noise_v2v4real.pt", {"learned": trials}, tmp_path)
    assert winners["all"]["learned"] is trials[0] and winners["mahalanobis"]["learned"] is trials[2]
    assert load_tracker(tmp_path / "noise.pt")[0] == load_tracker(WEIGHTS / "noise_v2v4real.pt")[0]
