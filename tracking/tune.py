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

__all__ = ["ASSOCIATION_SEARCH", "EVERYWHERE", "SEARCH", "choose", "duplicates_ok", "settings_grid", "tune"]

#: the settings searched, each with the values tried
SEARCH: dict[str, tuple] = {
    "affinity": ("giou", "giou_bev"),
    "threshold": (-0.5, -0.2),
    "noise_scale": (0.5, 1.0, 2.0),
    # squared Mahalanobis distance: none, or chi-square 99.9 % with 7 degrees of freedom
    "mahalanobis_gate": (None, 24.32),
}
#: the association search (issue 21): the Mahalanobis cost with each detection's own covariance
#: (``association``) over the whole box or the centre alone, gated at chi-square 99.9 % (7 dof)
#: or wider (learned variances put agents' systematic offsets far out), alone or among the pairs
#: the stored affinity and threshold allow; noise scale and affinity stay the stored ones
ASSOCIATION_SEARCH: list[dict[str, tuple]] = [
    {"association": ("mahalanobis",), "mahalanobis_gate": (24.32, 100.0, 400.0)},
    {
        "association": ("mahalanobis+affinity",),
        "mahalanobis_dims": ("box", "xy"),
        "mahalanobis_gate": (25.0, 100.0, 400.0),
    },
]
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


def settings_grid(search: dict[str, tuple] | Sequence[dict[str, tuple]]) -> list[dict]:
    """Every setting of a grid (each combination of its values), or of a list of grids in turn
    (a setting met twice is kept once)."""
    grids = [search] if isinstance(search, dict) else list(search)
    out: list[dict] = []
    for grid in grids:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            settings = dict(zip(keys, values, strict=True))
            if settings not in out:
                out.append(settings)
    return out


def tune(
    sequences: Sequence[tuple[str, list[FrameDetections]]],
    base: TrackerConfig,
    noise: NoiseNet | None = None,
    search: dict[str, tuple] | Sequence[dict[str, tuple]] | None = None,
    max_duplicate_rate: float = 0.01,
    progress: bool = True,
) -> tuple[TrackerConfig, list[dict]]:
    """The best setting of ``search`` (default :data:`SEARCH`; a grid or a list of grids, see
    :func:`settings_grid`) applied to ``base``, and every setting tried with its scores
    (``"chosen"`` marks the winner)."""
    trials = []
    for settings in tqdm(settings_grid(search or SEARCH), desc="tune", disable=not progress, leave=False):
        trials.append({"settings": settings, **score_settings(sequences, base.with_(**settings), noise)})
    best = choose(trials, max_duplicate_rate)
    for t in trials:
        t["chosen"] = t is best
        t["duplicates_ok"] = duplicates_ok(t, max_duplicate_rate)
    return base.with_(**best["settings"]), trials


def duplicates_ok(trial: dict, max_duplicate_rate: float = 0.01) -> bool:
    """Whether a setting's duplicate boxes stay within ``max_duplicate_rate`` of the ground truth's."""
    return trial["duplicate_boxes"] <= max_duplicate_rate * max(trial["gt_boxes"], 1)


def choose(trials: Sequence[dict], max_duplicate_rate: float = 0.01) -> dict:
    """The search's rule: the best comparable AMOTA (strict AMOTA breaks ties) among the trials
    within the duplicates rule, or among all of them when none is."""
    pool = [t for t in trials if duplicates_ok(t, max_duplicate_rate)] or list(trials)
    return max(pool, key=lambda t: (round(t["amota"], 6), t["strict_amota"]))
