import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from v2x.comm.wire import HEADER, MessageType, WireError, decode, encoded_size
from v2x.core.boxes import Boxes
from v2x.core.frame import AgentKind
from v2x.core.geometry import pose_from_xyz_yaw, relative_pose
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import Codebook, CodebookConfig, load_codebook
from v2x.messages.codec import Demand, MessageCodec, exchange, sender_code, warp_cells
from v2x.messages.selection import (
    SelectionConfig,
    assign_blocks,
    block_max,
    block_shape,
    demand_levels,
    offer_blocks,
    to_ego_blocks,
)
from v2x.perception.cooperative import AgentPerception
from v2x.pipeline.methods import get_method

GRID = BEVGrid()
H, W = GRID.shape
NB = int(np.prod(block_shape(GRID, 4)))


def _scheme(method: str):
    """The codec's feature scheme of a registry method."""
    return get_method(method).features


def _agent(agent_id, pose, seed, objects=((10.0, 5.0),), channels=16, background=0.0):
    """A synthetic agent: occupied cells and confidence peaks around given object positions."""
    rng = np.random.default_rng(seed)
    feats = torch.zeros(channels, H, W)
    occ = torch.from_numpy(rng.random((H, W)) < background)
    conf = np.zeros((H, W), np.float32)
    for x, y in objects:
        r, c, _ = GRID.cell_of(np.array([[x, y]]))
        r, c = int(r[0]), int(c[0])
        occ[r - 2 : r + 3, c - 3 : c + 4] = True
        conf[r - 1 : r + 2, c - 1 : c + 2] = 0.9
    feats[:, occ] = torch.from_numpy(rng.uniform(0, 1, (channels, int(occ.sum()))).astype(np.float32))
    return AgentPerception(agent_id, AgentKind.VEHICLE, 123, pose, feats, occ, conf, None)


def _random_agent(agent_id, rng, channels=16):
    pose = pose_from_xyz_yaw(*rng.uniform(-20, 20, 2), 0.0, rng.uniform(-np.pi, np.pi))
    objects = [tuple(p) for p in rng.uniform([-60, -35], [60, 35], (int(rng.integers(0, 8)), 2))]
    a = _agent(agent_id, pose, int(rng.integers(1 << 30)), objects, channels, background=rng.uniform(0, 0.4))
    a.confidence = np.clip(
        a.confidence + rng.uniform(0, 0.5, a.confidence.shape).astype(np.float32) ** 3, 0, 1
    )
    return a


def _ego(confidence=0.0):
    ego = _agent("1", np.eye(4), 1, objects=())
    ego.confidence[:] = confidence
    return ego


# -- selection -----------------------------------------------------------------------------------
def test_filling_picks_the_most_confident_agent_once():
    cfg = SelectionConfig()
    ego_pose = np.eye(4)
    poses = {"1": np.eye(4), "2": np.eye(4), "10": np.eye(4)}
    # both offer the same block: the level-3 agent alone fills it
    plan = assign_blocks({"1": ([50], [2]), "2": ([50], [3])}, poses, ego_pose, GRID, cfg)
    assert plan["2"].tolist() == [50] and plan["1"].tolist() == []
    # two weak offers (1 + 1 < 3) are both needed, a third equal one fills what is left
    plan = assign_blocks({"1": ([50], [1]), "2": ([50], [1]), "10": ([50], [1])}, poses, ego_pose, GRID, cfg)
    assert all(p.tolist() == [50] for p in plan.values())
    # with a partial demand (level 1) the first weak offer is enough; ties go to the lower id
    demand = np.zeros(NB, np.uint8)
    demand[50] = 1
    plan = assign_blocks({"10": ([50], [1]), "2": ([50], [1])}, poses, ego_pose, GRID, cfg, demand)
    assert plan["2"].tolist() == [50] and plan["10"].tolist() == []


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31))
def test_vectorised_filling_matches_the_rule_cell_by_cell(seed):
    """Reference: per ego block, offers sorted by (level desc, id) taken while the demand is unmet."""
    rng = np.random.default_rng(seed)
    cfg = SelectionConfig()
    ids = [str(i) for i in rng.choice(50, int(rng.integers(1, 5)), replace=False)]
    poses = {a: pose_from_xyz_yaw(*rng.uniform(-15, 15, 2), 0, rng.uniform(-3, 3)) for a in ids}
    offers = {}
    for a in ids:
        blocks = rng.choice(NB, int(rng.integers(0, 60)), replace=False)
        offers[a] = (blocks, rng.integers(1, 4, len(blocks)))
    demand = rng.integers(0, 4, NB).astype(np.uint8)
    plan = assign_blocks(offers, poses, np.eye(4), GRID, cfg, demand)
    rows = []
    for a in ids:
        eb, inside = to_ego_blocks(poses[a], np.eye(4), GRID, 4)
        rows += [(int(eb[b]), -int(lv), int(a), int(b)) for b, lv in zip(*offers[a]) if inside[b]]
    filled: dict[int, int] = {}
    expected = {a: set() for a in ids}
    for eb, neg, a, b in sorted(rows):
        if filled.get(eb, 0) < demand[eb]:
            expected[str(a)].add(b)
        filled[eb] = filled.get(eb, 0) - neg
    assert {a: set(v.tolist()) for a, v in plan.items()} == expected


def test_blocks_map_between_frames_with_poses():
    sender = pose_from_xyz_yaw(20.0, 0.0, 0.0, np.pi)  # 20 m ahead, facing back
    ego_block, inside = to_ego_blocks(sender, np.eye(4), GRID, 4)
    _, wb = block_shape(GRID, 4)
    size = GRID.cell * 4

    def block_at(x, y):
        return int((y - GRID.y_min) // size) * wb + int((x - GRID.x_min) // size)

    b = block_at(11.2, 3.2)  # the sender's (11.2, 3.2) is the ego's (20 - 11.2, -3.2)
    assert ego_block[b] == block_at(20 - 11.2, -3.2)
    assert inside.sum() < NB  # part of the sender's map is outside the ego's


def test_demand_levels_follow_the_ego_confidence():
    conf = np.zeros((H, W), np.float32)
    conf[0, 0], conf[0, 4], conf[0, 8] = 0.9, 0.25, 0.15
    binary = demand_levels(conf, SelectionConfig())
    graded = demand_levels(conf, SelectionConfig(demand_levels=True))
    assert binary[:4].tolist() == [0, 3, 3, 3] and graded[:4].tolist() == [0, 1, 2, 3]


def test_offers_only_cover_demanded_blocks():
    cfg = SelectionConfig()
    agent = _agent("1", np.eye(4), 0, objects=((10.0, 5.0), (-30.0, -20.0)))
    demanded = np.full(NB, 3, np.uint8)
    blocks, levels = offer_blocks(agent.confidence, agent.world_from_bev, np.eye(4), demanded, GRID, cfg)
    assert len(blocks) >= 2 and set(levels) == {3}
    demanded[block_max(agent.confidence, 4).ravel() > 0.5] = 0  # the ego already sees all of it
    assert len(offer_blocks(agent.confidence, agent.world_from_bev, np.eye(4), demanded, GRID, cfg)[0]) == 0


def test_demand_message_is_the_smaller_form_and_round_trips():
    codec = MessageCodec(GRID)
    ego = _ego(0.0)
    ego.confidence[10:20, 10:40] = 0.9  # the ego is sure about a patch: everything else demanded
    data = codec.demand_message(ego)
    got = codec.read_demand(data)
    assert np.array_equal(got.levels, demand_levels(ego.confidence, codec.sel))
    assert decode(data, GRID.shape).header.complement and len(data) < HEADER.size + 40
    graded = MessageCodec(GRID, selection=SelectionConfig(demand_levels=True))
    ego.confidence[50:60, 50:60] = 0.15
    back = graded.read_demand(graded.demand_message(ego))
    assert np.array_equal(back.levels, demand_levels(ego.confidence, graded.sel)) and set(back.levels) == {
        0,
        2,
        3,
    }
    with pytest.raises(WireError) as err:  # a collaborator on another block size refuses it
        MessageCodec(GRID, selection=SelectionConfig(block=2)).read_demand(data)
    assert err.value.reason == "grid_mismatch"
    with pytest.raises(WireError) as err:  # a demand is not an offer
        codec.read_offer(data)
    assert err.value.reason == "unexpected_type"


# -- budgets -------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(60, 6000), st.integers(0, 2**31), st.booleans())
def test_messages_never_exceed_the_budget(budget, seed, hybrid):
    rng = np.random.default_rng(seed)
    cb = Codebook(
        CodebookConfig(channels=16, m=2, r=int(rng.integers(1, 4)), k=int(rng.choice([16, 100, 256])))
    )
    cb.codewords.data.uniform_(0, 1)
    codec = MessageCodec(GRID, cb)
    ego = _random_agent("1", rng)
    others = [_random_agent(str(i), rng) for i in range(2, 2 + int(rng.integers(1, 4)))]
    if hybrid:
        for a in others:
            n = int(rng.integers(0, 30))
            a.boxes = Boxes(
                np.c_[rng.uniform(-50, 50, (n, 2)), np.zeros(n), np.full((n, 3), 2.0), np.zeros(n)],
                labels=np.zeros(n, np.int16),
                scores=rng.random(n).astype(np.float32),
            )
    for method in ("codebook", "codefilling", "raw-fp16", "where2comm"):
        _, _, out = exchange(codec, _scheme(method), ego, others, budget, hybrid=hybrid)
        assert all(o.bytes <= budget for o in out.values()), method


@settings(max_examples=30, deadline=None)
@given(st.integers(100, 3000), st.integers(0, 2**31))
def test_budgeted_message_is_tight_and_takes_the_most_valuable_cells(budget, seed):
    rng = np.random.default_rng(seed)
    cb = Codebook(CodebookConfig(channels=16, m=2, r=2, k=64))
    codec = MessageCodec(GRID, cb)
    agent = _random_agent("2", rng)
    demand = Demand(rng.integers(0, 4, NB).astype(np.uint8), pose_from_xyz_yaw(3, 1, 0, 0.2), 1, 0)
    ranked = codec.candidate_cells(_scheme("codebook"), agent, demand)
    enc = codec.feature_message(_scheme("codebook"), agent, budget, demand)
    assert len(enc) <= budget
    k = len(enc.cells)
    assert set(enc.cells.tolist()) == set(ranked[:k].tolist())
    # the next ranked cell would not have fitted (when there is one), up to the 1-2 bytes that
    # choosing the smallest cell coding per prefix can save
    if k < len(ranked):
        assert codec._size(codec._kind(_scheme("codebook").encoding), ranked[: k + 1], 16, None) > budget - 3
    # value = demand x supply never increases down the ranking
    wanted = codec.cell_demand(agent, demand)
    sup = block_max(agent.confidence, 4).repeat(4, 0).repeat(4, 1)[:H, :W].ravel()
    value = wanted[ranked] * sup[ranked]
    assert np.all(np.diff(value) <= 1e-6) and np.all(wanted[ranked] > 0)


def test_boxes_go_first_under_a_tight_budget(codebook):
    codec = MessageCodec(GRID, codebook)
    agent = _agent("2", np.eye(4), 2)
    agent.boxes = Boxes(
        np.array([[10.0, 5.0, 0, 4, 2, 1.5, 0], [20.0, 5.0, 0, 4, 2, 1.5, 0], [30.0, 5, 0, 4, 2, 1.5, 0]]),
        labels=np.zeros(3, np.int16),
        scores=np.array([0.5, 0.9, 0.7], np.float32),
    )
    budget = HEADER.size + 1 + 1 + 2 + 2 * 16  # room for two boxes and nothing else
    enc = codec.feature_message(_scheme("codebook"), agent, budget, boxes=agent.boxes)
    assert len(enc) == budget and enc.boxes == 2 and len(enc.cells) == 0
    got = codec.read_sparse(enc.data)
    assert np.allclose(sorted(got.boxes.xyzlwhy[:, 0]), [20.0, 30.0])  # the two most confident


# -- methods ---------------------------------------------------------------------------------------
def test_codefilling_does_not_send_what_another_agent_covers(codebook):
    codec = MessageCodec(GRID, codebook)
    ego = _ego(0.0)
    # two collaborators at the same pose see the same object: only one sends its cells
    a = _agent("2", np.eye(4), 2)
    b = _agent("3", np.eye(4), 3)
    b.confidence *= 0.6  # less sure: level 2 against a's 3
    demand = codec.read_demand(codec.demand_message(ego))
    plan = codec.assign([codec.read_offer(codec.offer_message(x, demand)) for x in (a, b)], demand)
    assert len(plan[2]) > 0 and len(plan[3]) == 0  # the block is a's alone
    # b's only occupied cells are a's block: it sends them only as fill, discounted by a's offer
    assert plan[3].residual.min() == pytest.approx(1 - 0.85) and plan[2].residual.min() == 1.0
    _, _, filling = exchange(codec, _scheme("codefilling"), ego, [a, b], 10_000)
    assert filling["2"].cells_sent > 0
    _, _, plain = exchange(codec, _scheme("codebook"), ego, [a, b], 10_000)
    assert all(o.cells_sent > 0 for o in plain.values())
    # where the ego is itself confident nobody sends anything: only the demand is on the links
    _, _, none = exchange(codec, _scheme("codefilling"), _ego(0.9), [a, b], 10_000)
    assert all(len(o.messages) == 1 and o.cells_sent == 0 for o in none.values())


def test_baselines_send_what_they_should(codebook):
    codec = MessageCodec(GRID, codebook)
    ego = _ego(0.0)
    sender = _agent("2", pose_from_xyz_yaw(3, -2, 0, 0.5), 2, background=0.1)
    occupied = int(sender.occupied.sum())
    _, _, raw = exchange(codec, _scheme("raw"), ego, [sender])
    _, _, half = exchange(codec, _scheme("raw-fp16"), ego, [sender])
    assert raw["2"].cells_sent == half["2"].cells_sent == occupied
    assert raw["2"].bytes - half["2"].bytes == occupied * 16 * 2  # 16 channels, 2 bytes saved each
    _, _, w2c = exchange(codec, _scheme("where2comm"), ego, [sender], threshold=0.5)
    demand = codec.read_demand(w2c["2"].messages[0])
    wanted = codec.cell_demand(sender, demand) > 0
    confident = np.flatnonzero((sender.confidence.ravel() >= 0.5) & sender.occupied.numpy().ravel() & wanted)
    assert len(confident) == 9 and w2c["2"].cells_sent == len(confident)
    sent = decode(w2c["2"].messages[1], GRID.shape)
    assert np.array_equal(sent.cells, confident) and sent.features.shape == (9, 16)
    assert w2c["2"].bytes == len(w2c["2"].messages[0]) + encoded_size(
        MessageType.RAW_FP32, GRID.shape, confident, channels=16
    )


def test_ego_decodes_and_warps_the_codes_it_was_sent(codebook):
    codec = MessageCodec(GRID, codebook)
    ego = _ego(0.0)
    sender = _agent("2", pose_from_xyz_yaw(3, -2, 0, 0.5), 2)
    shared, _, out = exchange(codec, _scheme("codebook"), ego, [sender], 100_000)
    got = shared[0]
    assert got.valid.sum() == out["2"].cells_sent == int(sender.occupied.sum())
    expected = codebook.decode(codebook.encode(sender.features[:, sender.occupied].T)).clamp(min=0).T
    assert torch.allclose(got.features[:, got.valid], expected, atol=1e-6)
    assert np.allclose(got.world_from_bev, sender.world_from_bev, atol=1e-6)
    sparse = codec.read_sparse(out["2"].messages[-1])
    assert sparse.sender == sender_code("2") and sparse.stamp_ns == 123
    ego_cells, rows = warp_cells(sparse.cells, relative_pose(ego.world_from_bev, sparse.world_from_bev), GRID)
    # the object at the sender's (10, 5) lies at pose * (10, 5) in the ego frame
    p = sender.world_from_bev @ np.array([10.0, 5.0, 0, 1])
    r, c, _ = GRID.cell_of(p[None, :2])
    assert int(r[0]) * W + int(c[0]) in set(ego_cells.tolist())
    # a rotated nearest-cell warp leaves no holes: about as many ego cells as sent cells
    assert 0.8 * len(sparse.cells) <= len(ego_cells) <= 1.3 * len(sparse.cells)
    assert torch.equal(sparse.values[rows].T, got.features.reshape(16, -1)[:, sparse.cells[rows]])


def test_warp_with_identity_and_half_turn_is_exact():
    cells = np.array([0, 5, 177, 9000, H * W - 1])
    same, rows = warp_cells(cells, np.eye(4), GRID)
    assert np.array_equal(same, cells) and np.array_equal(rows, np.arange(5))
    turned, rows = warp_cells(cells, pose_from_xyz_yaw(0, 0, 0, np.pi), GRID)  # grid is centred
    assert np.array_equal(np.sort(turned), np.sort(H * W - 1 - cells))


def test_a_different_codebook_or_grid_is_refused(codebook):
    codec = MessageCodec(GRID, codebook)
    _, _, out = exchange(codec, _scheme("codebook"), _ego(), [_agent("2", np.eye(4), 2)], 10_000)
    other = Codebook(CodebookConfig(channels=16, m=2, r=2, k=16))
    with pytest.raises(WireError) as err:
        MessageCodec(GRID, other).read_features(out["2"].messages[-1], 16)
    assert err.value.reason == "codebook_mismatch"
    with pytest.raises(WireError) as err:
        MessageCodec(BEVGrid(voxel=0.2, stride=4), codebook).read_sparse(out["2"].messages[-1])
    assert err.value.reason == "grid_mismatch"
    with pytest.raises(WireError) as err:  # no codebook at all
        MessageCodec(GRID).read_sparse(out["2"].messages[-1])
    assert err.value.reason == "codebook_mismatch"
    with pytest.raises(WireError) as err:  # a demand where features were expected
        codec.read_sparse(out["2"].messages[0])
    assert err.value.reason == "unexpected_type"


# -- codebook --------------------------------------------------------------------------------------
def test_codebook_round_trip_identity_and_persistence(codebook, tmp_path):
    x = torch.rand(200, 16)
    idx = codebook.encode(x)
    assert idx.shape == (200, 4) and idx.max() < 16
    rec = codebook.decode(idx)
    one_stage = Codebook(CodebookConfig(channels=16, m=2, r=1, k=16))
    one_stage.codewords.data.copy_(codebook.codewords.data[:1])
    assert ((rec - x) ** 2).mean() < ((one_stage.decode(one_stage.encode(x)) - x) ** 2).mean()
    codebook.save(tmp_path / "cb.pt")
    back = load_codebook(tmp_path / "cb.pt")
    assert back.identity() == codebook.identity() and torch.equal(back.encode(x), idx)
    back.codewords.data[0, 0, 0, 0] += 1e-3
    assert back.identity() != codebook.identity()
    with pytest.raises(ValueError):
        codebook.decode(torch.tensor([[0, 0, 0, 16]]))
    assert CodebookConfig(channels=64, m=2, r=3, k=100).bits_per_cell == 6 * 7
