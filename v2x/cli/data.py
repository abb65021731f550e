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


def _offsets(log) -> dict | None:
    """Min/mean/max of the roadside-minus-vehicle scan time offsets (DAIR-V2X-C), in ms."""
    offsets = list(getattr(log, "time_offsets_ms", {}).values())
    if not offsets:
        return None
    return {
        "pairs": len(offsets),
        "min": round(min(offsets), 3),
        "mean": round(sum(offsets) / len(offsets), 3),
        "max": round(max(offsets), 3),
    }


def _summarise(path: Path, max_cav: int, skip_bad: bool, progress: bool, max_offset_ms: float | None) -> dict:
    from tqdm import tqdm

    from v2x.core.boxes import ObjectClass
    from v2x.datasets import open_log

    log = open_log(path, max_cav=max_cav, skip_bad=skip_bad, max_time_offset_ms=max_offset_ms)
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
        "skipped": [{"frame": f, "reason": r} for f, r in log.skipped],
        "missing_frames": len(getattr(log, "missing", [])),
        "dropped_agents": int(getattr(log, "dropped_agents", 0)),
        "out_of_range_agents": int(getattr(log, "out_of_range_agents", 0)),
        "dropped_points": int(getattr(log, "dropped_points", 0)),
        "dropped_objects": dict(sorted(getattr(log, "dropped_objects", {}).items())),
        "gt_out_of_range": int(getattr(log, "gt_out_of_range", 0)),
        "ignored_files": len(getattr(log, "ignored", [])),
        "time_offset_ms": _offsets(log),
        "time_offsets_over_limit": len(getattr(log, "offsets_over_limit", [])),
    }


@data.command("info")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--max-cav", default=5, show_default=True, help="Most agents per frame, ego included.")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) broken frames instead of stopping.")
@click.option(
    "--max-offset-ms",
    type=float,
    default=None,
    help="DAIR-V2X-C: report pairs whose roadside scan is further than this from the vehicle's [default: 100].",
)
def info(path: Path, as_json: bool, max_cav: int, skip_bad: bool, max_offset_ms: float | None) -> None:
    """Format, scenarios, frames, agents, ground-truth boxes per class and point counts."""
    from v2x.datasets import DatasetError

    try:
        s = _summarise(path, max_cav, skip_bad, progress=not as_json, max_offset_ms=max_offset_ms)
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
        "gt_out_of_range",
        "ignored_files",
        "time_offsets_over_limit",
    ):
        t.add_row(k.replace("_", " "), f"{s[k]:,}" if isinstance(s[k], int) else str(s[k]))
    t.add_row("agent scans", ", ".join(f"{k}: {v:,}" for k, v in s["agent_scans"].items()))
    t.add_row("boxes per class", ", ".join(f"{k}: {v:,}" for k, v in s["boxes_per_class"].items()) or "-")
    t.add_row("dropped objects", ", ".join(f"{k}: {v:,}" for k, v in s["dropped_objects"].items()) or "-")
    off = s["time_offset_ms"]
    if off:
        t.add_row("time offset ms (min / mean / max)", f"{off['min']} / {off['mean']} / {off['max']}")
    for item in s["skipped"][:5]:
        t.add_row("skipped", f"{item['frame']}: {item['reason']}")
    Console().print(t)


@data.command("check")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@click.option(
    "--max-offset-ms",
    type=float,
    default=None,
    help="DAIR-V2X-C: warn about pairs whose roadside scan is further than this from the vehicle's [default: 100].",
)
def check(path: Path, as_json: bool, max_offset_ms: float | None) -> None:
    """Validate every file; exit code 1 and a list of problems when anything is wrong.

    Warnings (things readers accept but count, e.g. label objects without a 3D box) are listed
    too and do not change the exit code."""
    from tqdm import tqdm

    from v2x.datasets.check import check_log

    def bar(it):
        return tqdm(it, desc="checking", disable=as_json, file=sys.stderr)

    found = check_log(path, progress=bar, max_time_offset_ms=max_offset_ms)
    problems = [p for p in found if p.level != "warning"]
    warnings = [p for p in found if p.level == "warning"]
    if as_json:
        report = {"path": str(path), "ok": not problems, "problems": [p.to_dict() for p in problems]}
        report["warnings"] = [p.to_dict() for p in warnings]
        click.echo(json.dumps(report, indent=2))
        sys.exit(1 if problems else 0)
    for items, what in ((problems, "problem(s)"), (warnings, "warning(s)")):
        if items:
            click.echo(f"{len(items)} {what} in {path}:")
        for p in items[:200]:
            click.echo(f"  {p}")
        if len(items) > 200:
            click.echo(f"  ... and {len(items) - 200} more (use --json for all)")
    if not problems:
        click.echo(f"{path}: OK" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    sys.exit(1 if problems else 0)
