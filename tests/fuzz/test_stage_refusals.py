"""The ego's stage (what the ego node runs on every arrival) counts what it cannot decode by reason
and sender and fuses the rest: a raw message with cells but no channels used to escape it as a
RuntimeError, and a points message with a NaN pose used to be fused."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from v2x.comm.wire import Header, MessageType, encode
from v2x.comm.wire_points import encode_points
from v2x.pipeline.config import RunConfig
from v2x.pipeline.stages import Arrival, EgoStage, Models
from v2x.sim.world import SceneConfig, TownConfig, World


@pytest.fixture(scope="module")
def frame():
    world = World(
        SceneConfig(
            name="refusals", seed=5, frames=1, cavs=2, rsus=0, town=TownConfig(blocks_x=2, blocks_y=2)
        )
    )
    return next(iter(world.frames())).frame


@pytest.fixture(scope="module")
def models():
    return Models.load(RunConfig(method="raw", tracker="ab3dmot"))


def _arrival(data: bytes, sender: str) -> tuple[Arrival, bool]:
    return Arrival(data, sender, 0.0, 0.0, 0), False


def test_the_ego_counts_refusals_by_reason_and_sender_and_fuses_the_rest(frame, models):
    ego = EgoStage(frame.ego_id, models, RunConfig(method="raw", budget_bps=None, tracker="ab3dmot"))
    me = ego.perceive(frame.ego)
    grid = models.codec.grid
    head = Header(MessageType.RAW_FP32, 2, 1, 0, (0.0, 0.0, 0.0, 0.0), grid.fingerprint())
    no_channels = encode(head, grid.shape, [5, 6, 7], features=np.zeros((3, 0)))
    out = ego.fuse(me, frame.ego, 0.0, [_arrival(no_channels, "2"), _arrival(b"V2XM" + bytes(10), "3")])
    assert ego.malformed == 2 and out.fused == 0 and out.tracks is not None
    assert ego.refused["refused:wire.malformed:2"] == 1 and ego.refused["refused:wire.truncated:3"] == 1


def test_early_fusion_refuses_a_points_message_without_a_rigid_pose(frame, models):
    ego = EgoStage(frame.ego_id, models, RunConfig(method="early", budget_bps=None, tracker="ab3dmot"))
    me = ego.perceive(frame.ego)
    buf = bytearray(encode_points(2, 0, np.eye(4), np.ones((50, 4), np.float32)))
    struct.pack_into("<d", buf, 20, float("nan"))
    struct.pack_into("<I", buf, 120, zlib.crc32(bytes(buf[124:]), zlib.crc32(bytes(buf[:120]))))
    out = ego.fuse(me, frame.ego, 0.0, [_arrival(bytes(buf), "2")])
    assert ego.malformed == 1 and ego.refused["refused:points.bad_pose:2"] == 1
    assert np.isfinite(out.boxes.xyzlwhy).all()
