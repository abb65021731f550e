"""``v2x viz``: bird's-eye-view pictures and videos of a log's frames."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("viz")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bev.png"),
    show_default=True,
    help="A .png renders one frame; .mp4 (or .avi) renders a whole scenario as a video.",
)
@click.option(
    "--frame", "frame_index", type=int, default=0, show_default=True, help="Frame index in the log (png)."
)
@click.option("--scenario", help="Scenario to render as a video (default: the first).")
@click.option(
    "--view",
    type=click.Choice(["ego", "world"]),
    default="ego",
    show_default=True,
    help="Draw in the ego's BEV frame or in the world frame (centred on the ego).",
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
@click.option("--scale", type=float, default=8.0, show_default=True, help="Pixels per metre.")
@click.option("--fps", type=float, default=10.0, show_default=True, help="Video frame rate.")
@click.option("--max-cav", type=int, default=7, show_default=True, help="Agents per frame to read.")
def viz(source, out, frame_index, scenario, view, half_range, scale, fps, max_cav) -> None:
    """Render a log's frames from above: every agent's points coloured by agent, ground-truth
    boxes (white: hit by some agent's LiDAR, grey: by none) with heading marks, agents, scale.

    SOURCE is a log root, a split folder or a scenario folder (any format `v2x data` reads).
    """
    import cv2
    import numpy as np
    from tqdm import tqdm

    from v2x.datasets import DatasetError, open_log
    from v2x.geometry import pose_from_xyz_yaw
    from v2x.viz import render_bev, write_video

    try:
        log = open_log(source, max_cav=max_cav, comm_range=1e9)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    if len(log) == 0:
        raise click.ClickException(f"{source} holds no frames")

    def draw(frame):
        pose = frame.ego.world_from_bev
        if view == "world":  # world axes, centred on the ego
            p = pose[:3, 3]
            pose = pose_from_xyz_yaw(p[0], p[1], p[2], 0.0)
        return render_bev(
            frame,
            view=pose,
            x_range=(-half_range[0], half_range[0]),
            y_range=(-half_range[1], half_range[1]),
            pixels_per_metre=scale,
        )

    if out.suffix.lower() == ".png":
        if not 0 <= frame_index < len(log):
            raise click.ClickException(f"--frame {frame_index} is outside 0..{len(log) - 1}")
        img = draw(log[frame_index])
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), img):
            raise click.ClickException(f"could not write {out}")
        click.echo(f"wrote {out} ({img.shape[1]}x{img.shape[0]})")
        return
    scenarios = log.scenarios()
    scenario = scenario or scenarios[0]
    if scenario not in scenarios:
        raise click.ClickException(f"no scenario {scenario!r}; the log has {', '.join(scenarios)}")
    images = [draw(log[i]) for i in tqdm(log.scenario_indices(scenario), desc="rendering", unit="frame")]
    path = write_video(images, out, fps)
    click.echo(f"wrote {path} ({len(images)} frames, {np.round(len(images) / fps, 1)} s)")
