"""Bandwidth and channel sweeps: a grid of experiment cells, run in parallel, resumable.

A sweep config names a log, the axes of a grid (methods, budgets, channel presets, latency,
loss, number of agents, scenes, late policy) and settings shared by every cell. Each cell is a
flat dict of :func:`v2x.pipeline.runs.run_cell` keys, run in a worker process (or a Ray task); its
record is stored as ``cells/<hash>.json``, so an interrupted sweep resumes where it stopped and
a finished cell is never rerun. Failed cells are recorded with their error and skipped on the
next run unless asked to retry. Outputs (CSV, ``report.md``, plots) come from
:mod:`v2x.experiments.sweep_report`. The config format is documented in ``docs/sweeps.md``.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from v2x import CONFIGS
from v2x.comm.budget import parse_budget, parse_rate
from v2x.perception.settings import BOX_MERGES, SHARE_FRAMES, resolve_share_frame
from v2x.pipeline.methods import DEFAULT_METHOD

__all__ = [
    "AXES",
    "SETTINGS",
    "SHIPPED",
    "SweepConfig",
    "SweepError",
    "SweepOutcome",
    "cell_id",
    "expand_cells",
    "format_rate",
    "load_sweep_config",
    "log_spaced_budgets",
    "plan",
    "run_sweep",
]

#: grid axes (run_cell keys), in CSV order
AXES = ("method", "budget", "channel", "latency_ms", "jitter_ms", "loss", "agents", "scene", "late_policy")
#: plural spellings accepted in a grid
ALIASES = {
    "methods": "method",
    "budgets": "budget",
    "channels": "channel",
    "latencies_ms": "latency_ms",
    "losses": "loss",
    "scenes": "scene",
}
#: every cell names these explicitly (run_cell's own defaults), so a changed default in the
#: pipeline cannot silently make old results look like new ones
AXIS_DEFAULTS = {"method": DEFAULT_METHOD, "budget": "200kbps", "channel": "ideal"}
#: axes a cell may leave out, with the value the pipeline then uses (RunConfig's defaults)
IMPLIED = {"late_policy": "drop"}
#: which frames ``frames`` takes (v2x.pipeline.frames.PICKS, spelled out: no torch to read a config)
PICKS = ("first", "spread", "random")
#: settings shared by every cell (run_cell keys); paths are checked and made absolute
SETTINGS = (
    "frames",
    "pick",
    "seed",
    "tracker",
    "tracker_weights",
    "weights",
    "codebook",
    "frame_hz",
    "deadline_ms",
    "threshold",
    "share_frame",
    "precision",
    "box_merge",
    "coord_wait_s",
    "max_age_s",
    "threads",
    "perception_cache_mb",
)
PATH_SETTINGS = ("weights", "codebook", "tracker_weights")
TOP_KEYS = ("name", "data", "grid", "also", *SETTINGS)
#: execution details that do not change a cell's result, left out of its hash
NOT_HASHED = ("threads", "perception_cache_mb")
#: part of every cell's hash: raised whenever a change of the code changes what a cell measures
#: (docs/sweeps.md lists the changes), so a resumed sweep does not reuse records made before it
RESULTS_VERSION = 3
UNLIMITED = "unlimited"
#: the configs shipped with the package (``v2x sweep quick`` finds ``quick.yaml`` here)
SHIPPED = CONFIGS / "sweeps"


class SweepError(ValueError):
    """A sweep that cannot be run: names the config file and the key at fault."""


@dataclass
class SweepConfig:
    name: str
    data: str
    source: str
    settings: dict[str, Any] = field(default_factory=dict)
    #: one or more grids, each axis -> values; cells are the union of their products
    grids: list[dict[str, list[Any]]] = field(default_factory=lambda: [{}])


# -- config -----------------------------------------------------------------------------------------
def find_config(path: str | Path) -> Path:
    """A config path, or the name of a shipped sweep (``quick``, ``example``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = SHIPPED / (p.name if p.suffix else f"{p.name}.yaml")
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    known = ", ".join(sorted(x.stem for x in SHIPPED.glob("*.yaml")))
    raise SweepError(f"{path}: no such sweep config (shipped ones: {known})")


def load_sweep_config(
    path: str | Path, overrides: dict[str, Any] | None = None, validate: bool = True
) -> SweepConfig:
    """Read, check and normalise a sweep config; ``overrides`` replace top-level keys (CLI).

    With ``validate`` every cell is checked against the pipeline's own option parsing (one
    import of torch), so a typo fails now rather than hours into the sweep."""
    path = find_config(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"{path}: cannot read sweep config: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep config is a mapping of keys, got {type(raw).__name__}")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    axes_here = dict.fromkeys([*AXES, *ALIASES], "a grid axis: put it under grid:")
    _check_keys(path, raw, TOP_KEYS, "key", elsewhere=axes_here)
    if raw.get("data") in (None, ""):
        raise SweepError(f"{path}: missing key 'data' (the log folder every cell replays)")
    settings = {k: raw[k] for k in SETTINGS if raw.get(k) is not None}
    # named in every cell: results made before collaborators encoded in the ego's frame by
    # default (their cells have no share_frame) are not taken for today's; a DAIR-V2X-C log's
    # default is its own (v2x.perception.settings.SHARE_FRAME_BY_FORMAT)
    data = _resolve_path(path, "data", raw["data"], want_dir=True)
    settings.setdefault("share_frame", resolve_share_frame(None, _log_format(data)))
    # likewise: results made before late fusion averaged duplicate boxes are not taken for today's
    settings.setdefault("box_merge", "average")
    _check_settings(path, settings)
    base = _parse_grid(path, raw.get("grid") or {}, "grid")
    also = raw.get("also") or []
    if not isinstance(also, list):
        raise SweepError(f"{path}: 'also' is a list of grids (each a mapping of axes), got {also!r}")
    grids = [base] + [{**base, **_parse_grid(path, g, f"also[{i}]")} for i, g in enumerate(also)]
    cfg = SweepConfig(
        name=str(raw.get("name") or path.stem),
        data=str(data),
        source=str(path.resolve()),
        settings=settings,
        grids=grids,
    )
    if validate:
        _validate_cells(path, expand_cells(cfg))
    return cfg


def _check_keys(
    path: Path, got: dict, allowed: Iterable[str], what: str, where: str = "", elsewhere: dict | None = None
) -> None:
    """Refuse unknown keys, naming the nearest allowed one; ``elsewhere`` maps keys that belong
    in another part of the config to a hint saying where."""
    allowed, elsewhere = list(allowed), elsewhere or {}
    for key in got:
        if key in allowed:
            continue
        near = difflib.get_close_matches(str(key), [*allowed, *elsewhere], n=1)
        if key in elsewhere:
            hint = f"; {elsewhere[key]}"
        elif near:
            hint = f"; did you mean {near[0]!r}?" + (
                f" ({elsewhere[near[0]]})" if near[0] in elsewhere else ""
            )
        else:
            hint = ""
        raise SweepError(f"{path}: unknown {what} {where}{key!r}{hint} (allowed: {', '.join(allowed)})")


def _log_format(data: Path) -> str | None:
    """The log's format, or None where it is not one ``v2x data`` reads (checked later, per cell)."""
    from v2x.datasets import DatasetError, detect_format

    try:
        return detect_format(data)
    except DatasetError:
        return None


def _resolve_path(path: Path, key: str, value: Any, want_dir: bool = False) -> Path:
    """Relative paths are tried from the working directory, then from the config's folder."""
    p = Path(str(value)).expanduser()
    tries = [p] if p.is_absolute() else [Path.cwd() / p, path.parent / p]
    for t in tries:
        if t.is_dir() if want_dir else t.is_file():
            return t.resolve()
    kind = "folder" if want_dir else "file"
    hint = " (make one: v2x sim generate --preset test --out data/test_preset)" if key == "data" else ""
    raise SweepError(f"{path}: {key}: no {kind} {value!r} (tried {', '.join(map(str, tries))}){hint}")


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    ints = {"frames": 1, "seed": 0, "threads": 1, "perception_cache_mb": 0}
    for key, low in ints.items():
        v = settings.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise SweepError(f"{path}: {key}: expected an integer >= {low}, got {v!r}")
    for key in ("frame_hz", "deadline_ms", "threshold", "coord_wait_s", "max_age_s"):
        v = settings.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0):
            raise SweepError(f"{path}: {key}: expected a number >= 0, got {v!r}")
    if settings.get("share_frame") not in (None, *SHARE_FRAMES):
        raise SweepError(
            f"{path}: share_frame: use {', '.join(SHARE_FRAMES)}, got {settings['share_frame']!r}"
        )
    if settings.get("precision") not in (None, "fp32", "bf16"):
        raise SweepError(f"{path}: precision: use fp32 or bf16, got {settings['precision']!r}")
    if settings.get("box_merge") not in (None, *BOX_MERGES):
        raise SweepError(f"{path}: box_merge: use {' or '.join(BOX_MERGES)}, got {settings['box_merge']!r}")
    if settings.get("pick") not in (None, *PICKS):
        raise SweepError(f"{path}: pick: use {', '.join(PICKS)}, got {settings['pick']!r}")
    if settings.get("pick") == "first":  # the pipeline's own: cells keep the ids they had before `pick`
        del settings["pick"]
    if settings.get("frame_hz") == 0:
        raise SweepError(f"{path}: frame_hz: must be positive")
    for key in PATH_SETTINGS:
        if key in settings:
            settings[key] = str(_resolve_path(path, key, settings[key]))
    if "tracker" in settings:
        settings["tracker"] = str(settings["tracker"])


def _parse_grid(path: Path, grid: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(grid, dict):
        raise SweepError(f"{path}: {where}: a mapping of axis -> values, got {grid!r}")
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        axis = ALIASES.get(key, key)
        settings_here = dict.fromkeys(SETTINGS, "a setting of every cell: put it at the top level")
        _check_keys(path, {key: None}, [*AXES, *ALIASES], "grid axis", f"{where}.", settings_here)
        if axis in out:
            raise SweepError(f"{path}: {where}: axis {axis!r} given twice (as {key!r} and its alias)")
        if axis == "budget" and isinstance(values, dict):
            values = [values]
        items = values if isinstance(values, list) else [values]
        if not items:
            raise SweepError(f"{path}: {where}.{key}: an empty list (leave the axis out instead)")
        try:
            norm = [v for item in items for v in _axis_values(axis, item)]
        except (TypeError, ValueError) as exc:
            raise SweepError(f"{path}: {where}.{key}: {exc}") from exc
        out[axis] = list(dict.fromkeys(norm))  # duplicates once, in order
    return out


def _axis_values(axis: str, v: Any) -> list[Any]:
    """One grid entry, normalised (a log-spaced budget range gives several)."""
    if axis == "budget":
        if isinstance(v, dict):
            return log_spaced_budgets(**_log_spec(v))
        return [_budget(v)]
    if v is None:
        return [None]  # the channel preset's / pipeline's own value
    if axis in ("method", "channel", "scene", "late_policy"):
        if not isinstance(v, str | int) or isinstance(v, bool):
            raise ValueError(f"expected a name, got {v!r}")
        return [str(v)]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"expected a number, got {v!r}")
    if axis == "agents":
        if int(v) != v or v < 1:
            raise ValueError(f"agents counts the ego too: an integer >= 1, got {v!r}")
        return [int(v)]
    if axis == "loss" and not 0 <= v <= 1:
        raise ValueError(f"a loss probability is in [0, 1], got {v!r}")
    if v < 0:
        raise ValueError(f"cannot be negative, got {v!r}")
    return [v]


def _log_spec(v: dict) -> dict[str, Any]:
    extra = set(v) - {"log_from", "to", "points"}
    missing = {"log_from", "to", "points"} - set(v)
    if extra or missing:
        raise ValueError(
            f"a log-spaced range is {{log_from: RATE, to: RATE, points: N}}; "
            f"{'unknown ' + ', '.join(sorted(extra)) if extra else 'missing ' + ', '.join(sorted(missing))}"
        )
    return {"start": v["log_from"], "stop": v["to"], "points": v["points"]}


def _budget(v: Any) -> str:
    """A budget in canonical spelling (so ``0.2Mbps`` and ``200kbps`` are the same cell), read by
    the same parser the CLI and the channel node use."""
    bps = parse_budget(v)
    return UNLIMITED if bps is None else format_rate(bps)


def format_rate(bps: float) -> str:
    """``1e3`` -> ``1kbps``, ``1.778e4`` -> ``17.78kbps``; :func:`parse_rate` reads it back."""
    for unit, scale in (("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.4g}{unit}"
    return f"{bps:.4g}bps"


def log_spaced_budgets(start: str | float, stop: str | float, points: int) -> list[str]:
    """``points`` budgets evenly spaced in log from ``start`` to ``stop`` (both included),
    rounded to three significant digits."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"points: a positive integer, got {points!r}")
    lo, hi = parse_rate(start), parse_rate(stop)
    if lo <= 0 or hi <= 0:
        raise ValueError(f"log-spaced budgets need positive ends, got {start!r}, {stop!r}")
    if points == 1:
        return [format_rate(lo)]
    step = (math.log10(hi) - math.log10(lo)) / (points - 1)
    return [format_rate(float(f"{10 ** (math.log10(lo) + k * step):.3g}")) for k in range(points)]


# -- grid ---------------------------------------------------------------------------------------------
def expand_cells(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of every grid's axes, as run_cell dicts; a cell in two grids once, and
    so is a cell that only restates its channel preset's own latency, jitter or loss or the
    pipeline's default late policy (the first spelling met is kept, so its id, and a resumed
    sweep's record of it, stay the same)."""
    cells: dict[str, dict[str, Any]] = {}
    for grid in cfg.grids:
        axes = {**{k: [v] for k, v in AXIS_DEFAULTS.items()}, **grid}
        keys = [k for k in AXES if k in axes]
        for combo in itertools.product(*(axes[k] for k in keys)):
            cell: dict[str, Any] = {"data": cfg.data}
            cell.update((k, v) for k, v in zip(keys, combo, strict=True) if v is not None)
            cell.update(cfg.settings)
            cells.setdefault(_effective_key(cell), cell)
    return list(cells.values())


def _effective_key(cell: dict[str, Any]) -> str:
    """What decides a cell's result: its hashed keys, less channel axes equal to the preset's
    and axes set to the value the pipeline takes when they are left out."""
    from v2x.sim.channel import preset

    key = {k: v for k, v in cell.items() if k not in NOT_HASHED and not (k in IMPLIED and v == IMPLIED[k])}
    try:
        channel = preset(str(key.get("channel", AXIS_DEFAULTS["channel"])))
    except ValueError:  # an unknown preset: validation names it
        channel = None
    for axis, field_name, scale in (
        ("latency_ms", "latency_s", 1000),
        ("jitter_ms", "jitter_s", 1000),
        ("loss", "loss", 1),
    ):
        if channel is None or key.get(axis) is None:
            continue
        try:
            same = math.isclose(float(key[axis]), getattr(channel, field_name) * scale, abs_tol=1e-9)
        except (TypeError, ValueError):  # not a number: validation names it
            same = False
        if same:
            del key[axis]
    return json.dumps(key, sort_keys=True, default=str)


def cell_id(cell: dict[str, Any]) -> str:
    """A stable hash of what decides a cell's result (not of how it is executed), and of the
    code's :data:`RESULTS_VERSION`."""
    key = {k: v for k, v in cell.items() if k not in NOT_HASHED}
    key["results_version"] = RESULTS_VERSION
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _validate_cells(path: Path, cells: list[dict[str, Any]]) -> None:
    """Each distinct combination of pipeline options through the pipeline's own parser."""
    from v2x.pipeline.config import PipelineError, RunConfig

    seen = set()
    for cell in cells:
        opts = {k: v for k, v in cell.items() if k not in ("data", "scene", *NOT_HASHED)}
        if "agents" in opts:
            opts["max_agents"] = opts.pop("agents")
        key = json.dumps(opts, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            RunConfig.from_options(**opts)
        except (PipelineError, TypeError, ValueError) as exc:
            shown = {k: v for k, v in cell.items() if k in AXES}
            raise SweepError(f"{path}: {exc} (in the cell {shown})") from exc


# -- running ----------------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    records: list[dict]
    ran: int
    skipped_ok: int
    skipped_failed: int
    outputs: list[str]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "failed"]

    @property
    def missing(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "missing"]


def read_record(out: Path, cid: str) -> dict | None:
    try:
        return json.loads((out / "cells" / f"{cid}.json").read_text())
    except (OSError, ValueError):
        return None  # absent, or unreadable: run it again


def plan(
    cells: list[dict], out: Path, retry_failed: bool = False
) -> tuple[list[dict], list[dict], list[dict]]:
    """(to run, finished, failed-and-skipped) for a sweep writing to ``out``."""
    todo, done, skipped = [], [], []
    for cell in cells:
        rec = read_record(out, cell_id(cell))
        if rec is None or (rec.get("status") == "failed" and retry_failed):
            todo.append(cell)
        elif rec.get("status") == "ok":
            done.append(cell)
        else:
            skipped.append(cell)
    return todo, done, skipped


def run_one(cell: dict[str, Any]) -> dict[str, Any]:
    """Run one cell where it lands (pool worker or Ray task); failures become records."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"id": cell_id(cell), "cell": cell, "started": started}
    rec["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    try:
        from v2x.pipeline.runs import run_cell

        rec.update(status="ok", error=None, result=run_cell(cell))
    except Exception as exc:  # one failing cell is recorded; the sweep goes on
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", result=None)
        rec["traceback"] = traceback.format_exc(limit=-12)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def _failed(cell: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    return {
        "id": cell_id(cell),
        "cell": cell,
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "result": None,
    }


def _init_worker(threads: int) -> None:
    # before torch is imported in this process: one core per cell, the pool is the parallelism
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


Runner = Callable[[list[dict], int], Iterator[dict]]


class LostCellsError(RuntimeError):
    """Cells never finished because their worker died; they stay to run next time."""


def run_local(cells: list[dict], workers: int) -> Iterator[dict]:
    """A process pool (spawned, so no torch state is forked); records as cells finish."""
    threads = int(cells[0].get("threads", 1)) if cells else 1
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(cells))),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(threads,),
    )
    lost, finished = 0, False
    try:
        pending = {pool.submit(run_one, c): c for c in cells}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                cell = pending.pop(fut)
                try:
                    rec = fut.result()
                except BrokenProcessPool:
                    lost += 1
                    continue
                except Exception as exc:  # e.g. a result that cannot be pickled
                    rec = _failed(cell, exc)
                yield rec
        finished = True
    finally:
        if not finished:  # interrupted: stop the running cells now rather than finish them unseen
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)
    if lost:
        raise LostCellsError(f"{lost} cell(s) not run: a worker process died (out of memory?)")


def run_ray(cells: list[dict], workers: int, address: str | None = None) -> Iterator[dict]:
    """Ray tasks of one CPU each, at most ``workers`` in flight; a local Ray when no address."""
    try:
        import ray
    except ImportError as exc:
        raise SweepError("the ray executor needs Ray: pip install 'v2x-coop[ray]'") from exc
    started = not ray.is_initialized()
    if started:
        opts: dict[str, Any] = dict(log_to_driver=False, include_dashboard=False)
        if address:
            opts["address"] = address
        else:
            opts["num_cpus"] = workers
        ray.init(**opts)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_one)
        queue, pending = list(cells), {}
        while queue or pending:
            while queue and len(pending) < max(1, workers):
                cell = queue.pop(0)
                pending[task.remote(cell)] = cell
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cell = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # the task's worker died, or Ray lost it
                    rec = _failed(cell, exc)
                yield rec
    finally:
        for ref in pending:  # interrupted: a cluster would otherwise run them for nobody
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def make_runner(executor: str, ray_address: str | None = None) -> Runner:
    if executor == "local":
        return run_local
    if executor == "ray":
        return lambda cells, workers: run_ray(cells, workers, ray_address)
    raise SweepError(f"unknown executor {executor!r}: use local or ray")


def run_sweep(
    cfg: SweepConfig,
    out: str | Path,
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    runner: Runner | None = None,
) -> SweepOutcome:
    """Run (or resume) every cell, then write results.csv, report.md and the plots."""
    from tqdm import tqdm

    from v2x.experiments.sweep_report import write_outputs

    out = Path(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    cells = expand_cells(cfg)
    todo, done, skipped = plan(cells, out, retry_failed)
    meta = {**asdict(cfg), "cells": [cell_id(c) for c in cells], "executor": executor}
    (out / "sweep.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if progress and (done or skipped):
        note = f", {len(skipped)} failed skipped (--retry-failed reruns them)" if skipped else ""
        tqdm.write(f"{len(cells)} cells: {len(done)} done{note}, {len(todo)} to run")
    runner = runner or make_runner(executor, ray_address)
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), desc=cfg.name, unit="cell", disable=not progress or not todo)
    failures, lost = 0, None
    stream = runner(todo, workers) if todo else iter(())
    try:
        for rec in stream:
            prev = read_record(out, rec["id"]) or {}
            rec["attempts"] = int(prev.get("attempts", 0)) + 1
            _write_json(out / "cells" / f"{rec['id']}.json", rec)
            if rec["status"] != "ok":
                failures += 1
                bar.set_postfix(failed=failures)
                tqdm.write(f"cell {rec['id']} failed: {rec['error']}")
            bar.update(1)
    except LostCellsError as exc:
        lost = exc
    finally:
        bar.close()
        getattr(stream, "close", lambda: None)()  # on Ctrl-C: stop the workers now
    records = [read_record(out, cell_id(c)) or _missing(c) for c in cells]
    outputs = write_outputs(records, out, cfg)
    if lost is not None:
        raise SweepError(f"{lost}; finished cells are kept, run the sweep again to resume")
    return SweepOutcome(records, len(todo), len(done), len(skipped), outputs)


def _missing(cell: dict[str, Any]) -> dict[str, Any]:
    return {"id": cell_id(cell), "cell": cell, "status": "missing", "error": None, "result": None}


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: a crash never leaves a half-written record that would count as done."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)
