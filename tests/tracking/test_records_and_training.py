"""Detection records on disk, the synthetic detector, the fitted prior and noise-model training."""

import json

import numpy as np
import pytest
import torch

from v2x.core.boxes import Boxes
from v2x.tracking.records import AgentDetections, FrameDetections, RecordError, load_sequence, save_sequence
from v2x.tracking.synth import DetectionSynthesizer, NoiseProfile, procedural_scenario, synthetic_sequence
from v2x.tracking.train import (
    NoiseTrainConfig,
    assign_gt_ids,
    detection_errors,
    fit_prior,
    load_tracker,
    train_noise_model,
)


def test_records_round_trip_with_every_optional_field(tmp_path):
    frames = synthetic_sequence(3, 6, patch_channels=4)
    frames[2].agents[1].variances = np.full((len(frames[2].agents[1]), 7), 0.25)
    save_sequence(tmp_path / "s.npz", frames)
    back = load_sequence(tmp_path / "s.npz")
    assert len(back) == len(frames)
    for a, b in zip(frames, back, strict=True):
        assert (a.frame, a.timestamp_ns) == (b.frame, b.timestamp_ns)
        assert np.allclose(a.gt.xyzlwhy, b.gt.xyzlwhy) and (a.gt.track_ids == b.gt.track_ids).all()
        for x, y in zip(a.agents, b.agents, strict=True):
            assert (x.agent_id, x.kind) == (y.agent_id, y.kind)
            assert np.allclose(x.world_from_agent, y.world_from_agent)
            assert np.allclose(x.boxes.xyzlwhy, y.boxes.xyzlwhy) and np.allclose(
                x.boxes.scores, y.boxes.scores
            )
            assert np.allclose(x.features, y.features, atol=1e-2)  # stored as float16
            assert (x.gt_ids == y.gt_ids).all()
            assert (x.pose_var is None) == (y.pose_var is None)
            assert (x.variances is None) == (y.variances is None)
    assert np.allclose(back[2].agents[1].variances, 0.25)


def test_broken_records_name_the_field(tmp_path):
    frames = synthetic_sequence(1, 3)
    save_sequence(tmp_path / "s.npz", frames)
    d = dict(np.load(tmp_path / "s.npz"))
    d["score"] = d["score"][:-1]
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(RecordError, match="score"):
        load_sequence(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RecordError, match="file"):
        load_sequence(tmp_path / "junk.npz")
    with pytest.raises(RecordError, match="variances"):
        AgentDetections("a", "vehicle", np.eye(4), Boxes(np.zeros((2, 7))), variances=np.zeros((3, 7)))
    with pytest.raises(RecordError, match="kind"):
        AgentDetections("a", "boat", np.eye(4), Boxes())


def test_synthetic_detections_are_seeded_and_err_more_with_range():
    a, b = synthetic_sequence(11, 30), synthetic_sequence(11, 30)
    for fa, fb in zip(a, b, strict=True):
        for x, y in zip(fa.agents, fb.agents, strict=True):
            assert np.array_equal(x.boxes.xyzlwhy, y.boxes.xyzlwhy)
    # one perfect-pose agent, many frames: the error grows with range, scores fall with error
    gts, views = procedural_scenario(2, 120)
    synth = DetectionSynthesizer(0, {"0": NoiseProfile(false_positives=0)})
    frames = [synth.frame(k, k, g, v[:1]) for k, (g, v) in enumerate(zip(gts, views, strict=True))]
    errs = detection_errors([frames])
    dets = [(a, f) for f in frames for a in f.agents if len(a.boxes)]
    ranges = np.concatenate(
        [np.hypot(*(a.boxes.xyzlwhy[a.gt_ids >= 0, :2] - a.world_from_agent[:2, 3]).T) for a, _ in dets]
    )
    e = np.hypot(errs[:, 0], errs[:, 1])
    assert len(e) == len(ranges) > 200
    assert np.median(e[ranges > 40]) > 1.5 * np.median(e[ranges < 15])


def test_gt_ids_by_distance_and_the_fitted_prior():
    frames = synthetic_sequence(5, 40)
    truth = [a.gt_ids.copy() for f in frames for a in f.agents]
    for f in frames:
        for a in f.agents:
            a.gt_ids = None
    assign_gt_ids(frames, 2.0)
    got = [a.gt_ids for f in frames for a in f.agents]
    agree = np.mean(np.concatenate([g == t for g, t in zip(got, truth, strict=True)]))
    assert agree > 0.95
    cfg = fit_prior([frames])
    var = np.array(cfg.measurement_var)
    assert 0.005 < var[0] < 1.0 and var[2] < var[0] and var.min() > 0
    assert cfg.process_var[7] > cfg.process_var[0]  # velocities wander more than positions jump


def test_training_is_deterministic_and_checkpoints_load(tmp_path):
    torch.set_num_threads(1)
    train = [synthetic_sequence(s, 20, patch_channels=3) for s in (1, 2)]
    val = [synthetic_sequence(9, 20, patch_channels=3)]
    cfg = NoiseTrainConfig(epochs=1, feature_channels=3, patch=5)
    one = train_noise_model(train, val, tmp_path / "a", cfg, progress=False)
    two = train_noise_model(train, val, tmp_path / "b", cfg, progress=False)
    assert one["history"] == two["history"]
    assert one["history"][1]["train_loss"] is not None and one["parameters"] < 1_000_000
    summary = json.loads((tmp_path / "a" / "noise_training.json").read_text())
    assert summary["fixed_val_loss"] == pytest.approx(one["history"][0]["val_loss"])
    tracker_cfg, net = load_tracker(tmp_path / "a" / "noise.pt")
    assert np.allclose(net.prior_var.numpy(), tracker_cfg.measurement_var)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frame_detections_fused_keeps_every_box():
    f = synthetic_sequence(4, 2)[1]
    assert len(f.fused()) == sum(len(a) for a in f.agents)
    assert len(FrameDetections(0, 0, []).fused()) == 0


def test_time_stamps_that_contradict_the_nominal_rate_are_used():
    from v2x.tracking.sequences import run_tracker

    seq = synthetic_sequence(6, 12)
    for f in seq:
        f.timestamp_ns *= 5  # a 2 Hz log
    with pytest.warns(UserWarning, match="0.500 s apart"):
        slow = run_tracker("dmstrack", seq)
    assert sum(len(b) for b in slow.values()) > 0
