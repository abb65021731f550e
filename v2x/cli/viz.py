"""``v2x viz``: bird's-eye-view pictures and videos of a log (and of a replay's results)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("viz")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bev.png"),
    show_default=True,
    help="A .png renders one frame; .mp4 renders a whole scenario as a video.",
)
@click.option("--frame", "frame_index", type=int, default=0, show_default=True, help="Frame index (png).")
@click.option("--scenario", help="Scenario to render as a video (default: the first).")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A replay output folder: draw its detections, tracks and sent cells too.",
)
@click.option(
    "--range",
    "half_range",
    type=float,
    nargs=2,
    default=(70.4, 40.0),
    show_default=True,
    help="Half extents in x and y (m) around the ego.",
)
@click.option("--scale", type=float, default=6.0, show_default=True, help="Pixels per metre.")
@click.option("--fps", type=float, default=10.0, show_default=True)
def viz(data, out, frame_index, scenario, run_dir, half_range, scale, fps) -> None:
    """Render agents' points (coloured by agent), ground truth, detections and tracks."""
    import cv2
    from tqdm import tqdm

    from v2x.datasets import open_log
    from v2x.viz import BEVCanvas, render_frame, write_video

    log = open_log(data)
    canvas = BEVCanvas((-half_range[0], half_range[0]), (-half_range[1], half_range[1]), scale)
    overlays = _load_run(run_dir) if run_dir else {}
    if out.suffix.lower() == ".png":
        if not 0 <= frame_index < len(log):
            raise click.ClickException(f"--frame {frame_index} is outside 0..{len(log) - 1}")
        frame = log[frame_index]
        img = render_frame(frame, canvas, **overlays.get((frame.scenario, frame.index), {}))
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), img)
        click.echo(f"wrote {out}")
        return
    scenario = scenario or log.scenarios()[0]
    if scenario not in log.scenarios():
        raise click.ClickException(f"no scenario {scenario!r}; the log has {', '.join(log.scenarios())}")
    images = []
    for i in tqdm(log.scenario_indices(scenario), desc="rendering"):
        frame = log[i]
        images.append(render_frame(frame, canvas, **overlays.get((frame.scenario, frame.index), {})))
    path = write_video(images, out, fps)
    click.echo(f"wrote {path} ({len(images)} frames)")


def _load_run(run_dir: Path) -> dict:
    """Per-frame overlays saved by ``v2x replay`` (``frames.npz`` in the run folder)."""
    from v2x.replay_results import load_overlays

    return load_overlays(run_dir)
