"""The fixed-noise filter's prior per agent: fitted per slot, used per slot, stored and refused."""

from __future__ import annotations

import numpy as np
import pytest

from v2x.core.boxes import Boxes
from v2x.tracking.config import TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.synth import synthetic_sequence
from v2x.tracking.train import detection_errors, fit_prior

EGO = (0.1, 0.05, 0.2, 0.2, 0.03, 0.03, 0.01)
COLLAB = (0.4, 0.2, 0.9, 0.3, 0.04, 0.03, 0.02)


def _noisier_second_agent(seed: int, extra_sd: float) -> list:
    """A synthetic sequence whose agent in slot 1 has ``extra_sd`` m more x and z error."""
    frames = synthetic_sequence(seed, 60)
    rng = np.random.default_rng(seed)
    for f in frames:
        if len(f.agents) < 2 or len(f.agents[1].boxes) == 0:
            continue
        b = f.agents[1].boxes
        xyz = b.xyzlwhy.copy()
        xyz[:, [0, 2]] += rng.normal(0.0, extra_sd, (len(xyz), 2))
        f.agents[1].boxes = Boxes(xyz, labels=b.labels, scores=b.scores)
    return frames


def test_the_prior_of_a_slot_falls_back_to_the_pooled_one_and_later_slots_take_the_last():
    pooled = TrackerConfig(measurement_var=EGO)
    assert np.allclose(pooled.prior_for_slot(3), EGO)
    cfg = pooled.with_(measurement_var_by_slot=(EGO, COLLAB))
    assert np.allclose(cfg.prior_for_slot(0), EGO)
    assert np.allclose(cfg.prior_for_slot(1), COLLAB) and np.allclose(cfg.prior_for_slot(5), COLLAB)
    back = TrackerConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.measurement_var_by_slot == (EGO, COLLAB)
    # configurations written before the field read as one prior for every agent
    old = {k: v for k, v in cfg.to_dict().items() if k != "measurement_var_by_slot"}
    assert TrackerConfig.from_dict(old).measurement_var_by_slot == ()


@pytest.mark.parametrize("bad", [((0.1,) * 6,), ((0.1,) * 6 + (-1.0,),), ((0.1,) * 6 + (float("nan"),),)])
def test_a_bad_per_slot_prior_is_refused_naming_the_field_and_slot(bad):
    with pytest.raises(ValueError, match=r"measurement_var_by_slot\[0\]"):
        TrackerConfig(measurement_var_by_slot=bad)


def test_the_fixed_noise_filter_gives_each_slot_its_own_prior_scaled():
    frame = synthetic_sequence(3, 2)[1]
    cfg = TrackerConfig(measurement_var=EGO, measurement_var_by_slot=(EGO, COLLAB), noise_scale=2.0)
    kf = MultiSensorKF(cfg)
    for slot, expect in ((0, EGO), (1, COLLAB)):
        v = kf.measurement_variances(frame.agents[slot], slot).numpy()
        assert v.shape == (len(frame.agents[slot]), 7)
        assert np.allclose(v, 2.0 * np.asarray(expect))
    # the same frame tracks differently with and without the per-slot prior
    a = MultiSensorKF(cfg.with_(measurement_var_by_slot=()))
    b = MultiSensorKF(cfg)
    for f in synthetic_sequence(3, 12):
        out_a, out_b = a.step(f), b.step(f)
    assert not np.allclose(out_a.states.numpy(), out_b.states.numpy())


def test_fit_prior_per_agent_finds_the_noisier_collaborator_and_keeps_the_pooled_prior():
    frames = [_noisier_second_agent(s, 0.6) for s in (1, 2)]
    pooled = fit_prior(frames)
    per = fit_prior(frames, per_agent=True)
    assert per.measurement_var == pooled.measurement_var and pooled.measurement_var_by_slot == ()
    ego, collab = (np.asarray(per.prior_for_slot(k)) for k in (0, 1))
    assert collab[0] > 2 * ego[0] and collab[2] > 2 * ego[2]
    # each slot's prior is that slot's detections alone
    e1 = detection_errors(frames, slot=1)
    assert 0 < len(e1) < len(detection_errors(frames))
    assert ego[0] < pooled.measurement_var[0] < collab[0]
