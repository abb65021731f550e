"""``v2x demo`` end to end on a tiny scene: node processes, table, plot, video and recording."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_replays_and_writes_the_table_plot_video_and_recording(tmp_path, generate_log):
    data = generate_log(tmp_path / "demo", frames=3, cavs=2, rsus=1, channels=32, seed=4)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "v2x.cli.main",
            "demo",
            "--data",
            str(data),
            "--out",
            str(out),
            "--method",
            "raw",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "AP@0.5: ego alone" in proc.stdout and "reusing" in proc.stdout
    results = json.loads((out / "replay" / "results.json").read_text())
    assert results["frames"] == 3 and results["messages"]["delivered"] > 0
    for name in ("demo.png", "bev.mp4", "demo.mcap", "ego_alone.json"):
        assert (out / name).stat().st_size > 1000, name
