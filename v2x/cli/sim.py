"""``v2x sim generate``: synthetic cooperative LiDAR logs in OPV2V or DAIR-V2X-C format;
``v2x sim realism``: simulated DAIR-V2X-C scans against real ones."""

from __future__ import annotations

import click


def _range(value: str | None):
    """``3`` or ``2-5`` (a range drawn per scene)."""
    if value is None:
        return None
    try:
        if "-" in value.strip().lstrip("-"):
            lo, hi = value.split("-", 1)
            return (int(lo), int(hi))
        return int(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: give a number (3) or a range (2-5)") from exc


@click.group("sim")
def sim() -> None:
    """The synthetic traffic world and its LiDARs."""


@sim.command("generate")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Output root (splits go below it)."
)
@click.option(
    "--format", "fmt", type=click.Choice(["opv2v", "dair"]), default=None, help="Log format [default: opv2v]."
)
@click.option(
    "--preset",
    type=click.Choice(["train", "test", "demo", "track", "dair"]),
    help="A named data set (docs/simulator.md); other options override every part of it.",
)
@click.option("--scenes", type=int, help="Number of scenes.")
@click.option("--frames", type=int, help="Frames per scene.")
@click.option("--frame-step", type=int, help="Simulation steps of 0.1 s between written frames (1 = 10 Hz).")
@click.option("--cavs", help="Connected vehicles per scene, e.g. 3 or 2-5.")
@click.option("--rsus", help="Roadside units per scene, e.g. 1 or 0-2.")
@click.option(
    "--seed", type=int, help="Master seed (with --preset: an offset to its seeds). Same seed, same bytes."
)
@click.option("--workers", type=int, default=1, show_default=True, help="Parallel scene workers (processes).")
@click.option("--channels", type=int, help="LiDAR channels (16/32/64/128) [default: 64].")
@click.option(
    "--sensors",
    type=click.Choice(["opv2v", "dair"]),
    help="LiDARs and mounting: OPV2V's, or DAIR-V2X-C's vehicle and roadside ones [default: opv2v].",
)
@click.option("--ascii-pcd", is_flag=True, help="Write ascii PCD like the real OPV2V (larger, slower).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
def generate(
    out,
    fmt,
    preset,
    scenes,
    frames,
    frame_step,
    cavs,
    rsus,
    seed,
    workers,
    channels,
    sensors,
    ascii_pcd,
    quiet,
    as_json,
) -> None:
    """Generate scenes (train/validate/test splits) with ground truth and per-agent visibility.

    Every parameter is checked before any scene is simulated. The summary (also appended to
    OUT/generation.json) gives frames, speed, points per scan and the occlusion share.
    """
    import json

    from v2x.sim.generate import GenerateConfig, SimError, preset_configs, validate_all
    from v2x.sim.generate import generate as run

    overrides = {
        "format": fmt,
        "scenes": scenes,
        "frames": frames,
        "frame_step": frame_step,
        "cavs": _range(cavs),
        "rsus": _range(rsus),
        "seed": seed,
        "workers": workers,
        "channels": channels,
        "sensors": sensors,
        "pcd_encoding": "ascii" if ascii_pcd else None,
    }
    try:
        if preset:
            configs = preset_configs(preset, out, **overrides)
        else:
            configs = [GenerateConfig(out=out, **{k: v for k, v in overrides.items() if v is not None})]
        validate_all(configs)
        summaries = [run(c, progress=not quiet) for c in configs]
    except SimError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    for s in summaries:
        occ = s["occlusion"]
        splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items() if v)
        click.echo(
            f"{s['out']}: {s['scenes']} scenes, {s['frames']} frames ({splits}) in {s['seconds']} s "
            f"({s['frames_per_second']} frames/s), {s['points_per_scan']:.0f} points per scan; "
            f"{100 * occ['share_seen_only_by_others']:.1f}% of vehicles within 50 m of the ego have no "
            "ego LiDAR point but are seen by another agent"
        )


def _dair_scans(root: str, side: str, limit: int) -> list:
    """Up to ``limit`` scans (evenly spaced) of one side of the DAIR-V2X-C trees below ``root``,
    read straight from the PCDs: realism needs neither labels nor calibration, so the trees
    need not load as logs."""
    from pathlib import Path

    import numpy as np

    from v2x.datasets.pcd import read_pcd

    paths = sorted(Path(root).rglob(f"{side}-side/velodyne/*.pcd"))
    if limit and len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return [read_pcd(p, drop_nonfinite=True) for p in paths]


def _realism_table(side: str, c: dict) -> str:
    """One side's figures as a Markdown table, real beside simulated."""
    r, s = c["real"], c["sim"]

    def q(d: dict, keys: tuple[str, ...], fmt: str) -> str:
        return " / ".join(format(d[k], fmt) for k in keys)

    rows = [
        ("scans compared", str(r["scans"]), str(s["scans"])),
        ("points per scan (mean)", f"{r['points_per_scan']['mean']:,.0f}", f"{s['points_per_scan']['mean']:,.0f}"),
        ("beams from rings (share of points on a ring)", f"{r['beams']} ({r['on_ring_share']:.2f})",
         f"{s['beams']} ({s['on_ring_share']:.2f})"),
        ("elevation 1 / 50 / 99 % (deg)", q(r["elevation_deg"], ("p1", "p50", "p99"), ".1f"),
         q(s["elevation_deg"], ("p1", "p50", "p99"), ".1f")),
        ("ground z in the scan's frame (m)", f"{r['ground_z']:.2f}", f"{s['ground_z']:.2f}"),
        ("range 5 / 25 / 50 / 75 / 95 % (m)", q(r["range_m"], ("p5", "p25", "p50", "p75", "p95"), ".1f"),
         q(s["range_m"], ("p5", "p25", "p50", "p75", "p95"), ".1f")),
        ("intensity 5 / 25 / 50 / 75 / 95 %", q(r["intensity"], ("p5", "p25", "p50", "p75", "p95"), ".3f"),
         q(s["intensity"], ("p5", "p25", "p50", "p75", "p95"), ".3f")),
    ]  # fmt: skip
    lines = [f"### {side}", "", "| measure | real | simulated |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {d} |" for a, b, d in rows]
    lines += [
        "",
        f"points sim/real {c['points_ratio']:.3f}; range histogram overlap {c['range_overlap']:.3f}, "
        f"EMD {c['range_emd_m']:.2f} m; elevation histogram overlap {c['elevation_overlap']:.3f}, "
        f"EMD {c['elevation_emd_deg']:.2f} deg; intensity EMD {c['intensity_emd']:.3f}",
    ]
    return "\n".join(lines)


@sim.command("realism")
@click.option(
    "--real", required=True, type=click.Path(exists=True, file_okay=False), help="Real DAIR-V2X-C tree(s)."
)
@click.option(
    "--sim",
    "sim_root",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Simulated DAIR-V2X-C trees (e.g. the output of --preset dair).",
)
@click.option(
    "--scans", type=int, default=30, show_default=True, help="At most this many scans per side and source."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def realism(real, sim_root, scans, as_json) -> None:
    """Simulated DAIR-V2X-C scans beside real ones, per side (vehicle, infrastructure).

    Points per scan, beams from the ring structure, elevations, height of the ground, ranges
    and intensity, plus the overlap of the range and elevation histograms and earth mover's
    distances (v2x.sim.realism.compare_scans). Reads every ``*-side/velodyne/*.pcd`` below the
    folders, at most --scans of each, evenly spaced.
    """
    import json

    from v2x.sim.realism import compare_scans

    out = {}
    for side in ("vehicle", "infrastructure"):
        found = {}
        for name, root in (("real", real), ("sim", sim_root)):
            found[name] = _dair_scans(root, side, scans)
            if not found[name]:
                raise click.ClickException(f"no {side}-side/velodyne/*.pcd below {root}")
        out[side] = compare_scans(found["real"], found["sim"])
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo("\n\n".join(_realism_table(side, c) for side, c in out.items()))
