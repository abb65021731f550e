"""The tracker's inference shortcuts against the exact or differentiable computation they replace
(issue 21): polygon areas and GIoU against shapely, pair by pair, including the degenerate
layouts (touching, contained, identical, far apart), and the batched no-grad filter against the
differentiable one on a real V2V4Real sequence."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import shapely
import torch
from v2v4real_helpers import real_frames

from v2x import WEIGHTS
from v2x.core.boxes import Boxes, bev_corners
from v2x.tracking.association import giou3d_matrix
from v2x.tracking.dmstrack import MultiSensorKF, _Dets
from v2x.tracking.noise_net import agent_frame_boxes, detection_features
from v2x.tracking.polygons import _clipped_area, convex_hull_area, intersection_area
from v2x.tracking.train import load_tracker


def _boxes(rng, n, spread=6.0, centre=(40.0, -25.0)):
    return np.c_[
        rng.uniform(-spread, spread, (n, 2)) + centre,
        rng.uniform(-1.0, 1.0, n),
        rng.uniform(0.5, 6.0, n),
        rng.uniform(0.5, 3.0, n),
        rng.uniform(1.0, 2.5, n),
        rng.uniform(-4.0, 4.0, n),
    ]


def _special_pairs(rng) -> tuple[np.ndarray, np.ndarray]:
    """Pairs in the layouts where polygon code goes wrong: touching along an edge (axis-aligned,
    so the shared corners are bit-identical, and turned), touching at one corner, identical,
    one inside the other (sharing a side or not), crossed at right angles, far apart."""
    a, b = _boxes(rng, 90), _boxes(rng, 90)
    a[:10, 6] = 0.0  # side by side, shared edge, exact corners
    b[:10] = a[:10]
    b[:10, 0] = a[:10, 0] + a[:10, 3]
    b[10:20] = a[10:20]  # side by side along the length, turned: corners equal to rounding
    off = a[10:20, 4]
    b[10:20, 0] -= np.sin(a[10:20, 6]) * off
    b[10:20, 1] += np.cos(a[10:20, 6]) * off
    b[20:30] = a[20:30]  # corner to corner
    b[20:30, 0] += a[20:30, 3] * np.cos(a[20:30, 6]) - a[20:30, 4] * np.sin(a[20:30, 6])
    b[20:30, 1] += a[20:30, 3] * np.sin(a[20:30, 6]) + a[20:30, 4] * np.cos(a[20:30, 6])
    b[30:40] = a[30:40]  # identical
    b[40:50] = a[40:50]  # contained, centred
    b[40:50, 3:5] *= 0.5
    b[50:60] = a[50:60]  # contained, sharing the front edge (axis-aligned: exact)
    a[50:60, 6] = b[50:60, 6] = 0.0
    b[50:60, 3] = a[50:60, 3] / 2
    b[50:60, 0] = a[50:60, 0] + a[50:60, 3] / 4
    b[60:70] = a[60:70]  # a cross
    b[60:70, 6] += np.pi / 2
    b[70:80, :2] = a[70:80, :2] + 30.0  # far apart
    b[80:90, :2] = a[80:90, :2] + rng.normal(0, 0.05, (10, 2))  # nearly the same place
    return a, b


def _shapely_areas(a, b):
    pa, pb = shapely.polygons(bev_corners(a)), shapely.polygons(bev_corners(b))
    inter = shapely.area(shapely.intersection(pa, pb))
    hull = shapely.area(shapely.convex_hull(shapely.union(pa, pb)))
    return inter, hull


def test_intersection_and_hull_areas_equal_shapely_pair_by_pair():
    rng = np.random.default_rng(21)
    sa, sb = _special_pairs(rng)
    a, b = np.concatenate([_boxes(rng, 400), sa]), np.concatenate([_boxes(rng, 400), sb])
    inter, hull = _shapely_areas(a, b)
    ca, cb = bev_corners(a), bev_corners(b)
    assert np.abs(intersection_area(ca, cb) - inter).max() < 1e-9
    assert np.abs(intersection_area(cb, ca) - inter).max() < 1e-9
    assert np.abs(_clipped_area(ca, cb) - inter).max() < 1e-9  # the fallback for near-degenerate pairs
    assert np.abs(convex_hull_area(np.concatenate([ca, cb], axis=1)) - hull).max() < 1e-9
    # the layouts are what they claim: some touch (zero overlap), some coincide, some are apart
    special = slice(400, None)
    assert (inter[special] == 0).sum() >= 30 and np.isclose(
        inter[430:440], a[430:440, 3] * a[430:440, 4]
    ).all()


def _shapely_giou(a, b, bev):
    inter_bev, hull = _shapely_areas(a, b)
    if bev:
        union = a[:, 3] * a[:, 4] + b[:, 3] * b[:, 4] - inter_bev
        return inter_bev / union - (hull - union) / hull
    za0, za1 = a[:, 2] - a[:, 5] / 2, a[:, 2] + a[:, 5] / 2
    zb0, zb1 = b[:, 2] - b[:, 5] / 2, b[:, 2] + b[:, 5] / 2
    inter = inter_bev * np.clip(np.minimum(za1, zb1) - np.maximum(za0, zb0), 0, None)
    union = a[:, 3:6].prod(axis=1) + b[:, 3:6].prod(axis=1) - inter
    enclose = hull * (np.maximum(za1, zb1) - np.minimum(za0, zb0))
    return inter / union - (enclose - union) / enclose


@pytest.mark.parametrize("bev", [False, True])
def test_giou_matrix_equals_shapely_on_every_layout(bev):
    a, b = _special_pairs(np.random.default_rng(7))
    full = giou3d_matrix(a, b, bev=bev)  # every pair of the two sets, not only the aligned ones
    ia, ib = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    want = _shapely_giou(a[ia.ravel()], b[ib.ravel()], bev).reshape(full.shape)
    assert np.abs(full - want).max() < 1e-9
    assert np.abs(np.diag(full) - _shapely_giou(a, b, bev)).max() < 1e-9
    pruned = giou3d_matrix(a, b, floor=-0.2, bev=bev)
    kept = pruned != -1.0
    assert np.all(want[~kept] < -0.2) and np.abs(pruned[kept] - want[kept]).max() < 1e-9


@pytest.mark.parametrize("second_kind", ["vehicle", "rsu"])
def test_batched_noise_net_gives_the_per_agent_variances(realdata, second_kind):
    """One call per frame for every agent's rows (numpy MLP) against the torch forward per agent;
    with the second agent as a roadside unit, its rows must get the RSU input and no other's."""
    cfg, net = load_tracker(WEIGHTS / "noise_v2v4real.pt")
    kf = MultiSensorKF(cfg, noise=net)
    checked = 0
    for frame in real_frames(realdata, n=40):
        agents = [replace(a, kind=second_kind) if k == 1 else a for k, a in enumerate(frame.agents)]
        dets = [(slot, d) for slot, raw in enumerate(agents) if (d := kf._prepare(raw)) is not None]
        batched = kf._variances_batch(dets)
        for (slot, d), v in zip(dets, batched):
            one = net(torch.from_numpy(_features(d)), None, slot)
            ref = (net.prior_var * torch.exp(one.double())).detach().numpy()
            assert v.shape == (len(d), 7) and np.allclose(v, ref, rtol=1e-5, atol=0)
            checked += len(d)
    assert checked > 200


def _features(d: _Dets) -> np.ndarray:
    """The net's inputs as the training path builds them (box objects, one agent)."""
    return detection_features(agent_frame_boxes(Boxes(d.box), d.world_from_agent), d.score, d.kind)


@pytest.mark.parametrize("fixed", [False, True])
def test_inference_path_tracks_a_real_sequence_like_the_differentiable_path(realdata, fixed):
    """Same ids, reported boxes and covariances, frame by frame: the no-grad path (numpy, batched
    net, vectorised GIoU) is an implementation of the training path, not another tracker."""
    cfg, net = load_tracker(WEIGHTS / "noise_v2v4real.pt", fixed=fixed)
    fast, slow = MultiSensorKF(cfg, noise=net), MultiSensorKF(cfg, noise=net, differentiable=True)
    shown = 0
    for frame in real_frames(realdata):
        a, b = fast.step(frame), slow.step(frame)
        assert a.boxes.track_ids.tolist() == b.boxes.track_ids.tolist()
        assert a.ids.tolist() == b.ids.tolist() and a.updated.tolist() == b.updated.tolist()
        assert np.allclose(a.boxes.xyzlwhy, b.boxes.xyzlwhy, rtol=0, atol=1e-5)
        assert np.allclose(a.covariances.numpy(), b.covariances.detach().numpy(), rtol=1e-5, atol=1e-8)
        shown += len(a.boxes)
        slow.detach()
    assert shown > 500 and b.states.requires_grad == (not fixed) and not a.states.requires_grad
    assert fast.warnings == slow.warnings
