"""Valid messages of every kind, made by the real encoders, for the mutator to start from.

One receiver configuration serves every target: the shipped grid (100 x 176 cells), a small
codebook (16 channels, 2 stages x 2 sub-codebooks of 16 codewords: 4-bit indices) and 16-channel
features. Messages are kept to a few kB (budgets) so that a million inputs run in minutes,
with a few larger ones so the memory measurement sees more than one size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from v2x.comm import envelope as env
from v2x.comm.wire import CellCoding, Header, MessageType, encode
from v2x.comm.wire_points import encode_points
from v2x.core.boxes import Boxes
from v2x.core.frame import AgentKind
from v2x.core.geometry import pose_from_xyz_rpy, pose_from_xyz_yaw
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import Codebook, CodebookConfig
from v2x.messages.codec import MessageCodec
from v2x.messages.scheme import FeatureEncoding, FeatureScheme, Selection
from v2x.messages.selection import SelectionConfig
from v2x.perception.cooperative import AgentPerception

__all__ = ["CHANNELS", "Receiver", "Seed", "envelope_seeds", "points_seeds", "receiver", "wire_seeds"]

CHANNELS = 16
_ORIGIN = np.array([4_412_345.5, 512_345.25])  # UTM-like: the pose's f64 fields matter


@dataclass(frozen=True)
class Seed:
    """A valid message and what it is: ``kind`` picks the codec reader a node would use on it."""

    kind: str  # demand, offer, features, detections
    data: bytes


@dataclass(frozen=True)
class Receiver:
    grid: BEVGrid
    codec: MessageCodec
    graded: MessageCodec  # the same with graded demand levels (1..3)
    codebook: Codebook


@functools.cache
def receiver() -> Receiver:
    """The receiving node's grid, codebook and codecs (the same in every worker process)."""
    grid = BEVGrid()
    gen = torch.Generator().manual_seed(0)
    cb = Codebook(CodebookConfig(channels=CHANNELS, m=2, r=2, k=16))
    with torch.no_grad():
        cb.codewords.copy_(torch.rand(cb.codewords.shape, generator=gen) * 0.5)
    graded = MessageCodec(grid, cb, SelectionConfig(demand_levels=True))
    return Receiver(grid, MessageCodec(grid, cb), graded, cb)


def _agent(agent_id: str, rng: np.random.Generator, grid: BEVGrid, density: float) -> AgentPerception:
    """A synthetic collaborator: occupied cells with features, a confidence map with a few peaks,
    scored boxes, a pose near the others' and far from the world origin."""
    h, w = grid.shape
    occ = rng.random((h, w)) < density
    conf = (rng.random((h, w)) ** 4 * 0.5).astype(np.float32)
    for _ in range(int(rng.integers(1, 6))):
        r, c = int(rng.integers(2, h - 2)), int(rng.integers(3, w - 3))
        occ[r - 2 : r + 3, c - 3 : c + 4] = True
        conf[r - 1 : r + 2, c - 1 : c + 2] = rng.uniform(0.5, 1.0)
    feats = torch.zeros(CHANNELS, h, w)
    feats[:, torch.from_numpy(occ)] = torch.from_numpy(
        rng.uniform(0, 2, (CHANNELS, int(occ.sum()))).astype(np.float32)
    )
    n = int(rng.integers(0, 12))
    boxes = Boxes(
        np.c_[
            rng.uniform(-60, 60, (n, 2)),
            rng.uniform(-1, 1, n),
            rng.uniform(0.5, 12, (n, 3)),
            rng.uniform(-np.pi, np.pi, n),
        ],
        labels=rng.integers(0, 7, n),
        scores=rng.uniform(0.05, 1, n),
    )
    pose = pose_from_xyz_yaw(
        *(_ORIGIN + rng.uniform(-30, 30, 2)), rng.uniform(-2, 2), rng.uniform(-np.pi, np.pi)
    )
    return AgentPerception(
        agent_id,
        AgentKind.VEHICLE,
        int(rng.integers(1 << 62)),
        pose,
        feats,
        torch.from_numpy(occ),
        conf,
        boxes,
    )


@functools.cache
def wire_seeds() -> tuple[Seed, ...]:
    """Demand (complement, levels, graded), offers, feature messages (raw fp32 and fp16,
    where2comm, codebook, codefilling, the hybrid with boxes, each cell coding) and detections."""
    rx = receiver()
    codec, grid = rx.codec, rx.grid
    rng = np.random.default_rng(23)
    out: list[Seed] = []
    for confident in (0.0, 0.6):
        ego = _agent("1", rng, grid, 0.05)
        ego.confidence = np.clip(ego.confidence + confident * rng.random(ego.confidence.shape), 0, 1).astype(
            np.float32
        )
        out.append(Seed("demand", codec.demand_message(ego)))
        out.append(Seed("demand", rx.graded.demand_message(ego)))
    demand = codec.read_demand(out[0].data)
    agents = [_agent(str(k), rng, grid, d) for k, d in ((2, 0.02), (3, 0.1), (4, 0.3))]
    offers = [o for a in agents if (o := codec.offer_message(a, demand)) is not None]
    out += [Seed("offer", o) for o in offers]
    plan = codec.assign([codec.read_offer(o) for o in offers], demand)
    schemes = {
        "raw": (FeatureScheme(FeatureEncoding.FP32, Selection.ALL), 1500),
        "raw-fp16": (FeatureScheme(FeatureEncoding.FP16, Selection.ALL), 1500),
        "where2comm": (FeatureScheme(FeatureEncoding.FP32, Selection.THRESHOLD), 2500),
        "codebook": (FeatureScheme(FeatureEncoding.CODES, Selection.CONFIDENT), 900),
        "codefilling": (FeatureScheme(FeatureEncoding.CODES, Selection.FILLING), 900),
    }
    for a in agents:
        for name, (scheme, budget) in schemes.items():
            blocks = plan.get(codec.sender_of(a)) if scheme.uses_offers else None
            enc = codec.feature_message(scheme, a, budget, demand, blocks)
            if enc.data is not None:
                out.append(Seed("features", enc.data))
            if name == "codebook":  # the hybrid: the sender's boxes ride along
                hybrid = codec.feature_message(scheme, a, budget, demand, None, boxes=a.boxes)
                out.append(Seed("features", hybrid.data))
        variances = rng.uniform(0.001, 4.0, (len(a.boxes), 7))
        out.append(Seed("detections", codec.detections_message(a, None, variances)))
        out.append(Seed("detections", codec.detections_message(a, 120)))
    big = codec.feature_message(schemes["raw"][0], agents[2], 40_000)  # a larger one, for memory
    out.append(Seed("features", big.data))
    out += _coded_seeds(rx, rng)
    return tuple(out)


def _coded_seeds(rx: Receiver, rng: np.random.Generator) -> list[Seed]:
    """Every cell coding forced, and empty sets: shapes the budgeted encoder rarely picks."""
    grid, cb = rx.grid, rx.codebook
    n_cells, shape, cfg = grid.num_cells, grid.shape, cb.cfg
    out = []
    for coding in CellCoding:
        for n in (0, 1, 37, 300):
            cells = (
                np.sort(rng.choice(n_cells, n, replace=False))
                if coding != CellCoding.RUN_LENGTH
                else (np.arange(n) + int(rng.integers(0, n_cells - n)))
            )
            head = Header(
                MessageType.CODEBOOK, 9, 1, 5, (1.0, 2.0, 0.0, 0.1), rx.codec.grid_id, cb.identity(), cfg.bits
            )
            codes = rng.integers(0, cfg.k, (n, cfg.indices_per_cell))
            out.append(Seed("features", encode(head, shape, cells, codes=codes, coding=coding)))
            blocks = np.sort(rng.choice(25 * 44, min(n, 200), replace=False))
            head = Header(MessageType.DEMAND, 1, 2, 5, (0.0, 0.0, 0.0, 0.0), rx.codec.grid_id, unit=4)
            out.append(Seed("demand", encode(head, shape, blocks, coding=coding)))
    return out


@functools.cache
def points_seeds() -> tuple[bytes, ...]:
    """Early fusion's scans: empty to a few thousand points, poses tilted and far from the origin."""
    rng = np.random.default_rng(5)
    out = []
    for n, budget in ((0, None), (1, None), (60, None), (800, None), (4000, 9000), (12000, None)):
        pts = np.c_[rng.uniform(-80, 80, (n, 2)), rng.uniform(-3, 2, n), rng.random(n)].astype(np.float32)
        pose = pose_from_xyz_rpy(
            *rng.uniform(-1, 1, 3) * [4.0e6, 4.0e6, 50], *rng.uniform(-0.1, 0.1, 2), rng.uniform(-3, 3)
        )
        out.append(
            encode_points(int(rng.integers(-(2**31), 2**31)), int(rng.integers(1 << 62)), pose, pts, budget)
        )
    return tuple(out)


@functools.cache
def envelope_seeds() -> tuple[tuple[bytes, ...], ...]:
    """Node messages of every registered type, as received frames (topic, msgpack header, parts)."""
    rng = np.random.default_rng(7)
    wire = wire_seeds()
    msgs: list[tuple[str, env.Message]] = [
        (
            "/rx/1/agents/3/features",
            env.Packet.of(
                wire[-5].data,
                sender="3",
                receiver="1",
                kind="features",
                frame=12,
                stamp_ns=10**18,
                sent_ns=10**18 + 5,
                delivered_ns=10**18 + 9,
                sender_position=[1.0, 2.0, 0.5],
            ),
        ),
        ("/ego/1/demand", env.Packet.of(wire[0].data, sender="1", kind="demand", frame=3)),
        ("/agents/3/points", env.Packet.of(points_seeds()[2], sender="3", kind="points")),
        (
            "/agents/3/scan",
            env.PointCloud(rng.random((40, 4)).astype(np.float32), np.eye(4), "3", "vehicle", 1.8, 7, 2),
        ),
        (
            "/ego/1/boxes",
            env.Boxes3D(
                rng.random((5, 7)),
                rng.random(5).astype(np.float32),
                np.arange(5, dtype=np.int16),
                np.arange(5, dtype=np.int64),
                "world",
                9,
                4,
            ),
        ),
        ("/replay/status", env.Json({"k": 4, "agent_id": "3", "sent": True, "malformed": 0, "bytes": 812})),
        (
            "/heartbeat",
            env.Heartbeat(
                "agent3",
                4242,
                10**18,
                "active",
                {"/agents/3/features": "Packet"},
                {"/rx/3/": "Packet"},
                "tcp://127.0.0.1:5555",
                "",
                "sim",
                12.5,
            ),
        ),
        (
            "/diagnostics",
            env.Diagnostics(
                "agent3", 10**18, {"in:/rx/3/": {"messages": 10, "rate_hz": 9.5}}, {"malformed": 1}
            ),
        ),
        ("/clock", env.Clock(10**18, 42)),
        ("/log", env.Log("agent3", 10**18, "WARNING", "a message " * 8)),
        ("/raw", env.Bytes(bytes(range(200)))),
    ]
    out = []
    for k, (topic, msg) in enumerate(msgs):
        frames = env.encode_frames(
            topic, msg, source="node" + str(k), seq=k * 7, sent_ns=10**18 + k, incarnation=99
        )
        out.append(tuple(bytes(memoryview(f)) for f in frames))
    return tuple(out)
