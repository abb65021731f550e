"""``v2x eval tracking --data LOG``: the four configurations of the results table on a log, with
the shipped detector and noise model, and the relative gains it reports."""

import json

import pytest
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.tracking_experiment import CONFIGURATIONS, GAINS

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
    assert results["ab3dmot/none"]["bytes_per_frame"] == 0
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


def test_cached_detections_belong_to_the_detector_that_made_them(tmp_path, generate_log):
    """Another detector (other weights) gets its own cache folder instead of reading the first
    one's detections; the same detector reuses its own."""
    import torch

    from v2x.cooperative import Perception
    from v2x.datasets import open_log
    from v2x.detector import load_detector
    from v2x.tracking_experiment import extract_sequences

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
