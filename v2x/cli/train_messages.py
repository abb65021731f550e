"""``v2x train messages``: the codebook, fusion, neck and head trained on the messages the ego receives."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click


@click.command("messages")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Log root holding train/ (and validate/, for validation AP per budget).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: last.pt (resume), history.jsonl, training.png, messages.pt, provenance.json.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The frozen detector (default: shipped); the message weights are paired with it.",
)
@click.option(
    "--codebook",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Codebook to start from (default: the detector's shipped one; fit one with `v2x train codebook`).",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML whose `messages:` section sets MessageTrainConfig keys (v2x.training.messages).",
)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--steps", type=int, help="Override steps.")
@click.option("--seed", type=int, help="Override seed.")
@click.option("--threads", type=int, help="Override threads (torch intra-op threads).")
@click.option(
    "--train",
    "train_parts",
    help="Override which parts train, comma-separated of codewords,fusion.,align.,neck.,head. (ablations).",
)
def train_messages(data, out, weights, codebook, config, resume, steps, seed, threads, train_parts) -> None:
    """Train codebook and decoder end to end on real messages under random budgets (encoder frozen)."""
    import yaml

    from v2x.messages.pairing import resolve_codebook
    from v2x.perception.detector import load_detector, resolve_weights
    from v2x.training.messages import MessageTrainConfig
    from v2x.training.messages import train_messages as run

    raw = yaml.safe_load(config.read_text()) if config else {}
    try:
        tcfg = MessageTrainConfig.from_dict((raw or {}).get("messages", {}))
        overrides = {"steps": steps, "seed": seed, "threads": threads}
        if train_parts:
            overrides["train"] = [p.strip() for p in train_parts.split(",") if p.strip()]
        tcfg = MessageTrainConfig.from_dict(
            {**tcfg.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
        )
    except (TypeError, ValueError) as exc:
        raise click.UsageError(f"{config or 'messages settings'}: {exc}") from exc
    detector_path = resolve_weights(weights)
    init = resolve_codebook(codebook, detector_path)
    given = [("--data", data), ("--out", out), ("--weights", weights), ("--codebook", codebook)]
    given += [("--config", config), ("--steps", steps), ("--seed", seed), ("--threads", threads)]
    given += [("--train", train_parts)]
    command = "v2x train messages " + " ".join(
        f"{k} {shlex.quote(str(v))}" for k, v in given if v is not None
    )
    command += " --resume" if resume else ""
    summary = run(data, out, load_detector(detector_path), init, tcfg, resume=resume, command=command)
    click.echo(json.dumps({"weights": summary["weights"], "identity": summary["identity"]}, indent=2))
