"""Runs over a log folder and sweep cells (with per-worker model and perception caches)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from v2x.perception.cache import PerceptionCache, memory_share_mb
from v2x.perception.settings import box_fusion_iou
from v2x.pipeline.clock import run_frames
from v2x.pipeline.config import RunConfig
from v2x.pipeline.frames import FrameSelection, select_frames
from v2x.pipeline.replay.results import jsonable
from v2x.pipeline.stages import Models, for_log_format


def run_log(
    data: str | Path,
    cfg: RunConfig,
    models: Models | None = None,
    progress: bool = False,
    scenes: list[str] | None = None,
) -> dict:
    """:func:`run_frames` over a log folder (any supported format): its frames selected by
    ``cfg.frames`` and ``cfg.pick`` (of ``scenes``, when given)."""
    from v2x.datasets import open_log

    log = open_log(data, max_cav=cfg.max_agents)
    idx = select_frames(log, FrameSelection.of_run(cfg, scenes))
    out = run_frames(log, cfg, models, indices=idx, bar=progress)
    out["data"] = str(data)
    return out


_MODELS: dict[tuple, Models] = {}
#: a sweep worker's agents' perceptions, shared by every cell it runs (see perception_cache),
#: with the size it was asked for
_PERCEPTION_CACHE: tuple[int, PerceptionCache | None] | None = None
#: its default size per worker process (a frame of five agents takes about 23 MB), capped by
#: the worker's share of the memory (``memory_share_mb``)
PERCEPTION_CACHE_MB = 2048


def _cached_models(cfg: RunConfig, cache_mb: int = PERCEPTION_CACHE_MB) -> Models:
    """A sweep worker runs many cells: load each set of weights once per process, and reuse
    each agent's perception of a scan across cells (``cache_mb`` of it; 0: none)."""
    global _PERCEPTION_CACHE
    needs_codebook = cfg.spec.needs_codebook
    key = (
        cfg.weights,
        cfg.precision,
        needs_codebook,
        cfg.codebook if needs_codebook else None,
        cfg.tracker,
        cfg.tracker_weights,
    )
    if key not in _MODELS:
        _MODELS[key] = Models.load(cfg)
    models = _MODELS[key]
    if _PERCEPTION_CACHE is None or _PERCEPTION_CACHE[0] != cache_mb:
        share = memory_share_mb(cache_mb)
        _PERCEPTION_CACHE = (cache_mb, PerceptionCache(share << 20) if share > 0 else None)
    models.perception.cache = _PERCEPTION_CACHE[1]
    # not in the key: the merge is a setting of the cell, the loaded weights serve both
    models.perception.box_fusion_iou = box_fusion_iou(cfg.box_merge)
    return models


def run_cell(cell: dict[str, Any]) -> dict:
    """One sweep cell (a flat dict of settings) run in process; JSON-ready metrics."""
    cell = dict(cell)
    data = cell.pop("data")
    scene = cell.pop("scene", None)
    agents = cell.pop("agents", None)
    threads = cell.pop("threads", 1)
    cache_mb = int(cell.pop("perception_cache_mb", PERCEPTION_CACHE_MB))
    for k in ("name",):
        cell.pop(k, None)
    if agents is not None:
        cell["max_agents"] = int(agents)
    torch.set_num_threads(int(threads))
    from v2x.datasets import detect_format

    cfg = for_log_format(RunConfig.from_options(**cell), detect_format(data))
    t0 = time.perf_counter()
    out = run_log(data, cfg, models=_cached_models(cfg, cache_mb), scenes=[scene] if scene else None)
    out.pop("_detections", None)
    out.pop("links", None)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return jsonable(out)
