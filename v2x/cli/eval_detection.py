"""``v2x eval detection``: AP of one or more fusion modes on a log, with bytes per link."""

from __future__ import annotations

import json
from pathlib import Path

import click

from v2x.cli.options import (
    bootstrap_options,
    box_fit_option,
    box_merge_option,
    frames_option,
    pick_option,
    precision_option,
    share_frame_option,
)
from v2x.pipeline.methods import FUSION_MODES

_FRAME_WORDS = {
    "ego": "the ego's grid",
    "own": "their own frame (the ego warps)",
    "each": "their own frame (the ego reads the fused maps in every agent's frame)",
}


def _parse_modes(value: str) -> list[str]:
    modes = list(FUSION_MODES) if value == "all" else [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in FUSION_MODES]
    if bad or not modes:
        raise click.BadParameter(f"unknown fusion mode(s) {bad}: use {', '.join(FUSION_MODES)} or all")
    return modes


@click.command("detection")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A log, or a root holding a test/ split (then test/ is evaluated).",
)
@click.option(
    "--split", default="test", show_default=True, help="Split folder to use under --data when present."
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Detector checkpoint (default: the shipped weights).",
)
@click.option(
    "--fusion",
    "fusion",
    default="intermediate",
    show_default=True,
    help="none, late, early, intermediate (collaborators encode in the frame --share-frame "
    "gives), intermediate-own (they encode in their own, the ego warps), a comma-separated "
    "list, or all.",
)
@share_frame_option
@frames_option()
@pick_option
@click.option(
    "--max-cav", type=int, default=5, show_default=True, help="Most agents per frame, ego included."
)
@bootstrap_options("With two or more modes: paired bootstrap over frames, this many resamples (e.g. 1000).")
@precision_option
@box_merge_option
@box_fit_option
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write results here."
)
def eval_detection(
    data,
    split,
    weights,
    fusion,
    frames,
    pick,
    max_cav,
    bootstrap,
    bootstrap_block,
    precision,
    box_merge,
    box_fit,
    share_frame,
    json_out,
) -> None:
    """BEV and 3D AP at IoU 0.3/0.5/0.7 and bytes per agent per frame for each fusion mode."""
    from v2x.experiments.detection_eval import evaluate_fusion_modes
    from v2x.perception.settings import box_fusion_iou
    from v2x.pipeline.frames import FrameSelection

    modes = _parse_modes(fusion)
    root = data / split if (data / split).is_dir() else data
    results = evaluate_fusion_modes(
        root,
        modes,
        weights=weights,
        frames=FrameSelection(frames, pick),
        max_cav=max_cav,
        progress=True,
        bootstrap=bootstrap,
        bootstrap_block=bootstrap_block,
        precision=precision,
        box_fusion_iou=box_fusion_iou(box_merge),
        share_frame=share_frame,
        box_fit=box_fit,
    )
    for mode in modes:
        res = results[mode]
        click.echo(res.pop("_table"))
        if res.get("share_frame"):
            click.echo(f"collaborators encode in {_FRAME_WORDS[res['share_frame']]}")
        click.echo(f"bytes per agent per frame: {res['bytes_per_agent_frame']:.0f}\n")
    if "paired_bootstrap" in results:
        click.echo(_bootstrap_table(results["paired_bootstrap"], bootstrap, bootstrap_block))
    payload = results[modes[0]] if len(modes) == 1 else results
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2))
        click.echo(f"wrote {json_out}")


def _bootstrap_table(pairs: dict[str, dict], resamples: int, block: int = 1) -> str:
    what = "the frames" if block == 1 else f"runs of {block} consecutive frames"
    lines = [
        f"BEV AP difference in points, with its 95 % interval over {resamples} paired resamples of"
        f" {what}, and how often the first mode came out ahead",
        f"{'pair':>31}  " + "  ".join(f"{'AP@' + t:>28}" for t in ("0.3", "0.5", "0.7")),
    ]
    for name, by_thr in pairs.items():
        cells = []
        for t in ("0.3", "0.5", "0.7"):
            d = by_thr[t]
            cells.append(
                f"{100 * d['difference']:+5.1f} [{100 * d['low']:+5.1f}, {100 * d['high']:+5.1f}] {100 * d['share_ahead']:3.0f}%"
            )
        lines.append(f"{name:>31}  " + "  ".join(f"{c:>28}" for c in cells))
    return "\n".join(lines) + "\n"
