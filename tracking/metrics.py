"""3D multi-object tracking metrics in AB3DMOT's KITTI-style protocol, as V2V4Real reports them.

What the reference evaluator (AB3DMOT's ``scripts/KITTI/evaluate.py`` in V2V4Real's copy)
does, and so what ``mode="comparable"`` does:

* a track's score is the mean of its per-frame scores over the sequence; a score threshold
  removes whole tracks;
* per frame, ground truth and tracks are matched by the Hungarian method on ``1 - IoU3D``;
  a pair is allowed when ``1 - IoU <= 1 - 0.25``;
* a first pass with every track gives the matched tracks' scores; from them, thresholds are
  chosen so that recall passes 1/40, 2/40, ... (41 sample points, the zero one dropped);
  AMOTA, sAMOTA and AMOTP are the sums of MOTA, sMOTA and MOTP over those thresholds divided
  by 40, so missing recall levels count as zero;
* sMOTA_r = clip(1 - (FN + FP + IDS - (1 - r) GT) / (r GT), 0, 1);
* MOTA, MOTP, MT, ML, ID switches and fragmentations are those of a last pass at the threshold
  with the best MOTA; the search starts from MOTA 0 at threshold -10000, so if no threshold
  reaches a positive MOTA the last pass keeps every track;
* an unmatched track box is *ignored*, not a false positive, when its 2D image box is at most
  25 px tall. V2V4Real's files carry all-zero 2D boxes, so no false positive is ever counted:
  precision is 1 and AMOTA mostly measures recall (the trap in the design notes, section 7);
* the "matched" flag of a track box is never cleared between passes, so a box matched in an
  earlier pass is no longer ignorable in later ones;
* boxes are read as KITTI camera boxes although V2V4Real's columns hold LiDAR ``x, z, y``:
  the box extends from its stored centre height *down* by its full height, and its BEV
  footprint is turned by ``-yaw``. Both boxes of a pair get the same treatment, but the IoU is
  not the true one. ``geometry="reference"`` reproduces this.

``mode="strict"`` counts every unmatched track box as a false positive, uses the true box
geometry and keeps no state between passes. Report both; only the comparable figures sit beside
the papers' tables, only the strict ones punish phantom tracks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from v2x.core.boxes import Boxes
from v2x.core.iou import iou3d_matrix

__all__ = ["MODES", "TrackingSequence", "evaluate_tracking", "reference_geometry"]

NUM_SAMPLE_POINTS = 41
MIN_HEIGHT_PX = 25.0
_MAX_COST = 1e9

#: mode -> (ignore unmatched tracks with small 2D boxes, box geometry, sticky matched flags)
MODES = {
    "comparable": {"ignore_small": True, "geometry": "reference", "sticky": True},
    "strict": {"ignore_small": False, "geometry": "exact", "sticky": False},
}


@dataclass
class TrackingSequence:
    """Ground truth and tracker output of one sequence, frame by frame.

    ``gt[f]`` and ``tracks[f]`` are :class:`Boxes` with track ids (tracks with scores; missing
    scores read -1 as in the reference); ``track_heights_px[f]`` are the tracks' 2D box heights
    (all zero when absent, as in V2V4Real's files).
    """

    name: str
    n_frames: int
    gt: dict[int, Boxes] = field(default_factory=dict)
    tracks: dict[int, Boxes] = field(default_factory=dict)
    track_heights_px: dict[int, np.ndarray] = field(default_factory=dict)


def reference_geometry(xyzlwhy: np.ndarray) -> np.ndarray:
    """Boxes as the reference evaluator sees V2V4Real's ``x z y`` columns: hanging below the
    stored centre height and with the heading mirrored."""
    b = np.asarray(xyzlwhy, dtype=np.float64).reshape(-1, 7).copy()
    b[:, 2] -= b[:, 5] / 2
    b[:, 6] = -b[:, 6]
    return b


@dataclass
class _Frame:
    gt_ids: np.ndarray  # (G,)
    trk_ids: np.ndarray  # (T,)
    trk_scores: np.ndarray  # (T,) track-average scores
    trk_small: np.ndarray  # (T,) 2D height <= 25 px
    cost: np.ndarray  # (G, T) 1 - IoU, _MAX_COST where the pair is not allowed
    iou: np.ndarray  # (G, T)
    gt_list: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gt_list = [int(g) for g in self.gt_ids]


def _prepare(seqs: list[TrackingSequence], geometry: str, iou_threshold: float) -> list[list[_Frame]]:
    out = []
    for seq in seqs:
        scores: dict[int, list[float]] = {}
        for b in seq.tracks.values():
            s = b.scores if b.scores is not None else np.full(len(b), -1.0)
            for tid, sc in zip(b.track_ids, s, strict=True):
                scores.setdefault(int(tid), []).append(float(sc))
        avg = {tid: sum(v) / len(v) for tid, v in scores.items()}
        frames = []
        for f in range(seq.n_frames):
            g = seq.gt.get(f, Boxes.empty())
            t = seq.tracks.get(f, Boxes.empty(with_scores=True))
            if len(np.unique(t.track_ids)) != len(t):
                raise ValueError(f"sequence {seq.name}, frame {f}: track ids are not unique")
            if len(np.unique(g.track_ids)) != len(g):
                raise ValueError(f"sequence {seq.name}, frame {f}: ground-truth ids are not unique")
            heights = np.asarray(seq.track_heights_px.get(f, np.zeros(len(t))), dtype=np.float64)
            if heights.shape != (len(t),):
                raise ValueError(
                    f"sequence {seq.name}, frame {f}: {heights.shape} heights for {len(t)} tracks"
                )
            gb, tb = g.xyzlwhy, t.xyzlwhy
            if geometry == "reference":
                gb, tb = reference_geometry(gb), reference_geometry(tb)
            iou = iou3d_matrix(gb, tb)
            cost = 1.0 - iou
            cost = np.where(cost <= 1.0 - iou_threshold, cost, _MAX_COST)
            frames.append(
                _Frame(
                    g.track_ids.astype(np.int64),
                    t.track_ids.astype(np.int64),
                    np.array([avg[int(i)] for i in t.track_ids], dtype=np.float64),
                    np.abs(heights) <= MIN_HEIGHT_PX,
                    cost,
                    iou,
                )
            )
        out.append(frames)
    return out


class _Evaluator:
    """Runs the passes; holds the state the reference keeps between them (sticky flags)."""

    def __init__(self, data: list[list[_Frame]], ignore_small: bool, sticky: bool) -> None:
        self.data = data
        self.ignore_small = ignore_small
        self.sticky = sticky
        self.ever_matched = [[np.zeros(len(fr.trk_ids), dtype=bool) for fr in frames] for frames in data]
        self._cache: list[list[dict]] = [[{} for _ in frames] for frames in data]

    def _frame(self, s: int, f: int, keep: np.ndarray) -> tuple:
        """Matching of one frame for the kept tracks, cached by the kept set (thresholds only
        ever remove tracks, so most frames repeat): (pairs, matched mask, assigned track id per
        ground truth, IoU sum, matched scores)."""
        key = keep.tobytes()
        cache = self._cache[s][f]
        if key in cache:
            return cache[key]
        fr = self.data[s][f]
        t_idx = np.flatnonzero(keep)
        pairs: list[tuple[int, int]] = []
        if len(fr.gt_ids) and len(t_idx):
            cost = fr.cost[:, t_idx]
            rows, cols = linear_sum_assignment(cost)
            pairs = [
                (int(r), int(t_idx[c])) for r, c in zip(rows, cols, strict=True) if cost[r, c] < _MAX_COST
            ]
        matched = np.zeros(len(fr.trk_ids), dtype=bool)
        assigned = [-1] * len(fr.gt_ids)
        for r, c in pairs:
            matched[c] = True
            assigned[r] = int(fr.trk_ids[c])
        iou_sum = float(sum(fr.iou[r, c] for r, c in pairs))
        scores = [float(fr.trk_scores[c]) for _, c in pairs]
        cache[key] = (len(pairs), matched, assigned, iou_sum, scores, int(keep.sum()))
        return cache[key]

    def run(self, score_threshold: float, recall_level: float = 1.0) -> dict:
        tp = fp = fn = n_gt = n_tr = ignored_tr = 0
        total_iou = 0.0
        matched_scores: list[float] = []
        ids = frag = mt = ml = pt = n_traj = 0
        for s, frames in enumerate(self.data):
            traj: dict[int, list[int]] = {}
            for f, fr in enumerate(frames):
                keep = fr.trk_scores >= score_threshold
                n_pairs, matched, assigned, iou_sum, scores, n_keep = self._frame(s, f, keep)
                total_iou += iou_sum
                matched_scores.extend(scores)
                n_gt += len(assigned)
                n_tr += n_keep
                tp += n_pairs
                fn += len(assigned) - n_pairs
                n_ignored = 0
                if self.ignore_small and n_keep > n_pairs:
                    if self.sticky:
                        self.ever_matched[s][f] |= matched
                        valid = self.ever_matched[s][f]
                    else:
                        valid = matched
                    n_ignored = int((keep & ~valid & fr.trk_small).sum())
                elif self.sticky:
                    self.ever_matched[s][f] |= matched
                ignored_tr += n_ignored
                fp += n_keep - n_pairs - n_ignored
                for gid, tid in zip(fr.gt_list, assigned, strict=True):
                    if gid in traj:
                        traj[gid].append(tid)
                    else:
                        traj[gid] = [tid]
            for g in traj.values():
                n_traj += 1
                if all(x == -1 for x in g):
                    ml += 1
                    continue
                last = g[0]
                tracked = 1 if g[0] >= 0 else 0
                for k in range(1, len(g)):
                    if last != g[k] and last != -1 and g[k] != -1 and g[k - 1] != -1:
                        ids += 1
                    if k < len(g) - 1 and g[k - 1] != g[k] and last != -1 and g[k] != -1 and g[k + 1] != -1:
                        frag += 1
                    if g[k] != -1:
                        tracked += 1
                        last = g[k]
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
            smota = min(
                1.0, max(0.0, 1 - (fn + fp + ids - (1 - recall_level) * n_gt) / (recall_level * n_gt))
            )
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
            "tracker_boxes": n_tr,
            "ignored_tracker_boxes": ignored_tr,
            "gt_trajectories": n_traj,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "matched_scores": matched_scores,
        }


def _thresholds(scores: list[float], num_gt: int, num_points: int) -> tuple[list[float], list[float]]:
    """Score thresholds at which recall passes 1/40, 2/40, ... (the reference's discretisation:
    walk the matched scores from the highest and take one whenever recall reaches the next level)."""
    ordered = sorted(scores, reverse=True)
    current = 0.0
    thresholds, recalls = [], []
    for i, score in enumerate(ordered):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(ordered) - 1 else left
        if (right - current) < (current - left) and i < len(ordered) - 1:
            continue
        thresholds.append(score)
        recalls.append(current)
        current += 1 / (num_points - 1.0)
    return thresholds[1:], recalls[1:]


def evaluate_tracking(
    sequences: list[TrackingSequence],
    mode: str = "comparable",
    iou_threshold: float = 0.25,
    num_sample_points: int = NUM_SAMPLE_POINTS,
    geometry: str | None = None,
) -> dict:
    """AMOTA, AMOTP, sAMOTA (averaged over recall levels) and MOTA, MOTP, MT, ML, IDS, FRAG at the
    best-MOTA threshold. Rates are percentages, as the papers' tables print them; counts are counts.

    ``geometry`` overrides the mode's box geometry ("reference" or "exact").
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    opts = dict(MODES[mode])
    if geometry is not None:
        if geometry not in ("reference", "exact"):
            raise ValueError(f"geometry must be 'reference' or 'exact', got {geometry!r}")
        opts["geometry"] = geometry
    ev = _Evaluator(
        _prepare(sequences, opts["geometry"], iou_threshold), opts["ignore_small"], opts["sticky"]
    )
    base = ev.run(-10000.0)
    num_gt = base["tp"] + base["fn"]
    thresholds, recalls = (
        _thresholds(base["matched_scores"], num_gt, num_sample_points) if num_gt else ([], [])
    )
    sums = {"mota": 0.0, "smota": 0.0, "motp": 0.0}
    best_mota, best_thr = 0.0, -10000.0
    curve = []
    for thr, rec in zip(thresholds, recalls, strict=True):
        m = ev.run(thr, rec)
        for k in sums:
            sums[k] += m[k]
        curve.append(
            {
                "threshold": thr,
                "recall_level": rec,
                "recall": m["recall"],
                "precision": m["precision"],
                "mota": m["mota"],
                "smota": m["smota"],
                "motp": m["motp"],
                "fp": m["fp"],
                "fn": m["fn"],
                "ids": m["ids"],
            }
        )
        if m["mota"] > best_mota:
            best_mota, best_thr = m["mota"], thr
    best = ev.run(best_thr)
    n = num_sample_points - 1
    pct = 100.0
    return {
        "mode": mode,
        "geometry": opts["geometry"],
        "amota": pct * sums["mota"] / n,
        "amotp": pct * sums["motp"] / n,
        "samota": pct * sums["smota"] / n,
        "mota": pct * best["mota"],
        "motp": pct * best["motp"],
        "mt": pct * best["mt"],
        "pt": pct * best["pt"],
        "ml": pct * best["ml"],
        "ids": best["ids"],
        "frag": best["frag"],
        "tp": best["tp"],
        "fp": best["fp"],
        "fn": best["fn"],
        "ignored_tracker_boxes": best["ignored_tracker_boxes"],
        "recall": pct * best["recall"],
        "precision": pct * best["precision"],
        "best_threshold": best_thr,
        "recall_levels": len(thresholds),
        "gt_objects": base["gt"],
        "gt_trajectories": base["gt_trajectories"],
        "tracker_boxes": base["tracker_boxes"],
        "sequences": len(sequences),
        "curve": curve,
    }
