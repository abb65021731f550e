"""The perception cache: what its key covers, its byte bound, and that a hit is the computation."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from v2x.perception.cache import PerceptionCache, scan_key
from v2x.perception.cooperative import Perception
from v2x.pipeline.methods import FUSION_MODES


def test_the_key_covers_everything_the_computation_reads(synthetic_frame):
    scan = synthetic_frame(1).agents["1"]
    key = scan_key(scan, detect=True)
    moved = scan.world_from_lidar.copy()
    moved[0, 3] += 0.01
    points = scan.points.copy()
    points[0, 0] += 0.001
    variants = [
        scan_key(scan, detect=False),
        scan_key(dataclasses.replace(scan, world_from_lidar=moved), True),
        scan_key(dataclasses.replace(scan, points=points), True),
        scan_key(dataclasses.replace(scan, mount_height=scan.mount_height + 0.1), True),
        scan_key(dataclasses.replace(scan, timestamp_ns=scan.timestamp_ns + 1), True),
        scan_key(dataclasses.replace(scan, agent_id="other"), True),
        scan_key(scan, True, into=synthetic_frame(1).ego.world_from_bev),
    ]
    assert len({key, *variants}) == 1 + len(variants)
    assert scan_key(dataclasses.replace(scan, points=scan.points.copy()), True) == key


def test_a_hit_returns_what_computing_again_gives(model, synthetic_frame):
    frame = synthetic_frame(2)
    plain = Perception(model)
    cached = Perception(model, PerceptionCache(1 << 30))
    for scan in frame.agents.values():
        first = cached.agent_step(scan)
        assert cached.agent_step(scan) is first  # the second is a hit
        fresh = plain.agent_step(scan)
        assert torch.equal(first.features, fresh.features) and torch.equal(first.occupied, fresh.occupied)
        assert np.array_equal(first.confidence, fresh.confidence)
        assert np.array_equal(first.boxes.xyzlwhy, fresh.boxes.xyzlwhy)
    assert cached.cache.hits == len(frame.agents) == cached.cache.misses


def test_least_recently_used_entries_go_first_and_the_bound_holds(model, synthetic_frame):
    scans = list(synthetic_frame(3, n_agents=3).agents.values())
    probe = Perception(model, PerceptionCache(1 << 30))
    probe.agent_step(scans[0])
    one = probe.cache.bytes
    perception = Perception(model, PerceptionCache(2 * one + one // 2))  # room for two
    a, b, c = scans
    perception.agent_step(a)
    perception.agent_step(b)
    perception.agent_step(a)  # a is now the most recently used
    perception.agent_step(c)  # evicts b
    cache = perception.cache
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    hits = cache.hits
    perception.agent_step(a)
    assert cache.hits == hits + 1
    perception.agent_step(b)  # gone: computed again
    assert cache.hits == hits + 1 and cache.misses == 4


def test_a_worker_takes_no_more_than_its_share_of_the_memory(monkeypatch):
    import v2x.perception.cache as pc

    monkeypatch.setattr(pc, "_available_mb", lambda: 8000)
    monkeypatch.setattr(pc.os, "cpu_count", lambda: 16)
    assert pc.memory_share_mb(2048) == 8000 // 32  # half of it, over 16 workers
    assert pc.memory_share_mb(100) == 100
    monkeypatch.setattr(pc, "_available_mb", lambda: None)
    assert pc.memory_share_mb(2048) == 2048
    monkeypatch.undo()
    assert pc._available_mb() > 0  # this Linux machine's /proc/meminfo is read


def test_intermediate_fusion_reuses_the_batch_late_fusion_encoded(model, synthetic_frame, monkeypatch):
    """Evaluating late then intermediate-own fusion on a frame encodes its agents once, with the
    same boxes as intermediate-own computed on its own; intermediate fusion in the ego's frame
    needs maps of its own, and gets them."""
    frame = synthetic_frame(4)
    alone = {
        m: FUSION_MODES[m].run(Perception(model), frame).boxes for m in ("intermediate-own", "intermediate")
    }
    perception = Perception(model)
    calls = []
    steps = Perception.agent_steps
    monkeypatch.setattr(
        Perception, "agent_steps", lambda self, *a, **k: calls.append(1) or steps(self, *a, **k)
    )
    perception.run_frame(frame, "late")
    for mode, encodes in (("intermediate-own", 1), ("intermediate", 2)):
        got = FUSION_MODES[mode].run(perception, frame).boxes
        assert len(calls) == encodes, mode
        want = alone[mode]
        assert np.array_equal(got.xyzlwhy, want.xyzlwhy) and np.array_equal(got.scores, want.scores)
    perception.run_frame(synthetic_frame(5), "intermediate")  # another frame: encoded anew
    assert len(calls) == 3


def test_nothing_kept_is_reused_once_the_weights_change(cfg, synthetic_frame):
    """A Perception held across training steps must not serve maps of the old weights."""
    from v2x.perception.detector import CooperativeDetector

    torch.manual_seed(0)
    trained = CooperativeDetector(cfg).eval()
    perception = Perception(trained, PerceptionCache(1 << 30))
    frame = synthetic_frame(6)
    scan = frame.ego
    before = perception.agent_step(scan)
    batch_before = perception.run_frame(frame, "intermediate").boxes
    with torch.no_grad():
        for p in trained.encoder.parameters():
            p.mul_(1.5)  # an in-place write, as an optimiser step makes
    after = perception.agent_step(scan)
    assert after is not before and not torch.equal(after.features, before.features)
    fresh = Perception(trained).run_frame(frame, "intermediate").boxes
    got = perception.run_frame(frame, "intermediate").boxes
    assert np.array_equal(got.xyzlwhy, fresh.xyzlwhy)
    assert len(batch_before) != len(got) or not np.array_equal(batch_before.xyzlwhy, got.xyzlwhy)
