import numpy as np
import pytest
import torch

from v2x.encoder import sanitize_points
from v2x.frame import AgentScan
from v2x.geometry import NotRigidError


def test_empty_cloud_gives_an_all_zero_valid_map(model, cfg):
    out = model.encode([sanitize_points(np.zeros((0, 4)), cfg)])
    assert out.features.shape == (1, cfg.bev_channels, *cfg.grid.shape)
    assert not out.occupied.any()
    assert torch.count_nonzero(out.features) == 0
    boxes = model.decode(model.detect(out.features))[0]
    assert np.isfinite(boxes.xyzlwhy).all()


def test_nan_inf_and_out_of_grid_points_are_dropped(model, cfg):
    pts = np.array(
        [[np.nan, 0, 0, 0.5], [np.inf, 1, 0, 0.5], [500, 0, 0, 0.5], [0, 0, 99, 0.5], [3.0, 2.0, 0.5, 7.0]],
        dtype=np.float32,
    )
    clean = sanitize_points(pts, cfg)
    assert clean.shape == (1, 4)
    assert clean[0, 3] == 1.0  # intensity clamped into 0..1
    out = model.encode([clean])
    assert out.occupied.sum() == 1
    assert torch.isfinite(out.features).all()
    # only outside points: the same as an empty cloud
    assert not model.encode([sanitize_points(pts[:4], cfg)]).occupied.any()


def test_bad_point_shapes_are_refused(cfg):
    with pytest.raises(ValueError, match="shape"):
        sanitize_points(np.zeros((10, 3)), cfg)


def test_features_are_zero_exactly_where_no_points(model, cfg):
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-10, 10, (20000, 2)), rng.uniform(0, 2, 20000), rng.uniform(0, 1, 20000)].astype(
        np.float32
    )
    out = model.encode([sanitize_points(pts, cfg)])
    empty = ~out.occupied[0]
    assert torch.count_nonzero(out.features[0][:, empty]) == 0
    h, w = cfg.grid.shape
    assert out.occupied[0, h // 2, w // 2]


def test_non_rigid_pose_is_a_clear_error():
    pose = np.eye(4)
    pose[:3, :3] *= 1.5
    with pytest.raises(NotRigidError, match="agent 7"):
        AgentScan("7", "vehicle", np.zeros((5, 4)), pose)
