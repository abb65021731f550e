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
