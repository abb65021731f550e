"""Options several commands share, spelled once (no torch import: the command line stays fast)."""

from __future__ import annotations

from collections.abc import Callable

import click

from v2x.perception.settings import BOX_MERGES

#: where collaborators encode the features they share (v2x.perception.settings.SHARE_FRAMES)
share_frame_option = click.option(
    "--share-frame",
    type=click.Choice(("ego", "own", "each")),
    default=None,
    help="Where collaborators encode features: in the ego's frame (OpenCOOD's proj_first) or their "
    "own; each: their own, and the ego reads the fused maps in every agent's frame and merges the "
    "boxes [default: ego; each for DAIR-V2X-C logs, where the roadside unit's cars are found in "
    "its own frame].",
)

#: the detector's inference precision (v2x.perception.settings.PRECISIONS)
precision_option = click.option(
    "--precision",
    type=click.Choice(("fp32", "bf16")),
    default="fp32",
    show_default=True,
    help="Neck and head in fp32, or in bfloat16: 2-4x faster on CPUs with AMX or AVX512-BF16, "
    "slower on others; AP moves by a few tenths.",
)


#: how late fusion merges boxes from several agents
box_merge_option = click.option(
    "--box-merge",
    type=click.Choice(BOX_MERGES),
    default="average",
    show_default=True,
    help="How the ego merges its boxes with received ones: rotated NMS whose kept boxes average "
    "the duplicates they suppress (BEV IoU above 0.4, score-weighted), or plain NMS (OpenCOOD's "
    "late fusion).",
)


#: fitting boxes to the points on each car (DetectorConfig.box_fit_min_points)
box_fit_option = click.option(
    "--box-fit",
    "box_fit",
    type=click.IntRange(min=0),
    default=None,
    help="Fit each box to the points on the car (heading by L-shape fitting, centre onto the faces "
    "seen) where at least this many stand on it; 0 turns it off [default: the weights' own "
    "setting: 10 for the DAIR-V2X-C weights, off for the OPV2V-like ones].",
)


def bootstrap_options(what: str) -> Callable:
    """``--bootstrap N`` (paired resamples; ``what`` says of what) and ``--bootstrap-block B``."""

    def wrap(command: Callable) -> Callable:
        command = click.option(
            "--bootstrap-block",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Resample runs of this many consecutive evaluated frames (neighbouring frames are alike).",
        )(command)
        return click.option(
            "--bootstrap", type=click.IntRange(min=0), default=0, show_default=True, help=what
        )(command)

    return wrap


#: plain links instead of CurveZMQ (docs/security.md): ``v2x launch`` and ``v2x replay``
insecure_option = click.option(
    "--insecure",
    is_flag=True,
    help="Plain links without keys: any local process can send to the nodes (not recommended).",
)


def comma_list(text: str | None, cast: Callable = str) -> list | None:
    """``"a, b,,c"`` as ``[cast(a), cast(b), cast(c)]``; None for an absent option. Raises
    ValueError from ``cast``, for the caller to name the option."""
    if not text:
        return None
    return [cast(v.strip()) for v in text.split(",") if v.strip()]


def warn_insecure() -> None:
    """Say on the terminal that the run's links are open to any local process."""
    click.echo("WARNING: --insecure: plain links, no keys; any local process can send to the nodes", err=True)


#: which frames of a log ``--frames N`` takes (v2x.pipeline.frames.PICKS)
pick_option = click.option(
    "--pick",
    type=click.Choice(("first", "spread", "random")),
    default="first",
    show_default=True,
    help="Which N frames --frames takes: the first N, N evenly spaced over the log, or N at "
    "random (seeded with --seed where the command has one, else 0).",
)


def frames_option(default: int | None = None) -> Callable:
    """``--frames N``, the same on every command: N frames of the log, ``--pick`` says which."""
    return click.option(
        "--frames",
        type=click.IntRange(min=1),
        default=default,
        show_default=default is not None,
        help="Use N frames of the log (which ones: --pick)" + ("." if default else "; default: all."),
    )


#: the message weights code methods decode with (v2x.messages.message_weights)
message_weights_option = click.option(
    "--message-weights",
    default=None,
    help="Message weights (`v2x train messages`: codebook + the ego's decoder) for codebook, "
    "codefilling and hybrid; 'none' decodes codes with the detector's own head [default: the "
    "detector's shipped ones, when they exist and no --codebook is named].",
)
