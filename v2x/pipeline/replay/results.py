"""A run's output folder (``v2x replay --out DIR``): ``results.json`` and ``detections.jsonl``.

``detections.jsonl`` has one JSON object per fused frame, in order::

    {"k": 0, "scenario": "test/scene_12_0000", "index": 0, "timestamp_ns": ..., "ego_id": "308",
     "world_from_ego_bev": [[4x4]], "boxes": {"xyzlwhy": [[7 floats]...], "scores": [...],
     "labels": [...]}, "tracks": {"xyzlwhy": ..., "track_ids": ..., "labels": ..., "scores": ...}
     or null, "agents": ["358", "449"], "sent_cells": {"grid": {...}, "agents": {"358":
     {"world_from_bev": [[4x4]], "mask": "<base64>"}}}}

``boxes`` are the ego's detections in its BEV frame, ``tracks`` are in the world frame (as
``run_frames`` returns them). ``sent_cells`` (feature methods only) says which BEV cells each
fused collaborator sent: a bit per cell of the grid (row-major, ``numpy.packbits``, base64)
and the sender's pose as received. Floats are written with Python's shortest round-trip repr, so the
numbers read back are the numbers computed. :func:`load_run` reads both files back
(``v2x viz --run DIR`` draws from it).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from v2x.core.boxes import Boxes
from v2x.core.grid import BEVGrid

__all__ = [
    "DETECTIONS",
    "RESULTS",
    "Run",
    "RunFormatError",
    "boxes_from_json",
    "boxes_to_json",
    "detection_record",
    "load_run",
    "sent_cells_from_json",
    "sent_cells_to_json",
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


def sent_cells_to_json(sent: dict[str, tuple[np.ndarray, np.ndarray]], grid: BEVGrid) -> dict | None:
    """Each sender's cells as a packed bit mask over ``grid`` (a fixed 2.9 kB of base64 per agent
    on the default grid, whatever was sent), with the pose that places them."""
    if not sent:
        return None
    agents = {}
    for aid, (pose, cells) in sent.items():
        mask = np.zeros(grid.num_cells, dtype=bool)
        mask[np.asarray(cells, dtype=np.int64)] = True
        agents[str(aid)] = {
            "world_from_bev": np.asarray(pose).tolist(),
            "mask": base64.b64encode(np.packbits(mask).tobytes()).decode("ascii"),
        }
    return {"grid": grid.to_dict(), "agents": agents}


def sent_cells_from_json(d: dict | None) -> dict[str, np.ndarray]:
    """``{agent: (N, 2) world x, y}`` of the centres of the cells each agent sent."""
    if not d:
        return {}
    grid = BEVGrid.from_dict(d["grid"])
    centres = grid.cell_centers().reshape(-1, 2)
    out = {}
    for aid, a in d["agents"].items():
        bits = np.unpackbits(np.frombuffer(base64.b64decode(a["mask"]), dtype=np.uint8))
        if len(bits) < grid.num_cells:
            raise ValueError(f"agent {aid}: a mask of {len(bits)} bits for {grid.num_cells} cells")
        local = centres[bits[: grid.num_cells].astype(bool)]
        pose = np.asarray(a["world_from_bev"], dtype=np.float64)
        out[str(aid)] = local @ pose[:2, :2].T + pose[:2, 3]
    return out


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
                raw = rec.get("sent_cells")
                rec["sent_cells"] = sent_cells_from_json(raw)
                rec["sent_cell_m"] = BEVGrid.from_dict(raw["grid"]).cell if raw else None
                if rec.get("world_from_ego_bev") is not None:
                    rec["world_from_ego_bev"] = np.asarray(rec["world_from_ego_bev"], dtype=np.float64)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                if n == len(det_path.read_text().splitlines()):
                    break  # a run cut short may leave half a last line
                raise RunFormatError(f"{det_path}:{n}: not a detection record: {exc}") from exc
            frames.append(rec)
    return Run(results, frames, root)
