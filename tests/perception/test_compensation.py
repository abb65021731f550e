"""Late messages moved to now: what moved is shifted by its velocity times the age, the rest stays."""

from __future__ import annotations

import numpy as np
import torch

from v2x.core.boxes import Boxes
from v2x.core.geometry import pose_from_xyz_yaw
from v2x.core.grid import BEVGrid
from v2x.perception.compensation import MotionModel, compensate_boxes, compensate_features, compensate_points
from v2x.perception.cooperative import SharedBoxes, SharedFeatures


def _model() -> MotionModel:
    # a car at world (110, 50) driving +x at 10 m/s (seen in two outputs 0.1 s apart), a parked one
    prev = Boxes([[109, 50, 0.8, 4.5, 1.9, 1.6, 0], [120, 60, 0.8, 4.5, 1.9, 1.6, 0]], track_ids=[1, 2])
    cur = Boxes([[110, 50, 0.8, 4.5, 1.9, 1.6, 0], [120, 60, 0.8, 4.5, 1.9, 1.6, 0]], track_ids=[1, 2])
    m = MotionModel.from_tracks(prev, 0.9, cur, 1.0)
    assert np.allclose(m.velocity, [[10, 0], [0, 0]])
    return m


def test_features_of_a_moving_object_move_and_static_ones_stay():
    grid = BEVGrid()
    pose = pose_from_xyz_yaw(100, 50, 0, 0)  # sender frame: the car sits at x = +10 m
    h, w = grid.shape
    feats = torch.zeros(2, h, w)
    valid = torch.zeros(h, w, dtype=torch.bool)
    row, col, _ = grid.cell_of(np.array([[10.0, 0.0], [20.0, 10.0]]))
    feats[:, row[0], col[0]] = 5.0  # the moving car
    feats[:, row[1], col[1]] = 7.0  # the parked car
    valid[row, col] = True
    shared = SharedFeatures("2", pose, feats, valid)
    out = compensate_features(shared, _model(), seen_s=1.0, age_s=0.4, grid=grid)  # 4 m = 5 cells
    assert out.features[0, row[1], col[1]] == 7.0
    assert out.features[0, row[0], col[0]] == 0.0 and not out.valid[row[0], col[0]]
    assert out.features[0, row[0], col[0] + 5] == 5.0 and out.valid[row[0], col[0] + 5]


def test_boxes_and_points_on_a_moving_object_move_in_the_sender_frame():
    pose = pose_from_xyz_yaw(100, 50, 0, np.pi / 2)  # sender looks along world +y
    got = SharedBoxes("2", pose, Boxes([[0, -10, 0.8, 4.5, 1.9, 1.6, 0]], scores=[0.9]))
    moved = compensate_boxes(got, _model(), seen_s=1.0, age_s=0.2)
    assert np.allclose(moved.boxes.xyzlwhy[0, :2], [0, -12], atol=1e-6)  # world +x is sender -y
    pts = np.array([[0, -10, 0.5, 1], [5, 5, 0.5, 1]], np.float32)
    out = compensate_points(pts, pose, _model(), seen_s=1.0, age_s=0.2)
    assert np.allclose(out[0, :2], [0, -12], atol=1e-5) and np.allclose(out[1], pts[1])
