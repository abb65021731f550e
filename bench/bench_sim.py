"""Simulator: generation speed (frames per second per worker, and where the time goes), points
per scan and range histograms against the real OPV2V scans, the occlusion share, overlaps and
heading errors. Writes bench/results/sim.json and docs/images/sim_vs_opv2v_ranges.png.

Run: ``.venv/bin/python -m bench.bench_sim`` (about a minute on one free core).
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from v2x.core.frame import AgentKind
from v2x.sim.generate import VEHICLE_MIXES, GenerateConfig, generate
from v2x.sim.lidar import Scene, cast_scan
from v2x.sim.realism import (
    RANGE_BINS,
    Occlusion,
    heading_errors,
    occlusion,
    overlapping_pairs,
    range_histogram,
)
from v2x.sim.town import TownConfig
from v2x.sim.world import SceneConfig, World

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "realdata" / "opv2v"
PLOT = HERE.parent / "docs" / "images" / "sim_vs_opv2v_ranges.png"


def _scene(frames: int, **kw) -> SceneConfig:
    """The test preset's kind of scene: 4 CAVs and an RSU at 10 Hz in a busy 3x3 town."""
    cfg = dict(
        name="bench",
        seed=123,
        frames=frames,
        cavs=4,
        rsus=1,
        traffic_density=36.0,
        parked_density=0.6,
        vehicle_mix=dict(VEHICLE_MIXES["heavy"]),
        town=TownConfig(blocks_x=3, blocks_y=3),
    )
    return SceneConfig(**(cfg | kw))


def _components(frames: int) -> dict:
    """Seconds spent in each part of making a frame, measured on their own."""
    t0 = time.perf_counter()
    world = World(_scene(frames))
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    world._build_static()
    static = time.perf_counter() - t0
    steps, dyn, casts = [], [], []
    rng = np.random.default_rng(0)
    moving = [a for a in world.traffic.actors if a.moving]
    for _ in range(frames):
        t0 = time.perf_counter()
        world.traffic.step()
        steps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dynamic = Scene()
        world._add_actors(dynamic, moving)
        dyn.append(time.perf_counter() - t0)
        a = world.actor(world.cav_ids[0])
        pose = np.eye(4)
        pose[:2, 3] = a.x, a.y
        pose[2, 3] = world.cfg.lidar.mount_height
        t0 = time.perf_counter()
        cast_scan([world._static, dynamic], pose, world.cfg.lidar, rng, ignore_owner=a.id)
        casts.append(time.perf_counter() - t0)
    tris = sum(len(o) for o in world._static._owners)
    return {
        "scene_setup_s": round(setup, 2),
        "static_scene_build_s": round(static, 3),
        "static_scene_triangles": int(tris),
        "moving_participants": len(moving),
        "traffic_step_ms": round(1000 * float(np.median(steps)), 1),
        "dynamic_scene_build_ms": round(1000 * float(np.median(dyn)), 1),
        "raycast_per_scan_ms": round(1000 * float(np.median(casts)), 1),
    }


def main(frames: int = 40) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from v2x.datasets import open_log
    from v2x.datasets.pcd import read_pcd

    out: dict = {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
    out["components"] = _components(20)
    with tempfile.TemporaryDirectory() as tmp:
        # end to end through the OPV2V writer, one worker: what --workers multiplies
        t0 = time.perf_counter()
        summary = generate(
            GenerateConfig(
                out=tmp,
                scenes=1,
                frames=frames,
                cavs=4,
                rsus=1,
                seed=123,
                split=(1, 0, 0),
                traffic_density=(36.0, 36.0),
                parked_density=(0.6, 0.6),
                vehicle_mix="heavy",
                blocks=(3, 3),
            ),
            progress=False,
        )
        seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        log = open_log(Path(tmp) / "train", max_cav=7, comm_range=1e9)
        frames_read = [log[i] for i in range(len(log))]
    vehicle_scans = [a.points for f in frames_read for a in f.agents.values() if a.kind == AgentKind.VEHICLE]
    rsu_scans = [a.points for f in frames_read for a in f.agents.values() if a.kind == AgentKind.RSU]
    occ = sum((occlusion(f) for f in frames_read), Occlusion())
    heading = heading_errors(frames_read)
    out["generation"] = {
        "frames": summary["frames"],
        "agents_per_frame": 5,
        "seconds": round(seconds, 1),
        "frames_per_second_per_worker": round(summary["frames"] / seconds, 2),
        "scans_per_second_per_worker": round(5 * summary["frames"] / seconds, 1),
        "megabytes_per_frame": round(size / 1e6 / summary["frames"], 2),
    }
    out["points_per_vehicle_scan"] = {
        "mean": round(float(np.mean([len(p) for p in vehicle_scans]))),
        "min": int(min(len(p) for p in vehicle_scans)),
        "max": int(max(len(p) for p in vehicle_scans)),
    }
    out["points_per_rsu_scan_mean"] = round(float(np.mean([len(p) for p in rsu_scans])))
    out["intensity_percentiles_5_50_95"] = (
        np.percentile(np.concatenate([p[:, 3] for p in vehicle_scans]), [5, 50, 95]).round(3).tolist()
    )
    out["occlusion"] = {
        "vehicles_within_50m_of_ego": occ.near,
        "no_ego_point": occ.hidden,
        "no_ego_point_but_seen_by_another_agent": occ.seen_by_others,
        "share_seen_only_by_others": round(occ.share_seen_only_by_others, 4),
    }
    out["overlapping_pairs"] = sum(len(overlapping_pairs(f)) for f in frames_read)
    out["heading_error_deg"] = {
        "moves": len(heading),
        "p99": round(float(np.degrees(np.percentile(heading, 99))), 2),
        "max": round(float(np.degrees(heading.max())), 2),
    }
    out["range_bins_m"] = RANGE_BINS.tolist()
    out["sim_range_histogram"] = (
        np.mean([range_histogram(p) for p in vehicle_scans], axis=0).round(4).tolist()
    )
    if REAL.is_dir():
        real = [read_pcd(p) for p in sorted(REAL.glob("*.pcd"))]
        out["real_points_per_scan"] = [len(r) for r in real]
        out["real_range_histogram"] = np.mean([range_histogram(r) for r in real], axis=0).round(4).tolist()
        out["range_histogram_max_abs_difference"] = round(
            float(np.max(np.abs(np.subtract(out["real_range_histogram"], out["sim_range_histogram"])))), 4
        )
        _plot(out, [len(p) for p in vehicle_scans], PLOT)
    print(json.dumps(out, indent=2))
    write_result("sim", out)
    return out


def _plot(out: dict, sim_counts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = out["range_bins_m"]
    x = np.arange(len(bins) - 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    real_n = np.mean(out["real_points_per_scan"])
    ax.bar(x - 0.2, out["real_range_histogram"], 0.4, label=f"real OPV2V ({real_n:.0f} pts/scan)")
    ax.bar(
        x + 0.2,
        out["sim_range_histogram"],
        0.4,
        label=f"simulated ({out['points_per_vehicle_scan']['mean']:.0f} pts/scan)",
    )
    ax.set_xticks(x, [f"{a:g}-{b:g}" for a, b in itertools.pairwise(bins)], rotation=30)
    ax.set(xlabel="range (m)", ylabel="share of a scan's points", title="64-channel LiDAR: points by range")
    ax.legend()
    ax2.hist(np.array(sim_counts) / 1000, bins=20, color="tab:orange", label="simulated vehicle scans")
    for n in out["real_points_per_scan"]:
        ax2.axvline(n / 1000, color="tab:blue", lw=2)
    ax2.plot([], [], color="tab:blue", lw=2, label="real OPV2V scans")
    ax2.set(xlabel="points per scan (thousands)", ylabel="scans", title="points per scan")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
