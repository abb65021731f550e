"""Re-tuning a trained tracker's association on the TRAINING sequences (issue 21).

``python -m v2x.experiments.tracking_association --weights W --detections D --labels L
--seqmap S --val-sequences 0004,... --out DIR`` keeps the noise network and its prior as they
are and searches, once for the fixed and once for the learned noise, over the checkpoint's own
settings and :data:`~v2x.tracking.tune.ASSOCIATION_SEARCH` (the Mahalanobis association with
the detections' own covariance), with :func:`~v2x.tracking.tune.tune`'s rule (best comparable
AMOTA among settings whose duplicate boxes stay under 1 % of the ground-truth boxes). Only the
sequences outside ``--val-sequences`` are tracked; the validation sequences are left for
``v2x eval tracking --weights DIR/noise.pt``. Writes ``DIR/noise.pt`` (the checkpoint with both
chosen settings), ``DIR/noise_mahalanobis.pt`` (the same rule among the Mahalanobis settings
alone, to judge the option itself) and ``DIR/association_tuning.json`` (every setting tried,
with its scores). ``--from-json A.json [B.json]`` writes the checkpoints from searches already
run (e.g. the fixed and the learned mode run as two processes) without tracking again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from v2x.experiments.tracker_training import labelled_agent_sequences
from v2x.experiments.tracking_files import seqmap_lengths
from v2x.tracking.train import load_tracker
from v2x.tracking.tune import ASSOCIATION_SEARCH, choose, tune

__all__ = ["retune_association", "write_checkpoints"]

_KEY = {"fixed": "fixed_tracker", "learned": "tracker"}


def write_checkpoints(weights: Path, tuning: dict[str, list[dict]], out: Path) -> dict[str, dict]:
    """``out/noise.pt`` with each mode's overall winner and ``out/noise_mahalanobis.pt`` with its
    winner among the Mahalanobis settings (modes not in ``tuning`` keep the stored settings);
    returns the winners, ``{"all": {mode: trial}, "mahalanobis": {mode: trial}}``."""
    out.mkdir(parents=True, exist_ok=True)
    winners: dict[str, dict] = {}
    for name, pick in (("all", lambda t: True), ("mahalanobis", lambda t: "association" in t["settings"])):
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
        winners[name] = {}
        for mode, trials in tuning.items():
            pool = [t for t in trials if pick(t)]
            if not pool:
                continue
            best = choose(pool)
            base = load_tracker(weights, fixed=mode == "fixed")[0]
            ckpt[_KEY[mode]] = base.with_(**best["settings"]).to_dict()
            winners[name][mode] = best
        torch.save(ckpt, out / ("noise.pt" if name == "all" else "noise_mahalanobis.pt"))
    return winners


def retune_association(
    weights: Path,
    sequences: list,
    validate: list[str],
    out: Path,
    search: list[dict] | None = None,
    modes: tuple[str, ...] = ("fixed", "learned"),
    progress: bool = True,
) -> dict:
    """Tune ``modes`` of the checkpoint ``weights`` on the sequences not in ``validate``; write
    ``out/noise.pt`` and ``out/association_tuning.json``; returns the summary."""
    search = [{}, *(ASSOCIATION_SEARCH if search is None else search)]  # {}: the stored settings
    train = [(n, f) for n, f in sequences if n not in set(validate)]
    if not train:
        raise ValueError("no training sequence left outside the validation sequences")
    summary: dict = {
        "weights": str(weights),
        "training_sequences": [n for n, _ in train],
        "excluded_validation_sequences": sorted(validate),
        "tuning": {},
    }
    t0 = time.time()
    for mode in modes:
        cfg, net = load_tracker(weights, fixed=mode == "fixed")
        chosen, trials = tune(train, cfg, net, search, progress=progress)
        summary["tuning"][mode] = trials
        summary[_KEY[mode]] = chosen.to_dict()
    summary["seconds"] = round(time.time() - t0, 1)
    out = Path(out)
    write_checkpoints(Path(weights), summary["tuning"], out)
    (out / "association_tuning.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _show(winners: dict) -> None:
    keys = ("settings", "amota", "strict_amota", "amotp", "ids", "duplicate_boxes", "gt_boxes")
    for name, modes in winners.items():
        for mode, best in modes.items():
            print(name, mode, json.dumps({k: best[k] for k in keys}, default=float))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--detections", type=Path)
    ap.add_argument("--labels", type=Path)
    ap.add_argument("--seqmap", type=Path)
    ap.add_argument("--val-sequences", help="comma-separated; never tracked here")
    ap.add_argument("--modes", default="fixed,learned")
    ap.add_argument("--order", default="xzy")
    ap.add_argument("--from-json", type=Path, nargs="+", help="searches already run: write the checkpoints")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.from_json:
        tuning: dict = {}
        for path in a.from_json:
            tuning.update(json.loads(path.read_text())["tuning"])
        _show(write_checkpoints(a.weights, tuning, a.out))
        print(f"wrote {a.out / 'noise.pt'} and {a.out / 'noise_mahalanobis.pt'}")
        return
    if not (a.detections and a.labels and a.val_sequences):
        ap.error("give --detections, --labels and --val-sequences (or --from-json)")
    torch.set_num_threads(1)
    validate = [v.strip() for v in a.val_sequences.split(",") if v.strip()]
    seqs = labelled_agent_sequences(a.detections, a.labels, a.order, seqmap_lengths(a.seqmap))
    seqs = [(n, f) for n, f in seqs if n not in set(validate)]  # the validation sequences go no further
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    s = retune_association(a.weights, seqs, validate, a.out, modes=modes)
    tuning = s["tuning"]
    _show(write_checkpoints(a.weights, tuning, a.out))
    print(f"wrote {a.out / 'noise.pt'} and {a.out / 'noise_mahalanobis.pt'} in {s['seconds']} s")


if __name__ == "__main__":
    main()
