"""``v2x data info|check PATH``: what a log holds, and whether every file in it is sound."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click


@click.group("data")
def data() -> None:
    """Inspect and validate OPV2V / V2V4Real / DAIR-V2X-C logs."""


def _summarise(path: Path, max_cav: int, skip_bad: bool, progress: bool) -> dict:
    from tqdm import tqdm

    from v2x.core.boxes import ObjectClass
    from v2x.datasets import open_log

    log = open_log(path, max_cav=max_cav, skip_bad=skip_bad)
    classes: Counter[str] = Counter()
    objects: set[tuple[str, int]] = set()
    anonymous = 0
    points = 0
    scans = 0
    most_agents = 0
    kinds: Counter[str] = Counter()
    frames = 0
    for frame in tqdm(log, total=len(log), desc="reading", disable=not progress, file=sys.stderr):
        frames += 1
        most_agents = max(most_agents, len(frame.agents))
        for scan in frame.agents.values():
            points += len(scan.points)
            scans += 1
            kinds[scan.kind.value] += 1
        for label, tid in zip(frame.gt.labels, frame.gt.track_ids, strict=True):
            if tid >= 0:
                key = (frame.scenario, int(tid))
                if key not in objects:
                    objects.add(key)
                    classes[ObjectClass(int(label)).name.lower()] += 1
            else:
                anonymous += 1
                classes[ObjectClass(int(label)).name.lower()] += 1
    return {
        "path": str(path),
        "format": log.format,
        "scenarios": len(log.scenarios()),
        "frames": frames,
        "agents": most_agents,
        "agent_scans": dict(kinds),
        "boxes": len(objects) + anonymous,
        "boxes_per_class": dict(sorted(classes.items())),
        "points": int(points),
        "points_per_scan": round(points / scans, 1) if scans else 0.0,
        "skipped_frames": len(log.skipped),
        "missing_frames": len(getattr(log, "missing", [])),
        "dropped_agents": int(getattr(log, "dropped_agents", 0)),
        "out_of_range_agents": int(getattr(log, "out_of_range_agents", 0)),
        "dropped_points": int(getattr(log, "dropped_points", 0)),
    }


@data.command("info")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--max-cav", default=5, show_default=True, help="Most agents per frame, ego included.")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) broken frames instead of stopping.")
def info(path: Path, as_json: bool, max_cav: int, skip_bad: bool) -> None:
    """Format, scenarios, frames, agents, ground-truth boxes per class and point counts."""
    from v2x.datasets import DatasetError

    try:
        s = _summarise(path, max_cav, skip_bad, progress=not as_json)
    except DatasetError as exc:
        raise click.ClickException(f"{exc} (use --skip-bad to skip broken frames)") from exc
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{s['path']}  ({s['format']})", show_header=False)
    for k in (
        "scenarios",
        "frames",
        "agents",
        "boxes",
        "points",
        "points_per_scan",
        "skipped_frames",
        "missing_frames",
        "dropped_agents",
        "out_of_range_agents",
        "dropped_points",
    ):
        t.add_row(k.replace("_", " "), f"{s[k]:,}" if isinstance(s[k], int) else str(s[k]))
    t.add_row("agent scans", ", ".join(f"{k}: {v:,}" for k, v in s["agent_scans"].items()))
    t.add_row("boxes per class", ", ".join(f"{k}: {v:,}" for k, v in s["boxes_per_class"].items()) or "-")
    Console().print(t)


@data.command("check")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def check(path: Path, as_json: bool) -> None:
    """Validate every file; exit code 1 and a list of problems when anything is wrong."""
    from tqdm import tqdm

    from v2x.datasets.check import check_log

    def bar(it):
        return tqdm(it, desc="checking", disable=as_json, file=sys.stderr)

    problems = check_log(path, progress=bar)
    if as_json:
        click.echo(
            json.dumps(
                {"path": str(path), "ok": not problems, "problems": [p.to_dict() for p in problems]}, indent=2
            )
        )
    elif problems:
        click.echo(f"{len(problems)} problem(s) in {path}:")
        for p in problems[:200]:
            click.echo(f"  {p}")
        if len(problems) > 200:
            click.echo(f"  ... and {len(problems) - 200} more (use --json for all)")
    else:
        click.echo(f"{path}: OK")
    sys.exit(1 if problems else 0)
