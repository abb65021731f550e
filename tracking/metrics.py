"""3D multi-object tracking metrics in AB3DMOT's KITTI-style protocol, as V2V4Real reports them.

Protocol (the reference evaluator's behaviour):

* a track's score is the mean of its per-frame scores; a score threshold drops whole tracks;
* per frame, ground truth and tracks are matched by the Hungarian method on 1 - 3D IoU, pairs
  below IoU 0.25 not allowed;
* thresholds are chosen on the matched tracks' scores so that recall steps through 40 even
  levels (41 sample points, the zero-recall one dropped); AMOTA, sAMOTA and AMOTP are the sums
  of MOTA, sMOTA and MOTP over those thresholds divided by 40 (missing levels count zero);
  MOTA, MOTP, MT, ML, ID switches and fragmentations are reported at the threshold with the best
  MOTA;
* sMOTA_r = clip(1 - (FN + FP + IDS - (1 - r) GT) / (r GT), 0, 1).

**Comparable vs strict.** The reference ignores an unmatched track box whose 2D image box is at
most 25 px tall. V2V4Real's files (and ours) carry all-zero 2D boxes, so there no false
positive is ever counted: precision is 1 and AMOTA mostly measures recall. ``mode="comparable"``
reproduces that (our figures then sit beside the papers'); ``mode="strict"`` counts every
unmatched track box as a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from v2x.boxes import Boxes
from v2x.iou import iou3d_matrix

__all__ = ["TrackingSequence", "evaluate_tracking"]

NUM_SAMPLE_POINTS = 41
MIN_HEIGHT_PX = 25.0


@dataclass
class TrackingSequence:
    """Ground truth and tracker output of one sequence, frame by frame.

    ``gt[f]`` and ``tracks[f]`` are :class:`Boxes` with track ids (tracks also with scores);
    ``track_heights_px[f]`` are the 2D box heights of the tracks (zeros when unknown).
    """

    name: str
    n_frames: int
    gt: dict[int, Boxes] = field(default_factory=dict)
    tracks: dict[int, Boxes] = field(default_factory=dict)
    track_heights_px: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class _Frame:
    gt_ids: np.ndarray
    trk_ids: np.ndarray
    trk_scores: np.ndarray  # track-average scores
    trk_small: np.ndarray  # 2D height <= 25 px (ignored when unmatched, comparable mode)
    iou: np.ndarray  # (G, T)


def _prepare(seqs: list[TrackingSequence]) -> list[list[_Frame]]:
    out = []
    for seq in seqs:
        sums: dict[int, list[float]] = {}
        for b in seq.tracks.values():
            scores = b.scores if b.scores is not None else np.full(len(b), -1.0)
            for tid, sc in zip(b.track_ids, scores, strict=True):
                sums.setdefault(int(tid), []).append(float(sc))
        avg = {tid: float(np.mean(v)) for tid, v in sums.items()}
        frames = []
        for f in range(seq.n_frames):
            g = seq.gt.get(f, Boxes.empty())
            t = seq.tracks.get(f, Boxes.empty(with_scores=True))
            if len(np.unique(t.track_ids)) != len(t):
                raise ValueError(f"sequence {seq.name}, frame {f}: track ids are not unique")
            heights = seq.track_heights_px.get(f, np.zeros(len(t)))
            frames.append(
                _Frame(
                    g.track_ids.astype(np.int64),
                    t.track_ids.astype(np.int64),
                    np.array([avg[int(i)] for i in t.track_ids], dtype=np.float64),
                    np.asarray(heights, dtype=np.float64) <= MIN_HEIGHT_PX,
                    iou3d_matrix(g.xyzlwhy, t.xyzlwhy),
                )
            )
        out.append(frames)
    return out


def _match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    if iou.size == 0:
        return []
    cost = np.where(iou >= threshold, 1.0 - iou, 1e9)
    rows, cols = linear_sum_assignment(cost)
    return [(r, c) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1e9]


def _clear_mot(
    data: list[list[_Frame]], score_threshold: float, recall_level: float, iou_threshold: float, strict: bool
) -> dict:
    tp = fp = fn = 0
    total_iou = 0.0
    n_gt = 0
    matched_scores: list[float] = []
    ids = frag = mt = ml = pt = 0
    n_traj = 0
    for frames in data:
        traj: dict[int, list[int]] = {}
        for fr in frames:
            keep = fr.trk_scores >= score_threshold
            t_idx = np.flatnonzero(keep)
            iou = fr.iou[:, t_idx]
            pairs = _match(iou, iou_threshold)
            assigned = np.full(len(fr.gt_ids), -1, dtype=np.int64)
            valid = np.zeros(len(t_idx), dtype=bool)
            for r, c in pairs:
                assigned[r] = fr.trk_ids[t_idx[c]]
                valid[c] = True
                total_iou += iou[r, c]
                matched_scores.append(float(fr.trk_scores[t_idx[c]]))
            tp += len(pairs)
            fn += len(fr.gt_ids) - len(pairs)
            n_gt += len(fr.gt_ids)
            unmatched = ~valid
            if strict:
                fp += int(unmatched.sum())
            else:
                fp += int((unmatched & ~fr.trk_small[t_idx]).sum())
            for gid, tid in zip(fr.gt_ids, assigned, strict=True):
                traj.setdefault(int(gid), []).append(int(tid))
        # ID switches, fragmentations and MT/PT/ML over each ground-truth trajectory
        for g in traj.values():
            n_traj += 1
            if all(x == -1 for x in g):
                ml += 1
                continue
            last = g[0]
            tracked = 1 if g[0] >= 0 else 0
            for f in range(1, len(g)):
                if last != g[f] and last != -1 and g[f] != -1 and g[f - 1] != -1:
                    ids += 1
                if f < len(g) - 1 and g[f - 1] != g[f] and last != -1 and g[f] != -1 and g[f + 1] != -1:
                    frag += 1
                if g[f] != -1:
                    tracked += 1
                    last = g[f]
            if len(g) > 1 and g[-2] != g[-1] and last != -1 and g[-1] != -1:
                frag += 1
            ratio = tracked / len(g)
            if ratio > 0.8:
                mt += 1
            elif ratio < 0.2:
                ml += 1
            else:
                pt += 1
    if n_gt == 0:
        mota = smota = float("-inf")
    else:
        mota = 1 - (fn + fp + ids) / n_gt
        smota = min(1.0, max(0.0, 1 - (fn + fp + ids - (1 - recall_level) * n_gt) / (recall_level * n_gt)))
    return {
        "mota": mota,
        "smota": smota,
        "motp": total_iou / tp if tp else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "ids": ids,
        "frag": frag,
        "mt": mt / n_traj if n_traj else 0.0,
        "pt": pt / n_traj if n_traj else 0.0,
        "ml": ml / n_traj if n_traj else 0.0,
        "gt": n_gt,
        "gt_trajectories": n_traj,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "matched_scores": matched_scores,
    }


def _thresholds(
    scores: list[float], num_gt: int, num_points: int = NUM_SAMPLE_POINTS
) -> tuple[list[float], list[float]]:
    """Score thresholds at which recall passes 1/40, 2/40, ... (the reference's discretisation)."""
    scores = sorted(scores, reverse=True)
    current = 0.0
    thresholds, recalls = [], []
    for i, score in enumerate(scores):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(scores) - 1 else left
        if (right - current) < (current - left) and i < len(scores) - 1:
            continue
        thresholds.append(score)
        recalls.append(current)
        current += 1 / (num_points - 1.0)
    return thresholds[1:], recalls[1:]


def evaluate_tracking(
    sequences: list[TrackingSequence], iou_threshold: float = 0.25, mode: str = "comparable"
) -> dict:
    """AMOTA, AMOTP, sAMOTA (averaged over recall levels) and MOTA, MOTP, MT, ML, IDS, FRAG at the
    best-MOTA threshold; every figure a percentage, as the papers' tables print them."""
    if mode not in ("comparable", "strict"):
        raise ValueError(f"mode must be 'comparable' or 'strict', got {mode!r}")
    strict = mode == "strict"
    data = _prepare(sequences)
    base = _clear_mot(data, -1e9, 1.0, iou_threshold, strict)
    thresholds, recalls = (
        _thresholds(base["matched_scores"], base["tp"] + base["fn"]) if base["gt"] else ([], [])
    )
    sums = {"mota": 0.0, "smota": 0.0, "motp": 0.0}
    best, best_thr = None, -1e9
    for thr, rec in zip(thresholds, recalls, strict=True):
        m = _clear_mot(data, thr, rec, iou_threshold, strict)
        for k in sums:
            sums[k] += m[k]
        if best is None or m["mota"] > best["mota"]:
            best, best_thr = m, thr
    best = best or base
    n = NUM_SAMPLE_POINTS - 1
    pct = 100.0
    return {
        "mode": mode,
        "amota": pct * sums["mota"] / n,
        "amotp": pct * sums["motp"] / n,
        "samota": pct * sums["smota"] / n,
        "mota": pct * best["mota"],
        "motp": pct * best["motp"],
        "mt": pct * best["mt"],
        "ml": pct * best["ml"],
        "ids": best["ids"],
        "frag": best["frag"],
        "fp": best["fp"],
        "fn": best["fn"],
        "tp": best["tp"],
        "recall": pct * best["recall"],
        "precision": pct * best["precision"],
        "best_threshold": best_thr,
        "recall_levels": len(thresholds),
        "gt_objects": base["gt"],
        "gt_trajectories": base["gt_trajectories"],
        "sequences": len(sequences),
    }
