"""scripts/dair_label_frames.py: which side's label a ground-truth box is, the matched offsets
between two agents' boxes, and (on the real example) that the cooperative labels are the
vehicle's own annotation in front of it and the roadside unit's elsewhere."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def label_frames(load_script):
    return load_script("dair_label_frames")


def test_a_truth_box_is_the_side_whose_label_it_sits_on_and_the_vehicle_wins_a_tie(label_frames):
    gt = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
    vehicle = np.array([[0.05, 0.0], [30.0, 0.0]])
    roadside = np.array([[10.0, 0.1], [20.8, 0.0], [30.0, 0.0]])
    kinds = label_frames.label_origin(gt, vehicle, roadside, same_m=0.15)
    assert kinds.tolist() == ["vehicle", "roadside", "neither", "vehicle"]
    assert label_frames.label_origin(gt, np.zeros((0, 2)), np.zeros((0, 2))).tolist() == ["neither"] * 4


def test_offsets_pair_each_car_once_and_the_median_needs_enough_of_them(label_frames):
    a = np.array([[0.0, 0.0], [10.0, 0.0], [40.0, 0.0]])
    b = a + [1.2, -0.4]
    b[2] += [5.0, 0.0]  # too far to be the same car
    off = label_frames.matched_offsets(a, b, max_distance=3.0)
    np.testing.assert_allclose(off, [[1.2, -0.4], [1.2, -0.4]])
    np.testing.assert_allclose(label_frames.median_offset(off, 2), [1.2, -0.4])
    assert label_frames.median_offset(off, 3) is None
    assert label_frames.matched_offsets(a, np.zeros((0, 2)), 3.0).shape == (0, 2)
    np.testing.assert_allclose(label_frames.shifted(np.array([1.0, 2.0]))[:3, 3], [1.0, 2.0, 0.0])


def test_the_real_cooperative_labels_are_the_vehicles_in_front_and_the_roadside_units_elsewhere(
    dair_example, label_frames
):
    from v2x.core.geometry import inverse
    from v2x.datasets import open_log

    log = open_log(dair_example)
    kinds, bearings = [], []
    for i in (0, len(log) // 2, len(log) - 1):
        frame = log[i]
        inv = inverse(frame.ego.world_from_bev)
        gt = frame.gt.transformed(inv).xyzlwhy
        sides = [s.labels.transformed(inv).xyzlwhy for s in (frame.ego, frame.collaborators[0])]
        kinds += label_frames.label_origin(gt, *sides).tolist()
        bearings += np.degrees(np.arctan2(gt[:, 1], gt[:, 0])).tolist()
    kinds, bearings = np.array(kinds), np.array(bearings)
    assert "neither" not in kinds  # every cooperative box is one side's own annotation
    assert (kinds == "vehicle").sum() > 0 and (kinds == "roadside").sum() > 0
    # the vehicle annotates what is in front of it (its camera's view), never behind it
    assert np.all(np.abs(bearings[kinds == "vehicle"]) < 90)
