"""``v2x eval tracking --data LOG``: the four configurations of the results table on a log, with
the shipped detector and noise model, and the relative gains it reports."""

import json

import pytest
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.experiments.tracking import CEILING, CONFIGURATIONS, GAINS

pytestmark = pytest.mark.slow


def test_eval_tracking_on_a_log_compares_the_four_configurations(tmp_path, generate_log):
    log = generate_log(tmp_path / "log", frames=6, cavs=2, rsus=1, channels=32, seed=3)
    out = tmp_path / "tracking.json"
    res = CliRunner().invoke(cli, ["eval", "tracking", "--data", str(log), "--json", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())
    assert set(CONFIGURATIONS) <= set(results)
    for name in CONFIGURATIONS:
        assert 0 <= results[name]["comparable"]["amota"] <= 100, name
    assert results["ab3dmot-ego"]["bytes_per_frame"] == 0
    assert results["ab3dmot/intermediate"]["bytes_per_frame"] > results["dmstrack/fixed"]["bytes_per_frame"]
    gains = results["relative_amota_gain_pct"]
    for name, a, b in GAINS:
        base = results[b]["comparable"]["amota"]
        if base > 0:
            want = 100 * (results[a]["comparable"]["amota"] - base) / base
            assert gains[name] == pytest.approx(want, abs=0.01), name
            assert f"relative AMOTA, {name.replace('_', ' ')}" in res.output
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in CONFIGURATIONS)
    # the perfect tracker: every object, no switch, and no tracker above it
    top = results[CEILING]["comparable"]
    assert (
        top["samota"] == pytest.approx(100, abs=0.1) and top["mota"] == pytest.approx(100) and top["ids"] == 0
    )
    for name in CONFIGURATIONS:
        assert results[name]["comparable"]["amota"] <= top["amota"] + 0.5, name
    room = results["headroom_amota_pct"]
    fixed = results["dmstrack/fixed"]["comparable"]["amota"]
    assert room["dmstrack/fixed"] == pytest.approx(100 * (top["amota"] - fixed) / fixed, abs=0.01)
    assert "the most any tracker could gain over dmstrack/fixed" in res.output


def test_the_protocol_caps_amota_near_51_for_a_perfect_tracker():
    """At recall level r a tracker misses (1 - r) of the objects, so MOTA_r <= r, and AMOTA (the
    mean over r = 1/40 .. 1) stays near sum(k / 40) / 40 = 51.25 % even for the ground truth
    itself, as long as its tracks' scores differ. With one score for all, AMOTA would equal
    MOTA: why the perfect tracker gives every track its own."""
    import numpy as np

    from v2x.core.boxes import Boxes
    from v2x.experiments.tracking import _ground_truth_tracks
    from v2x.tracking.metrics import TrackingSequence, evaluate_tracking
    from v2x.tracking.records import FrameDetections

    rng = np.random.default_rng(0)
    n_obj, n_frames = 30, 20
    start = np.c_[rng.uniform(-40, 40, (n_obj, 2)), np.zeros(n_obj)]
    frames, gt = [], {}
    for k in range(n_frames):
        xyz = start + [0.5 * k, 0.0, 0.0]
        boxes = Boxes(
            np.c_[xyz, np.tile([4.5, 1.9, 1.5, 0.0], (n_obj, 1))], labels=0, track_ids=np.arange(n_obj) + 1
        )
        frames.append(FrameDetections(k, k * 100_000_000, [], gt=boxes))
        gt[k] = boxes
    tracks = _ground_truth_tracks(frames, {}, "s")
    result = evaluate_tracking([TrackingSequence("s", n_frames, gt, tracks)])
    assert result["mota"] == pytest.approx(100) and result["samota"] == pytest.approx(100)
    assert 50.0 <= result["amota"] <= 53.5  # near 51.25, nowhere near its MOTA of 100
    assert len({float(s) for b in tracks.values() for s in b.scores}) == n_obj
    tied = {
        k: Boxes(b.xyzlwhy, labels=0, scores=np.full(len(b), 0.9), track_ids=b.track_ids)
        for k, b in tracks.items()
    }
    assert evaluate_tracking([TrackingSequence("s", n_frames, gt, tied)])["amota"] == pytest.approx(100)


def test_cached_detections_belong_to_the_detector_that_made_them(tmp_path, generate_log):
    """Another detector (other weights) gets its own cache folder instead of reading the first
    one's detections; the same detector reuses its own."""
    import torch

    from v2x.datasets import open_log
    from v2x.experiments.tracking import extract_sequences
    from v2x.perception.cooperative import Perception
    from v2x.perception.detector import load_detector

    log = open_log(generate_log(tmp_path / "log", frames=2, cavs=1, rsus=0, channels=16, seed=4))
    cache = tmp_path / "cache"
    shipped = load_detector()
    first = extract_sequences(log, Perception(shipped), cache, with_intermediate=False, progress=False)
    stamp = first[0].stat().st_mtime_ns
    again = extract_sequences(log, Perception(shipped), cache, with_intermediate=False, progress=False)
    assert again == first and first[0].stat().st_mtime_ns == stamp  # reused, not recomputed
    other = load_detector()
    with torch.no_grad():
        other.head.heatmap.bias.add_(1.0)  # different weights: more, other boxes
    second = extract_sequences(log, Perception(other), cache, with_intermediate=False, progress=False)
    assert second[0].parent != first[0].parent and second[0].is_file()
    assert first[0].read_bytes() != second[0].read_bytes()
