"""The fill after information filling: codefilling spends the budget its assigned blocks leave,
on the cells worth most to the ego, the same way on every collaborator, and two collaborators
do not fill the same blocks while either has something less covered to send."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from v2x.core.frame import AgentKind
from v2x.core.geometry import pose_from_xyz_yaw
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import Codebook, CodebookConfig
from v2x.messages.codec import MessageCodec, exchange
from v2x.messages.filling import (
    fill_ranking,
    fill_residuals,
    level_coverage,
    uncertainty_of_levels,
)
from v2x.messages.selection import (
    SelectionConfig,
    block_max,
    block_shape,
    cells_to_ego_blocks,
    upsample_blocks,
)
from v2x.perception.cooperative import AgentPerception
from v2x.pipeline.methods import get_method

GRID = BEVGrid()
H, W = GRID.shape
FILLING = get_method("codefilling").features


def _agent(agent_id, pose, seed, peaks=(), weak=None, channels=16):
    """Occupied cells around confidence peaks ((x, y, conf)) and, optionally, a weakly confident
    occupied rectangle ``weak = (x0, x1, y0, y1, conf)``: supply below the offer threshold."""
    rng = np.random.default_rng(seed)
    occ = np.zeros((H, W), bool)
    conf = np.zeros((H, W), np.float32)
    for x, y, c in peaks:
        r, k, _ = GRID.cell_of(np.array([[x, y]]))
        r, k = int(r[0]), int(k[0])
        occ[r - 2 : r + 3, k - 3 : k + 4] = True
        conf[r - 1 : r + 2, k - 1 : k + 2] = c
    if weak is not None:
        x0, x1, y0, y1, c = weak
        (r0, r1), (k0, k1), _ = GRID.cell_of(np.array([[x0, y0], [x1, y1]]))
        occ[r0:r1, k0:k1] = True
        conf[r0:r1, k0:k1] = np.maximum(conf[r0:r1, k0:k1], c)
    feats = torch.zeros(channels, H, W)
    feats[:, torch.from_numpy(occ)] = torch.from_numpy(
        rng.uniform(0, 1, (channels, int(occ.sum()))).astype(np.float32)
    )
    return AgentPerception(agent_id, AgentKind.VEHICLE, 7, pose, feats, torch.from_numpy(occ), conf, None)


def _ego():
    return _agent("1", np.eye(4), 1)


def _random_agent(agent_id, rng):
    pose = pose_from_xyz_yaw(*rng.uniform(-15, 15, 2), 0.0, rng.uniform(-np.pi, np.pi))
    peaks = [(*rng.uniform([-55, -30], [55, 30]), rng.uniform(0.2, 1.0)) for _ in range(rng.integers(0, 8))]
    x0, y0 = rng.uniform([-60, -35], [40, 20])
    weak = (x0, x0 + rng.uniform(5, 20), y0, y0 + rng.uniform(5, 15), rng.uniform(0.01, 0.19))
    return _agent(agent_id, pose, int(rng.integers(1 << 30)), peaks, weak)


def _ego_blocks(codec, agent, cells):
    """Ego blocks (binary demand, ego at the identity) under an agent's sent cells."""
    blk, ok = cells_to_ego_blocks(agent.world_from_bev, np.eye(4), GRID, codec.sel.block)
    return set(blk[cells[ok[cells]]].tolist())


def test_filling_spends_the_budget_the_assigned_blocks_leave(codebook):
    codec = MessageCodec(GRID, codebook)
    # a sees one object confidently; it also has a large weakly confident occupied area it offers nothing of
    a = _agent("2", np.eye(4), 2, peaks=[(10.0, 5.0, 0.9)], weak=(-40, -10, -20, 0, 0.1))
    budget = 1500
    _, _, out = exchange(codec, FILLING, _ego(), [a], budget)
    link = out["2"]
    assigned_cells = 5 * 7  # the object's occupied patch: all it was assigned
    assert link.cells_sent > assigned_cells  # the fill went on past the assigned blocks
    assert budget - 4 < link.bytes <= budget  # down to the last cell that fits (2 B a cell here)


def test_fill_ranks_by_ego_uncertainty_supply_and_what_others_leave():
    cfg = SelectionConfig()
    u = uncertainty_of_levels(cfg)
    assert u[0] == 0 and u[3] == pytest.approx(1 - 0.35 / 2)
    graded = uncertainty_of_levels(SelectionConfig(demand_levels=True))
    assert graded[3] > graded[2] > graded[1] > graded[0] == 0
    cover = level_coverage(cfg)
    assert cover.tolist() == pytest.approx([0.0, 0.325, 0.575, 0.85])
    # four cells in four ego blocks: demand 3, 3, 3, 0; supply 0.5, 0.5, 0.2, 0.9; the second
    # block is half covered by another agent
    cells = np.arange(4)
    ego_block = np.arange(4)
    demand = np.array([3, 3, 3, 0], np.uint8)
    supply = np.array([0.5, 0.5, 0.2, 0.9])
    residual = np.array([1.0, 0.3, 1.0, 1.0])
    ranked = fill_ranking(cells, ego_block, demand, supply, np.zeros(4), residual, cfg)
    # undemanded cell 3 is dropped; 0.5 > 0.2 > 0.5 x 0.3
    assert ranked.tolist() == [0, 2, 1]


def test_residuals_are_the_same_whatever_order_the_offers_arrive_in():
    cfg = SelectionConfig()
    rng = np.random.default_rng(3)
    poses = {a: pose_from_xyz_yaw(*rng.uniform(-10, 10, 2), 0, rng.uniform(-3, 3)) for a in ("2", "3", "10")}
    nb = int(np.prod(block_shape(GRID, cfg.block)))
    offers = {
        a: (np.sort(rng.choice(nb, 300, replace=False)), rng.integers(1, 4, 300).astype(np.uint8))
        for a in poses
    }
    first = fill_residuals(offers, poses, np.eye(4), GRID, cfg)
    for order in (["10", "3", "2"], ["3", "2", "10"]):
        again = fill_residuals({a: offers[a] for a in order}, poses, np.eye(4), GRID, cfg)
        assert all(np.array_equal(first[a], again[a]) for a in poses)
    # every agent is first somewhere (nothing ahead: 1) and behind another somewhere (discounted)
    assert all(0 < r.min() < 1 and r.max() == 1.0 for r in first.values())
    assert not np.array_equal(first["2"], first["10"])


def test_codefilling_is_deterministic(codebook):
    rng = np.random.default_rng(5)
    ego = _ego()
    others = [_random_agent(str(i), rng) for i in (2, 3, 4)]
    runs = []
    for _ in range(2):
        codec = MessageCodec(GRID, codebook)  # a fresh codec: same sequence numbers
        _, _, out = exchange(codec, FILLING, ego, others, 1024)
        runs.append({a: o.messages for a, o in out.items()})
    assert runs[0] == runs[1]


def test_two_collaborators_do_not_fill_the_same_blocks(codebook):
    codec = MessageCodec(GRID, codebook)
    ego = _ego()
    # both see the same object (a surely, b less so) and each has a weak area of its own
    a = _agent("2", np.eye(4), 2, peaks=[(10.0, 5.0, 0.9)], weak=(-40, -20, -20, 0, 0.15))
    b = _agent("3", np.eye(4), 3, peaks=[(10.0, 5.0, 0.54)], weak=(20, 40, -20, 0, 0.15))
    budget = 700
    demand_bytes = codec.demand_message(ego)
    demand = codec.read_demand(demand_bytes)
    offers = {x.agent_id: codec.offer_message(x, demand) for x in (a, b)}
    plan = codec.assign([codec.read_offer(o) for o in offers.values()], demand)
    sent = {}
    for x in (a, b):
        left = budget - len(demand_bytes) - len(offers[x.agent_id])
        enc = codec.feature_message(FILLING, x, left, demand, plan[codec.sender_of(x)])
        assert len(enc) <= left
        sent[x.agent_id] = _ego_blocks(codec, x, enc.cells)
        # each fills beyond what it was assigned, and stops short of everything it has
        assert len(enc.cells) > 0 and len(enc.cells) < int(x.occupied.sum())
    assert sent["2"] and sent["3"] and not sent["2"] & sent["3"]
    # without the discount b would send a's object block before its own weak area: the same block twice
    wanted = codec.cell_demand(b, demand)
    supply = upsample_blocks(block_max(b.confidence, 4), GRID, 4)
    blk, _ = cells_to_ego_blocks(b.world_from_bev, np.eye(4), GRID, 4)
    occ = np.flatnonzero(b.occupied.numpy().ravel())
    plain = fill_ranking(occ, blk, wanted, supply, b.confidence.ravel(), None, codec.sel)
    assert _ego_blocks(codec, b, plain[:10]) <= sent["2"]


@settings(max_examples=25, deadline=None)
@given(st.integers(150, 5000), st.integers(0, 2**31))
def test_budget_is_spent_to_the_last_cell_that_fits_and_never_exceeded(budget, seed):
    rng = np.random.default_rng(seed)
    cb = Codebook(CodebookConfig(channels=16, m=2, r=int(rng.integers(1, 3)), k=int(rng.choice([16, 64]))))
    cb.codewords.data.uniform_(0, 1)
    codec = MessageCodec(GRID, cb)
    ego = _random_agent("1", rng)
    ego.confidence *= 0.3  # unsure almost everywhere: almost every block demanded
    others = [_random_agent(str(i), rng) for i in range(2, 2 + int(rng.integers(1, 4)))]
    demand_bytes = codec.demand_message(ego)
    demand = codec.read_demand(demand_bytes)
    offers = {}
    for a in others:
        data = codec.offer_message(a, demand)
        if data is not None and len(demand_bytes) + len(data) + 80 <= budget:
            offers[a.agent_id] = data
    silent = tuple(codec.sender_of(a) for a in others if a.agent_id not in offers)
    plan = codec.assign([codec.read_offer(o) for o in offers.values()], demand, silent)
    kind = codec._kind(FILLING.encoding)
    for a in others:
        left = budget - len(demand_bytes) - len(offers.get(a.agent_id, b""))
        ranked = codec.candidate_cells(FILLING, a, demand, plan[codec.sender_of(a)])
        enc = codec.feature_message(FILLING, a, left, demand, plan[codec.sender_of(a)])
        assert len(enc) <= left
        if enc.data is None:
            continue
        k = len(enc.cells)
        assert set(enc.cells.tolist()) == set(ranked[:k].tolist())
        # every occupied cell the ego demands is a candidate: the fill leaves none out
        demanded = np.flatnonzero(a.occupied.numpy().ravel() & (codec.cell_demand(a, demand).ravel() > 0))
        assert set(ranked.tolist()) == set(demanded.tolist()) and len(ranked) == len(demanded)
        if k < len(ranked):  # stopped by the budget: the next cell would not have fitted
            assert codec._size(kind, ranked[: k + 1], 16, None) > left - 3


def test_a_measured_coverage_replaces_the_midpoints_and_bad_ones_are_refused():
    cfg = SelectionConfig(coverage=(0.72, 0.98, 0.99))
    assert level_coverage(cfg).tolist() == [0.0, 0.72, 0.98, 0.99]
    # a level-3 offer ahead leaves 1 % of the block to the agent behind it
    poses = {"2": np.eye(4), "3": np.eye(4)}
    res = fill_residuals({"2": ([50], [3]), "3": ([50], [1])}, poses, np.eye(4), GRID, cfg)
    assert res["3"][50] == pytest.approx(0.01) and res["2"][50] == 1.0
    for bad in ((0.5, 0.6), (0.5, 1.2, 0.9)):
        with pytest.raises(ValueError, match="coverage"):
            SelectionConfig(coverage=bad)
