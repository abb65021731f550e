"""Early fusion's points message and late fusion's detections message: round trips, budgets, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2x.comm.wire import WireError
from v2x.comm.wire_points import HEADER_BYTES, POINT_BYTES, PointsMessageError, decode_points, encode_points
from v2x.core.boxes import Boxes
from v2x.core.frame import AgentKind
from v2x.core.geometry import pose_from_xyz_yaw
from v2x.core.grid import BEVGrid
from v2x.messages.codec import MessageCodec
from v2x.perception.cooperative import AgentPerception


def _cloud(n: int = 5000, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    return np.c_[r.uniform(-60, 60, (n, 2)), r.uniform(-2, 3, n), r.uniform(0, 1, n)].astype(np.float32)


def test_points_round_trip_within_half_a_centimetre():
    pts = _cloud()
    pose = pose_from_xyz_yaw(120.5, -33.25, 1.9, 0.7)
    msg = decode_points(encode_points(42, 123_456_789, pose, pts))
    assert (msg.sender, msg.stamp_ns) == (42, 123_456_789)
    assert np.allclose(msg.world_from_lidar, pose)
    assert np.abs(msg.points[:, :3] - pts[:, :3]).max() <= 0.0051
    assert np.abs(msg.points[:, 3] - pts[:, 3]).max() <= 0.51 / 255


def test_a_budget_thins_the_scan_evenly_and_is_never_exceeded():
    pts = _cloud(20000)
    for budget in (HEADER_BYTES, 1000, 30_000, 200_000):
        data = encode_points(1, 0, np.eye(4), pts, budget=budget)
        assert len(data) <= budget
        got = decode_points(data).points
        assert len(got) == (len(data) - HEADER_BYTES) // POINT_BYTES
    thin = decode_points(encode_points(1, 0, np.eye(4), pts, budget=30_000)).points
    assert thin[:, 0].min() < -50 and thin[:, 0].max() > 50  # spread over the scan, not cropped


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda b: b[:50], "too short"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:-7], "holds"),
        (lambda b: b[:200] + bytes([b[200] ^ 1]) + b[201:], "checksum"),
    ],
)
def test_damaged_points_messages_are_refused_with_the_reason(damage, words):
    data = encode_points(3, 0, np.eye(4), _cloud(100))
    with pytest.raises(PointsMessageError, match=words):
        decode_points(damage(data))


def _agent(n_boxes: int) -> AgentPerception:
    grid = BEVGrid()
    h, w = grid.shape
    r = np.random.default_rng(1)
    boxes = Boxes(
        np.c_[
            r.uniform(-50, 50, (n_boxes, 2)),
            np.zeros(n_boxes),
            np.tile([4.5, 1.9, 1.6], (n_boxes, 1)),
            r.uniform(-3, 3, n_boxes),
        ],
        labels=1,
        scores=r.uniform(0.1, 1, n_boxes),
    )
    return AgentPerception(
        "7",
        AgentKind.VEHICLE,
        5,
        pose_from_xyz_yaw(10, 20, 0, 0.3),
        torch.zeros(64, h, w),
        torch.zeros(h, w, dtype=torch.bool),
        None,
        boxes,
    )


def test_detections_message_keeps_the_most_confident_boxes_that_fit():
    codec = MessageCodec(BEVGrid())
    me = _agent(30)
    full = codec.read_detections(codec.detections_message(me))
    assert len(full.boxes) == 30 and np.allclose(full.world_from_bev, me.world_from_bev, atol=1e-5)
    assert np.allclose(
        full.boxes.xyzlwhy[:, :2], me.boxes.xyzlwhy[np.argsort(-me.boxes.scores)][:, :2], atol=0.02
    )
    data = codec.detections_message(me, budget=len(codec.detections_message(_agent(0))) + 16 * 5 + 3)
    cut = codec.read_detections(data)
    assert len(cut.boxes) == 5
    assert cut.boxes.scores.min() >= np.sort(me.boxes.scores)[-5] - 0.01
    with pytest.raises(WireError):
        codec.read_detections(data[:-3])


def test_detections_travel_with_their_predicted_variances_and_cost_30_bytes_each():
    codec = MessageCodec(BEVGrid())
    me = _agent(12)
    var = np.random.default_rng(2).uniform(0.01, 2.0, (12, 7))
    plain, rich = codec.detections_message(me), codec.detections_message(me, variances=var)
    assert len(rich) - len(plain) == 12 * 14
    got = codec.read_detections(rich)
    order = np.argsort(-me.boxes.scores, kind="stable")
    assert np.allclose(got.variances, var[order], rtol=2e-3)  # float16 on the wire
    assert codec.read_detections(plain).variances is None
