"""scripts/box_errors.py: the one-to-one matching and the error summary it reports."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def box_errors(load_script):
    return load_script("box_errors")


def _box(x, y, yaw, length=4.5):
    return [x, y, -1.0, length, 1.9, 1.6, yaw]


def test_each_truth_gets_its_nearest_free_detection_and_far_ones_stay_unmatched(box_errors):
    gt = np.array([_box(0, 0, 0.1), _box(3, 0, 0.0), _box(50, 50, 0.0)])
    det = np.array([_box(2.2, 0, 0.0), _box(0.3, 0.1, 0.1 + np.pi), _box(20, 20, 0.0)])
    err, matched = box_errors.match_errors(gt, det, max_distance=2.5)
    assert len(err) == 2  # the far truth and the far detection are left out
    order = np.argsort(matched[:, 0])
    np.testing.assert_allclose(err[order][:, :2], [[0.3, 0.1], [-0.8, 0.0]], atol=1e-9)
    np.testing.assert_allclose(err[order][:, 6], [0.0, 0.0], atol=1e-9)  # a flip is no heading error
    assert box_errors.match_errors(gt, np.zeros((0, 7)), 2.5)[0].shape == (0, 7)


def test_the_summary_reports_heading_errors_in_degrees_and_both_heading_histograms(box_errors):
    gt = np.array([_box(0, 0, np.radians(122)), _box(10, 0, np.radians(127))])
    det = gt.copy()
    det[:, 6] += np.radians(40)  # every detection turned 40 degrees the same way
    err, matched = box_errors.match_errors(gt, det, 2.5)
    s = box_errors.summarise(err, matched)
    assert s["matched"] == 2 and s["median"]["heading"] == pytest.approx(40.0)
    assert s["truth_heading_histogram"][8] == 2  # 122 and 127 degrees: the 120-135 bin
    assert s["detected_heading_histogram"][10:12] == [1, 1]  # 162 and 167 degrees
    assert "median" not in box_errors.summarise(np.zeros((0, 7)), np.zeros((0, 7)))
