from dataclasses import replace

import numpy as np
import pytest
import torch

from v2x.core.geometry import inverse, pose_from_xyz_yaw
from v2x.perception.fusion import AttentionFusion, FillFusion, MaxFusion, make_fusion, warp_to_ego


def _blob(cfg, x, y):
    h, w = cfg.grid.shape
    f = torch.zeros(1, 2, h, w)
    v = torch.zeros(1, h, w, dtype=torch.bool)
    row, col, ok = cfg.grid.cell_of(np.array([[x, y]]))
    assert ok[0]
    f[0, :, row[0], col[0]] = 1.0
    v[0, row[0], col[0]] = True
    return f, v


def test_identity_warp_keeps_features(cfg):
    f, v = _blob(cfg, 10.4, -5.2)
    wf, wv = warp_to_ego(f, v, [np.eye(4)], cfg.grid)
    assert torch.allclose(wf, f, atol=1e-5)
    assert torch.equal(wv, v)


def test_warp_moves_a_cell_to_where_the_pose_says(cfg):
    world_from_ego = pose_from_xyz_yaw(0, 0, 0, 0.0)
    world_from_sender = pose_from_xyz_yaw(20.0, 8.0, 0, np.pi / 2)
    ego_from_sender = inverse(world_from_ego) @ world_from_sender
    # a cell centre in the sender frame at (8.4, 4.4) is, in the ego frame, at R (8.4, 4.4) + t
    f, v = _blob(cfg, 8.4, 4.4)
    wf, wv = warp_to_ego(f, v, [ego_from_sender], cfg.grid)
    expected = ego_from_sender[:2, :2] @ np.array([8.4, 4.4]) + ego_from_sender[:2, 3]
    row, col, _ = cfg.grid.cell_of(expected[None])
    peak = np.unravel_index(int(wf[0, 0].argmax()), wf.shape[2:])
    assert peak == (row[0], col[0])
    assert wv[0, row[0], col[0]]
    assert wv.sum() <= 2


def test_max_fusion_ignores_agents_without_data():
    feats = torch.tensor([[[[1.0, 0.0]]], [[[0.5, 3.0]]]])  # (A=2, C=1, H=1, W=2)
    valid = torch.tensor([[[True, False]], [[False, True]]])
    fused = MaxFusion()(feats, valid)
    assert fused.tolist() == [[[1.0, 3.0]]]
    none_valid = MaxFusion()(feats, torch.zeros_like(valid))
    assert torch.count_nonzero(none_valid) == 0


def test_fill_fusion_keeps_the_egos_cells_and_takes_the_others_maximum_elsewhere():
    feats = torch.tensor([[[[1.0, 0.0, 0.0]]], [[[5.0, 3.0, 0.0]]], [[[2.0, 4.0, 0.0]]]])  # A=3, C=1, W=3
    valid = torch.tensor([[[True, False, False]], [[True, True, False]], [[False, True, False]]])
    assert FillFusion()(feats, valid).tolist() == [[[1.0, 4.0, 0.0]]]  # max fusion: 5, 4, 0
    assert MaxFusion()(feats, valid).tolist() == [[[5.0, 4.0, 0.0]]]
    cells = []
    for f, m in zip(feats[1:], valid[1:], strict=True):
        idx = torch.nonzero(m.reshape(-1)).squeeze(1)
        cells.append((idx, f.reshape(1, -1).index_select(1, idx)))
    assert torch.equal(FillFusion.sparse(feats[0], valid[0], cells), FillFusion()(feats, valid))
    assert isinstance(make_fusion("fill", 1), FillFusion)
    with pytest.raises(ValueError, match="max, fill, attention"):
        make_fusion("mean", 1)


def test_attention_fusion_weights_only_valid_agents_and_has_finite_gradients():
    torch.manual_seed(0)
    att = AttentionFusion(channels=4)
    feats = torch.randn(3, 4, 5, 6, requires_grad=True)
    valid = torch.zeros(3, 5, 6, dtype=torch.bool)
    valid[0, :2] = True
    valid[1, 1:3] = True
    fused = att(feats, valid)
    # where only agent 0 has data the result is agent 0's feature
    assert torch.allclose(fused[:, 0], feats[0, :, 0], atol=1e-6)
    # where nobody has data the result is zero
    assert torch.count_nonzero(fused[:, 4]) == 0
    fused.sum().backward()
    assert torch.isfinite(feats.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in att.parameters())


def test_the_egos_inference_path_fuses_like_the_training_path(cfg):
    """Without gradients the ego warps and fuses only the cells collaborators cover: the same
    maximum bit for bit, the same interpolation to float rounding, and the same detections."""
    torch.manual_seed(0)
    h, w = cfg.grid.shape
    feats = torch.relu(torch.randn(3, 8, h, w))
    valid = torch.rand(3, h, w) < 0.2
    poses = [pose_from_xyz_yaw(12.0 * i, -5.0 * i, 0.0, 0.4 * i) for i in range(1, 4)]
    with torch.enable_grad():
        dense, dense_valid = warp_to_ego(feats, valid, poses, cfg.grid)
    with torch.no_grad():
        sparse, sparse_valid = warp_to_ego(feats, valid, poses, cfg.grid)
    assert torch.equal(dense_valid, sparse_valid) and sparse_valid.any()
    inside = sparse_valid[:, None].expand_as(dense)
    assert torch.allclose(sparse[inside], dense[inside], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(sparse[~inside]) == 0

    all_feats = torch.relu(torch.randn(4, 8, h, w)) - 0.3  # negative values too
    all_valid = torch.rand(4, h, w) < 0.3
    with torch.enable_grad():
        want = MaxFusion()(all_feats, all_valid)
    cells = []
    for f, m in zip(all_feats[1:], all_valid[1:], strict=True):
        idx = torch.nonzero(m.reshape(-1)).squeeze(1)
        cells.append((idx, f.reshape(8, -1).index_select(1, idx)))
    with torch.no_grad():
        got = MaxFusion.sparse(all_feats[0], all_valid[0], cells)
    assert torch.equal(got, want)


@pytest.mark.parametrize("fusion", ["max", "fill"])
def test_the_detectors_fuse_gives_the_same_map_with_and_without_gradients(cfg, fusion):
    """``CooperativeDetector.fuse`` takes the cell-list path at inference and the dense path in
    training; both give the same fused map, so training and the ego node see one model."""
    from v2x.perception.detector import CooperativeDetector

    torch.manual_seed(1)
    model = CooperativeDetector(replace(cfg, fusion=fusion)).eval()
    c, (h, w) = cfg.bev_channels, cfg.grid.shape
    ego = torch.randn(c, h, w)
    ego_valid = torch.rand(h, w) < 0.3
    others = [
        (torch.randn(c, h, w), torch.rand(h, w) < 0.3, pose_from_xyz_yaw(9.0 * i, 4.0 * i, 0.0, -0.3 * i))
        for i in range(1, 4)
    ]
    others.append((torch.randn(c, h, w), torch.zeros(h, w, dtype=torch.bool), np.eye(4)))  # sends nothing
    with torch.enable_grad():
        want = model.fuse(ego, ego_valid, others)
    with torch.no_grad():
        got = model.fuse(ego, ego_valid, others)
    assert want.shape == got.shape == (c, h, w)
    assert torch.allclose(got, want, atol=1e-4)  # float rounding of the interpolation: about 3e-5
    assert not torch.equal(got, model.fuse(ego, ego_valid, []).detach())  # collaborators count
