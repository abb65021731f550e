"""Average detector checkpoints of one configuration into one (a "model soup").

Why: on the real DAIR-V2X-C example the same stage-2 command with another seed moves the held-out
AP by 5 to 10 points. Weights fine-tuned from one starting point with different seeds can be
averaged (Wortsman et al., ICML 2022); this tests whether the average is steadier than any one
seed. Floating-point tensors (weights and batch-norm statistics) are averaged; integer ones (batch
counters) are taken from the first checkpoint.

    .venv/bin/python scripts/average_weights.py --out SOUP.pt W1.pt W2.pt [W3.pt ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch


def average_checkpoints(paths: list[Path]) -> dict:
    """One checkpoint whose floating-point tensors are the mean of the given ones; a ValueError
    naming the file when configurations or tensor names differ."""
    if len(paths) < 2:
        raise ValueError("give at least two checkpoints to average")
    ckpts = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    first = ckpts[0]
    for path, ck in zip(paths[1:], ckpts[1:], strict=True):
        if ck["config"] != first["config"]:
            raise ValueError(
                f"{path}: detector config differs from {paths[0]}'s; only one model's seeds average"
            )
        if ck["state_dict"].keys() != first["state_dict"].keys():
            raise ValueError(f"{path}: tensor names differ from {paths[0]}'s")
    state = {}
    for name, tensor in first["state_dict"].items():
        if tensor.is_floating_point():
            state[name] = torch.stack([ck["state_dict"][name] for ck in ckpts]).mean(0)
        else:
            state[name] = tensor.clone()
    provenance = {
        "averaged": [
            {"path": str(p), "sha256_16": hashlib.sha256(p.read_bytes()).hexdigest()[:16]} for p in paths
        ],
        "sources": [json.loads(ck["provenance"]) if ck.get("provenance") else None for ck in ckpts],
    }
    return {"config": first["config"], "state_dict": state, "provenance": json.dumps(provenance)}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path, nargs="+", help="checkpoints of `v2x train detector`")
    ap.add_argument("--out", type=Path, required=True, help="where the average goes")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(average_checkpoints(args.weights), args.out)
    print(f"wrote {args.out}: the average of {len(args.weights)} checkpoints")
    return args.out


if __name__ == "__main__":
    main()
