"""``v2x sim generate``: synthetic cooperative LiDAR logs in OPV2V or DAIR-V2X-C format."""

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
    type=click.Choice(["train", "test", "demo", "track"]),
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
