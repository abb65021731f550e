"""The learned correction of collaborators' warped features (v2x.perception.alignment)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from v2x.core.geometry import pose_from_xyz_yaw
from v2x.perception.alignment import GEOMETRY_CHANNELS, WarpAlignment, sampling_geometry
from v2x.perception.detector import CooperativeDetector
from v2x.perception.fusion import _sampling


def _scene(cfg, seed: int):
    g = torch.Generator().manual_seed(seed)
    c, (h, w) = cfg.bev_channels, cfg.grid.shape
    ego = torch.relu(torch.randn(c, h, w, generator=g))
    ego_valid = torch.rand(h, w, generator=g) < 0.3
    others = [
        (
            torch.relu(torch.randn(c, h, w, generator=g)),
            torch.rand(h, w, generator=g) < 0.3,
            pose_from_xyz_yaw(9.0 * i, 4.0 * i, 0.0, -0.3 * i),
        )
        for i in range(1, 4)
    ]
    return ego, ego_valid, others


def test_an_untrained_alignment_leaves_the_fusion_as_it_was(cfg):
    """The last layer starts at zero: adding the module to a trained detector changes nothing
    until it is trained, so fine-tuning starts from the detector's own result."""
    torch.manual_seed(0)
    plain = CooperativeDetector(cfg).eval()
    aligned = CooperativeDetector(dataclasses.replace(cfg, warp_alignment=True)).eval()
    missing, unexpected = aligned.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("align.") for k in missing)
    ego, ego_valid, others = _scene(cfg, 1)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert torch.equal(aligned.fuse(ego, ego_valid, others), plain.fuse(ego, ego_valid, others))


def test_the_egos_cell_path_and_the_training_path_agree_with_a_trained_alignment(cfg):
    torch.manual_seed(2)
    model = CooperativeDetector(dataclasses.replace(cfg, warp_alignment=True)).eval()
    torch.nn.init.normal_(model.align.out.weight, std=0.2)
    ego, ego_valid, others = _scene(cfg, 3)
    with torch.enable_grad():
        want = model.fuse(ego, ego_valid, others)
        want.sum().backward()  # the training path reaches the alignment's weights
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.align.parameters())
    with torch.no_grad():
        got = model.fuse(ego, ego_valid, others)
        unaligned = CooperativeDetector(cfg).eval()
        unaligned.load_state_dict(model.state_dict(), strict=False)
        before = unaligned.fuse(ego, ego_valid, others)
    assert torch.allclose(got, want.detach(), atol=1e-4)
    assert not torch.allclose(got, before, atol=1e-2)  # the correction does act


def test_sampling_geometry_describes_the_resampling(cfg):
    """Identity: on the sender's cell centres at every cell, yaw 0, range = the cell's own.
    A half-cell shift along x: half-way between centres in x (cos 2 pi ix = -1), on them in y."""
    h, w = cfg.grid.shape
    valid = torch.ones(1, h, w, dtype=torch.bool)
    sampling, _ = _sampling(valid, [np.eye(4)], cfg.grid, 1)
    geo = sampling_geometry(sampling[0].reshape(-1, 2), 0.0, cfg.grid)
    assert geo.shape == (GEOMETRY_CHANNELS, h * w)
    assert torch.allclose(geo[0], torch.ones(h * w)) and torch.allclose(geo[1], torch.zeros(h * w))
    assert torch.allclose(geo[2], torch.ones(h * w), atol=1e-4) and torch.allclose(
        geo[4], torch.ones(h * w), atol=1e-4
    )
    centres = cfg.grid.cell_centers()
    want = np.hypot(centres[..., 0], centres[..., 1]).reshape(-1) / cfg.grid.x_max
    assert np.allclose(geo[6].numpy(), want, atol=1e-4)
    shift = pose_from_xyz_yaw(cfg.grid.cell / 2, 0.0, 0.0, 0.0)
    sampling, _ = _sampling(valid, [shift], cfg.grid, 1)
    geo = sampling_geometry(sampling[0].reshape(-1, 2), 0.0, cfg.grid)
    assert torch.allclose(geo[2], -torch.ones(h * w), atol=1e-3)
    assert torch.allclose(geo[4], torch.ones(h * w), atol=1e-4)


def test_the_alignment_is_a_residual_per_cell_network():
    torch.manual_seed(4)
    net = WarpAlignment(channels=6, hidden=5)
    feats, geo = torch.randn(6, 11), torch.randn(GEOMETRY_CHANNELS, 11)
    assert torch.equal(net(feats, geo), feats)  # zero-initialised output layer
    torch.nn.init.normal_(net.out.weight)
    out = net(feats, geo)
    # cell by cell: the result at one cell depends on that cell only
    assert torch.allclose(net(feats[:, 3:4], geo[:, 3:4]), out[:, 3:4], atol=1e-6)
