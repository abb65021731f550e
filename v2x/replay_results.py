"""A run's output folder (``v2x replay --out DIR``): ``results.json`` and ``detections.jsonl``.

``detections.jsonl`` has one JSON object per fused frame, in order::

    {"k": 0, "scenario": "test/scene_12_0000", "index": 0, "timestamp_ns": ..., "ego_id": "308",
     "world_from_ego_bev": [[4x4]], "boxes": {"xyzlwhy": [[7 floats]...], "scores": [...],
     "labels": [...]}, "tracks": {"xyzlwhy": ..., "track_ids": ..., "labels": ..., "scores": ...}
     or null, "agents": ["358", "449"]}

``boxes`` are the ego's detections in its BEV frame, ``tracks`` are in the world frame (as
``run_frames`` returns them). Floats are written with Python's shortest round-trip repr, so the
numbers read back are the numbers computed. :func:`load_run` reads both files back
(``v2x viz --run DIR`` draws from it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from v2x.boxes import Boxes

__all__ = [
    "DETECTIONS",
    "RESULTS",
    "Run",
    "RunFormatError",
    "boxes_from_json",
    "boxes_to_json",
    "detection_record",
    "load_run",
    "write_results",
]

RESULTS = "results.json"
DETECTIONS = "detections.jsonl"


class RunFormatError(ValueError):
    """A folder that is not a run's output (names the file and what is wrong)."""


def boxes_to_json(boxes: Boxes | None) -> dict | None:
    if boxes is None:
        return None
    return {
        "xyzlwhy": boxes.xyzlwhy.tolist(),
        "labels": boxes.labels.astype(int).tolist(),
        "track_ids": boxes.track_ids.astype(int).tolist(),
        "scores": None if boxes.scores is None else [float(s) for s in boxes.scores],
    }


def boxes_from_json(d: dict | None) -> Boxes | None:
    if d is None:
        return None
    return Boxes(
        np.asarray(d["xyzlwhy"], dtype=np.float64).reshape(-1, 7),
        np.asarray(d.get("labels", []), dtype=np.int16),
        np.asarray(d.get("track_ids", []), dtype=np.int64),
        None if d.get("scores") is None else np.asarray(d["scores"], dtype=np.float32),
    )


def detection_record(
    k: int,
    scenario: str,
    index: int,
    boxes: Boxes,
    tracks: Boxes | None,
    world_from_ego_bev: np.ndarray | None = None,
    **extra: Any,
) -> dict:
    """One line of ``detections.jsonl``."""
    return {
        "k": int(k),
        "scenario": scenario,
        "index": int(index),
        **extra,
        "world_from_ego_bev": None if world_from_ego_bev is None else np.asarray(world_from_ego_bev).tolist(),
        "boxes": boxes_to_json(boxes),
        "tracks": boxes_to_json(tracks),
    }


def jsonable(v: Any) -> Any:
    """Plain JSON types: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_results(out_dir: str | Path, results: dict) -> Path:
    """``results.json`` (NaN as null), written whole or not at all."""
    path = Path(out_dir) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(results), indent=1))
    tmp.replace(path)
    return path


def write_detection(fh: IO[str], record: dict) -> None:
    fh.write(json.dumps(jsonable(record)) + "\n")
    fh.flush()


@dataclass
class Run:
    results: dict
    frames: list[dict] = field(default_factory=list)  # records with Boxes for boxes and tracks
    path: Path | None = None

    @property
    def partial(self) -> bool:
        return bool(self.results.get("partial"))


def load_run(run_dir: str | Path) -> Run:
    """The results and the per-frame detections of a run folder."""
    root = Path(run_dir)
    res_path, det_path = root / RESULTS, root / DETECTIONS
    if not res_path.is_file() and not det_path.is_file():
        raise RunFormatError(f"{root}: not a run folder (no {RESULTS} or {DETECTIONS})")
    results: dict = {}
    if res_path.is_file():
        try:
            results = json.loads(res_path.read_text())
        except json.JSONDecodeError as exc:
            raise RunFormatError(f"{res_path}: not JSON: {exc}") from exc
    frames = []
    if det_path.is_file():
        for n, line in enumerate(det_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["boxes"] = boxes_from_json(rec.get("boxes"))
                rec["tracks"] = boxes_from_json(rec.get("tracks"))
                if rec.get("world_from_ego_bev") is not None:
                    rec["world_from_ego_bev"] = np.asarray(rec["world_from_ego_bev"], dtype=np.float64)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                if n == len(det_path.read_text().splitlines()):
                    break  # a run cut short may leave half a last line
                raise RunFormatError(f"{det_path}:{n}: not a detection record: {exc}") from exc
            frames.append(rec)
    return Run(results, frames, root)
