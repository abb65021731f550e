"""The in-process pipeline on a few simulated frames with the shipped detector: accounting,
budgets, the late-message policies and bad messages."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import numpy as np
import pytest
import torch

from v2x.pipeline.clock import run_frames
from v2x.pipeline.config import RunConfig
from v2x.pipeline.stages import Arrival, EgoStage, Models
from v2x.sim.town import TownConfig
from v2x.sim.world import SceneConfig, World

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frames():
    world = World(
        SceneConfig(name="pipe", seed=3, frames=4, cavs=3, rsus=0, town=TownConfig(blocks_x=2, blocks_y=2))
    )
    return [f.frame for f in world.frames()]


@pytest.fixture(scope="module")
def models():
    return Models.load(RunConfig(method="raw", tracker="ab3dmot"))


@pytest.fixture(scope="module")
def code_models():
    """The shipped detector with its message weights (codebook and the decoder that reads codes)."""
    return Models.load(RunConfig(method="codebook", tracker="ab3dmot"))


def _run(frames, models, tmp_path=None, **options):
    cfg = RunConfig.from_options(tracker="ab3dmot", **options)
    if tmp_path is not None:
        cfg.trace = str(tmp_path / "trace.jsonl")
    return run_frames(frames, cfg, models)


def test_budgets_hold_on_every_link_and_the_books_balance(frames, models, tmp_path):
    out = _run(frames, models, tmp_path, method="where2comm", budget="40kbps")
    per_frame = 40_000 / 8 / 10
    lines = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    sent = defaultdict(int)
    for x in lines:
        sent[(x["link"], round(x["sent_s"], 1))] += x["size"]
    assert lines and max(sent.values()) <= per_frame
    m = out["messages"]
    assert m["sent"] == m["delivered"] + m["dropped"] == len(lines) and m["dropped"] == 0
    assert 0 < out["bytes_per_agent_frame"] <= per_frame
    assert out["frames"] == len(frames) and set(out["ap_bev"]) == {"0.3", "0.5", "0.7"}
    assert out["amota"] is not None and len(out["_detections"]) == len(frames)
    # every frame reaches the tracker (a repeated frame number would be refused): tracks keep coming
    assert all(len(d["tracks"]) > 0 for d in out["_detections"][1:])


def test_late_messages_are_dropped_or_fused_later_with_compensation(frames, models):
    slow = dict(method="raw", budget=None, channel="ideal", latency_ms=150, deadline_ms=100)
    dropped = _run(frames, models, **slow, late_policy="drop")
    alone = _run(frames, models, method="none", budget=None)
    on_time = _run(frames, models, method="raw", budget=None)
    n_msgs = 2 * len(frames)  # two collaborators
    assert dropped["messages"]["late_dropped"] == n_msgs and dropped["messages"]["fused"] == 0
    for a, b in zip(dropped["_detections"], alone["_detections"], strict=True):
        assert np.allclose(a["boxes"].xyzlwhy, b["boxes"].xyzlwhy, atol=1e-4)  # nothing fused: the ego alone
    kept = _run(frames, models, **slow, late_policy="compensate")
    assert (
        kept["messages"]["fused"] == kept["messages"]["fused_stale"] == n_msgs - 2
    )  # all but the last frame's, which are still held when the run ends
    assert kept["messages"]["expired"] == 2 and kept["messages"]["late_dropped"] == 0
    assert on_time["messages"]["fused"] == n_msgs and on_time["messages"]["fused_stale"] == 0


def test_selected_frames_run_as_those_frames_alone_and_a_new_scenario_starts_new_tracks(frames, models):
    """``run_frames(log, indices=...)`` (what run_log and replay --in-process do) is the run on
    just those frames; the sequence boundary comes from the frame driver."""
    cfg = RunConfig.from_options(method="late", budget=None, tracker="ab3dmot")
    two = frames[:2] + [dataclasses.replace(f, scenario="second") for f in frames[2:]]
    picked = run_frames(two, cfg, models, indices=[0, 2, 3])
    alone = run_frames([two[i] for i in (0, 2, 3)], cfg, models)
    assert [d["index"] for d in picked["_detections"]] == [frames[i].index for i in (0, 2, 3)]
    for a, b in zip(picked["_detections"], alone["_detections"], strict=True):
        assert np.array_equal(a["boxes"].xyzlwhy, b["boxes"].xyzlwhy)
        assert np.array_equal(a["tracks"].track_ids, b["tracks"].track_ids)
    assert picked["ap_bev"] == alone["ap_bev"] and picked["amota"] == alone["amota"]


def test_the_late_message_books_run_on_across_sequences(frames, models):
    """Each sequence gets a fresh ego; its counts must not start again from zero, and what the
    last ego of a sequence still held expires: every late message is fused, dropped or expired."""
    two = frames[:2] + [dataclasses.replace(f, scenario="second") for f in frames[2:]]
    slow = dict(method="raw", budget=None, channel="ideal", latency_ms=150, deadline_ms=100)
    n_msgs = 2 * len(two)
    dropped = _run(two, models, **slow, late_policy="drop")["messages"]
    assert dropped["late_dropped"] == n_msgs and dropped["fused"] == dropped["expired"] == 0
    kept = _run(two, models, **slow, late_policy="compensate")["messages"]
    # in each sequence the first frame's messages are fused into the second; the second's expire
    assert kept["fused"] == kept["expired"] == n_msgs // 2 and kept["late_dropped"] == 0


def test_a_lossy_channel_degrades_to_fewer_agents_and_counts_every_loss(frames, models):
    out = _run(frames, models, method="late", budget=None, loss=0.5)
    m = out["messages"]
    assert m["sent"] == m["delivered"] + m["dropped_channel"] and m["dropped_channel"] > 0
    assert m["fused"] == m["delivered"]


@pytest.mark.parametrize("method", ["none", "early"])
def test_collaborators_that_send_nothing_or_points_do_not_encode(frames, models, monkeypatch, method):
    """Their encoding would be thrown away; in real time it would take the ego's cores."""
    calls = []
    step = type(models.perception).agent_step
    monkeypatch.setattr(
        type(models.perception),
        "agent_step",
        lambda self, scan, *a, **kw: calls.append(1) or step(self, scan, *a, **kw),
    )
    out = _run(frames[:2], models, method=method, budget=None)
    assert len(calls) == 2  # the ego's own scan, each frame
    assert out["messages"]["fused"] == (0 if method == "none" else 2 * 2)


def test_malformed_messages_are_counted_and_dropped_not_fatal(frames, models):
    cfg = RunConfig(method="raw", budget_bps=None, tracker="ab3dmot")
    ego = EgoStage(frames[0].ego_id, models, cfg)
    me = ego.perceive(frames[0].ego)
    garbage = [
        (Arrival(b"V2XM" + bytes(80), "2", 0.0, 0.0, 0), False),
        (Arrival(b"", "3", 0.0, 0.0, 0), False),
    ]
    out = ego.fuse(me, frames[0].ego, 0.0, garbage)
    assert ego.malformed == 2 and out.fused == 0 and out.tracks is not None


def test_a_message_with_a_nan_pose_is_malformed_not_fused(frames, models):
    import struct
    import zlib

    from v2x.pipeline.stages import AgentStage

    cfg = RunConfig(method="raw", budget_bps=None, tracker="ab3dmot")
    ego = EgoStage(frames[0].ego_id, models, cfg)
    me = ego.perceive(frames[0].ego)
    sender = frames[0].collaborators[0]
    stage = AgentStage(sender.agent_id, models, cfg)
    bad = bytearray(stage.message(stage.perceive(sender), sender))
    struct.pack_into("<d", bad, 24, float("nan"))  # the sender's pose x in the header
    bad[60:64] = struct.pack("<I", zlib.crc32(bytes(bad[:60]) + bytes(bad[64:])) & 0xFFFFFFFF)
    out = ego.fuse(me, frames[0].ego, 0.0, [(Arrival(bytes(bad), sender.agent_id, 0.0, 0.0, 0), False)])
    assert ego.malformed == 1 and out.fused == 0 and np.isfinite(out.boxes.xyzlwhy).all()


def test_track_velocities_run_on_the_clock_message_ages_use(frames, models):
    """Log time stamps are epoch nanoseconds; message ages are on the run's clock. The motion
    model that compensates late messages must be stamped on the run's clock too."""
    ego = EgoStage(frames[0].ego_id, models, RunConfig(method="raw", budget_bps=None, tracker="ab3dmot"))
    for k, frame in enumerate(frames[:3]):
        ego.fuse(ego.perceive(frame.ego), frame.ego, k * 0.1, [])
    assert ego.motion.stamp_s == 0.2
    speeds = np.linalg.norm(ego.motion.velocity, axis=1)
    # m/s: real motion, not a clock mismatch (a single track that jumps to another box may be fast)
    assert speeds.any() and np.median(speeds[speeds > 0]) < 30


def test_a_budget_smaller_than_a_header_sends_nothing_rather_than_too_much(frames, models):
    for method in ("late", "early"):
        out = _run(frames, models, method=method, budget="1kbps")  # 12 bytes per frame
        assert out["messages"]["sent"] == 0 and out["bytes_per_agent_frame"] == 0, method


def test_a_demand_too_late_for_its_frame_is_used_on_the_next(frames, models):
    """On a 70 ms link the demand misses the 50 ms coordination window of its own frame but is
    there by the next frame's start: from frame 1 on the agents follow the ego's demand."""
    from v2x.comm.emulator import ChannelEmulator
    from v2x.pipeline.clock import exchange_frame
    from v2x.pipeline.stages import AgentStage

    cfg = RunConfig.from_options(
        method="where2comm", budget=None, channel="ideal", latency_ms=70, tracker="none"
    )
    em = ChannelEmulator(cfg.channel, seed=0, budget_bps=None, frame_hz=cfg.frame_hz)
    agents: dict[str, AgentStage] = {}
    ego = EgoStage(frames[0].ego_id, models, cfg)
    exchange_frame(frames[0], 0, 0.0, cfg, agents, ego, em)
    assert agents and all(a.demand is None and len(a._late_demands) == 1 for a in agents.values())
    exchange_frame(frames[1], 1, 0.1, cfg, agents, ego, em)
    assert all(a.demand is not None for a in agents.values())
    em.close()


def test_a_held_late_demand_never_replaces_a_newer_one(models):
    from v2x.pipeline.stages import AgentStage

    stage = AgentStage("1", models, RunConfig(method="codefilling", budget_bps=None, tracker="none"))
    stage.hold_demand(b"an older demand", delivered_s=0.17)
    stage.refresh_demand(0.1)  # not arrived yet: nothing changes
    assert stage.demand is None and len(stage._late_demands) == 1
    stage.take_demand(b"V2XM" + bytes(40))  # a newer one, on time (malformed here: counted)
    assert stage._late_demands == [] and stage.malformed == 1
    stage.refresh_demand(0.2)
    assert stage.malformed == 1  # the older one was not taken


def test_on_a_link_slower_than_a_frame_the_newest_arrived_demand_is_taken(frames, models):
    """150 ms links at 10 Hz: each frame's demand arrives after the next frame has started. A
    single held slot would be overwritten every frame before its demand arrived; the agents
    must still follow the newest demand that has arrived (from two frames back)."""
    from v2x.comm.emulator import ChannelEmulator
    from v2x.pipeline.clock import exchange_frame
    from v2x.pipeline.stages import AgentStage

    cfg = RunConfig.from_options(
        method="where2comm", budget=None, channel="ideal", latency_ms=150, tracker="none"
    )
    em = ChannelEmulator(cfg.channel, seed=0, budget_bps=None, frame_hz=cfg.frame_hz)
    agents: dict[str, AgentStage] = {}
    ego = EgoStage(frames[0].ego_id, models, cfg)
    for k in range(3):
        exchange_frame(frames[k], k, k / 10, cfg, agents, ego, em)
        taken = [a.demand is not None for a in agents.values()]
        assert all(taken) if k == 2 else not any(taken), k
    assert all(len(a._late_demands) == 2 for a in agents.values())  # frames 1 and 2: on their way
    em.close()


def test_an_ego_that_receives_nothing_reuses_its_own_detections(frames, models, monkeypatch):
    """Every message lost: the ego's own boxes from its perception step are the result, the
    same ones fusing its map alone gives, without running the detector a second time. An ego
    that detects for its demand decodes them only then."""
    cfg = RunConfig.from_options(method="codefilling", tracker="ab3dmot")
    ego = EgoStage(frames[0].ego_id, models, cfg)
    me = ego.perceive(frames[0].ego)
    assert me.boxes is None and me.head is not None and me.confidence is not None
    alone = models.perception.ego_step(me, [], [])
    calls = []
    detect = models.perception.model.detect
    monkeypatch.setattr(models.perception.model, "detect", lambda *a: calls.append(1) or detect(*a))
    out = ego.fuse(me, frames[0].ego, 0.0, [])
    assert calls == [] and out.fused == 0
    assert np.array_equal(out.boxes.xyzlwhy, alone.boxes.xyzlwhy)
    assert np.array_equal(out.boxes.scores, alone.boxes.scores)


@pytest.mark.parametrize(
    ("method", "share_frame", "in_ego_frame"),
    [
        ("raw", "ego", True),
        ("codebook", "ego", True),
        ("raw", "own", False),
        ("raw", "each", False),
        ("late", "ego", False),
    ],
)
def test_collaborators_encode_features_in_the_ego_frame_unless_told_otherwise(
    frames, models, method, share_frame, in_ego_frame
):
    """Features to share on the ego's grid (OpenCOOD's proj_first) by default; boxes for late
    fusion, and features with share_frame "own", in the collaborator's own frame."""
    from v2x.pipeline.stages import AgentStage

    frame = frames[0]
    scan, ego_pose = frame.collaborators[0], frame.ego.world_from_bev
    stage = AgentStage(
        scan.agent_id, models, RunConfig(method=method, share_frame=share_frame, tracker="none")
    )
    me = stage.perceive(scan, ego_pose)
    assert np.array_equal(me.world_from_bev, ego_pose if in_ego_frame else scan.world_from_bev)


def test_a_broken_ego_pose_is_counted_and_the_agent_encodes_in_its_own_frame(frames, models):
    from v2x.pipeline.config import PipelineError
    from v2x.pipeline.stages import AgentStage

    scan = frames[0].collaborators[0]
    stage = AgentStage(scan.agent_id, models, RunConfig(method="raw", tracker="none"))
    bad = np.full((4, 4), np.nan)
    assert np.array_equal(stage.perceive(scan, bad).world_from_bev, scan.world_from_bev)
    assert np.array_equal(stage.perceive(scan, np.eye(3)).world_from_bev, scan.world_from_bev)
    assert stage.bad_ego_poses == 2
    with pytest.raises(PipelineError, match="share_frame"):
        RunConfig(share_frame="world")


@pytest.mark.parametrize(("method", "budget"), [("raw", None), ("codebook", "100kbps")])
def test_both_share_frames_fuse_and_score(frames, models, code_models, method, budget):
    """The whole in-process path runs with every frame, whole maps and codes alike (both are
    read in their sender's frame too with "each"); on these frames the collaborators' maps
    differ by frame but every message is fused."""
    out = {
        sf: _run(frames[:2], code_models if budget else models, method=method, budget=budget, share_frame=sf)
        for sf in ("ego", "own", "each")
    }
    for sf, r in out.items():
        assert r["messages"]["fused"] == 2 * 2, sf
    if budget is None:  # a whole map's size depends on the grid it was encoded on
        assert out["ego"]["bytes_per_agent_frame"] != out["own"]["bytes_per_agent_frame"]
    assert out["each"]["bytes_per_agent_frame"] == out["own"]["bytes_per_agent_frame"]


@pytest.mark.parametrize(("method", "reads"), [("codebook", 2), ("where2comm", 2), ("raw", 2), ("hybrid", 0)])
def test_each_reads_feature_messages_in_their_senders_frame_too_but_not_the_hybrids(
    frames, models, code_models, monkeypatch, method, reads
):
    """With share_frame "each" the ego node reads what a collaborator sent (whole maps, selected
    cells, codes) in that collaborator's frame too, once per frame; with "own" never. The
    hybrid's message carries the sender's own reading already, its boxes."""
    from v2x.perception.cooperative import Perception

    calls = []
    read = Perception._read_in_collaborator_frames
    monkeypatch.setattr(
        Perception, "_read_in_collaborator_frames", staticmethod(lambda *a: calls.append(1) or read(*a))
    )
    loaded = code_models if method in ("codebook", "hybrid") else models
    budget = None if method == "raw" else "100kbps"
    for share_frame, expected in (("own", 0), ("each", reads)):
        calls.clear()
        out = _run(frames[:2], loaded, method=method, budget=budget, share_frame=share_frame)
        assert out["messages"]["fused"] == 2 * 2
        assert len(calls) == expected, share_frame


@pytest.mark.parametrize("method", ["late", "where2comm", "codefilling", "raw"])
def test_only_late_fusion_collaborators_decode_boxes(frames, models, method):
    """Feature methods select cells by confidence: their collaborators skip decoding boxes, and
    their confidence and features are what a full decode would give."""
    from v2x.pipeline.stages import AgentStage

    scan = frames[0].collaborators[0]
    stage = AgentStage(scan.agent_id, models, RunConfig(method=method, tracker="none"))
    me = stage.perceive(scan, frames[0].ego.world_from_bev)
    assert (me.boxes is not None) == (method == "late")
    assert me.confidence is not None
    into = None if method == "late" else frames[0].ego.world_from_bev  # late: boxes in its own frame
    full = models.perception.agent_step(scan, True, into)
    assert full.boxes is not None and len(full.boxes) > 0
    assert np.array_equal(me.confidence, full.confidence) and torch.equal(me.features, full.features)
    # decoded later, the same boxes
    assert np.array_equal(models.perception.boxes_of(me).xyzlwhy, full.boxes.xyzlwhy)


@pytest.mark.parametrize("method", ["where2comm", "codefilling", "late", "early", "none"])
def test_the_warm_up_runs_each_methods_whole_path(method):
    """Real-time nodes warm up before the first frame: agent and ego stages on a synthetic scan,
    one fresh and one stale (motion-compensated) message fused."""
    from v2x.pipeline.stages import warm_up

    cfg = RunConfig.from_options(method=method, tracker="dmstrack")
    assert warm_up(Models.load(cfg), cfg) == (0 if method == "none" else 2)


def _with_scan_offset(frames, offset_ns: int):
    """The frames with every collaborator's scan stamped ``offset_ns`` after the ego's, as in
    real DAIR-V2X-C pairs (the roadside unit's scan is not simultaneous with the vehicle's)."""
    out = []
    for f in frames:
        agents = {
            a: s if a == f.ego_id else dataclasses.replace(s, timestamp_ns=f.ego.timestamp_ns + offset_ns)
            for a, s in f.agents.items()
        }
        out.append(dataclasses.replace(f, agents=agents))
    return out


def test_scan_offsets_are_reported_and_moved_like_late_messages(frames, models):
    """A collaborator that scanned 50 ms after the ego: its boxes are moved back by the tracked
    objects' motion over 50 ms (once the ego has velocities), the offsets are reported, and an
    offset beyond max_scan_offset_s is counted and fused as it came."""
    assert frames[0].ego.timestamp_ns > 0
    shifted = _with_scan_offset(frames, 50_000_000)
    plain = _run(frames, models, method="late", budget=None)
    moved = _run(shifted, models, method="late", budget=None)
    capped = _run(shifted, models, method="late", budget=None, max_scan_offset_s=0.02)
    n = 2 * len(frames)  # two collaborators a frame, all fused
    assert plain["scan_offset_ms"] == {"min": 0.0, "mean": 0.0, "max": 0.0, "n": n, "over_limit": 0}
    assert moved["scan_offset_ms"] == {"min": 50.0, "mean": 50.0, "max": 50.0, "n": n, "over_limit": 0}
    assert capped["scan_offset_ms"]["over_limit"] == n
    pairs = list(zip(plain["_detections"], moved["_detections"], strict=True))
    # the first two frames have no velocities yet: nothing to move
    for a, b in pairs[:2]:
        assert np.array_equal(a["boxes"].xyzlwhy, b["boxes"].xyzlwhy)
    assert any(
        len(a["boxes"]) != len(b["boxes"]) or not np.allclose(a["boxes"].xyzlwhy, b["boxes"].xyzlwhy)
        for a, b in pairs[2:]
    )
    for a, c in zip(plain["_detections"], capped["_detections"], strict=True):
        assert np.array_equal(a["boxes"].xyzlwhy, c["boxes"].xyzlwhy)


@pytest.mark.parametrize("message_weights", ["shipped", "none"])
def test_an_ego_that_receives_nothing_detects_as_eval_comm_does(frames, message_weights):
    """With message weights, the code methods' ego reads its own map with their decoder whether
    or not anything arrived (as ``v2x eval comm`` does), so its detector does not change from
    frame to frame; without them its demand's boxes are the answer."""
    from v2x.pipeline.stages import EgoStage

    cfg = RunConfig.from_options(
        method="codefilling", tracker="none", message_weights=None if message_weights == "shipped" else "none"
    )
    models = Models.load(cfg)
    assert (models.decoder is not None) == (message_weights == "shipped")
    ego = EgoStage(frames[0].ego_id, models, cfg)
    percept = ego.perceive(frames[0].ego)
    out = ego.fuse(percept, frames[0].ego, 0.0, [])
    expected = models.perception.ego_step(percept, [], [], models.decoder).boxes
    assert len(expected) > 0
    assert np.array_equal(out.boxes.xyzlwhy, expected.xyzlwhy)
    if models.decoder is not None:
        alone = models.perception.boxes_of(percept)
        assert not np.array_equal(alone.xyzlwhy, expected.xyzlwhy)  # the decoder's answer, not the demand's
