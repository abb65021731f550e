"""What the detections allow, and what a tracker made of two agents' views of one car.

* :func:`oracle_tracks`: the frame's detections with ground-truth identities. Per frame, every
  ground-truth box takes the detection (of any agent) that overlaps it most, at 3D IoU 0.25 or
  more (Hungarian), and is reported with its id and that detection's score; detections of no
  object are dropped. No delay before a track is shown, no identity switch, no duplicate: the
  most a tracker fed these detections can score, so a results table shows how far each tracker
  is from it. (A real tracker can still pass it a little: a track coasting through a frame
  with no detection can match. And the evaluator runs its own matching, which now and then
  pairs an oracle box with the neighbouring car and counts a switch.)
* :func:`duplicate_tracks`: ground-truth boxes covered by more than one reported track in the
  same frame (track centres within ``distance`` of the object's in BEV), which is what two
  agents seeing one car must not produce. Comparable AMOTA does not see duplicates (unmatched
  tracks cost nothing there); strict AMOTA pays for each as a false positive.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from v2x.core.boxes import VEHICLE_CLASSES, Boxes
from v2x.core.iou import iou3d_matrix
from v2x.core.matching import centre_distances, pairs_within
from v2x.tracking.metrics import TrackingSequence
from v2x.tracking.records import FrameDetections

__all__ = ["duplicate_tracks", "oracle_tracks"]


def oracle_tracks(frames: list[FrameDetections], iou_threshold: float = 0.25) -> dict[int, Boxes]:
    """Per frame number, the detections that match ground truth, carrying its track ids."""
    out = {}
    for f in frames:
        dets = f.fused()
        gt = f.gt[f.gt.of_classes(VEHICLE_CLASSES)] if f.gt is not None else Boxes.empty()
        if len(dets) == 0 or len(gt) == 0:
            out[f.frame] = Boxes.empty(with_scores=True)
            continue
        iou = iou3d_matrix(gt.xyzlwhy, dets.xyzlwhy)
        rows, cols = linear_sum_assignment(-iou)
        ok = iou[rows, cols] >= iou_threshold
        rows, cols = rows[ok], cols[ok]
        scores = dets.scores[cols] if dets.scores is not None else np.ones(len(cols), np.float32)
        out[f.frame] = Boxes(
            dets.xyzlwhy[cols], labels=gt.labels[rows], track_ids=gt.track_ids[rows], scores=scores
        )
    return out


def duplicate_tracks(sequences: list[TrackingSequence], distance: float = 2.0) -> dict[str, int]:
    """Per frame, tracks and ground truth are paired one to one (Hungarian on BEV centre
    distance, at most ``distance``); a track left unpaired whose nearest object (within
    ``distance``) is paired with another track is a duplicate. ``duplicate_boxes``: such track
    boxes; ``duplicate_track_ids``: distinct tracks that ever were one; ``gt_boxes``: ground
    truth looked at. Neighbouring cars each with their own track are no duplicates."""
    boxes, ids, n_gt = 0, set(), 0
    for seq in sequences:
        for f, gt in seq.gt.items():
            trk = seq.tracks.get(f)
            n_gt += len(gt)
            if trk is None or len(trk) < 2 or len(gt) == 0:
                continue
            d = centre_distances(gt.xyzlwhy, trk.xyzlwhy)
            rows, cols = pairs_within(d, distance)
            taken = np.zeros(len(gt), bool)
            taken[rows] = True
            free = np.ones(len(trk), bool)
            free[cols] = False
            for t in np.flatnonzero(free):
                g = int(np.argmin(d[:, t]))
                if d[g, t] <= distance and taken[g]:
                    boxes += 1
                    ids.add((seq.name, int(trk.track_ids[t])))
    return {"duplicate_boxes": boxes, "duplicate_track_ids": len(ids), "gt_boxes": n_gt}
