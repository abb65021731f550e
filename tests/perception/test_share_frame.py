"""Collaborators encoding shared features in the ego's frame (``share_frame="ego"``, OpenCOOD's
proj_first): the map lies on the ego's grid, so the ego fuses it cell for cell, and the message
layer needs nothing new (the map's pose is the ego's)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from v2x.core.geometry import inverse, transform_points
from v2x.perception.cooperative import Perception, SharedBoxes, SharedFeatures
from v2x.perception.encoder import sanitize_points
from v2x.perception.fusion import warp_cells_to_ego
from v2x.perception.settings import check_share_frame
from v2x.pipeline.methods import FUSION_MODES


def test_a_map_encoded_in_the_ego_frame_is_the_ego_frame_encoding_of_those_points(model, synthetic_frame):
    frame = synthetic_frame(5)
    collab, ego_pose = frame.collaborators[0], frame.ego.world_from_bev
    got = Perception(model).agent_steps([collab], detect=False, into=[ego_pose])[0]
    assert np.array_equal(got.world_from_bev, ego_pose)
    points = transform_points(inverse(ego_pose) @ collab.world_from_lidar, collab.points)
    with torch.no_grad():
        want = model.encode([sanitize_points(points, model.cfg)])
    assert torch.equal(got.occupied, want.occupied[0])
    assert torch.allclose(got.features, want.features[0], atol=1e-6)
    # and it differs from the collaborator's own-frame map (it really moved)
    own = Perception(model).agent_steps([collab], detect=False)[0]
    assert not torch.equal(own.occupied, got.occupied)


def test_the_ego_takes_such_a_map_cell_for_cell(model, synthetic_frame):
    frame = synthetic_frame(6)
    collab, ego_pose = frame.collaborators[1], frame.ego.world_from_bev
    shared = Perception(model).agent_steps([collab], detect=False, into=[ego_pose])[0]
    ego_from_sender = inverse(ego_pose) @ shared.world_from_bev
    with torch.no_grad():
        [(idx, values)] = warp_cells_to_ego(
            [(shared.features, shared.occupied, ego_from_sender)], model.cfg.grid
        )
    assert torch.equal(idx, torch.nonzero(shared.occupied.reshape(-1)).squeeze(1))
    flat = shared.features.reshape(shared.features.shape[0], -1)
    assert (values - flat[:, idx]).abs().max() < 1e-5  # float rounding of the identity sampling


@pytest.mark.parametrize("mode", ["intermediate", "intermediate-own", "intermediate-each"])
def test_both_intermediate_variants_send_only_cells_on_their_grid(model, synthetic_frame, mode):
    frame = synthetic_frame(7)
    res = FUSION_MODES[mode].run(Perception(model), frame)
    assert np.isfinite(res.boxes.xyzlwhy).all() and min(res.bytes_per_collaborator.values()) > 0


def test_share_frame_names_are_checked():
    assert check_share_frame("ego") == "ego" and "intermediate-own" in FUSION_MODES
    with pytest.raises(ValueError, match="share_frame"):
        check_share_frame("world")


def test_the_command_line_lists_every_fusion_mode_and_share_frame():
    from v2x.cli.codebook import eval_comm
    from v2x.cli.eval_detection import _parse_modes, eval_detection
    from v2x.cli.replay import replay
    from v2x.perception.settings import SHARE_FRAMES

    assert _parse_modes("all") == list(FUSION_MODES)
    for command in (replay, eval_comm, eval_detection):
        [option] = [p for p in command.params if p.name == "share_frame"]
        # no default of its own: resolve_share_frame picks it by the log's format
        assert tuple(option.type.choices) == SHARE_FRAMES and option.default is None


@pytest.mark.slow
def test_eval_detection_shares_in_the_frame_of_the_logs_format(dair_example):
    """On a DAIR-V2X-C log ``intermediate`` is what eval comm, replay and sweeps run there by
    default (the collaborator encodes in its own frame, the ego reads the fused maps in every
    agent's frame); ``--share-frame ego`` gives the ego's grid."""
    from v2x.experiments.detection_eval import evaluate_fusion_modes
    from v2x.pipeline.frames import FrameSelection

    one = FrameSelection(1, "first")
    modes = ["late", "intermediate", "intermediate-own", "intermediate-each"]
    auto = evaluate_fusion_modes(dair_example, modes, frames=one)
    assert [auto[m]["share_frame"] for m in modes] == [None, "each", "own", "each"]
    assert auto["intermediate"]["ap_bev"] == auto["intermediate-each"]["ap_bev"]
    ego = evaluate_fusion_modes(dair_example, modes[1:], frames=one, share_frame="ego")
    assert [ego[m]["share_frame"] for m in modes[1:]] == ["ego", "own", "each"]
    assert ego["intermediate"]["bytes_per_agent_frame"] != auto["intermediate"]["bytes_per_agent_frame"]


def test_training_samples_can_put_collaborators_on_the_ego_grid(cfg, synthetic_frame):
    from v2x.training.data import CooperativeTrainingSet

    frames = [synthetic_frame(s) for s in (8, 9, 10, 11)]
    plain = CooperativeTrainingSet(frames, cfg, seed=3, early_probability=0.0)
    off = CooperativeTrainingSet(frames, cfg, seed=3, early_probability=0.0, ego_grid_probability=0.0)
    on = CooperativeTrainingSet(frames, cfg, seed=3, early_probability=0.0, ego_grid_probability=1.0)
    assert sum(len(plain[i].clouds) > 1 for i in range(len(frames))) >= 2  # not only lone egos
    for i in range(len(frames)):
        a, b, c = plain[i], off[i], on[i]
        assert a.key == b.key and all(torch.equal(x, y) for x, y in zip(a.clouds, b.clouds, strict=True))
        if len(a.clouds) == 1:  # the ego alone: nothing to move
            assert c.mode == "intermediate"
            continue
        assert c.mode == "intermediate-ego" and all(np.array_equal(t, np.eye(4)) for t in c.ego_from_agent)
        assert torch.equal(c.clouds[0], a.clouds[0]) and np.array_equal(c.boxes, a.boxes)
        # a collaborator's points now lie where the ego sees them: the same cloud as early fusion
        # would merge, not the collaborator's own view
        assert not torch.equal(c.clouds[1], a.clouds[1])


def test_dair_logs_read_the_fused_maps_in_every_agents_frame_unless_told():
    """DAIR-V2X-C's roadside unit is found in its own frame, hardly on the ego's grid."""
    from v2x.perception.settings import resolve_share_frame

    assert resolve_share_frame(None, "dair-v2x-c") == "each"
    assert resolve_share_frame(None, "opv2v") == resolve_share_frame(None, None) == "ego"
    assert resolve_share_frame("ego", "dair-v2x-c") == "ego"
    with pytest.raises(ValueError, match="share_frame"):
        resolve_share_frame("world", "opv2v")


def test_reading_in_each_frame_adds_what_each_collaborator_detects_in_its_own_frame(model, synthetic_frame):
    """``share_frame="each"``: with the ego blind, the reading in the collaborator's frame has
    only that collaborator's map, so its boxes are the collaborator's own detections; they are
    merged with the ego frame's as late fusion merges boxes."""
    frame = synthetic_frame(12)
    perception = Perception(model)
    ego, collab = perception.agent_steps([frame.ego, frame.collaborators[0]], detect=True)
    blind = replace(ego, features=torch.zeros_like(ego.features), occupied=torch.zeros_like(ego.occupied))
    shared = [SharedFeatures(collab.agent_id, collab.world_from_bev, collab.features, collab.occupied)]
    assert len(collab.boxes) > 0
    want = perception.merge_boxes(
        ego.world_from_bev,
        perception.ego_step(blind, shared).boxes,
        [SharedBoxes(collab.agent_id, collab.world_from_bev, collab.boxes)],
    )
    got = perception.ego_step(blind, shared, in_each_frame=True)
    assert np.allclose(got.boxes.xyzlwhy, want.xyzlwhy, atol=1e-4)
    assert np.allclose(got.boxes.scores, want.scores, atol=1e-5)


def test_each_reading_keeps_its_own_agents_cells_and_fills_the_rest(model, synthetic_frame):
    """The others' maps fill only the cells the reading's agent did not observe; the map returned
    is the ego frame's."""
    frame = synthetic_frame(13)
    perception = Perception(model)
    ego, collab = perception.agent_steps([frame.ego, frame.collaborators[0]], detect=False)
    shared = [SharedFeatures(collab.agent_id, collab.world_from_bev, collab.features, collab.occupied)]
    plain = perception.ego_step(ego, shared).features
    each = perception.ego_step(ego, shared, in_each_frame=True).features
    mine = ego.occupied
    assert mine.any() and (~mine).any()
    assert torch.equal(each[:, mine], ego.features[:, mine])
    assert torch.equal(each[:, ~mine], plain[:, ~mine])
    assert not torch.equal(each, plain)  # the collaborator's map did reach some of the ego's cells
    # a map encoded on the ego's grid has no frame of its own to read it in: only the filling
    on_grid = perception.agent_steps([frame.collaborators[0]], detect=False, into=[ego.world_from_bev])[0]
    grid_shared = [
        SharedFeatures(on_grid.agent_id, on_grid.world_from_bev, on_grid.features, on_grid.occupied)
    ]
    read = perception.ego_step(ego, grid_shared, in_each_frame=True)
    detected = model.decode(model.detect(read.features[None]))[0]
    assert read.boxes.xyzlwhy.shape == detected.xyzlwhy.shape
    assert np.allclose(read.boxes.xyzlwhy, detected.xyzlwhy, atol=1e-4)
