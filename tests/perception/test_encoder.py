import numpy as np
import pytest
import torch

from v2x.core.frame import AgentScan
from v2x.core.geometry import NotRigidError
from v2x.perception.detector import CooperativeDetector
from v2x.perception.encoder import occupied_cells_dense, sanitize_points


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


def test_dense_map_equals_spconv_dense_masked_bit_for_bit(cfg, synthetic_frame):
    """occupied_cells_dense replaces spconv's dense() + mask for speed; it must give the same
    map, bit for bit, and the same gradients (training goes through it too). On one thread, as
    the encoder runs spconv (v2x.perception.spconv_compat): with more, spconv's backward sums in a varying
    order and two backward passes differ (by about 1e-3 here) whatever the map."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_dense_map(cfg, synthetic_frame)
    finally:
        torch.set_num_threads(threads)


def _check_dense_map(cfg, synthetic_frame):
    torch.manual_seed(1)
    trained_like = CooperativeDetector(cfg).train()
    for p in trained_like.parameters():  # move batch-norm off its identity start
        p.data.add_(0.05 * torch.randn_like(p))
    enc = trained_like.encoder
    frame = synthetic_frame(3)
    clouds = [sanitize_points(s.points_in_bev(), cfg) for s in frame.agents.values()]
    point_feats, inverse_idx, coords = enc.pillarize(clouds)
    per_point = enc.point_net(point_feats)
    pillar = torch.zeros(len(coords), per_point.shape[1]).scatter_reduce(
        0, inverse_idx[:, None].expand_as(per_point), per_point, reduce="amax", include_self=False
    )
    pillar = pillar.detach().requires_grad_(True)
    out = enc.backbone(enc._spconv.SparseConvTensor(pillar, coords, list(cfg.grid.voxel_shape), len(clouds)))
    h, w = cfg.grid.shape
    occupied = torch.zeros(len(clouds), h, w, dtype=torch.bool)
    occupied[coords[:, 0].long(), coords[:, 1].long() // 2, coords[:, 2].long() // 2] = True
    reference = out.dense() * occupied[:, None].float()
    ours = occupied_cells_dense(out.features, out.indices, occupied)
    assert ours.shape == reference.shape and ours.is_contiguous()
    assert torch.equal(ours, reference)
    assert torch.count_nonzero(ours) > 1000  # the check is not between two empty maps
    weight = torch.randn_like(reference)
    (g_ref,) = torch.autograd.grad((reference * weight).sum(), pillar, retain_graph=True)
    (g_ours,) = torch.autograd.grad((ours * weight).sum(), pillar)
    assert torch.equal(g_ours, g_ref)


@pytest.mark.parametrize("point_xy", ["absolute", "local"])
def test_local_point_positions_make_the_encoder_the_same_everywhere_on_the_grid(cfg, point_xy):
    """Points moved by whole feature cells give the same features moved by as many cells with
    ``point_xy: local``; with ``absolute`` they do not (the network sees where it is)."""
    import dataclasses

    torch.manual_seed(0)
    local_cfg = dataclasses.replace(cfg, point_xy=point_xy)
    model = CooperativeDetector(local_cfg).eval()
    r = np.random.default_rng(0)
    pts = np.c_[r.uniform(-6, 6, (600, 2)), r.uniform(0, 2, 600), r.uniform(0, 1, 600)].astype(np.float32)
    cell = local_cfg.grid.voxel * local_cfg.grid.stride
    moved = pts.copy()
    moved[:, 0] += 5 * cell
    with torch.no_grad():
        a = model.encode([sanitize_points(pts, local_cfg)])
        b = model.encode([sanitize_points(moved, local_cfg)])
    assert torch.equal(torch.roll(a.occupied, 5, dims=2), b.occupied)
    same = torch.allclose(torch.roll(a.features, 5, dims=3), b.features, atol=1e-4)
    assert same == (point_xy == "local")


def test_point_xy_is_checked_and_the_default_leaves_identities_alone(cfg):
    import dataclasses

    with pytest.raises(ValueError, match="point_xy"):
        dataclasses.replace(cfg, point_xy="relative")
    assert "point_xy" not in cfg.to_dict()  # models made before the option keep their identity
    assert dataclasses.replace(cfg, point_xy="local").to_dict()["point_xy"] == "local"
