"""``v2x sim generate``: many scenes, in parallel, written through the data-set writers.

Scenes are independent and seeded from (seed, scene number), so the output is the same
whatever the number of workers. Each frame is written atomically by the writers; an
interrupted run leaves whole frames only (and, for DAIR-V2X-C, no index until the end).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from v2x.sim.lidar import LidarConfig
from v2x.sim.town import TownConfig
from v2x.sim.world import SceneConfig, World

__all__ = ["PRESETS", "GenerateConfig", "SimError", "generate", "scene_configs"]

SPLITS = ("train", "validate", "test")


class SimError(ValueError):
    """Parameters that cannot produce a log; raised before any work starts."""


@dataclass
class GenerateConfig:
    out: str
    format: str = "opv2v"
    scenes: int = 10
    frames: int = 50
    frame_step: int = 1
    cavs: int | tuple[int, int] = 3
    rsus: int | tuple[int, int] = 1
    seed: int = 0
    workers: int = 1
    #: share of scenes per split, in order train, validate, test
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    #: fixed split for every scene (presets), instead of the shares above
    only_split: str | None = None
    vehicles: tuple[int, int] = (50, 90)
    pedestrians: tuple[int, int] = (15, 40)
    parked_density: tuple[float, float] = (0.25, 0.5)
    blocks: tuple[int, int] = (3, 4)
    channels: int = 64
    pcd_encoding: str = "binary_compressed"
    extra: dict[str, Any] = field(default_factory=dict)


#: named configurations (``--preset``); the seeds of train/validate and test never overlap
PRESETS: dict[str, list[dict[str, Any]]] = {
    "train": [
        dict(scenes=80, frames=30, frame_step=5, cavs=(2, 5), rsus=(0, 2), seed=1000, only_split="train"),
        dict(scenes=8, frames=30, frame_step=5, cavs=(3, 5), rsus=(0, 2), seed=5000, only_split="validate"),
    ],
    "test": [
        dict(
            scenes=6,
            frames=60,
            frame_step=1,
            cavs=4,
            rsus=1,
            seed=900000,
            only_split="test",
            vehicles=(85, 100),
            parked_density=(0.5, 0.65),
        ),
    ],
    "demo": [
        dict(scenes=1, frames=100, frame_step=1, cavs=3, rsus=1, seed=7, only_split="test", vehicles=(70, 70))
    ],
    # 10 Hz sequences for the tracker's noise model (the detector's train preset is 2 Hz)
    "track": [
        dict(scenes=10, frames=60, frame_step=1, cavs=(3, 4), rsus=(0, 1), seed=20000, only_split="train"),
        dict(scenes=3, frames=60, frame_step=1, cavs=4, rsus=1, seed=30000, only_split="validate"),
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
    """(split, scene config) for every scene, all drawn from ``g.seed``."""
    out = []
    n = g.scenes
    counts = np.floor(np.array(g.split) * n).astype(int)
    counts[0] += n - counts.sum()
    splits = [s for s, c in zip(SPLITS, counts, strict=True) for _ in range(c)]
    for k in range(n):
        rng = np.random.default_rng([g.seed, k])
        split = g.only_split or splits[k]
        bx = _pick(g.blocks, rng)
        town = TownConfig(
            blocks_x=bx,
            blocks_y=_pick(g.blocks, rng),
            lanes_per_direction=int(rng.choice([1, 1, 2])),
            parking=bool(rng.random() < 0.8),
        )
        cfg = SceneConfig(
            name=f"scene_{g.seed}_{k:04d}",
            seed=int(rng.integers(2**31)),
            frames=g.frames,
            frame_step=g.frame_step,
            cavs=_pick(g.cavs, rng),
            rsus=_pick(g.rsus, rng),
            vehicles=_pick(g.vehicles, rng),
            pedestrians=_pick(g.pedestrians, rng),
            parked_density=_pick(g.parked_density, rng),
            town=town,
            lidar=LidarConfig(channels=g.channels),
        )
        out.append((split, cfg))
    return out


def validate(g: GenerateConfig) -> None:
    """Every parameter problem, before any work starts."""
    problems = []
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
    if min(g.vehicles) < 3 * cav_hi:
        problems.append(
            f"{cav_hi} CAVs need at least {3 * cav_hi} vehicles in a scene, got {min(g.vehicles)}"
        )
    if g.workers < 1:
        problems.append(f"--workers must be >= 1, got {g.workers}")
    if g.channels not in (16, 32, 64, 128):
        problems.append(f"--channels must be 16, 32, 64 or 128, got {g.channels}")
    out = Path(g.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        problems.append(f"output folder {out} is not writable: {exc.strerror or exc}")
    if problems:
        raise SimError("; ".join(problems))


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
    stats = {"frames": 0, "points": 0, "scans": 0, "near": 0, "hidden": 0, "helped": 0}
    for sf in world.frames():
        extra = {
            aid: {"vehicles": {tid: {"num_lidar_points": n} for tid, n in hits.items()}}
            for aid, hits in sf.hits.items()
        }
        writer.write(sf.frame, extra)
        _occlusion_stats(sf, stats)
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


def _occlusion_stats(sf, stats: dict) -> None:
    """Vehicles within 50 m of the ego; those with no ego point; of those, seen by another agent."""
    f = sf.frame
    gt = f.gt
    ego = f.ego.position
    vehicle = np.isin(gt.labels, [0, 1, 2, 3]) & (gt.track_ids != int(f.ego_id))
    near = vehicle & (np.hypot(gt.xyzlwhy[:, 0] - ego[0], gt.xyzlwhy[:, 1] - ego[1]) < 50.0)
    ego_hits = sf.hits[f.ego_id]
    others = [h for a, h in sf.hits.items() if a != f.ego_id]
    for tid in gt.track_ids[near]:
        stats["near"] += 1
        if ego_hits.get(int(tid), 0) == 0:
            stats["hidden"] += 1
            if any(h.get(int(tid), 0) > 0 for h in others):
                stats["helped"] += 1


def generate(g: GenerateConfig, progress: bool = True) -> dict:
    """Generate every scene; returns a summary (also written to ``<out>/generation.json``)."""
    validate(g)
    scenes = scene_configs(g)
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
    if name not in PRESETS:
        raise SimError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    configs = []
    for part in PRESETS[name]:
        fields = dict(part)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        configs.append(GenerateConfig(out=out, **fields))
    return configs


class _Tick:
    """Progress sink for the in-process path (the pool path uses a manager queue)."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def put(self, n: int) -> None:
        self.bar.update(n)
