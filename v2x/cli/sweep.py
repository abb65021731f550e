"""``v2x sweep``: run a grid of pipeline cells from a YAML config, resumably (docs/sweeps.md)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("sweep")
@click.argument("config")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder (resumed)."
)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option(
    "--ray-address", help="Ray cluster to join (e.g. auto, ray://host:10001); default: a local Ray."
)
@click.option("--workers", type=click.IntRange(min=1), help="Cells at once [default: CPU count].")
@click.option("--retry-failed", is_flag=True, help="Run cells recorded as failed again.")
@click.option(
    "--data", type=click.Path(exists=True, file_okay=False), help="Override the config's log folder."
)
@click.option("--frames", type=click.IntRange(min=1), help="Override the config's frames per cell.")
@click.option("--dry-run", is_flag=True, help="List the cells and what is done; run nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sweep(config, out, executor, ray_address, workers, retry_failed, data, frames, dry_run, quiet) -> None:
    """Run the sweep CONFIG (a YAML file, or a shipped one: quick, example) into --out.

    Every cell's result is kept as OUT/cells/<hash>.json: run the same command again to resume;
    finished cells are not rerun. Writes OUT/results.csv, OUT/report.md and plots.
    """
    from v2x.experiments.sweep import SweepError, expand_cells, load_sweep_config, run_sweep

    try:
        cfg = load_sweep_config(config, overrides={"data": data, "frames": frames})
        if dry_run:
            _print_plan(expand_cells(cfg), out, retry_failed)
            return
        result = run_sweep(
            cfg,
            out,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            retry_failed=retry_failed,
            progress=not quiet,
        )
    except SweepError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{len(result.records)} cells: {result.ran} run, {result.skipped_ok} already done; "
        f"results in {out / 'results.csv'}, {out / 'report.md'}"
    )
    if result.failed:
        raise click.ClickException(
            f"{len(result.failed)} cell(s) failed (listed in {out / 'report.md'}); "
            "fix the cause and rerun with --retry-failed"
        )


def _print_plan(cells: list[dict], out: Path, retry_failed: bool) -> None:
    from v2x.experiments.sweep import cell_id, plan

    todo, done, skipped = plan(cells, out, retry_failed)
    state = {cell_id(c): "run" for c in todo}
    state.update({cell_id(c): "done" for c in done})
    state.update({cell_id(c): "failed (skipped)" for c in skipped})
    for c in cells:
        shown = ", ".join(f"{k}={v}" for k, v in c.items() if k != "data")
        click.echo(f"{cell_id(c)}  {state[cell_id(c)]:<16} {shown}")
    click.echo(f"{len(cells)} cells: {len(todo)} to run, {len(done)} done, {len(skipped)} failed and skipped")
