"""Options several commands share, spelled once (no torch import: the command line stays fast)."""

from __future__ import annotations

import click

#: where collaborators encode the features they share (v2x.cooperative.SHARE_FRAMES)
share_frame_option = click.option(
    "--share-frame",
    type=click.Choice(("ego", "own")),
    default="ego",
    show_default=True,
    help="Where collaborators encode features: in the ego's frame (OpenCOOD's proj_first) or their own.",
)
