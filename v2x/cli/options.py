"""Options several commands share, spelled once (no torch import: the command line stays fast)."""

from __future__ import annotations

import click

#: where collaborators encode the features they share (v2x.perception.cooperative.SHARE_FRAMES)
share_frame_option = click.option(
    "--share-frame",
    type=click.Choice(("ego", "own")),
    default="ego",
    show_default=True,
    help="Where collaborators encode features: in the ego's frame (OpenCOOD's proj_first) or their own.",
)

#: the detector's inference precision (v2x.perception.detector.PRECISIONS)
precision_option = click.option(
    "--precision",
    type=click.Choice(("fp32", "bf16")),
    default="fp32",
    show_default=True,
    help="Neck and head in fp32, or in bfloat16: 2-4x faster on CPUs with AMX or AVX512-BF16, "
    "slower on others; AP moves by a few tenths.",
)
