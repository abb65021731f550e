"""``v2x train detector``: train the cooperative detector on a simulator (or any supported) log."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import click


@click.command("detector")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Log root holding train/ and validate/ splits (e.g. from `v2x sim generate --preset train`).",
)
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML with `detector:` and `train:` sections (default: the shipped configs/default.yaml).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: checkpoints, history.jsonl, training.png, detector.pt.",
)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--epochs", type=int, help="Override train.epochs.")
@click.option("--seed", type=int, help="Override train.seed.")
@click.option("--threads", type=int, help="Override train.threads (torch intra-op threads).")
@click.option("--max-frames", type=int, help="Override train.max_train_frames (quick runs).")
def train_detector(data, config, out, resume, epochs, seed, threads, max_frames) -> None:
    """Train the detector; every fusion mode is served by the one network it writes."""
    from v2x.training.detector import load_train_config
    from v2x.training.detector import train_detector as run

    cfg, tcfg = load_train_config(config)
    overrides = {"epochs": epochs, "seed": seed, "threads": threads, "max_train_frames": max_frames}
    tcfg = replace(tcfg, **{k: v for k, v in overrides.items() if v is not None})
    command = "v2x " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run(data, out, cfg, tcfg, resume=resume, progress=True, command=command)
    click.echo(json.dumps({"weights": summary["weights"], "identity": summary["identity"]}, indent=2))
