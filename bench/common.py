"""What every benchmark does with its result: one JSON file in ``bench/results/``."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, result: dict, note: str = "") -> Path:
    """Write ``bench/results/<name>.json`` and say so (with ``note`` after the path)."""
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"   wrote {out}{note}", flush=True)
    return out
