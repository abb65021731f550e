"""Two agents seeing one car: footprint association, no duplicate tracks, no swapped identities;
the settings search, the slot-aware noise net and its likelihood pre-training."""

import numpy as np
import pytest
import shapely
import torch

from v2x.core.boxes import Boxes, bev_corners
from v2x.tracking.association import giou3d_matrix
from v2x.tracking.calibrate import DetectionSamples, pretrain_nll
from v2x.tracking.config import TrackerConfig
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.metrics import TrackingSequence
from v2x.tracking.noise_net import NoiseNet
from v2x.tracking.oracle import duplicate_tracks, oracle_tracks
from v2x.tracking.records import AgentDetections, FrameDetections
from v2x.tracking.tune import tune


def _boxes(rows, scores=None):
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    return Boxes(rows, labels=0, scores=np.full(len(rows), 0.8) if scores is None else scores)


def test_footprint_giou_matches_shapely_and_pruning_keeps_every_pair_above_the_floor():
    rng = np.random.default_rng(3)
    a = np.c_[rng.uniform(-6, 6, (25, 3)), rng.uniform(1, 5, (25, 3)), rng.uniform(-3, 3, 25)]
    b = np.c_[rng.uniform(-6, 6, (20, 3)), rng.uniform(1, 5, (20, 3)), rng.uniform(-3, 3, 20)]
    ref = np.zeros((25, 20))
    for i in range(25):
        for j in range(20):
            pa, pb = (
                shapely.Polygon(bev_corners(a[i : i + 1])[0]),
                shapely.Polygon(bev_corners(b[j : j + 1])[0]),
            )
            union = pa.union(pb)
            ref[i, j] = (
                pa.intersection(pb).area / union.area
                - (union.convex_hull.area - union.area) / union.convex_hull.area
            )
    full = giou3d_matrix(a, b, bev=True)
    pruned = giou3d_matrix(a, b, floor=-0.2, bev=True)
    assert np.abs(full - ref).max() < 1e-9
    assert np.array_equal(pruned >= -0.2, ref >= -0.2)
    # the footprint ignores heights; the 3D GIoU does not
    lifted = b.copy()
    lifted[:, 2] += 2.0
    assert np.allclose(giou3d_matrix(a, lifted, bev=True), full)
    assert not np.allclose(giou3d_matrix(a, lifted), giou3d_matrix(a, b))


def _two_cars(n=30, lift=1.6, seed=0):
    """Two cars side by side, 3 m apart, overtaking; the collaborator sees both with its boxes
    ``lift`` metres too high (a pitch error), the ego sees them a little noisily."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        truth = np.array(
            [[5 + 1.2 * k, 0.0, -1, 4.5, 1.9, 1.6, 0.0], [2 + 1.0 * k, 3.0, -1, 4.5, 1.9, 1.6, 0.0]]
        )
        ego = truth + rng.normal(0, 0.1, truth.shape) * [1, 1, 1, 0, 0, 0, 0.1]
        other = truth + rng.normal(0, 0.3, truth.shape) * [1, 1, 0, 0, 0, 0, 0.1] + [0, 0, lift, 0, 0, 0, 0]
        agents = [
            AgentDetections("ego", "vehicle", np.eye(4), _boxes(ego)),
            AgentDetections("1", "vehicle", np.eye(4), _boxes(other)),
        ]
        frames.append(FrameDetections(k, k * 100_000_000, agents, Boxes(truth, labels=0, track_ids=[7, 8])))
    return frames


def _run(cfg, frames, noise=None):
    kf = MultiSensorKF(cfg, noise=noise)
    tracks = {f.frame: kf.step(f).boxes for f in frames}
    return tracks, TrackingSequence("s", len(frames), {f.frame: f.gt for f in frames}, tracks)


def test_two_agents_seeing_one_car_start_one_track_with_footprint_association():
    frames = _two_cars()
    tracks, seq = _run(TrackerConfig(affinity="giou_bev"), frames)
    assert duplicate_tracks([seq])["duplicate_boxes"] == 0
    # one id per car from its first report on: no duplicate, no swap
    ids = {tuple(sorted(t.track_ids.tolist())) for k, t in tracks.items() if k >= 3}
    assert len(ids) == 1 and len(next(iter(ids))) == 2
    # with the 3D GIoU the collaborator's lifted boxes miss the ego's tracks and start their own
    _, seq3d = _run(TrackerConfig(), frames)
    assert duplicate_tracks([seq3d])["duplicate_boxes"] > 20


def test_birth_overlap_absorbs_another_agents_view_and_counts_it():
    frames = _two_cars()
    kf = MultiSensorKF(TrackerConfig(birth_overlap=0.1))
    tracks = {f.frame: kf.step(f).boxes for f in frames}
    assert kf.warnings["birth_absorbed"] > 0
    assert (
        duplicate_tracks([TrackingSequence("s", 30, {f.frame: f.gt for f in frames}, tracks)])[
            "duplicate_boxes"
        ]
        == 0
    )


def test_hits_per_agent_confirms_a_car_two_agents_see_a_frame_sooner():
    frames = _two_cars(n=6)
    late = [len(MultiSensorKF(TrackerConfig(affinity="giou_bev", min_hits=3)).step(f).boxes) for f in frames]
    kf_once, kf_each = (
        MultiSensorKF(TrackerConfig(affinity="giou_bev", hits_per_agent=h)) for h in (False, True)
    )
    once = [int(kf_once.step(f).boxes.track_ids.size) for f in frames]
    each = [int(kf_each.step(f).boxes.track_ids.size) for f in frames]
    # frames 0..2 show every track (the start-up rule); frame 3 is the first that needs hits
    assert late == once and once[3] == 2 and each[3] == 2
    assert kf_once.hits.max() < kf_each.hits.max()


def test_noise_scale_multiplies_every_source_of_variance():
    det = AgentDetections("ego", "vehicle", np.eye(4), _boxes([[1, 2, 0, 4, 2, 1.5, 0]]))
    base = MultiSensorKF(TrackerConfig()).measurement_variances(det)
    scaled = MultiSensorKF(TrackerConfig(noise_scale=3.0)).measurement_variances(det)
    assert torch.allclose(scaled, 3 * base)
    det.variances = np.full((1, 7), 0.2)
    assert torch.allclose(
        MultiSensorKF(TrackerConfig(noise_scale=3.0)).measurement_variances(det),
        torch.full((1, 7), 0.6, dtype=torch.float64),
    )
    net = NoiseNet(agent_slots=2)
    det.variances = None
    learned = MultiSensorKF(TrackerConfig(noise_scale=2.0), noise=net).measurement_variances(det)
    assert torch.allclose(learned, 2 * net.prior_var.double()[None])  # untrained net: the prior
    with pytest.raises(ValueError, match="noise_scale"):
        TrackerConfig(noise_scale=0.0)


def test_likelihood_pretraining_learns_that_the_collaborator_is_noisier():
    rng = np.random.default_rng(0)
    n = 4000
    slots = rng.integers(0, 2, n)
    spread = np.where(slots == 0, 0.2, 0.8)[:, None] * np.ones(7)
    errors = rng.normal(0, 1, (n, 7)) * spread
    features = rng.normal(0, 1, (n, 14)).astype(np.float32)
    samples = DetectionSamples(features, errors, slots)
    net = NoiseNet(agent_slots=2)
    net.set_prior(np.full(7, 0.25))  # the residual reaches a factor e^3 either side of it
    history = pretrain_nll(net, samples, epochs=15, lr=1e-2, batch=256, seed=0)
    assert history[-1] < history[0]
    with torch.no_grad():  # the variance the net gives each agent's own detections, on average
        var = [
            (net.prior_var.float() * torch.exp(net(torch.from_numpy(features[slots == s]), None, s)))
            .numpy()
            .mean()
            for s in (0, 1)
        ]
    assert var[0] == pytest.approx(0.04, rel=0.3) and var[1] == pytest.approx(0.64, rel=0.3)


def test_the_search_keeps_duplicate_free_settings_and_marks_its_choice():
    frames = _two_cars(n=25)
    search = {"affinity": ("giou", "giou_bev")}
    cfg, trials = tune([("s", frames)], TrackerConfig(), None, search, progress=False)
    assert cfg.affinity == "giou_bev"
    by = {t["settings"]["affinity"]: t for t in trials}
    assert by["giou"]["duplicate_boxes"] > 0 and not by["giou"]["duplicates_ok"]
    assert by["giou_bev"]["chosen"] and sum(t["chosen"] for t in trials) == 1


def test_the_oracle_reports_each_detected_car_once_with_its_identity():
    frames = _two_cars(n=5, lift=0.0)
    phantom = AgentDetections("1", "vehicle", np.eye(4), _boxes([[40, 20, -1, 4.5, 1.9, 1.6, 0]]))
    frames[2].agents.append(phantom)
    tracks = oracle_tracks(frames)
    assert all(sorted(t.track_ids.tolist()) == [7, 8] for t in tracks.values())
