"""Bird's-eye-view pictures with OpenCV: agents' points coloured by agent, boxes, tracks and
the cells each collaborator sent. One function draws a frame; videos are sequences of them.

Everything is drawn in a chosen frame of reference (by default the ego's BEV frame, x to the
right of the picture, y up) at a fixed scale, so successive frames line up in a video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from v2x.boxes import Boxes, bev_corners
from v2x.frame import Frame
from v2x.geometry import inverse, transform_points

__all__ = ["AGENT_COLOURS", "BEVCanvas", "render_frame", "write_video"]

#: BGR colours per agent, in frame order (ego first)
AGENT_COLOURS = [
    (80, 200, 255),
    (120, 255, 120),
    (255, 160, 90),
    (230, 120, 255),
    (90, 255, 255),
    (255, 255, 140),
    (160, 160, 255),
]


@dataclass
class BEVCanvas:
    """Maps metres in a reference frame to pixels."""

    x_range: tuple[float, float] = (-70.4, 70.4)
    y_range: tuple[float, float] = (-40.0, 40.0)
    pixels_per_metre: float = 6.0

    @property
    def size(self) -> tuple[int, int]:
        w = int((self.x_range[1] - self.x_range[0]) * self.pixels_per_metre)
        h = int((self.y_range[1] - self.y_range[0]) * self.pixels_per_metre)
        return w, h

    def blank(self) -> np.ndarray:
        w, h = self.size
        return np.full((h, w, 3), 18, dtype=np.uint8)

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        px = (xy[:, 0] - self.x_range[0]) * self.pixels_per_metre
        py = (self.y_range[1] - xy[:, 1]) * self.pixels_per_metre
        return np.stack([px, py], axis=1)

    def draw_points(self, img: np.ndarray, xy: np.ndarray, colour: tuple[int, int, int]) -> None:
        p = self.to_px(xy).astype(np.int64)
        h, w = img.shape[:2]
        ok = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
        img[p[ok, 1], p[ok, 0]] = colour

    def draw_boxes(
        self, img: np.ndarray, boxes: Boxes, colour, thickness: int = 1, label_ids: bool = False
    ) -> None:
        if len(boxes) == 0:
            return
        corners = bev_corners(boxes.xyzlwhy)
        for i, c in enumerate(corners):
            pts = self.to_px(c).round().astype(np.int32)
            col = colour(int(boxes.track_ids[i])) if callable(colour) else colour
            cv2.polylines(img, [pts], True, col, thickness, cv2.LINE_AA)
            front = self.to_px(c[[0, 3]].mean(axis=0, keepdims=True))[0]
            centre = self.to_px(boxes.xyzlwhy[i : i + 1, :2])[0]
            cv2.line(
                img,
                tuple(centre.round().astype(int)),
                tuple(front.round().astype(int)),
                col,
                thickness,
                cv2.LINE_AA,
            )
            if label_ids and boxes.track_ids[i] >= 0:
                cv2.putText(
                    img,
                    str(int(boxes.track_ids[i])),
                    tuple(pts[0]),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.35,
                    col,
                    1,
                    cv2.LINE_AA,
                )

    def draw_cells(
        self, img: np.ndarray, centres_xy: np.ndarray, cell: float, colour, alpha: float = 0.35
    ) -> None:
        """Translucent squares of side ``cell`` metres at the given centres (sent BEV cells)."""
        if len(centres_xy) == 0:
            return
        overlay = img.copy()
        half = cell / 2 * self.pixels_per_metre
        for p in self.to_px(centres_xy):
            cv2.rectangle(
                overlay,
                (int(p[0] - half), int(p[1] - half)),
                (int(p[0] + half), int(p[1] + half)),
                colour,
                -1,
            )
        cv2.addWeighted(overlay, alpha, img, 1 - alpha, 0, dst=img)

    def draw_scale(self, img: np.ndarray, metres: float = 10.0) -> None:
        h = img.shape[0]
        x0, y0 = 15, h - 15
        x1 = int(x0 + metres * self.pixels_per_metre)
        cv2.line(img, (x0, y0), (x1, y0), (230, 230, 230), 2)
        cv2.putText(
            img,
            f"{metres:g} m",
            (x0, y0 - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (230, 230, 230),
            1,
            cv2.LINE_AA,
        )


def _track_colour(tid: int) -> tuple[int, int, int]:
    hue = int((tid * 0.618033988749895 % 1.0) * 179)
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def render_frame(
    frame: Frame,
    canvas: BEVCanvas | None = None,
    world_from_view: np.ndarray | None = None,
    detections: Boxes | None = None,
    tracks: Boxes | None = None,
    sent_cells: dict[str, np.ndarray] | None = None,
    cell: float = 0.8,
    show_gt: bool = True,
    title: str | None = None,
) -> np.ndarray:
    """A BGR image of one frame.

    ``world_from_view`` is the frame drawn in (default: the ego's BEV frame). Detections and
    tracks are given in that view frame; ``sent_cells`` maps agent id to (N, 2) cell centres in
    the view frame.
    """
    canvas = canvas or BEVCanvas()
    view = world_from_view if world_from_view is not None else frame.ego.world_from_bev
    view_inv = inverse(view)
    img = canvas.blank()
    colours = {aid: AGENT_COLOURS[k % len(AGENT_COLOURS)] for k, aid in enumerate(frame.agents)}
    for aid, cells in (sent_cells or {}).items():
        canvas.draw_cells(img, cells, cell, colours.get(aid, (200, 200, 200)))
    for aid, scan in frame.agents.items():
        pts = transform_points(view_inv @ scan.world_from_lidar, scan.points)
        canvas.draw_points(img, pts[:, :2], colours[aid])
    if show_gt:
        canvas.draw_boxes(img, frame.gt.transformed(view_inv), (255, 255, 255), 1)
    if detections is not None:
        canvas.draw_boxes(img, detections, (60, 60, 255), 2)
    if tracks is not None:
        canvas.draw_boxes(img, tracks, _track_colour, 2, label_ids=True)
    for aid, scan in frame.agents.items():
        p = canvas.to_px(transform_points(view_inv, scan.position[None])[:, :2])[0].round().astype(int)
        cv2.circle(img, tuple(p), 5, colours[aid], -1, cv2.LINE_AA)
        label = f"{aid}{' (ego)' if aid == frame.ego_id else ''}{' RSU' if scan.kind.value == 'rsu' else ''}"
        cv2.putText(
            img,
            label,
            (int(p[0]) + 7, int(p[1]) - 7),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            colours[aid],
            1,
            cv2.LINE_AA,
        )
    canvas.draw_scale(img)
    text = title or f"{frame.scenario}  frame {frame.index}  t={frame.timestamp_ns / 1e9:.1f}s"
    cv2.putText(img, text, (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
    return img


def write_video(frames: list[np.ndarray], path: str | Path, fps: float = 10.0) -> Path:
    """An MP4 (mp4v) that standard players open; falls back to MJPG/AVI if mp4v is unavailable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        path = path.with_suffix(".avi")
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for img in frames:
        writer.write(img)
    writer.release()
    return path
