"""The validation search that sets the multi-sensor filter's association and noise scale.

One search, run the same way for the fixed noise (the fitted prior) and for the learned noise,
so neither is compared at settings tuned for the other: every combination of
:data:`SEARCH` is tracked on the validation sequences and scored, and the best comparable AMOTA
wins among the settings that keep duplicate tracks (two tracks on one car, what two agents
seeing one car must not start) under ``max_duplicate_rate`` of the ground-truth boxes; strict
AMOTA breaks ties. Track management (3 hits to show, 2 misses to drop) stays DMSTrack's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tqdm import tqdm

from v2x.tracking.config import TrackerConfig
from v2x.tracking.noise_net import NoiseNet
from v2x.tracking.oracle import duplicate_tracks
from v2x.tracking.records import FrameDetections
from v2x.tracking.sequences import ego_sequence, evaluate_runs, run_tracker

__all__ = ["EVERYWHERE", "SEARCH", "tune"]

#: the settings searched, each with the values tried
SEARCH: dict[str, tuple] = {
    "affinity": ("giou", "giou_bev"),
    "threshold": (-0.5, -0.2),
    "noise_scale": (0.5, 1.0, 2.0),
    # squared Mahalanobis distance: none, or chi-square 99.9 % with 7 degrees of freedom
    "mahalanobis_gate": (None, 24.32),
}
#: score every box, wherever it is (text files carry the evaluation area already)
EVERYWHERE = (-1e9, -1e9, 1e9, 1e9)


def score_settings(
    sequences: Sequence[tuple[str, list[FrameDetections]]],
    cfg: TrackerConfig,
    noise: NoiseNet | None,
    xy_range=EVERYWHERE,
) -> dict:
    """Comparable and strict AMOTA, AMOTP, identity switches and duplicates of one setting."""
    runs = [
        ego_sequence(name, frames, run_tracker("dmstrack", frames, cfg, noise), xy_range)
        for name, frames in sequences
    ]
    res = evaluate_runs(runs)
    dup = duplicate_tracks(runs)
    return {
        "amota": res["amota"],
        "amotp": res["amotp"],
        "ids": res["ids"],
        "strict_amota": res["strict"]["amota"],
        "strict_amotp": res["strict"]["amotp"],
        "strict_fp": res["strict"]["fp"],
        **dup,
    }


def tune(
    sequences: Sequence[tuple[str, list[FrameDetections]]],
    base: TrackerConfig,
    noise: NoiseNet | None = None,
    search: dict[str, tuple] | None = None,
    max_duplicate_rate: float = 0.01,
    progress: bool = True,
) -> tuple[TrackerConfig, list[dict]]:
    """The best setting of ``search`` (default :data:`SEARCH`) applied to ``base``, and every
    setting tried with its scores (``"chosen"`` marks the winner)."""
    search = search or SEARCH
    keys = list(search)
    trials = []
    combos = list(itertools.product(*(search[k] for k in keys)))
    for values in tqdm(combos, desc="tune", disable=not progress, leave=False):
        settings = dict(zip(keys, values, strict=True))
        trials.append({"settings": settings, **score_settings(sequences, base.with_(**settings), noise)})
    ok = [t for t in trials if t["duplicate_boxes"] <= max_duplicate_rate * max(t["gt_boxes"], 1)]
    pool = ok or trials
    best = max(pool, key=lambda t: (round(t["amota"], 6), t["strict_amota"]))
    for t in trials:
        t["chosen"] = t is best
        t["duplicates_ok"] = t in ok
    return base.with_(**best["settings"]), trials
