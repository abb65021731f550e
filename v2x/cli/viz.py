"""``v2x viz``: bird's-eye-view pictures and videos of a log's frames, or of a run's output
(``v2x viz --run DIR``: the log's points with the run's detections and tracks)."""

from __future__ import annotations

from pathlib import Path

import click

from v2x.core.grid import DEFAULT_XY_RANGE


@click.command("viz")
@click.argument("source", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A `v2x replay --out` folder: draw its detections (red), tracks and the BEV cells each "
    "collaborator sent (squares in its colour) over the log's frames (SOURCE defaults to the log "
    "the run read).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .png renders one frame; .mp4 (or .avi) renders a whole scenario as a video. "
    "[default: bev.png; with --run: RUN/bev.mp4]",
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
    default=(DEFAULT_XY_RANGE[2], DEFAULT_XY_RANGE[3]),
    show_default=True,
    help="Half extents in x and y (m) around the ego.",
)
@click.option("--scale", type=float, default=8.0, show_default=True, help="Pixels per metre.")
@click.option("--fps", type=float, default=10.0, show_default=True, help="Video frame rate.")
@click.option("--max-cav", type=int, default=7, show_default=True, help="Agents per frame to read.")
@click.option(
    "--min-score",
    type=float,
    default=0.0,
    show_default=True,
    help="With --run: draw only detections scoring at least this (the detector keeps boxes from "
    "its score cut, 0.1, for AP; a picture reads better without the weakest).",
)
def viz(
    source, run_dir, out, frame_index, scenario, view, half_range, scale, fps, max_cav, min_score
) -> None:
    """Render a log's frames from above: every agent's points coloured by agent, ground-truth
    boxes (white: hit by some agent's LiDAR, grey: by none) with heading marks, agents, scale.

    SOURCE is a log root, a split folder or a scenario folder (any format `v2x data` reads).
    With --run, the frames of a replay with its detections, tracks and each collaborator's sent
    cells (--frame counts the run's frames).
    """
    import cv2
    import numpy as np
    from tqdm import tqdm

    from v2x.core.geometry import pose_from_xyz_yaw
    from v2x.datasets import DatasetError, open_log
    from v2x.output.bev import render_bev, write_video

    run = None
    if run_dir is not None:
        from v2x.pipeline.replay.results import RunFormatError, load_run

        try:
            run = load_run(run_dir)
        except RunFormatError as exc:
            raise click.ClickException(str(exc)) from exc
        source = source or run.results.get("data")
        max_cav = int((run.results.get("config") or {}).get("max_agents", max_cav))
        out = out or run_dir / "bev.mp4"
    out = out or Path("bev.png")
    if source is None:
        raise click.ClickException("name the log to draw (SOURCE), or a run with --run")
    try:
        log = open_log(source, max_cav=max_cav, comm_range=None if run else 1e9)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    if len(log) == 0:
        raise click.ClickException(f"{source} holds no frames")

    def draw(frame, rec=None):
        pose = frame.ego.world_from_bev
        if view == "world":  # world axes, centred on the ego
            p = pose[:3, 3]
            pose = pose_from_xyz_yaw(p[0], p[1], p[2], 0.0)
        dets = tracks = title = sent = None
        if rec is not None:
            view_from_world = np.linalg.inv(pose)
            sent = {
                aid: xy @ view_from_world[:2, :2].T + view_from_world[:2, 3]
                for aid, xy in (rec.get("sent_cells") or {}).items()
            }
            shown = 0
            if rec["boxes"] is not None:
                boxes = rec["boxes"]
                if min_score > 0 and boxes.scores is not None:
                    boxes = boxes[boxes.scores >= min_score]
                dets = boxes.transformed(view_from_world @ frame.ego.world_from_bev)
                shown = len(boxes)
            if rec["tracks"] is not None:
                tracks = rec["tracks"].transformed(view_from_world)
            count = f"{shown} of {len(rec['boxes'])}, score >= {min_score:g}" if min_score > 0 else str(shown)
            title = f"{frame.scenario}  frame {frame.index}  run frame {rec['k']}  detections {count}"
        return render_bev(
            frame,
            detections=dets,
            tracks=tracks,
            sent_cells=sent,
            cell=(rec or {}).get("sent_cell_m") or 0.8,
            view=pose,
            x_range=(-half_range[0], half_range[0]),
            y_range=(-half_range[1], half_range[1]),
            pixels_per_metre=scale,
            title=title,
        )

    if run is not None:
        _draw_run(run, log, draw, out, frame_index, fps)
        return

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


def _draw_run(run, log, draw, out: Path, frame_index: int, fps: float) -> None:
    """A run's frames: one (png) or all of them (video)."""
    import cv2
    from tqdm import tqdm

    from v2x.output.bev import write_video

    recs = run.frames
    if not recs:
        raise click.ClickException(f"{run.path} has no detections (detections.jsonl is empty)")

    def frame_of(rec):
        i = rec.get("log_index")
        frame = log[int(i if i is not None else rec["k"])]
        if (frame.scenario, int(frame.index)) != (rec["scenario"], int(rec["index"])):
            raise click.ClickException(
                f"run frame {rec['k']} is {rec['scenario']}/{rec['index']} but the log has "
                f"{frame.scenario}/{frame.index} there: is SOURCE the log the run read?"
            )
        return frame

    if out.suffix.lower() == ".png":
        if not 0 <= frame_index < len(recs):
            raise click.ClickException(f"--frame {frame_index} is outside the run's 0..{len(recs) - 1}")
        img = draw(frame_of(recs[frame_index]), recs[frame_index])
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), img):
            raise click.ClickException(f"could not write {out}")
        click.echo(f"wrote {out} ({img.shape[1]}x{img.shape[0]})")
        return
    images = [draw(frame_of(r), r) for r in tqdm(recs, desc="rendering", unit="frame")]
    path = write_video(images, out, fps)
    click.echo(f"wrote {path} ({len(images)} frames of the run, {len(images) / fps:.1f} s)")
