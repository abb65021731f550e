"""The calibration check of the confidence maps: truth per cell, the reliability bins, the ECE and
the fitted calibrations, on data whose calibration is known."""

import numpy as np
import pytest

from v2x.core.grid import BEVGrid
from v2x.messages.reliability import (
    cells_in_boxes,
    expected_calibration_error,
    fit_isotonic,
    fit_platt,
    fit_temperature,
    nll,
    reliability_bins,
    with_isotonic,
    with_platt,
    with_temperature,
)

GRID = BEVGrid()


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_cells_in_a_turned_box_are_its_footprint():
    # a 4 m x 2 m box turned a quarter: 2 m along x, 4 m along y (0.8 m cells)
    inside = cells_in_boxes(GRID, np.array([[10.0, 5.0, 0.0, 4.0, 2.0, 1.5, np.pi / 2]]))
    xy = GRID.cell_centers()[inside]
    assert np.all(np.abs(xy[:, 0] - 10.0) <= 1.0) and np.all(np.abs(xy[:, 1] - 5.0) <= 2.0)
    assert 6 <= inside.sum() <= 15  # 8 m^2 over 0.64 m^2 cells
    assert not cells_in_boxes(GRID, np.zeros((0, 7))).any()


def test_calibrated_confidences_have_a_small_ece_and_shifted_ones_do_not():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = rng.random(len(p)) < p
    assert expected_calibration_error(p, y) < 0.01
    r = reliability_bins(p, y, bins=5)
    assert sum(r["count"]) == len(p) and len(r["confidence"]) == 5
    assert np.allclose(r["positive_fraction"], r["confidence"], atol=0.02)
    under = p / 2  # the same cells, half the confidence: under-confident by about a quarter
    assert expected_calibration_error(under, y) == pytest.approx(0.25, abs=0.02)
    assert nll(under, y) > nll(p, y)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_a_known_temperature_and_platt_scaling_are_recovered(temperature):
    rng = np.random.default_rng(1)
    z = rng.normal(-1.0, 2.0, 100_000)
    y = rng.random(len(z)) < _sigmoid(z)  # the truth: calibrated logits z
    seen = _sigmoid(z * temperature)  # what a mis-calibrated model reports
    t = fit_temperature(seen, y)
    assert t == pytest.approx(temperature, rel=0.05)
    assert expected_calibration_error(with_temperature(seen, t), y) < 0.01
    a, b = fit_platt(_sigmoid(0.5 * z - 2.0), y)  # scaled and shifted logits
    assert a == pytest.approx(2.0, rel=0.05) and b == pytest.approx(4.0, rel=0.05)
    assert expected_calibration_error(with_platt(_sigmoid(0.5 * z - 2.0), a, b), y) < 0.01


def test_a_binned_isotonic_map_bends_where_a_temperature_cannot():
    rng = np.random.default_rng(2)
    p = rng.random(100_000)
    y = rng.random(len(p)) < np.sqrt(p)  # under-confident, most in the middle: no logistic shape
    knots, values = fit_isotonic(p, y)
    assert np.all(np.diff(values) >= 0) and np.all(np.diff(knots) > 0)
    assert expected_calibration_error(with_isotonic(p, knots, values), y) < 0.01
    assert expected_calibration_error(p, y) > 0.1
    # a violating bin is pooled with its neighbour: the map never falls
    q = np.r_[np.full(100, 0.1), np.full(100, 0.9)]
    knots, values = fit_isotonic(q, np.r_[np.ones(100, bool), np.zeros(100, bool)], bins=10)
    assert values.tolist() == [0.5, 0.5]


def test_bad_input_is_refused_with_its_reason():
    with pytest.raises(ValueError, match="differ in size"):
        reliability_bins(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0.5, 1.5]), np.array([True, False]))
    with pytest.raises(ValueError, match="with and without objects"):
        fit_temperature(np.array([0.1, 0.2]), np.array([False, False]))
    with pytest.raises(ValueError, match="with and without objects"):
        fit_platt(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="positive"):
        with_temperature(np.array([0.5]), 0.0)
