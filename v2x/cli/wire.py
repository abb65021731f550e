"""``v2x wire info`` and ``v2x wire export-codebook``: what a foreign receiver needs to agree on."""

from __future__ import annotations

import json
from pathlib import Path

import click

from v2x.cli.options import message_weights_option
from v2x.pipeline.methods import DEFAULT_METHOD, method_names


@click.group("wire")
def wire() -> None:
    """The wire format of the running configuration (docs/wire-format.md)."""


@wire.command("info")
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Detector whose grid runs (default: shipped).",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A detector YAML whose grid to use instead of the weights' (e.g. v2x/configs/default.yaml).",
)
@click.option(
    "--codebook",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Codebook, .pt or .safetensors (default: shipped).",
)
@message_weights_option
@click.option(
    "--method",
    type=click.Choice(method_names(aliases=True)),
    default=DEFAULT_METHOD,
    show_default=True,
    help="Whose messages to list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (key grid_fingerprint, ...).")
def info(weights, config, codebook, message_weights, method, as_json) -> None:
    """Grid fingerprint, codebook identity and size, and the messages of a configuration."""
    from v2x.pipeline.wire_profile import load_profile

    try:
        profile = load_profile(weights, config, codebook, method, message_weights)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    d = profile.to_dict()
    if as_json:
        click.echo(json.dumps(d, indent=1))
        return
    g, fg, bg = d["grid"], d["feature_grid"], d["block_grid"]
    click.echo(f"grid fingerprint  {d['grid_fingerprint']}   (from {g['source']})")
    click.echo(
        f"grid              x {g['x_min']}..{g['x_max']}, y {g['y_min']}..{g['y_max']}, "
        f"z {g['z_min']}..{g['z_max']}, voxel {g['voxel']}, stride {g['stride']}"
    )
    click.echo(f"feature grid      H x W = {fg['H']} x {fg['W']} ({fg['cells']} cells of {fg['cell_m']} m)")
    click.echo(f"block grid        b = {bg['b']}: {bg['Hb']} x {bg['Wb']} ({bg['blocks']} blocks)")
    cb = d["codebook"]
    if cb is None:
        click.echo("codebook          none")
    else:
        click.echo(
            f"codebook          identity {cb['identity']}, k = {cb['k']} ({cb['bits']} bits), "
            f"r = {cb['r']} x m = {cb['m']} indices per cell, C = {cb['channels']}   ({cb['path']})"
        )
    click.echo(f"messages of {d['method']}:")
    for k in d["messages"]:
        kind = f"v1 type {k['wire_type']}" if k["wire_type"] is not None else k["format"]
        click.echo(f"  {k['name']:<20} {kind:<10} {k['sender']:<13} {k['topic']}")


@wire.command("export-codebook")
@click.option(
    "--codebook",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Codebook checkpoint (.pt; default: shipped).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .safetensors file (default: beside the checkpoint, same name).",
)
def export_codebook(codebook, out) -> None:
    """Write a codebook as the language-neutral .safetensors file the wire document describes."""
    import torch

    from v2x.messages.codebook import load_codebook
    from v2x.pipeline.wire_profile import SHIPPED_CODEBOOK

    src = Path(codebook) if codebook is not None else SHIPPED_CODEBOOK
    out = Path(out) if out is not None else src.with_suffix(".safetensors")
    if out.suffix != ".safetensors":
        raise click.UsageError(f"--out {out}: the file name must end in .safetensors")
    if src.suffix == ".safetensors":
        raise click.UsageError(f"{src} is already a codebook file")
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    provenance = {k: str(ckpt[k]) for k in ("command", "detector") if k in ckpt}
    cb = load_codebook(src)
    cb.save(out, **provenance)
    click.echo(json.dumps({"codebook_file": str(out), "identity": f"{cb.identity():#010x}", "k": cb.cfg.k}))
