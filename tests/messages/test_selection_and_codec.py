import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from v2x.codebook import Codebook, CodebookConfig, load_codebook
from v2x.comm.wire import WireError
from v2x.cooperative import AgentPerception
from v2x.frame import AgentKind
from v2x.geometry import pose_from_xyz_yaw
from v2x.grid import BEVGrid
from v2x.messages import MessageCodec, exchange
from v2x.selection import (
    SelectionConfig,
    assign_blocks,
    block_max,
    blocks_to_cells,
    offer_blocks,
    to_ego_blocks,
)

GRID = BEVGrid()
H, W = GRID.shape


def _agent(agent_id, pose, seed, objects=((10.0, 5.0),), channels=16):
    """A synthetic agent: occupied cells and confidence peaks around given object positions."""
    rng = np.random.default_rng(seed)
    feats = torch.zeros(channels, H, W)
    occ = torch.zeros(H, W, dtype=torch.bool)
    conf = np.zeros((H, W), np.float32)
    for x, y in objects:
        r, c, _ = GRID.cell_of(np.array([[x, y]]))
        r, c = int(r[0]), int(c[0])
        occ[r - 2 : r + 3, c - 3 : c + 4] = True
        conf[r - 1 : r + 2, c - 1 : c + 2] = 0.9
    feats[:, occ] = torch.from_numpy(rng.uniform(0, 1, (channels, int(occ.sum()))).astype(np.float32))
    return AgentPerception(agent_id, AgentKind.VEHICLE, 0, pose, feats, occ, conf, None)


@pytest.fixture(scope="module")
def codebook():
    torch.manual_seed(0)
    cb = Codebook(CodebookConfig(channels=16, m=2, r=2, k=16))
    cb.fit(torch.rand(4000, 16), iters=5)
    return cb


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


def test_filling_picks_the_most_confident_agent_once():
    cfg = SelectionConfig()
    ego_pose = pose_from_xyz_yaw(0, 0, 0, 0)
    poses = {"1": pose_from_xyz_yaw(0, 0, 0, 0), "2": pose_from_xyz_yaw(0, 0, 0, 0)}
    # both offer the same block: the level-3 agent alone fills it
    assigned = assign_blocks(
        {"1": (np.array([50]), np.array([2])), "2": (np.array([50]), np.array([3]))},
        poses,
        ego_pose,
        GRID,
        cfg,
    )
    assert assigned["2"].tolist() == [50] and assigned["1"].tolist() == []
    # two weak offers (1/3 + 1/3 < 1) are both needed
    assigned = assign_blocks(
        {"1": (np.array([50]), np.array([1])), "2": (np.array([50]), np.array([1]))},
        poses,
        ego_pose,
        GRID,
        cfg,
    )
    assert assigned["1"].tolist() == [50] and assigned["2"].tolist() == [50]


def test_blocks_map_between_frames_with_poses():
    cfg = SelectionConfig()
    sender = pose_from_xyz_yaw(20.0, 0.0, 0.0, np.pi)  # 20 m ahead, facing back
    ego_block, inside = to_ego_blocks(sender, np.eye(4), GRID, cfg.block)
    # the sender's block at its own (+10, 0) is the ego's block at (+10, 0) too (20 - 10)
    hb, wb = (H + 3) // 4, (W + 3) // 4
    size = GRID.cell * 4

    def block_at(x, y):
        return int((y - GRID.y_min) // size) * wb + int((x - GRID.x_min) // size)

    # take a block centre of the sender: (x, y) there is (20 - x, -y) for the ego
    b = block_at(11.2, 3.2)
    centre = (GRID.x_min + (b % wb + 0.5) * size, GRID.y_min + (b // wb + 0.5) * size)
    assert np.allclose(centre, (11.2, 3.2))
    assert ego_block[b] == block_at(20 - 11.2, -3.2)
    assert inside.sum() < hb * wb  # part of the sender's map is outside the ego's


def test_offers_only_cover_demanded_blocks():
    cfg = SelectionConfig()
    agent = _agent("1", np.eye(4), 0, objects=((10.0, 5.0), (-30.0, -20.0)))
    demanded = np.ones(((H + 3) // 4) * ((W + 3) // 4), dtype=bool)
    blocks, levels = offer_blocks(agent.confidence, agent.world_from_bev, np.eye(4), demanded, GRID, cfg)
    assert len(blocks) >= 2 and set(levels) == {3}
    bm = block_max(agent.confidence, 4).ravel()
    demanded[bm > 0.5] = False  # the ego already sees everything this agent could offer
    assert len(offer_blocks(agent.confidence, agent.world_from_bev, np.eye(4), demanded, GRID, cfg)[0]) == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(60, 4000))
def test_messages_never_exceed_the_budget(budget):
    torch.manual_seed(0)
    cb = Codebook(CodebookConfig(channels=16, m=2, r=2, k=16))
    cb.codewords.data.uniform_(0, 1)
    codec = MessageCodec(GRID, cb)
    ego = _agent("1", np.eye(4), 1, objects=())
    ego.confidence[:] = 0.0
    others = [
        _agent("2", pose_from_xyz_yaw(5, 3, 0, 0.3), 2, ((10.0, 5.0), (25.0, -8.0))),
        _agent("3", pose_from_xyz_yaw(-5, 0, 0, 2.0), 3),
    ]
    for method in ("codebook", "codefilling"):
        _, _, out = exchange(codec, method, ego, others, budget)
        assert all(o.bytes <= budget for o in out.values())


def test_codefilling_does_not_send_what_another_agent_covers(codebook):
    codec = MessageCodec(GRID, codebook)
    ego = _agent("1", np.eye(4), 1, objects=())
    ego.confidence[:] = 0.0
    # two collaborators at the same pose see the same object: only one sends its cells
    a = _agent("2", pose_from_xyz_yaw(0, 0, 0, 0), 2)
    b = _agent("3", pose_from_xyz_yaw(0, 0, 0, 0), 3)
    _, _, filling = exchange(codec, "codefilling", ego, [a, b], 10_000)
    assert sorted(o.cells_sent > 0 for o in filling.values()) == [False, True]
    _, _, plain = exchange(codec, "codebook", ego, [a, b], 10_000)
    assert all(o.cells_sent > 0 for o in plain.values())


def test_ego_decodes_the_codes_it_was_sent(codebook):
    codec = MessageCodec(GRID, codebook)
    ego = _agent("1", np.eye(4), 1, objects=())
    sender = _agent("2", pose_from_xyz_yaw(3, -2, 0, 0.5), 2)
    shared, _, out = exchange(codec, "codebook", ego, [sender], 100_000)
    got = shared[0]
    sent = got.valid.numpy()
    assert sent.sum() == out["2"].cells_sent == int(sender.occupied.sum())
    expected = torch.relu(codebook.decode(codebook.encode(sender.features[:, sender.occupied].T))).T
    assert torch.allclose(got.features[:, got.valid], expected, atol=1e-6)
    assert (
        np.allclose(got.world_from_bev[:2, 3], [3, -2])
        and sent.sum() == blocks_to_cells(np.arange(10), GRID, 4).size * 0 + sent.sum()
    )


def test_a_different_codebook_is_refused(codebook):
    codec = MessageCodec(GRID, codebook)
    ego = _agent("1", np.eye(4), 1, objects=())
    _, _, out = exchange(codec, "codebook", ego, [_agent("2", np.eye(4), 2)], 10_000)
    other = Codebook(CodebookConfig(channels=16, m=2, r=2, k=16))
    with pytest.raises(WireError) as err:
        MessageCodec(GRID, other).read_features(out["2"].messages[-1], 16)
    assert err.value.reason == "codebook_mismatch"
