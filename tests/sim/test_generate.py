"""``v2x sim generate``: deterministic bytes, valid logs in both formats through the real
readers, presets that hold out the test split, and impossible parameters refused up front."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from v2x.datasets import open_log
from v2x.datasets.check import check_log
from v2x.sim.generate import (
    PRESETS,
    GenerateConfig,
    SimError,
    generate,
    preset_configs,
    scene_configs,
)
from v2x.sim.town import grid_lines

SMALL = dict(
    scenes=2, frames=3, traffic_density=(22.0, 24.0), pedestrians=(4, 6), blocks=(2, 2), cavs=3, rsus=1
)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "generation.json":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    generate(GenerateConfig(out=str(tmp_path / "a"), seed=3, workers=1, **SMALL), progress=False)
    generate(GenerateConfig(out=str(tmp_path / "b"), seed=3, workers=2, **SMALL), progress=False)
    generate(GenerateConfig(out=str(tmp_path / "c"), seed=4, workers=1, **SMALL), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("fmt", ["opv2v", "dair"])
def test_logs_load_through_the_readers_and_pass_check(tmp_path, fmt):
    summary = generate(
        GenerateConfig(out=str(tmp_path), seed=1, format=fmt, split=(0.5, 0.0, 0.5), **SMALL), progress=False
    )
    assert summary["frames"] == 6 and summary["splits"]["train"] == 3 and summary["splits"]["test"] == 3
    for split in ("train", "test"):
        assert check_log(tmp_path / split) == []
        log = open_log(tmp_path / split)
        assert log.format == ("opv2v" if fmt == "opv2v" else "dair-v2x-c")
        assert len(log) == 3
        frame = log[0]
        expected = 4 if fmt == "opv2v" else 2  # DAIR-V2X-C pairs the ego with one roadside unit
        assert len(frame.agents) == expected
        assert any(a.kind.value == "rsu" for a in frame.agents.values())
        assert len(frame.gt) > 10
        assert all(len(a.points) > 20000 for a in frame.agents.values())


def test_opv2v_yaml_records_hits_speed_and_the_ego_comes_first(tmp_path):
    generate(GenerateConfig(out=str(tmp_path), seed=2, split=(1, 0, 0), **SMALL), progress=False)
    log = open_log(tmp_path / "train")
    for frame in log:
        scenario = tmp_path / "train" / frame.scenario
        meta = yaml.safe_load((scenario / frame.ego_id / f"{frame.index:06d}.yaml").read_text())
        assert "ego_speed" in meta and meta["ego_speed"] >= 0.0
        counts = [v["num_lidar_points"] for v in meta["vehicles"].values()]
        assert all(isinstance(c, int) and c >= 0 for c in counts) and max(counts) > 50
        # the reader hands the counts back as each agent's hits
        assert frame.ego.hits is not None and sum(frame.ego.hits.values()) == sum(counts)
    protocol = yaml.safe_load(next((tmp_path / "train").glob("*/data_protocol.yaml")).read_text())
    assert protocol["scene"]["lidar"]["channels"] == 64


def test_presets_hold_the_test_split_out():
    parts = {name: preset_configs(name, "/tmp/unused") for name in PRESETS}
    for part in parts["train"] + parts["test"] + parts["demo"]:
        validate_quick = scene_configs(part)  # every scene of every preset can be built
        assert validate_quick
    train = [c for p in parts["train"] for _, c in scene_configs(p)]
    test = [c for p in parts["test"] for _, c in scene_configs(p)]
    assert {c.seed for c in train}.isdisjoint({c.seed for c in test})
    assert {c.name for c in train}.isdisjoint({c.name for c in test})

    def layout(c):
        xs, ys = grid_lines(c.town, np.random.default_rng(np.random.SeedSequence(c.seed).spawn(4)[0]))
        return tuple(np.round(np.concatenate([xs, ys]), 1))

    assert {layout(c) for c in train}.isdisjoint({layout(c) for c in test})
    # the training set is big and cooperative; the test set has 10 Hz sequences
    assert sum(c.frames for c in train) >= 3000
    assert all(
        3 <= c.cavs <= 5 and c.cavs + c.rsus <= 5 for p in parts["train"][:2] for _, c in scene_configs(p)
    )
    assert all(c.frame_step == 1 and c.frames >= 50 for c in test)
    demo = [c for p in parts["demo"] for _, c in scene_configs(p)]
    assert len(demo) == 1 and demo[0].cavs == 3 and demo[0].rsus == 1 and demo[0].frames == 100
    # --seed shifts a preset's seeds without making its parts share one
    shifted = preset_configs("train", "/tmp/unused", seed=5)
    assert [g.seed for g in shifted] == [g.seed + 5 for g in parts["train"]]


def test_impossible_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(SimError, match="--frames"):
        generate(GenerateConfig(out=str(tmp_path / "x"), frames=0), progress=False)
    with pytest.raises(SimError, match="moving cars"):  # more CAVs than cars to carry them
        generate(GenerateConfig(out=str(tmp_path / "y"), cavs=7, blocks=(1, 1), traffic_density=(8.0, 8.0)))
    with pytest.raises(SimError, match="CAVs need at least"):
        generate(GenerateConfig(out=str(tmp_path / "y"), cavs=7, vehicles=(10, 12)), progress=False)
    with pytest.raises(SimError, match="--cavs"):
        generate(GenerateConfig(out=str(tmp_path / "y"), cavs=8), progress=False)
    with pytest.raises(SimError, match="needs --rsus"):
        generate(GenerateConfig(out=str(tmp_path / "z"), format="dair", rsus=0), progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SimError, match="not writable"):
        generate(GenerateConfig(out=str(blocker / "out")), progress=False)
    # nothing was simulated or left behind by the refused runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_refuses_bad_parameters_with_one_clear_error(tmp_path):
    from click.testing import CliRunner

    from v2x.cli.sim import sim

    result = CliRunner().invoke(
        sim, ["generate", "--out", str(tmp_path / "o"), "--frames", "0", "--cavs", "9"]
    )
    assert result.exit_code != 0
    assert "--frames must be >= 1" in result.output and "--cavs must be between 1 and 7" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_interrupted_run_leaves_only_whole_frames(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "v2x.cli.main", "sim", "generate", "--out", str(out), "--scenes", "1"]
    cmd += ["--frames", "200", "--cavs", "3", "--rsus", "1", "--seed", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.yaml"))) < 12:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    problems = check_log(out / "train")
    assert all(p.message.startswith("leftover temporary file") for p in problems), problems
    log = open_log(out / "train", comm_range=1e9)
    assert 1 <= len(log) < 200
    for frame in log:  # every indexed frame is whole: all four agents with their point clouds
        assert len(frame.agents) == 4 and all(len(a.points) > 1000 for a in frame.agents.values())
