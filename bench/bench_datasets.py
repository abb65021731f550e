"""Data layer: PCD read speed per encoding, frame write/read speed through the OPV2V and DAIR-V2X-C
writers and readers, and bytes on disk per scan. Writes bench/results/datasets.json.

Frames are synthetic, simulator-sized (4 CAVs + 1 RSU, 60k points each, 40 boxes), so the
numbers say what a training loop pays per frame; the real OPV2V ascii scan is timed too.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "realdata"


def _frame(index: int, points: int = 60_000, rng: np.random.Generator | None = None):
    from v2x.core.boxes import Boxes
    from v2x.core.frame import AgentKind, AgentScan, Frame
    from v2x.core.geometry import pose_from_xyz_rpy

    rng = rng or np.random.default_rng(index)
    agents = {}
    for k, aid in enumerate(["100", "110", "120", "130", "-1"]):
        rsu = aid.startswith("-")
        pose = pose_from_xyz_rpy(12.0 * k, 4.0 * k, 6.0 if rsu else 1.9, 0.0, 0.2 if rsu else 0.0, 0.3 * k)
        # ranges and intensities shaped like a real scan (quantised, so LZF finds something to do)
        r = rng.uniform(2, 100, points)
        az = rng.uniform(-np.pi, np.pi, points)
        el = np.radians(rng.integers(-25, 3, points).astype(float))
        xyz = np.c_[r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)]
        inten = rng.integers(0, 256, points) / 255.0
        pts = np.c_[xyz, inten].astype(np.float32)
        kind = AgentKind.RSU if rsu else AgentKind.VEHICLE
        agents[aid] = AgentScan(aid, kind, pts, pose, index * 100_000_000, pose[2, 3])
    n = 40
    boxes = np.c_[
        rng.uniform(-60, 60, (n, 2)), np.full(n, 0.8), np.tile([4.5, 1.9, 1.6], (n, 1)), rng.uniform(-3, 3, n)
    ]
    gt = Boxes(boxes, labels=np.zeros(n, int), track_ids=np.arange(1000, 1000 + n))
    return Frame("bench", index, index * 100_000_000, agents, "100", gt)


def _time(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(frames: int = 6) -> dict:
    from v2x.datasets import open_log
    from v2x.datasets.dair import DairWriter
    from v2x.datasets.opv2v import OPV2VWriter
    from v2x.datasets.pcd import read_pcd, write_pcd

    out: dict = {"frame": "4 CAVs + 1 RSU, 60000 points each, 40 boxes", "pcd": {}, "log": {}}
    scan = _frame(0).ego.points
    with tempfile.TemporaryDirectory() as tmp:
        # the disk cache of parsed YAML in this run's own folder: cold reads stay cold
        previous_cache = os.environ.get("V2X_CACHE_DIR")
        os.environ["V2X_CACHE_DIR"] = str(Path(tmp) / "cache")
        for enc in ("ascii", "binary", "binary_compressed"):
            for inten in ("rgb", "uint8"):
                path = Path(tmp) / f"{enc}_{inten}.pcd"
                write_s = _time(lambda p=path, e=enc, i=inten: write_pcd(p, scan, e, i), 3)
                read_s = _time(lambda p=path: read_pcd(p), 5)
                out["pcd"][f"{enc}/{inten}"] = {
                    "write_ms": round(write_s * 1e3, 1),
                    "read_ms": round(read_s * 1e3, 1),
                    "bytes_per_point": round(path.stat().st_size / len(scan), 2),
                }
        real = REAL / "opv2v" / "000070.pcd"
        if real.is_file():
            out["pcd"]["real_opv2v_ascii_56443_points"] = {
                "read_ms": round(_time(lambda: read_pcd(real), 5) * 1e3, 1)
            }

        for name, make_writer in (
            ("opv2v/binary_compressed", lambda root: OPV2VWriter(root, split=None)),
            ("opv2v/ascii", lambda root: OPV2VWriter(root, split=None, pcd_encoding="ascii")),
            ("dair-v2x-c", lambda root: DairWriter(root)),
        ):
            root = Path(tmp) / name.replace("/", "_")
            writer = make_writer(root)
            agents = 2 if name == "dair-v2x-c" else 5
            items = [_frame(i) for i in range(frames)]
            t0 = time.perf_counter()
            for f in items:
                writer.write(f)
            write_s = (time.perf_counter() - t0) / frames
            log = open_log(root)
            passes = []
            for _ in range(2):  # the first pass parses every YAML file, the second finds them cached
                t0 = time.perf_counter()
                for i in range(len(log)):
                    log[i]
                passes.append((time.perf_counter() - t0) / len(log))
            read_s, again_s = passes
            fresh = open_log(root)  # another reader, as another process or run: the disk cache
            t0 = time.perf_counter()
            for i in range(len(fresh)):
                fresh[i]
            disk_s = (time.perf_counter() - t0) / len(fresh)
            size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
            out["log"][name] = {
                "agents_per_frame": agents,
                "write_ms_per_frame": round(write_s * 1e3, 1),
                "read_ms_per_frame": round(read_s * 1e3, 1),
                "frames_per_second_read": round(1 / read_s, 1),
                "read_ms_per_frame_second_epoch": round(again_s * 1e3, 1),
                "read_ms_per_frame_new_reader": round(disk_s * 1e3, 1),
                "megabytes_per_frame": round(size / frames / 1e6, 2),
            }
        if previous_cache is None:
            os.environ.pop("V2X_CACHE_DIR", None)
        else:
            os.environ["V2X_CACHE_DIR"] = previous_cache
    print(json.dumps(out, indent=2))
    write_result("datasets", out)
    return out


if __name__ == "__main__":
    main()
