import numpy as np
import pytest
import torch

from v2x.core.iou import bev_iou_matrix
from v2x.perception.cooperative import Perception, evaluation_ground_truth
from v2x.perception.head import REG_CHANNELS, HeadOutput, decode_boxes, rotated_nms
from v2x.pipeline.methods import FUSION_MODES
from v2x.training.data import CooperativeTrainingSet
from v2x.training.detector import forward_losses
from v2x.training.targets import build_targets, detection_loss


def test_targets_decode_back_to_the_boxes(cfg):
    boxes = np.array([[10.3, -4.1, 0.8, 4.6, 1.9, 1.6, 0.4], [-30.0, 20.0, 1.2, 9.0, 2.5, 3.2, -2.0]])
    t = build_targets([boxes], cfg)
    h, w = cfg.grid.shape
    heat = torch.full((1, 1, h, w), -20.0)
    reg = torch.zeros(1, REG_CHANNELS, h, w)
    for k in range(2):
        idx = int(t.index[0, k])
        heat.view(-1)[idx] = 20.0
        reg[0, :, idx // w, idx % w] = t.regression[0, k]
    out = decode_boxes(HeadOutput(heat, reg), cfg)[0]
    assert len(out) == 2
    order = np.argsort(out.xyzlwhy[:, 0])[::-1]
    assert np.allclose(out.xyzlwhy[order], boxes, atol=1e-4)
    assert t.heatmap.max() == 1.0 and t.mask.sum() == 2


def test_loss_is_low_for_the_target_and_high_for_noise(cfg):
    boxes = np.array([[10.3, -4.1, 0.8, 4.6, 1.9, 1.6, 0.4]])
    t = build_targets([boxes], cfg)
    h, w = cfg.grid.shape
    logit = torch.logit(t.heatmap.clamp(1e-4, 1 - 1e-4))[:, None]
    reg = torch.zeros(1, REG_CHANNELS, h, w)
    idx = int(t.index[0, 0])
    reg[0, :, idx // w, idx % w] = t.regression[0, 0]
    good = detection_loss(HeadOutput(logit, reg), t)["total"]
    bad = detection_loss(HeadOutput(torch.zeros(1, 1, h, w), torch.randn(1, REG_CHANNELS, h, w)), t)["total"]
    assert good < 0.1 * bad


def test_rotated_nms_keeps_the_best_of_overlapping_boxes():
    b = np.array([[0, 0, 0, 4, 2, 1.5, 0], [0.2, 0, 0, 4, 2, 1.5, 0.05], [10, 0, 0, 4, 2, 1.5, 0]])
    keep = rotated_nms(b, np.array([0.5, 0.9, 0.3]), 0.1)
    assert keep.tolist() == [1, 2]


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_every_fusion_mode_runs_and_reports_bytes(model, mode, synthetic_frame):
    frame = synthetic_frame(1)
    res = FUSION_MODES[mode].run(Perception(model), frame)
    assert res.boxes.scores is not None and np.isfinite(res.boxes.xyzlwhy).all()
    assert set(res.bytes_per_collaborator) == {"1", "2"}
    if mode == "none":
        assert set(res.bytes_per_collaborator.values()) == {0}
    else:
        assert min(res.bytes_per_collaborator.values()) > 0


def test_evaluation_ground_truth_keeps_only_seen_vehicles(synthetic_frame):
    frame = synthetic_frame(2)
    gt = evaluation_ground_truth(frame)
    assert 0 < len(gt) <= len(frame.gt)
    # in the ego BEV frame: the ego is at the origin, boxes near the ground
    assert np.all(np.abs(gt.xyzlwhy[:, 2] - 0.75) < 0.1)


def test_training_step_gives_finite_gradients_everywhere(cfg, synthetic_frame):
    from v2x.perception.detector import CooperativeDetector

    torch.manual_seed(0)
    model = CooperativeDetector(cfg).train()
    ds = CooperativeTrainingSet([synthetic_frame(3), synthetic_frame(4)], cfg, seed=1, early_probability=0.5)
    samples = [ds[0], ds[1]]
    losses = forward_losses(model, samples)
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.point_net[0].weight.grad.abs().sum() > 0


def test_training_samples_are_deterministic_for_a_seed(cfg, synthetic_frame):
    frames = [synthetic_frame(5)]
    a = CooperativeTrainingSet(frames, cfg, seed=3)[0]
    b = CooperativeTrainingSet(frames, cfg, seed=3)[0]
    assert a.key == b.key and all(torch.equal(x, y) for x, y in zip(a.clouds, b.clouds, strict=True))
    assert np.array_equal(a.boxes, b.boxes)


def test_targets_are_the_vehicles_the_agent_sees_in_its_frame(cfg, synthetic_frame):
    frame = synthetic_frame(6, n_agents=1)
    frame.agents["0"].points = frame.agents["0"].points[::3]  # thin out: some boxes stay unseen
    s = CooperativeTrainingSet([frame], cfg, seed=0, augment=False)[0]
    gt = evaluation_ground_truth(frame)
    gt = gt[gt.in_range(cfg.grid.xy_range)]
    assert s.mode == "intermediate" and len(s.clouds) == 1
    assert len(s.boxes) == len(gt) > 0
    assert bev_iou_matrix(s.boxes, gt.xyzlwhy).max(axis=1).min() > 0.999


def test_inference_folds_batch_norm_into_the_convolutions_without_changing_the_output(cfg):
    """The ego and agents run neck and head with batch norm folded in; the result must equal the
    training-time modules, and a weight change must not leave a stale folded copy behind."""
    from v2x.perception.detector import CooperativeDetector

    torch.manual_seed(3)
    model = CooperativeDetector(cfg)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)  # statistics a trained model has, not the identity
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    model.eval()
    bev = torch.relu(torch.randn(1, cfg.bev_channels, *cfg.grid.shape))
    with torch.enable_grad():
        want = model.detect(bev)
    with torch.no_grad():
        got = model.detect(bev)
    assert model._folded, "the no-gradient eval path should use the folded copies"
    assert torch.allclose(got.heatmap, want.heatmap, atol=1e-4)
    assert torch.allclose(got.regression, want.regression, atol=1e-4)

    other = CooperativeDetector(cfg).eval()
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.allclose(model.detect(bev).heatmap, other.detect(bev).heatmap, atol=1e-4)
    model.train()
    assert not model._folded
