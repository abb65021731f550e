"""The tracker comparison on detection records: the configurations of the results table.

* ``ab3dmot-ego``: the filterpy baseline on the ego's own detections (nothing sent);
* ``ab3dmot/late``: the baseline on every agent's boxes as one stream (collaborators send boxes);
* ``dmstrack/ab3dmot-noise``: the multi-sensor filter with AB3DMOT's noise (R = I);
* ``dmstrack/fixed``: the multi-sensor filter with the noise prior fitted on the training split;
* ``dmstrack/learned``: the same with the learned per-detection noise (boxes and variances sent);
* ``dmstrack/learned+gate``: the same with a Mahalanobis gate (99 %, 7 degrees of freedom);
* ``oracle/ground-truth-ids``: the detections with ground-truth identities, the most these
  detections allow (:func:`~v2x.tracking.oracle.oracle_tracks`);
* ``perfect/ground-truth``: the ground truth itself as tracks, each with a score of its own
  (the protocol's ceiling).

``dmstrack/fixed`` uses ``fixed`` (the fitted prior with the settings tuned for fixed noise)
when given, else ``prior``; every row also counts duplicate tracks
(:func:`~v2x.tracking.oracle.duplicate_tracks`).

Every figure comes in both evaluation modes (see :mod:`v2x.tracking.metrics`). Bytes per frame
are what collaborators put on the wire for the tracker, given by ``message_bytes(n, variances)``
(the CLI passes the wire format's exact size).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from v2x.core.boxes import Boxes
from v2x.tracking.config import TrackerConfig
from v2x.tracking.noise_net import NoiseNet
from v2x.tracking.oracle import duplicate_tracks, oracle_tracks
from v2x.tracking.records import FrameDetections
from v2x.tracking.sequences import EGO_RANGE, ego_sequence, evaluate_runs, run_tracker

__all__ = ["CONFIGURATIONS", "ORACLE", "PERFECT", "compare", "markdown_table"]

ORACLE = "oracle/ground-truth-ids"
PERFECT = "perfect/ground-truth"

CONFIGURATIONS = (
    "ab3dmot-ego",
    "ab3dmot/late",
    "dmstrack/ab3dmot-noise",
    "dmstrack/fixed",
    "dmstrack/learned",
    "dmstrack/learned+gate",
)
GATE_99 = 18.48


def _setup(config: str, prior: TrackerConfig | None, noise: NoiseNet | None):
    if config == "ab3dmot-ego":
        return "ab3dmot-ego", TrackerConfig(), None
    if config == "ab3dmot/late":
        return "ab3dmot", TrackerConfig(), None
    if config == "dmstrack/ab3dmot-noise":
        return "dmstrack", TrackerConfig(), None
    if config == "dmstrack/fixed":
        return "dmstrack", prior, None
    if config == "dmstrack/learned":
        return "dmstrack", prior, noise
    if config == "dmstrack/learned+gate":
        return "dmstrack", prior.with_(mahalanobis_gate=GATE_99), noise
    raise ValueError(f"unknown configuration {config!r}")


def _ground_truth(frames: list[FrameDetections], scores: dict, sequence: str) -> dict[int, Boxes]:
    """The ground truth as tracks, each track with a score of its own (tied scores would
    collapse the recall levels AMOTA averages over); ``scores`` runs on across sequences."""
    out = {}
    for f in frames:
        gt = f.gt if f.gt is not None else Boxes.empty()
        keys = [(sequence, int(t)) for t in gt.track_ids]
        for key in keys:
            scores.setdefault(key, 1.0 / (1.0 + len(scores)))
        out[f.frame] = Boxes(
            gt.xyzlwhy.copy(), labels=gt.labels, track_ids=gt.track_ids, scores=[scores[k] for k in keys]
        )
    return out


def _bytes(config: str, frame: FrameDetections, message_bytes: Callable[[int, bool], int] | None) -> float:
    if message_bytes is None or config in ("ab3dmot-ego", ORACLE, PERFECT):
        return 0.0
    with_var = config.startswith("dmstrack/learned")
    return float(sum(message_bytes(len(a.boxes), with_var) for a in frame.agents[1:]))


def compare(
    sequences: list[tuple[str, list[FrameDetections]]],
    prior: TrackerConfig | None = None,
    noise: NoiseNet | None = None,
    message_bytes: Callable[[int, bool], int] | None = None,
    configs=CONFIGURATIONS,
    xy_range=EGO_RANGE,
    progress: bool = True,
    fixed: TrackerConfig | None = None,
) -> dict[str, dict]:
    """Metrics (comparable at the top level, strict under ``"strict"``), duplicate tracks and
    bytes per frame per configuration. Configurations needing a prior or a noise model are
    skipped without one."""
    results: dict[str, dict] = {}
    gt_scores: dict = {}
    for config in configs:
        if (config != "dmstrack/ab3dmot-noise" and config.startswith("dmstrack") and prior is None) or (
            "learned" in config and noise is None
        ):
            continue
        if config not in (ORACLE, PERFECT):
            name, cfg, net = _setup(config, prior, noise)
            if config == "dmstrack/fixed" and fixed is not None:
                cfg = fixed
        runs, sent, n_frames = [], 0.0, 0
        for seq_name, frames in tqdm(sequences, desc=config, disable=not progress, leave=False):
            if config == ORACLE:
                tracks = oracle_tracks(frames)
            elif config == PERFECT:
                tracks = _ground_truth(frames, gt_scores, seq_name)
            else:
                tracks = run_tracker(name, frames, cfg, net)
            runs.append(ego_sequence(seq_name, frames, tracks, xy_range))
            sent += sum(_bytes(config, f, message_bytes) for f in frames)
            n_frames += len(frames)
        res = evaluate_runs(runs)
        res.pop("curve", None)
        res["strict"].pop("curve", None)
        res["bytes_per_frame"] = sent / max(n_frames, 1)
        res.update(duplicate_tracks(runs))
        results[config] = res
    return results


def markdown_table(results: dict[str, dict], path: str | Path | None = None) -> str:
    head = (
        "| configuration | AMOTA | sAMOTA | AMOTP | MOTA | MT | ML | IDS | strict AMOTA | strict sAMOTA "
        "| strict AMOTP | strict MOTA | strict FP | duplicates | bytes/frame |"
    )
    lines = [head, "|" + "---|" * 15]
    for name, r in results.items():
        s = r["strict"]
        lines.append(
            f"| {name} | {r['amota']:.2f} | {r['samota']:.2f} | {r['amotp']:.2f} | {r['mota']:.2f} | "
            f"{r['mt']:.2f} | {r['ml']:.2f} | {r['ids']} | {s['amota']:.2f} | {s['samota']:.2f} | "
            f"{s['amotp']:.2f} | {s['mota']:.2f} | {s['fp']} | {r.get('duplicate_boxes', 0)} | "
            f"{r['bytes_per_frame']:.0f} |"
        )
    table = "\n".join(lines)
    if path is not None:
        Path(path).write_text(table + "\n")
    return table
