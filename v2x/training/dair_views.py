"""A DAIR-V2X-C folder restricted to some of its runs, for commands that take a log folder.

``v2x eval detection --data`` evaluates every pair of a folder; to score a detector on one run
of the real example (its validation run, or leave-one-run-out), this writes a folder that links
the original's side folders and calibrations and whose ``cooperative/data_info.json`` lists
only the pairs of the chosen runs (runs as :func:`v2x.training.dair_data.dair_runs` cuts them)::

    python -m v2x.training.dair_views ../shared/realdata/dair-v2x-c-example --runs B --out runs/dair/run_B
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from v2x.datasets.dair import DairLog
from v2x.datasets.files import read_json
from v2x.training.dair_data import dair_runs

__all__ = ["write_run_view"]


def write_run_view(root: str | Path, runs: Sequence[str], out: str | Path, gap_s: float = 0.5) -> int:
    """Write ``out`` as a view of ``root`` holding the pairs of ``runs``; returns their count."""
    root, out = Path(root).resolve(), Path(out)
    log = DairLog(root)
    found = {r.name: r for r in dair_runs(log, gap_s, singles=False)}
    unknown = sorted(set(runs) - set(found))
    if unknown:
        raise ValueError(f"{root}: no run named {unknown}; its runs are {sorted(found)}")
    keep = {log.frame_name(i).rsplit("/", 1)[-1] for r in runs for i in found[r].pairs}
    entries = [
        e
        for e in read_json(log.info_path)
        if isinstance(e, dict) and PurePosixPath(str(e.get("vehicle_pointcloud_path", ""))).stem in keep
    ]
    coop = out / "cooperative"
    coop.mkdir(parents=True, exist_ok=True)
    for side in ("vehicle-side", "infrastructure-side"):
        _link(root / side, out / side)
    for child in (root / "cooperative").iterdir():
        if child.name != log.info_path.name:
            _link(child, coop / child.name)
    (coop / log.info_path.name).write_text(json.dumps(entries, indent=1))
    return len(entries)


def _link(target: Path, at: Path) -> None:
    if at.is_symlink() or at.exists():
        if at.is_symlink() and Path(os.readlink(at)) == target:
            return
        raise FileExistsError(f"{at} exists and is not a link to {target}")
    at.symlink_to(target, target_is_directory=target.is_dir())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a DAIR-V2X-C folder (cooperative/data_info.json)")
    p.add_argument("--runs", required=True, help="comma-separated run names (A, B, ... in time order)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--gap-s", type=float, default=0.5, help="a run ends at a larger gap between scans")
    a = p.parse_args(argv)
    n = write_run_view(a.root, [r.strip() for r in a.runs.split(",") if r.strip()], a.out, a.gap_s)
    print(f"{a.out}: {n} pairs")


if __name__ == "__main__":
    main()
