"""The hybrid's message: its boxes first, then codes only for cells outside them, no demand;
and its boxes detected in the sender's own frame (``with_own_boxes``)."""

from __future__ import annotations

import numpy as np
import torch
from shapely.geometry import Point, Polygon

from v2x.core.boxes import Boxes
from v2x.core.frame import AgentKind
from v2x.core.geometry import pose_from_xyz_yaw
from v2x.core.grid import BEVGrid
from v2x.messages.codec import MessageCodec, exchange, hybrid_boxes
from v2x.messages.selection import cells_outside_boxes
from v2x.perception.cooperative import AgentPerception, with_own_boxes
from v2x.pipeline.methods import get_method

GRID = BEVGrid()
H, W = GRID.shape


def _footprint(box, margin):
    x, y, _, length, width, _, yaw = box
    hl, hw = length / 2 + margin, width / 2 + margin
    corners = np.array([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw]])
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    return Polygon(corners @ rot.T + [x, y])


def test_cells_outside_boxes_agrees_with_shapely():
    rng = np.random.default_rng(3)
    boxes = np.array([[10.0, 5.0, 0, 4.6, 2.0, 1.5, 0.4], [-30.2, 12.7, 0, 6.0, 2.4, 2.0, -1.1]])
    cells = rng.permutation(H * W)[:30000]
    kept = set(cells_outside_boxes(cells, boxes, GRID, margin=0.5).tolist())
    polys = [_footprint(b, 0.5) for b in boxes]
    row, col = np.divmod(cells, W)
    for cell, r, c in zip(cells, row, col, strict=True):
        centre = Point(GRID.x_min + (c + 0.5) * GRID.cell, GRID.y_min + (r + 0.5) * GRID.cell)
        inside = any(p.covers(centre) for p in polys)
        assert (cell in kept) == (not inside), (cell, inside)
    assert cells_outside_boxes(cells[:5], np.zeros((0, 7)), GRID).tolist() == cells[:5].tolist()


def _agent(codebook):
    rng = np.random.default_rng(0)
    feats = torch.zeros(16, H, W)
    occ = torch.from_numpy(rng.random((H, W)) < 0.2)
    feats[:, occ] = torch.rand(16, int(occ.sum()))
    conf = (rng.random((H, W)) * occ.numpy()).astype(np.float32)
    xyz = np.array([[10.0, 5.0, 0, 4.6, 2.0, 1.5, 0.4], [-20.0, -8.0, 0, 4.6, 2.0, 1.5, 1.0]])
    boxes = Boxes(xyz, labels=np.zeros(2, np.int64), scores=np.array([0.9, 0.4], np.float32))
    return AgentPerception("3", AgentKind.VEHICLE, 5, np.eye(4), feats, occ, conf, boxes)


def test_the_hybrid_sends_boxes_first_then_codes_outside_them_without_a_demand(codebook):
    codec = MessageCodec(GRID, codebook)
    scheme = get_method("hybrid").features
    assert not scheme.uses_demand
    agent = _agent(codebook)
    ego = AgentPerception(
        "1", AgentKind.VEHICLE, 5, np.eye(4), agent.features, agent.occupied, agent.confidence
    )
    shared, boxes, out = exchange(codec, scheme, ego, [agent], budget=1024, hybrid=True)
    assert len(out["3"].messages) == 1 and out["3"].bytes <= 1024  # one message, no demand on the link
    assert len(boxes) == 1 and len(boxes[0].boxes) == 2
    sent = np.flatnonzero(shared[0].valid.numpy().ravel())
    assert len(sent) > 100
    assert set(cells_outside_boxes(sent, agent.boxes.xyzlwhy, GRID).tolist()) == set(sent.tolist())
    # the codes that were left out lie under the boxes, and are among the most confident cells
    under = np.setdiff1d(
        np.flatnonzero(agent.occupied.numpy().ravel()),
        cells_outside_boxes(np.flatnonzero(agent.occupied.numpy().ravel()), agent.boxes.xyzlwhy, GRID),
    )
    assert len(under) > 0 and not set(under.tolist()) & set(sent.tolist())
    # a budget that holds one box and no cell: the more confident box alone
    tight = codec.feature_message(scheme, agent, 100, boxes=hybrid_boxes(agent))
    if tight.data is not None:
        got = codec.read_sparse(tight.data)
        assert len(got.cells) == 0 and len(got.boxes) <= 2
        if len(got.boxes) == 1:
            assert np.isclose(got.boxes.scores[0], 0.9)


def test_with_own_boxes_moves_the_own_frame_boxes_into_the_shared_frame(codebook):
    agent = _agent(codebook)
    own = AgentPerception(
        "3",
        AgentKind.VEHICLE,
        5,
        pose_from_xyz_yaw(30.0, -4.0, 0.0, 0.7),
        agent.features,
        agent.occupied,
        agent.confidence,
        agent.boxes,
    )
    ego_pose = pose_from_xyz_yaw(5.0, 2.0, 0.0, -0.3)
    shared = AgentPerception(
        "3", AgentKind.VEHICLE, 5, ego_pose, agent.features, agent.occupied, agent.confidence
    )
    moved = with_own_boxes(shared, own)
    assert moved.world_from_bev is ego_pose and shared.boxes is None  # a new object, the input untouched
    world_own = own.boxes.transformed(own.world_from_bev)
    world_moved = moved.boxes.transformed(ego_pose)
    assert np.allclose(world_own.xyzlwhy[:, :3], world_moved.xyzlwhy[:, :3], atol=1e-6)
    assert np.allclose(moved.boxes.scores, own.boxes.scores)


def test_a_box_under_the_score_cut_is_left_to_the_codes(codebook):
    """With a cut of 0.5 the 0.4 box is not sent as a box, and its cells may go as codes."""
    codec = MessageCodec(GRID, codebook)
    scheme = get_method("hybrid").features
    agent = _agent(codebook)
    assert len(hybrid_boxes(agent, 0.0)) == 2 and len(hybrid_boxes(agent, 0.5)) == 1
    assert hybrid_boxes(agent, 0.95) is None
    ego = AgentPerception(
        "1", AgentKind.VEHICLE, 5, np.eye(4), agent.features, agent.occupied, agent.confidence
    )
    shared, boxes, _ = exchange(codec, scheme, ego, [agent], None, hybrid=True, box_min_score=0.5)
    assert len(boxes[0].boxes) == 1 and abs(boxes[0].boxes.scores[0] - 0.9) < 0.01  # scores travel as u8
    sent = np.flatnonzero(shared[0].valid.numpy().ravel())
    occupied = np.flatnonzero(agent.occupied.numpy().ravel())
    weak_box_cells = np.setdiff1d(occupied, cells_outside_boxes(occupied, agent.boxes.xyzlwhy[1:], GRID))
    strong_box_cells = np.setdiff1d(occupied, cells_outside_boxes(occupied, agent.boxes.xyzlwhy[:1], GRID))
    assert len(weak_box_cells) and set(weak_box_cells.tolist()) <= set(sent.tolist())
    assert not set(strong_box_cells.tolist()) & set(sent.tolist())


def test_eval_comm_settings_run_the_hybrid_once_per_cut():
    from v2x.experiments.comm_eval import settings_for

    got = settings_for(["hybrid", "late"], [512, 1024], hybrid_cuts=[0.0, 0.5])
    hybrid = [(s.budget, s.threshold) for s in got if s.method == "hybrid"]
    assert hybrid == [(512, 0.0), (512, 0.5), (1024, 0.0), (1024, 0.5)]
    assert [(s.budget, s.threshold) for s in settings_for(["hybrid"], [512])] == [(512, None)]


def test_eval_comm_settings_take_where2comm_thresholds():
    from v2x.experiments.comm_eval import WHERE2COMM_THRESHOLDS, settings_for

    assert [s.threshold for s in settings_for(["where2comm"], [512], thresholds=[0.0, 0.01])] == [0.0, 0.01]
    assert tuple(s.threshold for s in settings_for(["where2comm"], [512])) == WHERE2COMM_THRESHOLDS
