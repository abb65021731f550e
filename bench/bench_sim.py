"""Simulator: generation speed per worker, points per scan, realism against the real OPV2V scan,
and the occlusion share. Writes bench/results/sim.json and docs/images/sim_vs_opv2v_ranges.png."""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from v2x.sim.generate import GenerateConfig, generate

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "realdata" / "opv2v"


def main(frames: int = 40) -> dict:
    from v2x.datasets import open_log
    from v2x.datasets.pcd import read_pcd

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = generate(
            GenerateConfig(
                out=tmp,
                scenes=1,
                frames=frames,
                cavs=4,
                rsus=1,
                seed=123,
                workers=1,
                split=(1, 0, 0),
                vehicles=(85, 85),
                parked_density=(0.55, 0.55),
            ),
            progress=False,
        )
        seconds = time.perf_counter() - t0
        log = open_log(Path(tmp) / "train")
        sim_ranges = np.concatenate(
            [
                np.linalg.norm(a.points[:, :3], axis=1)
                for a in log[frames // 2].agents.values()
                if a.kind.value == "vehicle"
            ]
        )
        sim_counts = [
            len(a.points)
            for i in range(0, len(log), 10)
            for a in log[i].agents.values()
            if a.kind.value == "vehicle"
        ]
    out = {
        "frames": summary["frames"],
        "agents_per_frame": 5,
        "seconds": round(seconds, 1),
        "frames_per_second_per_worker": round(summary["frames"] / seconds, 2),
        "points_per_vehicle_scan_mean": round(float(np.mean(sim_counts)), 0),
        "occlusion": summary["occlusion"],
    }
    bins = np.array([0, 10, 20, 30, 40, 60, 80, 100, 120])
    out["sim_range_histogram"] = (np.histogram(sim_ranges, bins)[0] / len(sim_ranges)).round(4).tolist()
    if REAL.is_dir():
        real = [read_pcd(p) for p in sorted(REAL.glob("*.pcd"))]
        real_ranges = np.concatenate([np.linalg.norm(r[:, :3], axis=1) for r in real])
        out["real_points_per_scan"] = [len(r) for r in real]
        out["real_range_histogram"] = (
            (np.histogram(real_ranges, bins)[0] / len(real_ranges)).round(4).tolist()
        )
        _plot(bins, out, HERE.parent / "docs" / "images" / "sim_vs_opv2v_ranges.png")
    out["range_bins_m"] = bins.tolist()
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "sim.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


def _plot(bins, out, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = np.arange(len(bins) - 1)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(
        centres - 0.2,
        out["real_range_histogram"],
        0.4,
        label=f"real OPV2V ({np.mean(out['real_points_per_scan']):.0f} pts/scan)",
    )
    ax.bar(
        centres + 0.2,
        out["sim_range_histogram"],
        0.4,
        label=f"simulated ({out['points_per_vehicle_scan_mean']:.0f} pts/scan)",
    )
    ax.set_xticks(centres, [f"{a}-{b}" for a, b in itertools.pairwise(bins)])
    ax.set(xlabel="range (m)", ylabel="share of points", title="64-channel LiDAR: points by range")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
