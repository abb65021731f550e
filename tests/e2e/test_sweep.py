"""``v2x sweep``: config errors, grid expansion, outputs, and real tiny sweeps on a generated log
(local process pool, resuming, failed cells, Ray)."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.experiments.sweep import (
    AXIS_DEFAULTS,
    SweepError,
    cell_id,
    expand_cells,
    load_sweep_config,
    log_spaced_budgets,
    run_sweep,
)
from v2x.experiments.sweep_report import write_outputs


@pytest.fixture(scope="session")
def tiny_log(tmp_path_factory, generate_log) -> Path:
    """One simulated scene of 3 frames, 2 CAVs, a 16-channel LiDAR (a few seconds)."""
    root = generate_log(tmp_path_factory.mktemp("tiny_log"), frames=3, cavs=2, rsus=0, channels=16, seed=3)
    return root / "train"  # a single scene lands in the train split; its scene is scene_3_0000


def write_config(tmp_path: Path, data: Path | str, **keys) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "data": str(data), **keys}))
    return path


# -- config errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keys", "bad"),
    [
        ({"budgts": ["1kbps"]}, "'budgts'"),
        ({"grid": {"methd": ["late"]}}, "grid.'methd'"),
        ({"also": [{"losss": [0.1]}]}, "also[0].'losss'"),
    ],
)
def test_an_unknown_key_names_the_file_and_the_key(tmp_path, keys, bad):
    path = write_config(tmp_path, tmp_path, **keys)
    with pytest.raises(SweepError) as err:
        load_sweep_config(path)
    assert str(path) in str(err.value) and bad in str(err.value)


@pytest.mark.parametrize(
    ("keys", "hint"),
    [
        ({"frame": 3}, "did you mean 'frames'"),
        ({"budgets": ["1kbps"]}, "a grid axis: put it under grid:"),
        ({"grid": {"frames": 3}}, "a setting of every cell: put it at the top level"),
    ],
)
def test_an_unknown_key_gets_a_hint(tmp_path, keys, hint):
    with pytest.raises(SweepError, match=hint):
        load_sweep_config(write_config(tmp_path, tmp_path, **keys))


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        (["fast"], r"grid\.budget: not a rate: 'fast'"),
        (["0kbps"], "must be positive"),
        ({"log_from": "1kbps", "to": "1Mbps"}, "missing points"),
        ({"log_from": "1kbps", "to": "1Mbps", "points": 3, "step": 2}, "unknown step"),
        ({"log_from": "1kbps", "to": "nope", "points": 3}, "not a rate"),
    ],
)
def test_a_bad_budget_is_refused_naming_file_and_value(tmp_path, budget, match):
    path = write_config(tmp_path, tmp_path, grid={"budget": budget})
    with pytest.raises(SweepError, match=match) as err:
        load_sweep_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"grid": {"loss": [0.1, 1.5]}}, r"grid\.loss: a loss probability is in \[0, 1\]"),
        ({"grid": {"agents": [0]}}, "agents counts the ego"),
        ({"grid": {"method": ["fusion"]}}, "method: unknown 'fusion'"),
        ({"grid": {"channel": ["wifi"]}}, "unknown channel preset 'wifi'"),
        ({"grid": {"method": []}}, "empty list"),
        ({"frames": 0}, "frames: expected an integer >= 1"),
        ({"perception_cache_mb": -1}, "perception_cache_mb: expected an integer >= 0"),
        ({"tracker": "sort"}, "tracker: unknown 'sort'"),
        ({"share_frame": "world"}, "share_frame: use ego, own, each"),
        ({"precision": "fp16"}, "precision: use fp32 or bf16"),
        ({"box_merge": "wbf"}, "box_merge: use average or nms"),
        ({"pick": "evenly"}, "pick: use first, spread, random"),
        ({"codebook": "missing.pt"}, "codebook: no file 'missing.pt'"),
    ],
)
def test_bad_values_are_refused_before_anything_runs(tmp_path, keys, match):
    with pytest.raises(SweepError, match=match):
        load_sweep_config(write_config(tmp_path, tmp_path, **keys))


def test_a_missing_log_folder_and_a_missing_config_are_clear(tmp_path):
    path = write_config(tmp_path, tmp_path / "nowhere")
    with pytest.raises(SweepError, match=r"data: no folder .*nowhere.*v2x sim generate"):
        load_sweep_config(path)
    with pytest.raises(SweepError, match=r"no such sweep config .*quick"):
        load_sweep_config(tmp_path / "absent.yaml")


# -- grid ---------------------------------------------------------------------------------------------
def test_log_spaced_budgets():
    assert log_spaced_budgets("1kbps", "100Mbps", 6) == [
        "1kbps",
        "10kbps",
        "100kbps",
        "1Mbps",
        "10Mbps",
        "100Mbps",
    ]
    five = log_spaced_budgets("1kbps", "100Mbps", 5)
    assert five == ["1kbps", "17.8kbps", "316kbps", "5.62Mbps", "100Mbps"]
    assert log_spaced_budgets(1000, 1000, 1) == ["1kbps"]


def test_grid_expansion_aliases_also_grids_and_duplicates(tmp_path):
    grid = {
        "methods": ["late", "raw"],
        "budgets": [{"log_from": "1kbps", "to": "100Mbps", "points": 6}, "unlimited", "0.001Mbps"],
        "scene": ["a", "b"],
    }
    also = [
        {"method": "none", "budget": "unlimited"},
        {"method": "raw", "budget": "1Mbps", "loss": [0.1, 0.2]},
    ]
    cfg = load_sweep_config(write_config(tmp_path, tmp_path, frames=4, seed=1, grid=grid, also=also))
    cells = expand_cells(cfg)
    main = 2 * 7 * 2  # 0.001Mbps is 1kbps: one cell
    assert len(cells) == main + 2 + 2 * 2
    assert len({cell_id(c) for c in cells}) == len(cells)
    assert {c["budget"] for c in cells} >= {"1kbps", "100Mbps", "unlimited"}
    lossy = [c for c in cells if "loss" in c]
    assert {(c["method"], c["budget"], c["scene"], c["loss"]) for c in lossy} == {
        ("raw", "1Mbps", s, p) for s in "ab" for p in (0.1, 0.2)
    }
    assert all(c["frames"] == 4 and c["seed"] == 1 and c["data"] == str(tmp_path.resolve()) for c in cells)


def test_cells_speak_run_cells_language():
    """Every cell key is one run_cell accepts; the defaults the sweep writes are the pipeline's."""
    from v2x.pipeline.config import RunConfig

    params = inspect.signature(RunConfig.from_options).parameters
    fields = set(RunConfig.__dataclass_fields__)
    accepted = {"data", "scene", "agents", "threads"} | set(params) | fields
    cfg = load_sweep_config("example", overrides={"data": "."}, validate=False)
    cells = expand_cells(cfg)
    assert len(cells) == 106  # 108 combinations; latency 0 / drop restates the main grid, per scene
    assert set().union(*cells) <= accepted
    assert {k: params[k].default for k in AXIS_DEFAULTS} == AXIS_DEFAULTS


@pytest.mark.parametrize(
    ("key", "default", "other", "method"),
    [
        # features shared in the ego's frame by default (before, cells had no share_frame)
        ("share_frame", "ego", "own", "raw"),
        # late fusion averaging duplicate boxes (before, cells had no box_merge; nms is its own)
        ("box_merge", "average", "nms", "late"),
    ],
)
def test_every_cell_names_settings_added_later(tmp_path, key, default, other, method):
    """Cells made before a setting existed lack its key: a resumed sweep must not take their
    results for today's, and each value of the setting is a cell of its own."""
    cfg = load_sweep_config(write_config(tmp_path, tmp_path, grid={"method": [method]}))
    alt = load_sweep_config(write_config(tmp_path, tmp_path, **{key: other}, grid={"method": [method]}))
    [cell], [cell_alt] = expand_cells(cfg), expand_cells(alt)
    assert cell[key] == default and cell_alt[key] == other
    old = {k: v for k, v in cell.items() if k != key}
    assert len({cell_id(cell), cell_id(cell_alt), cell_id(old)}) == 3


def test_a_dair_log_s_cells_read_in_every_agents_frame_unless_told(tmp_path, dair_example):
    """As v2x replay and v2x eval comm do for a DAIR-V2X-C log (SHARE_FRAME_BY_FORMAT)."""
    cfg = load_sweep_config(write_config(tmp_path, dair_example, grid={"method": ["raw"]}))
    told = load_sweep_config(
        write_config(tmp_path, dair_example, share_frame="ego", grid={"method": ["raw"]})
    )
    [cell], [cell_told] = expand_cells(cfg), expand_cells(told)
    assert cell["share_frame"] == "each" and cell_told["share_frame"] == "ego"


def test_a_bf16_sweep_is_its_own_set_of_cells_and_its_setting_reaches_the_run(tmp_path):
    from v2x.pipeline.config import RunConfig

    plain = load_sweep_config(write_config(tmp_path, tmp_path, grid={"method": ["raw"]}))
    bf16 = load_sweep_config(write_config(tmp_path, tmp_path, precision="bf16", grid={"method": ["raw"]}))
    [cell], [cell_bf16] = expand_cells(plain), expand_cells(bf16)
    assert "precision" not in cell and cell_bf16["precision"] == "bf16"
    assert cell_id(cell) != cell_id(cell_bf16)
    run = {k: v for k, v in cell_bf16.items() if k not in ("data", "scene", "name")}
    assert RunConfig.from_options(**run).precision == "bf16"


def test_a_pick_other_than_first_is_its_own_set_of_cells_and_reaches_the_run(tmp_path):
    """``pick: first`` is what a sweep without ``pick`` ran: the same cells, the same ids."""
    from v2x.pipeline.config import RunConfig

    def cell(**pick):
        path = write_config(tmp_path, tmp_path, frames=5, grid={"method": ["raw"]}, **pick)
        return expand_cells(load_sweep_config(path))[0]

    plain, first, spread = cell(), cell(pick="first"), cell(pick="spread")
    assert "pick" not in plain and plain == first and spread["pick"] == "spread"
    assert cell_id(plain) == cell_id(first) != cell_id(spread)
    run = {k: v for k, v in spread.items() if k not in ("data", "scene", "name")}
    assert RunConfig.from_options(**run).pick == "spread"


def test_the_shipped_configs_validate(tmp_path):
    for name in ("quick", "example", "pose_noise"):
        cfg = load_sweep_config(name, overrides={"data": str(tmp_path)})
        assert cfg.data == str(tmp_path.resolve()) and expand_cells(cfg)


def test_the_hash_ignores_threads_but_not_settings():
    cell = {"data": "/x", "method": "late", "budget": "1kbps", "channel": "ideal"}
    assert cell_id(cell) == cell_id({**cell, "threads": 4}) != cell_id({**cell, "frames": 3})
    assert cell_id(cell) == cell_id({**cell, "perception_cache_mb": 0})


def test_a_new_results_version_makes_every_cell_new(monkeypatch):
    """Records made by code that measured differently are not reused by a resumed sweep."""
    import v2x.experiments.sweep as sweep

    cell = {"data": "/x", "method": "late", "budget": "1kbps", "channel": "ideal"}
    now = cell_id(cell)
    monkeypatch.setattr(sweep, "RESULTS_VERSION", sweep.RESULTS_VERSION + 1)
    assert cell_id(cell) != now


@pytest.mark.slow
def test_cells_reuse_the_agents_perception_and_get_the_same_results(tiny_log):
    """A worker keeps each agent's perception of a scan for the next cells; results must not
    change by a bit (only the wall times do)."""
    from v2x.pipeline import runs as pipeline
    from v2x.pipeline.runs import run_cell

    base = {"data": str(tiny_log), "channel": "ideal", "frames": 3, "tracker": "dmstrack"}
    timing = ("wall_s", "compute_ms_per_frame")

    def run(**cell):
        out = run_cell({**base, **cell})
        return {k: v for k, v in out.items() if k not in timing}

    pipeline._PERCEPTION_CACHE = None
    plain = [
        run(method=m, budget=b, perception_cache_mb=0)
        for m, b in (("codefilling", "200kbps"), ("late", "20kbps"))
    ]
    assert pipeline._PERCEPTION_CACHE == (0, None)
    cached = [run(method=m, budget=b) for m, b in (("codefilling", "200kbps"), ("late", "20kbps"))]
    cache = pipeline._PERCEPTION_CACHE[1]
    assert cached == plain
    # codefilling perceived every scan (3 frames of 2 agents, detecting), the collaborator's on the
    # ego's grid; late detects too, so the ego's scans are hits, but it wants the collaborator's
    # boxes on that agent's own grid: those are computed anew
    assert cache.misses == 3 * 2 + 3 and cache.hits == 3 and 0 < cache.bytes <= cache.max_bytes


@pytest.mark.slow
def test_a_worker_s_cached_models_take_each_cell_s_box_merge(tiny_log, monkeypatch):
    """The loaded weights serve cells of either merge; the merge itself is the cell's."""
    from v2x.pipeline import runs as pipeline
    from v2x.pipeline.runs import run_cell

    monkeypatch.setattr(pipeline, "_MODELS", {})  # this test's models only (others' stay cached)
    base = {"data": str(tiny_log), "channel": "ideal", "frames": 1, "tracker": "none", "method": "late"}
    merges = {}
    for merge in ("nms", "average"):
        out = run_cell({**base, "box_merge": merge})
        assert out["config"]["box_merge"] == merge
        merges[merge] = {m.perception.box_fusion_iou for m in pipeline._MODELS.values()}
    assert len(pipeline._MODELS) == 1  # one set of weights served both cells
    assert merges == {"nms": {None}, "average": {0.4}}


# -- outputs (synthetic records) ----------------------------------------------------------------------
def _record(method: str, budget: str, loss: float, ap: float, nbytes: float, ok: bool = True) -> dict:
    cell = {"data": "/x", "method": method, "budget": budget, "channel": "ideal", "loss": loss}
    result = {
        "method": method,
        "config": {"channel": {"latency_s": 0.0, "jitter_s": 0.0, "loss": loss}, "max_agents": 5},
        "frames": 10,
        "ap_bev": {"0.3": ap, "0.5": ap / 2, "0.7": ap / 4},
        "amota": 10 * ap,
        "bytes_per_agent_frame": nbytes,
        "messages": {"sent": 4, "delivered": 4, "dropped": 0},
        "latency_ms": {"p50": 1.0, "p95": 2.0},
        "wall_s": 1.0,
    }
    return {
        "id": cell_id(cell),
        "cell": cell,
        "status": "ok" if ok else "failed",
        "error": None if ok else "PipelineError: boom",
        "result": result if ok else None,
    }


def test_plots_only_for_axes_that_vary(tmp_path):
    cfg = type("Cfg", (), {"name": "synthetic", "source": "s.yaml", "data": "/x"})()
    recs = [_record("raw", "1Mbps", p, 0.5 - p, 900) for p in (0.0, 0.1, 0.3)]
    recs.append(_record("late", "1Mbps", 0.2, 0.4, 100, ok=False))
    written = write_outputs(recs, tmp_path, cfg)
    assert written == ["results.csv", "report.md", "ap_vs_loss.png"]
    assert not (tmp_path / "ap_vs_bytes.png").exists()
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert rows[1]["loss"] == "0.1" and rows[3]["error"] == "PipelineError: boom"
    report = (tmp_path / "report.md").read_text()
    assert "| raw | 0.1 |" in report and "PipelineError: boom" in report and "![ap_vs_loss.png]" in report


# -- real sweeps --------------------------------------------------------------------------------------
def _sweep(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["sweep", *args, "--quiet"])
    return res.exit_code, res.output


@pytest.mark.slow
def test_a_tiny_sweep_writes_csv_report_plots_and_resumes(tiny_log, tmp_path):
    out = tmp_path / "out"
    code, output = _sweep(
        "quick", "--data", str(tiny_log), "--frames", "2", "--workers", "2", "--out", str(out)
    )
    assert code == 0, output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert {(r["method"], r["budget"]) for r in rows} == {
        (m, b) for m in ("late", "where2comm") for b in ("20kbps", "2Mbps")
    }
    for r in rows:
        assert r["frames"] == "2" and 0 <= float(r["ap_bev_0.5"]) <= 1 and r["amota"] != ""
        assert float(r["bytes_per_agent_frame"]) <= float(r["budget_bps"]) / 8 / 10
    assert {p.name for p in out.glob("*.png")} == {"ap_vs_bytes.png", "amota_vs_bytes.png"}
    assert "| late | 20kbps |" in (out / "report.md").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(stamps) == 4

    code, output = _sweep("quick", "--data", str(tiny_log), "--frames", "2", "--out", str(out))
    assert code == 0 and "0 run, 4 already done" in output, output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps


@pytest.mark.slow
def test_a_failed_cell_is_recorded_and_rerun_only_when_asked(tiny_log, tmp_path):
    grid = {"method": "none", "budget": "unlimited", "scene": ["scene_3_0000", "no_such_scene"]}
    path = write_config(tmp_path, tiny_log, frames=2, tracker="none", grid=grid)
    out = tmp_path / "out"
    code, output = _sweep(str(path), "--out", str(out), "--workers", "1")
    assert code == 1 and "1 cell(s) failed" in output, output
    records = {
        r["cell"]["scene"]: r for r in map(json.loads, map(Path.read_text, (out / "cells").glob("*.json")))
    }
    assert records["scene_3_0000"]["status"] == "ok"
    bad = records["no_such_scene"]
    assert bad["status"] == "failed" and "no_such_scene" in bad["error"] and bad["attempts"] == 1
    assert "PipelineError" in bad["traceback"] or "PipelineError" in bad["error"]
    assert "no_such_scene" in (out / "report.md").read_text()

    code, output = _sweep(str(path), "--out", str(out))
    assert code == 1 and "0 run, 1 already done" in output
    code, output = _sweep(str(path), "--out", str(out), "--retry-failed")
    assert code == 1 and "1 run, 1 already done" in output
    again = {
        r["cell"]["scene"]: r for r in map(json.loads, map(Path.read_text, (out / "cells").glob("*.json")))
    }
    assert again["no_such_scene"]["attempts"] == 2 and again["scene_3_0000"]["attempts"] == 1


@pytest.mark.slow
def test_the_ray_executor_runs_cells_on_two_local_workers(tiny_log, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'v2x-coop[ray]')")
    grid = {"method": ["none", "late"], "budget": "unlimited"}
    cfg = load_sweep_config(write_config(tmp_path, tiny_log, frames=2, tracker="none", grid=grid))
    outcome = run_sweep(cfg, tmp_path / "out", executor="ray", workers=2, progress=False)
    assert [r["status"] for r in outcome.records] == ["ok", "ok"] and outcome.ran == 2
    late = outcome.records[1]["result"]
    assert late["frames"] == 2 and late["messages"]["delivered"] > 0
    assert (tmp_path / "out" / "results.csv").is_file()
    again = run_sweep(cfg, tmp_path / "out", executor="ray", workers=2, progress=False)
    assert again.ran == 0 and again.skipped_ok == 2


def test_a_cell_that_restates_a_default_runs_once(tmp_path):
    """latency 0 on the ideal channel and late_policy drop are what the main grid's cells
    already run: one cell each, keeping the main grid's spelling (and id)."""
    grid = {"method": "codefilling", "budget": "1Mbps", "scene": ["a", "b"]}
    also = [
        {"latency_ms": [0, 50], "late_policy": ["drop", "compensate"]},
        {"loss": [0.0, 0.1]},
        {"channel": "opencood", "latency_ms": [100]},  # the opencood preset's own latency
    ]
    cfg = load_sweep_config(write_config(tmp_path, tmp_path, frames=4, grid=grid, also=also))
    cells = expand_cells(cfg)
    main = [c for c in cells if set(c) & {"latency_ms", "loss", "late_policy", "channel"} == {"channel"}]
    assert len(main) == 2 and all(c["channel"] == "ideal" for c in main)
    # per scene: main, 0/compensate, 50/drop, 50/compensate, loss 0.1, opencood
    assert len(cells) == 2 * 6
    assert not any(c.get("latency_ms") == 0 and c.get("late_policy") == "drop" for c in cells)
    assert not any(c.get("loss") == 0.0 for c in cells)
    assert sum(c["channel"] == "opencood" for c in cells) == 2
