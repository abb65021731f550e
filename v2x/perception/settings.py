"""Perception's run-time settings and their checks, without torch: the command line and
``RunConfig`` validate them before any model is loaded (``v2x --help`` must not pay for torch)."""

from __future__ import annotations

__all__ = [
    "BOX_MERGES",
    "PRECISIONS",
    "SHARE_FRAMES",
    "SHARE_FRAME_BY_FORMAT",
    "box_fusion_iou",
    "check_box_merge",
    "check_precision",
    "check_share_frame",
    "decodes_in_each_frame",
    "encodes_on_ego_grid",
    "resolve_share_frame",
]

#: the frame collaborators encode shared features in: the ego's grid (OpenCOOD's proj_first) or their own
#: "ego": collaborators encode on the ego's grid; "own": in their own frame, the ego warps their
#: maps onto its grid; "each": encoded as "own", and the ego decodes the fused maps in every
#: agent's frame (its own, each collaborator's) and merges the boxes (docs/perception.md)
SHARE_FRAMES = ("ego", "own", "each")
#: the frame for logs of a format where "ego" does worse: on DAIR-V2X-C the detector finds the
#: roadside unit's cars in its own frame and hardly on the ego's grid, and the fused map read in
#: the roadside unit's frame finds more of them again (docs/perception.md)
SHARE_FRAME_BY_FORMAT = {"dair-v2x-c": "each"}
#: inference precision of the detector's neck and head
PRECISIONS = ("fp32", "bf16")


def check_share_frame(share_frame: str) -> str:
    """``share_frame`` itself, or a ValueError naming the setting and what it may be."""
    if share_frame not in SHARE_FRAMES:
        raise ValueError(f"share_frame: use one of {', '.join(SHARE_FRAMES)}, not {share_frame!r}")
    return share_frame


def encodes_on_ego_grid(share_frame: str) -> bool:
    """Whether collaborators encode shared maps on the ego's grid (else in their own frame)."""
    return check_share_frame(share_frame) == "ego"


def decodes_in_each_frame(share_frame: str) -> bool:
    """Whether the ego reads the fused map in every agent's frame, not only its own."""
    return check_share_frame(share_frame) == "each"


def resolve_share_frame(share_frame: str | None, log_format: str | None) -> str:
    """``share_frame`` (``--share-frame``) when given, else the one for a log of ``log_format``
    ("ego" but where :data:`SHARE_FRAME_BY_FORMAT` says otherwise)."""
    if share_frame is not None:
        return check_share_frame(share_frame)
    return SHARE_FRAME_BY_FORMAT.get(log_format or "", "ego")


def check_precision(precision: str) -> str:
    """``precision`` itself, or a ValueError naming the setting and what it may be."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: use one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


#: how the ego merges several agents' boxes: NMS averaging duplicates, or plain NMS (OpenCOOD's)
BOX_MERGES = ("average", "nms")


def check_box_merge(box_merge: str) -> str:
    """``box_merge`` itself, or a ValueError naming the setting and what it may be."""
    if box_merge not in BOX_MERGES:
        raise ValueError(f"box_merge: use one of {', '.join(BOX_MERGES)}, not {box_merge!r}")
    return box_merge


def box_fusion_iou(box_merge: str) -> float | None:
    """The BEV IoU ``Perception(box_fusion_iou=...)`` takes for a ``box_merge`` setting."""
    from v2x.perception.box_merge import BOX_FUSION_IOU

    return BOX_FUSION_IOU if check_box_merge(box_merge) == "average" else None
