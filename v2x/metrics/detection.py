"""Detection AP in the cooperative-perception papers' protocol (OpenCOOD and its forks).

Per frame, predictions are taken in decreasing score; each is a true positive when its best
IoU with a not-yet-matched ground-truth box reaches the threshold (that box is then used up),
else a false positive. Over all frames the (score, TP/FP) list is sorted by score (the
``global_sort_detections`` behaviour of the maintained forks) and AP is the VOC all-point
area under the monotone precision envelope. Both BEV (rotated polygon) and 3D IoU are
reported, at IoU 0.3, 0.5 and 0.7, in the evaluation range and in distance bins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from v2x.core.boxes import VEHICLE_CLASSES, Boxes
from v2x.core.grid import DEFAULT_XY_RANGE
from v2x.core.iou import bev_and_3d_iou

__all__ = ["IOU_THRESHOLDS", "DetectionEvaluator", "voc_ap"]

IOU_THRESHOLDS = (0.3, 0.5, 0.7)
#: Distance bins (metres from the ego) reported beside the overall figure.
DEFAULT_DISTANCE_BINS = ((0.0, 30.0), (30.0, 50.0), (50.0, 100.0))


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: area under the precision envelope, recall padded with 0 and 1."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def _match_frame(iou: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """TP flags, in the prediction order given, of greedy by-score matching on ``iou`` (P, G)."""
    order = np.argsort(-scores, kind="stable")
    tp = np.zeros(len(scores), dtype=bool)
    if iou.shape[1] == 0:
        return tp
    available = np.ones(iou.shape[1], dtype=bool)
    for p in order:
        if not available.any():
            break
        candidates = np.where(available, iou[p], -1.0)
        g = int(np.argmax(candidates))
        if candidates[g] >= threshold:
            tp[p] = True
            available[g] = False
    return tp


@dataclass
class _Accumulator:
    scores: list[np.ndarray] = field(default_factory=list)
    tp: list[np.ndarray] = field(default_factory=list)
    #: ground-truth count of each frame, in the order added (resampling frames needs them)
    frame_gt: list[int] = field(default_factory=list)

    @property
    def num_gt(self) -> int:
        return sum(self.frame_gt)

    def add(self, scores: np.ndarray, tp: np.ndarray, num_gt: int) -> None:
        self.scores.append(scores)
        self.tp.append(tp)
        self.frame_gt.append(num_gt)

    def ap(self) -> float:
        if self.num_gt == 0:
            return float("nan")
        if not self.scores:
            return 0.0
        scores = np.concatenate(self.scores)
        tp = np.concatenate(self.tp)
        order = np.argsort(-scores, kind="stable")
        tp = tp[order]
        ctp = np.cumsum(tp)
        cfp = np.cumsum(~tp)
        if len(tp) == 0:
            return 0.0
        return voc_ap(ctp / self.num_gt, ctp / np.maximum(ctp + cfp, 1))


class DetectionEvaluator:
    """Accumulate frames, then report AP.

    Boxes of a frame must be in one frame of reference (usually the ego's BEV frame, so the
    range filter and distance bins are about the ego). Only ``classes`` are evaluated; the
    default is the papers' single "vehicle" category.
    """

    def __init__(
        self,
        eval_range: tuple[float, float, float, float] = DEFAULT_XY_RANGE,
        thresholds: tuple[float, ...] = IOU_THRESHOLDS,
        distance_bins: tuple[tuple[float, float], ...] = DEFAULT_DISTANCE_BINS,
        classes=VEHICLE_CLASSES,
    ) -> None:
        self.eval_range = tuple(float(v) for v in eval_range)
        self.thresholds = tuple(thresholds)
        self.distance_bins = tuple(distance_bins)
        self.classes = frozenset(int(c) for c in classes)
        self.frames = 0
        self._acc: dict[tuple[str, str, float], _Accumulator] = {}

    def _filter(self, boxes: Boxes) -> Boxes:
        keep = boxes.in_range(self.eval_range) & boxes.finite() & boxes.of_classes(self.classes)
        return boxes[keep]

    def add(self, predictions: Boxes, ground_truth: Boxes) -> None:
        """Add one frame. ``predictions`` must carry scores."""
        if predictions.scores is None:
            raise ValueError("predictions need scores for AP")
        pred = self._filter(predictions)
        gt = self._filter(ground_truth)
        self.frames += 1
        subsets = {"all": (np.ones(len(pred), bool), np.ones(len(gt), bool))}
        pd = np.hypot(pred.xyzlwhy[:, 0], pred.xyzlwhy[:, 1])
        gd = np.hypot(gt.xyzlwhy[:, 0], gt.xyzlwhy[:, 1])
        for lo, hi in self.distance_bins:
            subsets[f"{lo:g}-{hi:g}m"] = ((pd >= lo) & (pd < hi), (gd >= lo) & (gd < hi))
        bev, iou_3d = bev_and_3d_iou(pred.xyzlwhy, gt.xyzlwhy)
        ious = {"bev": bev, "3d": iou_3d}
        for kind, iou in ious.items():
            for subset, (pm, gm) in subsets.items():
                sub_iou = iou[np.ix_(pm, gm)]
                sub_scores = pred.scores[pm]
                for thr in self.thresholds:
                    tp = _match_frame(sub_iou, sub_scores, thr)
                    key = (kind, subset, thr)
                    self._acc.setdefault(key, _Accumulator()).add(sub_scores, tp, int(gm.sum()))

    def ap(self, kind: str = "bev", threshold: float = 0.5, subset: str = "all") -> float:
        acc = self._acc.get((kind, subset, threshold))
        return float("nan") if acc is None else acc.ap()

    def per_frame(
        self, kind: str = "bev", threshold: float = 0.5, subset: str = "all"
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        """Each frame's prediction scores, TP flags and ground-truth count, in the order added:
        what resampling frames (``v2x.metrics.bootstrap``) needs."""
        acc = self._acc.get((kind, subset, threshold))
        if acc is None:
            return [], [], []
        return acc.scores, acc.tp, acc.frame_gt

    def result(self) -> dict:
        """JSON-ready summary: ``ap_bev`` / ``ap_3d`` as {"0.3": .., "0.5": .., "0.7": ..} (fractions)."""
        out: dict = {"frames": self.frames, "eval_range": list(self.eval_range)}
        for kind in ("bev", "3d"):
            out[f"ap_{kind}"] = {f"{t:g}": _nan_to_none(self.ap(kind, t)) for t in self.thresholds}
        out["num_gt"] = self._acc[("bev", "all", self.thresholds[0])].num_gt if self._acc else 0
        out["distance_bins"] = {
            f"{lo:g}-{hi:g}m": {
                f"ap_{kind}": {
                    f"{t:g}": _nan_to_none(self.ap(kind, t, f"{lo:g}-{hi:g}m")) for t in self.thresholds
                }
                for kind in ("bev", "3d")
            }
            | {"num_gt": self._acc[("bev", f"{lo:g}-{hi:g}m", self.thresholds[0])].num_gt if self._acc else 0}
            for lo, hi in self.distance_bins
        }
        return out

    def table(self, title: str = "Detection AP") -> str:
        """Plain-text table of AP (in percent) per IoU threshold, overall and per distance bin."""
        res = self.result()
        head = ["subset", "GT"] + [f"{k.upper()}@{t:g}" for k in ("bev", "3d") for t in self.thresholds]
        rows = [["all", str(res["num_gt"])] + _fmt_aps(res)]
        for name, sub in res["distance_bins"].items():
            rows.append([name, str(sub["num_gt"])] + _fmt_aps(sub))
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        line = "  ".join(h.rjust(w) for h, w in zip(head, widths))
        body = "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)
        return f"{title} ({res['frames']} frames)\n{line}\n{body}"

    def to_json(self) -> str:
        return json.dumps(self.result(), indent=2)


def _fmt_aps(res: dict) -> list[str]:
    out = []
    for kind in ("bev", "3d"):
        for v in res[f"ap_{kind}"].values():
            out.append("-" if v is None else f"{100 * v:.1f}")
    return out


def _nan_to_none(v: float) -> float | None:
    return None if np.isnan(v) else round(float(v), 6)
