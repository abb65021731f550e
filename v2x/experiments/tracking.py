"""Tracking on detector output over a log's sequences: the four trackers of the results table
and the perfect tracker that bounds them, and the detection extraction the noise model trains
on.

Configurations:

* ``ab3dmot-ego`` — the filterpy baseline on the ego's own detections;
* ``ab3dmot/intermediate`` — the baseline on intermediate-fusion detections (the ego fuses
  every collaborator's BEV features first);
* ``dmstrack/fixed`` — the multi-sensor filter on every agent's own detections, fixed noise;
* ``dmstrack/learned`` — the same with the learned measurement noise;
* ``perfect/ground-truth`` — the ground truth itself as tracks, every track with its own score:
  the most any tracker can score under the protocol. Why it matters: at recall level r a
  tracker misses at least (1 - r) of the objects, so MOTA_r <= r and AMOTA, their mean over
  r = 1/40 .. 1, cannot pass about 51.25 however good the tracker is. A relative gain over a
  baseline near that ceiling is bounded by the headroom this row shows.

Tracks and ground truth are scored in the ego's BEV frame within the detection range, frame by
frame. Bytes per frame count what collaborators send: nothing, BEV features, or their boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from v2x import WEIGHTS
from v2x.core.boxes import Boxes
from v2x.core.grid import DEFAULT_XY_RANGE
from v2x.perception.cooperative import Perception
from v2x.perception.fusion_kind import FusionKind
from v2x.pipeline.detections import frame_detections, in_ego_range
from v2x.tracking.ab3dmot import AB3DMOT
from v2x.tracking.dmstrack import MultiSensorKF
from v2x.tracking.metrics import TrackingSequence, evaluate_tracking
from v2x.tracking.records import FrameDetections, load_sequence, save_sequence
from v2x.tracking.tracker import Tracker

__all__ = [
    "CEILING",
    "CONFIGURATIONS",
    "DEFAULT_NOISE",
    "GAINS",
    "compare_trackers",
    "extract_sequences",
    "headroom",
    "relative_gains",
]

DEFAULT_NOISE = WEIGHTS / "noise.pt"

CONFIGURATIONS = (
    "ab3dmot-ego",
    "ab3dmot/intermediate",
    "dmstrack/fixed",
    "dmstrack/learned",
    "perfect/ground-truth",
)
#: the ground truth as tracks: what the protocol lets a perfect tracker score
CEILING = "perfect/ground-truth"
#: the detections the baseline tracks in each of its configurations: a key of the frames' ``extra``
_AB3DMOT_INPUT = {"ab3dmot-ego": "none", "ab3dmot/intermediate": "intermediate"}
#: a detection on the wire: quantised box, score, class and 7 variances (see docs/wire-format.md)
DETECTION_BYTES = 24


def extract_sequences(
    log,
    perception: Perception,
    cache: Path,
    patch: int = 5,
    with_intermediate: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Per scenario, every frame's per-agent detections (with feature patches), the ego-only and
    intermediate-fusion detections; cached as ``.npz`` under ``cache``, in a folder named by the
    detector's identity and these settings, so another detector never reads stale detections."""
    # "-ego": intermediate fusion with collaborators encoding in the ego's frame (the default
    # since share_frame), so caches of the older own-frame detections are not read as these
    flavour = f"patch{patch}" + ("-intermediate-ego" if with_intermediate else "")
    cache = cache / f"detector-{perception.model.identity()}-{flavour}"
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for scenario in log.scenarios():
        target = cache / f"{scenario.replace('/', '__')}.npz"
        paths.append(target)
        if target.is_file():
            continue
        frames = []
        for i in tqdm(
            log.scenario_indices(scenario), desc=f"detect {scenario}", disable=not progress, leave=False
        ):
            frame = log[i]
            results = perception.agent_steps(list(frame.agents.values()), detect=True)
            fd = frame_detections(perception, frame, patch, True, results)
            ego = results[0]
            none_boxes = ego.boxes.transformed(ego.world_from_bev)
            fd.extra = {"none": none_boxes}
            if with_intermediate:
                inter = perception.run_frame(frame, FusionKind.INTERMEDIATE)
                fd.extra["intermediate"] = inter.boxes.transformed(inter.world_from_ego_bev)
                fd.extra["intermediate_bytes"] = sum(inter.bytes_per_collaborator.values())
            fd.extra["world_from_ego_bev"] = ego.world_from_bev
            frames.append(fd)
        save_sequence(target, frames)
        _save_extra(target.with_suffix(".extra.npz"), frames)
    return paths


def _save_extra(path: Path, frames: list[FrameDetections]) -> None:
    out = {"ego_pose": np.array([f.extra["world_from_ego_bev"] for f in frames])}
    for key in ("none", "intermediate"):
        if key in frames[0].extra:
            out[f"{key}_box"] = np.concatenate([f.extra[key].xyzlwhy for f in frames])
            out[f"{key}_score"] = np.concatenate([f.extra[key].scores for f in frames])
            out[f"{key}_frame"] = np.concatenate(
                [np.full(len(f.extra[key]), k) for k, f in enumerate(frames)]
            )
    if "intermediate_bytes" in frames[0].extra:
        out["intermediate_bytes"] = np.array([f.extra["intermediate_bytes"] for f in frames])
    np.savez_compressed(path, **out)


def load_with_extra(path: Path) -> list[FrameDetections]:
    frames = load_sequence(path)
    extra = np.load(path.with_suffix(".extra.npz"))
    for k, f in enumerate(frames):
        f.extra = {"world_from_ego_bev": extra["ego_pose"][k]}
        for key in ("none", "intermediate"):
            if f"{key}_box" in extra:
                m = extra[f"{key}_frame"] == k
                f.extra[key] = Boxes(extra[f"{key}_box"][m], labels=0, scores=extra[f"{key}_score"][m])
        if "intermediate_bytes" in extra:
            f.extra["intermediate_bytes"] = int(extra["intermediate_bytes"][k])
    return frames


def _run_config(
    config: str,
    frames: list[FrameDetections],
    noise,
    tracker_cfg=None,
    scores: dict | None = None,
    sequence: str = "",
) -> dict[int, Boxes]:
    if config == CEILING:
        return _ground_truth_tracks(frames, {} if scores is None else scores, sequence)
    if config in _AB3DMOT_INPUT:
        source = _AB3DMOT_INPUT[config]
        tracker: Tracker = AB3DMOT()
        inputs = [
            FrameDetections.of_boxes(k, f.timestamp_ns, f.extra[source], f.extra["world_from_ego_bev"])
            for k, f in enumerate(frames)
        ]
    else:
        # fixed and learned share the fitted prior: only the learned noise differs between them
        tracker = MultiSensorKF(tracker_cfg, noise=noise if config == "dmstrack/learned" else None)
        inputs = [FrameDetections(k, f.timestamp_ns, f.agents) for k, f in enumerate(frames)]
    return {k: tracker.step(f).boxes for k, f in enumerate(inputs)}


def _ground_truth_tracks(frames: list[FrameDetections], scores: dict, sequence: str) -> dict[int, Boxes]:
    """The frames' ground truth as tracks. Each track gets a score of its own (``scores`` runs
    on across the sequences of one evaluation): tied scores would collapse the recall levels
    the protocol averages over, and make AMOTA equal MOTA."""
    out = {}
    for k, f in enumerate(frames):
        keys = [(sequence, str(t)) for t in f.gt.track_ids]
        for key in keys:
            if key not in scores:
                scores[key] = 1.0 / (1.0 + len(scores))
        out[k] = Boxes(
            f.gt.xyzlwhy.copy(),
            labels=f.gt.labels,
            scores=np.array([scores[key] for key in keys], dtype=np.float64),
            track_ids=f.gt.track_ids,
        )
    return out


def compare_trackers(
    sequences: list[Path],
    noise=None,
    xy_range=DEFAULT_XY_RANGE,
    tracker_cfg=None,
    configs=CONFIGURATIONS,
    progress: bool = True,
) -> dict[str, dict]:
    """Tracking metrics (comparable and strict) and bytes per frame for each configuration."""
    results: dict[str, dict] = {}
    for config in configs:
        if config.endswith("learned") and noise is None:
            continue
        seqs, sent = [], []
        scores: dict = {}
        for path in tqdm(sequences, desc=config, disable=not progress, leave=False):
            frames = load_with_extra(path)
            tracks = _run_config(config, frames, noise, tracker_cfg, scores, path.stem)
            gt, trk = {}, {}
            for k, f in enumerate(frames):
                pose = f.extra["world_from_ego_bev"]
                gt[k] = in_ego_range(f.gt, pose, xy_range)
                trk[k] = in_ego_range(tracks[k], pose, xy_range)
                sent.append(_bytes(config, f))
            seqs.append(TrackingSequence(path.stem, len(frames), gt, trk))
        res = {mode: evaluate_tracking(seqs, mode=mode) for mode in ("comparable", "strict")}
        res["bytes_per_frame"] = float(np.mean(sent)) if sent else 0.0
        results[config] = res
    return results


def _bytes(config: str, f: FrameDetections) -> float:
    if config in ("ab3dmot-ego", CEILING):
        return 0.0
    if config == "ab3dmot/intermediate":
        return float(f.extra.get("intermediate_bytes", 0))
    return float(sum(len(a.boxes) for a in f.agents[1:]) * DETECTION_BYTES)


#: (name, configuration, baseline): the relative AMOTA gains the results table reports
GAINS = (
    ("learned_vs_fixed_noise", "dmstrack/learned", "dmstrack/fixed"),
    # DMSTrack's "17 %" on V2V4Real is this comparison (43.52 against CoBEVT + AB3DMOT's 37.16)
    ("learned_vs_ab3dmot_intermediate", "dmstrack/learned", "ab3dmot/intermediate"),
    ("fixed_vs_ab3dmot_intermediate", "dmstrack/fixed", "ab3dmot/intermediate"),
)


def relative_gains(results: dict[str, dict], mode: str = "comparable") -> dict[str, float]:
    """Relative AMOTA gains in percent, ``100 (a - b) / b``, for the pairs of :data:`GAINS`
    that the results hold."""
    out = {}
    for name, a, b in GAINS:
        if a in results and b in results and results[b][mode]["amota"] > 0:
            base = results[b][mode]["amota"]
            out[name] = round(100 * (results[a][mode]["amota"] - base) / base, 2)
    return out


def headroom(results: dict[str, dict], mode: str = "comparable") -> dict[str, float]:
    """For each baseline of :data:`GAINS`, the largest relative AMOTA gain in percent any
    tracker could show over it: up to the perfect tracker's AMOTA (:data:`CEILING`)."""
    if CEILING not in results:
        return {}
    top = results[CEILING][mode]["amota"]
    out = {}
    for _, _, b in GAINS:
        if b in results and results[b][mode]["amota"] > 0:
            base = results[b][mode]["amota"]
            out[b] = round(100 * (top - base) / base, 2)
    return out


def write_table(results: dict[str, dict], path: Path) -> str:
    head = "| configuration | AMOTA | sAMOTA | AMOTP | MOTA | MT | ML | IDS | strict AMOTA | strict MOTA | bytes/frame |"
    lines = [head, "|" + "---|" * 11]
    for name, r in results.items():
        c, s = r["comparable"], r["strict"]
        lines.append(
            f"| {name} | {c['amota']:.2f} | {c['samota']:.2f} | {c['amotp']:.2f} | {c['mota']:.2f} | {c['mt']:.2f} | "
            f"{c['ml']:.2f} | {c['ids']} | {s['amota']:.2f} | {s['mota']:.2f} | {r['bytes_per_frame']:.0f} |"
        )
    gains = relative_gains(results)
    if gains:
        lines.append("")
        lines += [f"- relative AMOTA, {name.replace('_', ' ')}: {v:+.1f} %" for name, v in gains.items()]
    room = headroom(results)
    if room:
        top = results[CEILING]["comparable"]["amota"]
        lines.append("")
        lines += [
            f"- the most any tracker could gain over {b} (up to {CEILING}'s AMOTA {top:.2f}): {v:+.1f} %"
            for b, v in room.items()
        ]
    table = "\n".join(lines)
    path.write_text(table + "\n")
    (path.with_suffix(".json")).write_text(
        json.dumps(
            {**results, "relative_amota_gain_pct": gains, "headroom_amota_pct": room}, indent=2, default=float
        )
    )
    return table
