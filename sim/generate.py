"""``v2x sim generate``: many scenes, in parallel, written through the data-set writers.

Scenes are independent and seeded from (seed, scene number), so the output is the same
whatever the number of workers. Each frame is written atomically by the writers; an
interrupted run leaves whole frames only (and, for DAIR-V2X-C, no index until the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from v2x.sim.lidar import LidarConfig
from v2x.sim.realism import occlusion
from v2x.sim.sensors import SENSORS
from v2x.sim.town import TownConfig
from v2x.sim.world import SceneConfig, World, planned_cars

__all__ = [
    "PRESETS",
    "GenerateConfig",
    "SimError",
    "generate",
    "preset_configs",
    "scene_configs",
    "validate",
    "validate_all",
]

SPLITS = ("train", "validate", "test")


class SimError(ValueError):
    """Parameters that cannot produce a log; raised before any work starts."""


@dataclass
class GenerateConfig:
    out: str
    format: str = "opv2v"
    scenes: int = 10
    frames: int = 50
    #: simulation steps of 0.1 s between written frames (1 = 10 Hz)
    frame_step: int = 1
    cavs: int | tuple[int, int] = 3
    rsus: int | tuple[int, int] = 1
    #: at most this many agents (CAVs + RSUs) per scene: RSUs are dropped first. The papers'
    #: readers keep 5 agents (OpenCOOD's ``max_cav``), so more would be generated for nothing.
    max_agents: int | None = None
    seed: int = 0
    workers: int = 1
    #: share of scenes per split, in order train, validate, test
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    #: fixed split for every scene (presets), instead of the shares above
    only_split: str | None = None
    #: moving vehicles per km of road lane (drawn per scene); ``vehicles`` overrides it with a count
    traffic_density: tuple[float, float] = (24.0, 36.0)
    vehicles: int | tuple[int, int] | None = None
    pedestrians: tuple[int, int] = (15, 40)
    parked_density: tuple[float, float] = (0.25, 0.5)
    #: "normal", or "heavy": more vans, trucks and buses (more occlusion)
    vehicle_mix: str = "normal"
    blocks: tuple[int, int] = (3, 4)
    #: shortest block side is drawn from this range; the longest is 25-35 m more
    block_min: tuple[float, float] = (48.0, 60.0)
    #: chance of a town with two lanes per direction
    two_lanes: float = 0.33
    channels: int = 64
    #: the LiDARs and their mounting (``v2x.sim.sensors.SENSORS``): "opv2v" or "dair"
    sensors: str = "opv2v"
    #: fixed ``TownConfig`` values that replace the drawn ones (e.g. DAIR-V2X-C's wide crossings)
    town: dict[str, Any] = field(default_factory=dict)
    pcd_encoding: str = "binary_compressed"
    extra: dict[str, Any] = field(default_factory=dict)


VEHICLE_MIXES = {
    "normal": {"car": 0.70, "van": 0.13, "truck": 0.09, "bus": 0.03, "cyclist": 0.05},
    "heavy": {"car": 0.56, "van": 0.19, "truck": 0.14, "bus": 0.06, "cyclist": 0.05},
}

#: scenes like DAIR-V2X-C's (the ``dair`` preset): its sensors, one vehicle and one roadside
#: unit, open suburban crossings (docs/simulator.md, "DAIR-V2X-C sensors")
DAIR_SCENES: dict[str, Any] = dict(
    format="dair",
    sensors="dair",
    frame_step=1,
    cavs=1,
    rsus=1,
    blocks=(3, 3),
    block_min=(80.0, 95.0),
    traffic_density=(22.0, 30.0),
    town=dict(
        lanes_per_direction=3,
        parking=False,
        setback=(5.0, 25.0),
        built_up=0.5,
        building_height=(6.0, 25.0),
        wall_probability=0.3,
    ),
)

#: named configurations (``--preset``). Seeds of train, validate and test never overlap, and the
#: test towns are drawn from a different distribution (shorter blocks, more two-lane roads,
#: denser and heavier traffic, more parked cars), so the test split is held out in layout too.
PRESETS: dict[str, list[dict[str, Any]]] = {
    # the detector's training set: many short scenes (diversity), 2 Hz within a scene
    "train": [
        dict(
            scenes=200,
            frames=16,
            frame_step=5,
            cavs=(3, 5),
            rsus=(0, 2),
            max_agents=5,
            traffic_density=(28.0, 40.0),
            parked_density=(0.3, 0.6),
            seed=1000,
            only_split="train",
        ),
        dict(
            scenes=16,
            frames=16,
            frame_step=5,
            cavs=(3, 5),
            rsus=(0, 2),
            max_agents=5,
            traffic_density=(28.0, 40.0),
            parked_density=(0.3, 0.6),
            seed=5000,
            only_split="validate",
        ),
        # full-rate (10 Hz) sequences for validating tracking
        dict(scenes=4, frames=40, frame_step=1, cavs=4, rsus=1, seed=6000, only_split="validate"),
    ],
    # held out: occlusion-heavy towns and traffic at 10 Hz; evaluates in a few minutes
    "test": [
        dict(
            scenes=5,
            frames=80,
            frame_step=1,
            cavs=4,
            rsus=1,
            seed=900000,
            only_split="test",
            traffic_density=(34.0, 42.0),
            parked_density=(0.5, 0.7),
            vehicle_mix="heavy",
            block_min=(42.0, 52.0),
            two_lanes=0.5,
            blocks=(3, 3),
        ),
    ],
    # ``make demo``: one scene, cheap
    "demo": [
        dict(
            scenes=1,
            frames=100,
            frame_step=1,
            cavs=3,
            rsus=1,
            seed=12,
            only_split="test",
            traffic_density=(36.0, 36.0),
            parked_density=(0.5, 0.6),
            vehicle_mix="heavy",
            blocks=(3, 3),
        ),
    ],
    # 10 Hz sequences for the tracker's noise model (the detector's train preset is 2 Hz)
    "track": [
        dict(scenes=10, frames=60, frame_step=1, cavs=(3, 4), rsus=(0, 1), seed=20000, only_split="train"),
        dict(scenes=3, frames=60, frame_step=1, cavs=4, rsus=1, seed=30000, only_split="validate"),
    ],
    # DAIR-V2X-C: its vehicle and roadside LiDARs, one vehicle near a crossing and the pole at
    # that crossing, wide three-lane roads with buildings set far back, 10 Hz, DAIR layout
    "dair": [
        dict(scenes=40, frames=20, seed=40000, only_split="train", **DAIR_SCENES),
        dict(scenes=4, frames=20, seed=45000, only_split="validate", **DAIR_SCENES),
        dict(scenes=6, frames=20, seed=47000, only_split="test", **DAIR_SCENES),
    ],
}


def _pick(v, rng: np.random.Generator):
    if isinstance(v, tuple | list):
        lo, hi = v
        return (
            int(rng.integers(lo, hi + 1))
            if isinstance(lo, int) and isinstance(hi, int)
            else float(rng.uniform(lo, hi))
        )
    return v


def scene_configs(g: GenerateConfig) -> list[tuple[str, SceneConfig]]:
    """(split, scene config) for every scene, all drawn from ``g.seed`` (scene k from
    ``(seed, k)``, so a scene does not depend on how many others there are)."""
    out = []
    n = g.scenes
    counts = np.floor(np.array(g.split) * n).astype(int)
    counts[0] += n - counts.sum()
    splits = [s for s, c in zip(SPLITS, counts, strict=True) for _ in range(c)]
    for k in range(n):
        rng = np.random.default_rng([g.seed, k])
        split = g.only_split or splits[k]
        block_min = _pick(g.block_min, rng)
        town = TownConfig(
            blocks_x=_pick(g.blocks, rng),
            blocks_y=_pick(g.blocks, rng),
            block_min=block_min,
            block_max=block_min + float(rng.uniform(25.0, 35.0)),
            lanes_per_direction=2 if rng.random() < g.two_lanes else 1,
            parking=bool(rng.random() < 0.8),
            building_height=(float(rng.uniform(5.0, 9.0)), float(rng.uniform(15.0, 40.0))),
            built_up=float(rng.uniform(0.7, 0.95)),
            wall_probability=float(rng.uniform(0.3, 0.7)),
            tree_spacing=float(rng.uniform(12.0, 25.0)),
        )
        if g.town:
            town = replace(town, **g.town)
        sensors = SENSORS[g.sensors]
        cavs = _pick(g.cavs, rng)
        rsus = _pick(g.rsus, rng)
        if g.max_agents is not None:
            rsus = max(0, min(rsus, g.max_agents - cavs))
        cfg = SceneConfig(
            name=f"scene_{g.seed}_{k:04d}",
            seed=int(rng.integers(2**31)),
            frames=g.frames,
            frame_step=g.frame_step,
            cavs=cavs,
            rsus=rsus,
            vehicles=None if g.vehicles is None else _pick(g.vehicles, rng),
            traffic_density=_pick(g.traffic_density, rng),
            pedestrians=_pick(g.pedestrians, rng),
            parked_density=_pick(g.parked_density, rng),
            vehicle_mix=dict(VEHICLE_MIXES[g.vehicle_mix]),
            town=town,
            lidar=LidarConfig(channels=g.channels) if g.sensors == "opv2v" else sensors.vehicle,
            rsu_lidar=sensors.rsu,
            rsu_height=sensors.rsu_height,
        )
        out.append((split, cfg))
    return out


def _low(v) -> float:
    return min(v) if isinstance(v, tuple | list) else v


def validate(g: GenerateConfig) -> None:
    """Every parameter problem, before any work starts."""
    problems = []
    if g.vehicle_mix not in VEHICLE_MIXES:
        problems.append(f"vehicle_mix must be one of {', '.join(VEHICLE_MIXES)}, not {g.vehicle_mix!r}")
    if g.max_agents is not None and g.max_agents < (
        max(g.cavs) if isinstance(g.cavs, tuple | list) else g.cavs
    ):
        problems.append(f"max_agents {g.max_agents} is smaller than the number of CAVs {g.cavs}")
    if g.format not in ("opv2v", "dair"):
        problems.append(f"--format must be opv2v or dair, not {g.format!r}")
    if g.scenes < 1:
        problems.append(f"--scenes must be >= 1, got {g.scenes}")
    if g.frames < 1:
        problems.append(f"--frames must be >= 1, got {g.frames}")
    cav_hi = max(g.cavs) if isinstance(g.cavs, tuple | list) else g.cavs
    cav_lo = min(g.cavs) if isinstance(g.cavs, tuple | list) else g.cavs
    rsu_lo = min(g.rsus) if isinstance(g.rsus, tuple | list) else g.rsus
    rsu_hi = max(g.rsus) if isinstance(g.rsus, tuple | list) else g.rsus
    if not 1 <= cav_lo <= cav_hi <= 7:
        problems.append(
            f"--cavs must be between 1 and 7 (got {g.cavs}): the spawn logic places at most 7 CAVs"
        )
    if not 0 <= rsu_lo <= rsu_hi <= 4:
        problems.append(f"--rsus must be between 0 and 4, got {g.rsus}")
    if g.format == "dair" and rsu_lo < 1:
        problems.append("--format dair needs --rsus >= 1 (DAIR-V2X-C pairs a vehicle with a roadside unit)")
    if g.vehicles is not None and _low(g.vehicles) < 3 * cav_hi:
        problems.append(
            f"{cav_hi} CAVs need at least {3 * cav_hi} vehicles in a scene, got {_low(g.vehicles)}"
        )
    if _low(g.traffic_density) <= 0 and g.vehicles is None:
        problems.append(f"traffic_density must be > 0, got {g.traffic_density}")
    if g.workers < 1:
        problems.append(f"--workers must be >= 1, got {g.workers}")
    if g.channels not in (16, 32, 64, 128):
        problems.append(f"--channels must be 16, 32, 64 or 128, got {g.channels}")
    if g.sensors not in SENSORS:
        problems.append(f"--sensors must be one of {', '.join(SENSORS)}, not {g.sensors!r}")
    elif g.sensors != "opv2v" and g.channels != 64:
        problems.append(
            f"--channels applies to the opv2v sensors only; the {g.sensors} sensors have their own"
        )
    unknown = sorted(set(g.town) - {f.name for f in fields(TownConfig)})
    if unknown:
        problems.append(f"town settings {', '.join(unknown)} are not TownConfig fields")
    problems += _output_problems(Path(g.out))
    if not problems:  # per scene: its town must hold enough cars to pick the CAVs from
        try:
            scenes = scene_configs(g)
        except ValueError as exc:
            problems.append(str(exc))
            scenes = []
        for _, cfg in scenes:
            if g.format == "dair" and cfg.rsus < 1:
                problems.append(f"scene {cfg.name}: --format dair needs a roadside unit in every scene")
                break
            cars = planned_cars(cfg)
            if cars < cfg.cavs + 2:
                problems.append(
                    f"scene {cfg.name}: {cfg.cavs} CAVs but only about {cars:.0f} moving cars to choose "
                    "from (raise the traffic density or the number of blocks)"
                )
                break
    if problems:
        raise SimError("; ".join(problems))


def _output_problems(out: Path) -> list[str]:
    """Whether ``out`` can be written: created (with its parents) if missing and probed with a
    temporary file. Folders created here are removed again, so a refused run leaves nothing."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
        problems = []
    except OSError as exc:
        problems = [f"output folder {out} is not writable: {exc.strerror or exc}"]
    for p in created:  # deepest first
        with contextlib.suppress(OSError):
            p.rmdir()
    return problems


def _run_scene(args: tuple[str, str, SceneConfig, str, str, Any]) -> dict:
    out, split, cfg, fmt, encoding, progress_q = args
    from v2x.datasets.dair import DairWriter
    from v2x.datasets.opv2v import OPV2VWriter

    t0 = time.time()
    world = World(cfg)
    if fmt == "opv2v":
        writer = OPV2VWriter(out, split=split, pcd_encoding=encoding)
    else:
        writer = DairWriter(Path(out) / split / cfg.name)
    protocol = {
        "scene": asdict(cfg)
        | {"town": asdict(cfg.town), "lidar": asdict(cfg.lidar), "rsu_lidar": asdict(cfg.rsu_lidar)}
    }
    if fmt == "opv2v":
        writer.write_protocol(cfg.name, protocol)
    stats = dict.fromkeys(
        (
            "frames",
            "points",
            "scans",
            "near",
            "hidden",
            "helped",
            "collaborators",
            "collaborators_within_70m",
        ),
        0,
    )
    for sf in world.frames():
        track_ids = [int(t) for t in sf.frame.gt.track_ids]
        extra = {  # every listed object gets its count, 0 included: what each agent saw
            aid: {
                "vehicles": {t: {"num_lidar_points": hits.get(t, 0)} for t in track_ids},
                "ego_speed": sf.speeds.get(aid, 0.0),
            }
            for aid, hits in sf.hits.items()
        }
        writer.write(sf.frame, extra)
        _frame_stats(sf.frame, stats)
        stats["frames"] += 1
        for a in sf.frame.agents.values():
            stats["points"] += len(a.points)
            stats["scans"] += 1
        if progress_q is not None:
            progress_q.put(1)
    writer.close()
    stats["seconds"] = time.time() - t0
    stats["scene"] = cfg.name
    stats["split"] = split
    return stats


def _frame_stats(frame, stats: dict) -> None:
    """Occlusion and how far the collaborators are from the ego (readers drop those beyond 70 m)."""
    occ = occlusion(frame)
    stats["near"] += occ.near
    stats["hidden"] += occ.hidden
    stats["helped"] += occ.seen_by_others
    ego = frame.ego.position[:2]
    for a in frame.collaborators:
        stats["collaborators"] += 1
        stats["collaborators_within_70m"] += int(np.hypot(*(a.position[:2] - ego)) <= 70.0)


def generate(g: GenerateConfig, progress: bool = True) -> dict:
    """Generate every scene; returns a summary (also written to ``<out>/generation.json``)."""
    validate(g)
    scenes = scene_configs(g)
    Path(g.out).mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    total = sum(c.frames for _, c in scenes)
    bar = tqdm(total=total, desc="simulating frames", unit="frame", disable=not progress)
    results = []
    t0 = time.time()
    if g.workers <= 1:
        for split, cfg in scenes:
            results.append(_run_scene((g.out, split, cfg, g.format, g.pcd_encoding, _Tick(bar))))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            q = manager.Queue()
            with ProcessPoolExecutor(max_workers=g.workers, mp_context=ctx, initializer=_worker_init) as pool:
                futures = [
                    pool.submit(_run_scene, (g.out, s, c, g.format, g.pcd_encoding, q)) for s, c in scenes
                ]
                pending = set(futures)
                while pending:
                    while not q.empty():
                        q.get()
                        bar.update(1)
                    done = {f for f in pending if f.done()}
                    for f in done:
                        results.append(f.result())
                    pending -= done
                    time.sleep(0.1)
                while not q.empty():
                    q.get()
                    bar.update(1)
    bar.close()
    frames = sum(r["frames"] for r in results)
    near = sum(r["near"] for r in results)
    summary = {
        "out": g.out,
        "format": g.format,
        "scenes": len(results),
        "frames": frames,
        "splits": {s: sum(r["frames"] for r in results if r["split"] == s) for s in SPLITS},
        "seconds": round(time.time() - t0, 1),
        "frames_per_second": round(frames / max(time.time() - t0, 1e-9), 2),
        "points_per_scan": round(
            sum(r["points"] for r in results) / max(sum(r["scans"] for r in results), 1), 1
        ),
        "occlusion": {
            "vehicles_within_50m_of_ego": near,
            "no_ego_point": sum(r["hidden"] for r in results),
            "no_ego_point_but_seen_by_another_agent": sum(r["helped"] for r in results),
            "share_seen_only_by_others": round(sum(r["helped"] for r in results) / max(near, 1), 4),
        },
        "collaborators_within_70m_of_ego": round(
            sum(r["collaborators_within_70m"] for r in results)
            / max(sum(r["collaborators"] for r in results), 1),
            4,
        ),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(g).items()},
    }
    out = Path(g.out)
    existing = out / "generation.json"
    history = json.loads(existing.read_text()) if existing.is_file() else []
    history = history if isinstance(history, list) else [history]
    history.append(summary)
    tmp = out / ".generation.json.tmp"
    tmp.write_text(json.dumps(history, indent=2))
    os.replace(tmp, existing)
    return summary


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


def preset_configs(name: str, out: str, **overrides) -> list[GenerateConfig]:
    """The parts of a preset (e.g. train and validate), with overrides applied to every part.

    ``seed`` is an offset added to each part's own seed, so the parts keep distinct seeds
    (a preset's train and validate scenes never share one).
    """
    if name not in PRESETS:
        raise SimError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    offset = overrides.pop("seed", 0)
    configs = []
    for part in PRESETS[name]:
        fields = dict(part) | overrides
        fields["seed"] = part["seed"] + offset
        configs.append(GenerateConfig(out=out, **fields))
    return configs


def validate_all(configs: list[GenerateConfig]) -> None:
    """Check every part of a run before any of it starts."""
    for g in configs:
        validate(g)


class _Tick:
    """Progress sink for the in-process path (the pool path uses a manager queue)."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def put(self, n: int) -> None:
        self.bar.update(n)
