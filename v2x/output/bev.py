"""Bird's-eye-view pictures with OpenCV: agents' points coloured by agent, ground-truth boxes
with heading marks, detections, tracks and the BEV cells each collaborator sent.

:func:`render_bev` draws one picture; a video is a sequence of them (:func:`write_video`).
Everything is drawn in one frame of reference (the ego's BEV frame, the world frame, or any
pose) at a fixed scale, so successive frames line up in a video. Picture x runs right, y up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from v2x.core.boxes import Boxes, bev_corners
from v2x.core.frame import AgentKind, Frame
from v2x.core.geometry import inverse, transform_points
from v2x.core.grid import DEFAULT_XY_RANGE

__all__ = [
    "AGENT_COLOURS",
    "RSU_COLOURS",
    "BEVCanvas",
    "agent_colours",
    "render_bev",
    "render_frame",
    "write_video",
]

#: BGR colours of vehicles' points, in frame order (the ego first: orange)
AGENT_COLOURS = [
    (40, 160, 255),  # orange
    (110, 230, 110),  # green
    (255, 170, 70),  # blue
    (255, 235, 90),  # cyan
    (110, 110, 255),  # red
    (90, 230, 230),  # yellow
    (200, 200, 200),  # grey
]
#: BGR colours of roadside units' points
RSU_COLOURS = [(255, 110, 220), (190, 150, 255), (170, 255, 200), (255, 255, 255)]
BACKGROUND = (22, 22, 22)
GT_SEEN = (235, 235, 235)
GT_UNSEEN = (110, 110, 110)
DETECTION = (60, 60, 255)


@dataclass
class BEVCanvas:
    """Maps metres in the view frame to pixels."""

    x_range: tuple[float, float] = (DEFAULT_XY_RANGE[0], DEFAULT_XY_RANGE[2])
    y_range: tuple[float, float] = (DEFAULT_XY_RANGE[1], DEFAULT_XY_RANGE[3])
    pixels_per_metre: float = 8.0

    @property
    def size(self) -> tuple[int, int]:
        w = round((self.x_range[1] - self.x_range[0]) * self.pixels_per_metre)
        h = round((self.y_range[1] - self.y_range[0]) * self.pixels_per_metre)
        return w, h

    def blank(self) -> np.ndarray:
        w, h = self.size
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[:] = BACKGROUND
        return img

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        px = (xy[:, 0] - self.x_range[0]) * self.pixels_per_metre
        py = (self.y_range[1] - xy[:, 1]) * self.pixels_per_metre
        return np.stack([px, py], axis=1)

    def draw_points(self, img: np.ndarray, xy: np.ndarray, colour: tuple[int, int, int]) -> None:
        p = np.floor(self.to_px(xy)).astype(np.int64)
        h, w = img.shape[:2]
        ok = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
        img[p[ok, 1], p[ok, 0]] = colour

    def draw_boxes(
        self,
        img: np.ndarray,
        boxes: Boxes,
        colour,
        thickness: int = 1,
        label_ids: bool = False,
    ) -> None:
        """Box outlines with a line from the centre to the front (the heading mark).
        ``colour`` is a BGR tuple, or a function of the box index giving one."""
        if len(boxes) == 0:
            return
        corners = bev_corners(boxes.xyzlwhy)
        for i, c in enumerate(corners):
            pts = np.round(self.to_px(c)).astype(np.int32)
            col = colour(i) if callable(colour) else colour
            cv2.polylines(img, [pts], True, col, thickness, cv2.LINE_AA)
            front = np.round(self.to_px(c[[0, 3]].mean(axis=0))[0]).astype(int)
            centre = np.round(self.to_px(boxes.xyzlwhy[i, :2])[0]).astype(int)
            cv2.line(img, tuple(centre), tuple(front), col, thickness, cv2.LINE_AA)
            if label_ids and boxes.track_ids[i] >= 0:
                _text(img, str(int(boxes.track_ids[i])), tuple(pts[0]), col, 0.38)

    def draw_cells(
        self, img: np.ndarray, centres_xy: np.ndarray, cell: float, colour, alpha: float = 0.6
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

    def draw_scale(self, img: np.ndarray) -> None:
        """A scale bar of a round length, about a sixth of the picture wide."""
        h, w = img.shape[:2]
        target = w / 6 / self.pixels_per_metre
        metres = next((m for m in (100, 50, 20, 10, 5, 2, 1) if m <= target), 1)
        x0, y0 = 14, h - 14
        x1 = int(x0 + metres * self.pixels_per_metre)
        cv2.line(img, (x0, y0), (x1, y0), (235, 235, 235), 2)
        for x in (x0, x1):
            cv2.line(img, (x, y0 - 4), (x, y0 + 4), (235, 235, 235), 2)
        _text(img, f"{metres:g} m", (x0, y0 - 8), (235, 235, 235), 0.45)


def _text(img, text: str, org, colour, scale: float = 0.45) -> None:
    """Text with a dark outline, readable over points."""
    org = (int(org[0]), int(org[1]))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _track_colour(tid: int) -> tuple[int, int, int]:
    hue = int((tid * 0.618033988749895 % 1.0) * 179)
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def agent_colours(agent_ids: list[str], rsu_ids: set[str] = frozenset()) -> dict[str, tuple[int, int, int]]:
    """BGR colour per agent: vehicles from :data:`AGENT_COLOURS` in order (ego first),
    roadside units from :data:`RSU_COLOURS`."""
    out, nv, nr = {}, 0, 0
    for aid in agent_ids:
        if aid in rsu_ids:
            out[aid] = RSU_COLOURS[nr % len(RSU_COLOURS)]
            nr += 1
        else:
            out[aid] = AGENT_COLOURS[nv % len(AGENT_COLOURS)]
            nv += 1
    return out


def _view_pose(frame: Frame | None, view) -> np.ndarray:
    if isinstance(view, np.ndarray):
        return view
    if view == "world":
        return np.eye(4)
    if view == "ego":
        if frame is None:
            raise ValueError("view='ego' needs a Frame; give points in the view frame and view='world'")
        return frame.ego.world_from_bev
    raise ValueError(f"view must be 'ego', 'world' or a 4x4 world_from_view pose, not {view!r}")


def render_bev(
    source: Frame | Mapping[str, np.ndarray],
    gt: Boxes | None = None,
    detections: Boxes | None = None,
    tracks: Boxes | None = None,
    sent_cells: Mapping[str, np.ndarray] | None = None,
    *,
    view: str | np.ndarray = "ego",
    x_range: tuple[float, float] = (DEFAULT_XY_RANGE[0], DEFAULT_XY_RANGE[2]),
    y_range: tuple[float, float] = (DEFAULT_XY_RANGE[1], DEFAULT_XY_RANGE[3]),
    pixels_per_metre: float = 8.0,
    cell: float = 0.8,
    agent_positions: Mapping[str, np.ndarray] | None = None,
    show_gt: bool = True,
    title: str | None = None,
    legend: bool = True,
) -> np.ndarray:
    """A BGR uint8 picture of one time step, seen from above.

    ``source`` is a :class:`~v2x.core.frame.Frame` (each agent's points are moved into the view
    frame with its pose), or ``{agent id: (N, >=2) points}`` already in the view frame.
    ``view`` is ``"ego"`` (the ego's BEV frame, for a Frame), ``"world"``, or a 4x4
    ``world_from_view`` pose; the ranges are metres in that frame.

    ``gt``, ``detections`` and ``tracks`` are boxes in the view frame. With a Frame and no
    ``gt``, the frame's ground truth is drawn: white where some agent's LiDAR hit the object,
    grey where none did. Detections are red, tracks coloured and labelled by track id.
    ``sent_cells`` maps an agent id to (N, 2) centres (view frame) of the BEV cells it sent,
    drawn as translucent squares of side ``cell`` in that agent's colour.
    """
    canvas = BEVCanvas(tuple(x_range), tuple(y_range), pixels_per_metre)
    img = canvas.blank()
    frame = source if isinstance(source, Frame) else None
    world_from_view = _view_pose(frame, view)
    view_from_world = inverse(world_from_view)
    if frame is not None:
        rsu_ids = {k for k, a in frame.agents.items() if a.kind == AgentKind.RSU}
        points = {
            k: transform_points(view_from_world @ a.world_from_lidar, a.points)
            for k, a in frame.agents.items()
        }
        positions = {
            k: transform_points(view_from_world, a.position[None])[0] for k, a in frame.agents.items()
        }
    else:
        rsu_ids = set()
        points = {str(k): np.asarray(v) for k, v in source.items()}
        positions = {str(k): np.asarray(v) for k, v in (agent_positions or {}).items()}
    colours = agent_colours(list(points) + [k for k in positions if k not in points], rsu_ids)

    for aid, cells in (sent_cells or {}).items():
        canvas.draw_cells(img, np.asarray(cells).reshape(-1, 2), cell, colours.get(str(aid), (200, 200, 200)))
    # the ego last, so its own points are on top
    for aid in reversed(list(points)):
        canvas.draw_points(img, points[aid][:, :2], colours[aid])

    if show_gt:
        if gt is not None:
            canvas.draw_boxes(img, gt, GT_SEEN, 1)
        elif frame is not None and len(frame.gt):
            boxes = frame.gt.transformed(view_from_world)
            seen = np.sum(list(frame.points_per_gt_box().values()), axis=0) > 0
            canvas.draw_boxes(img, boxes, lambda i: GT_SEEN if seen[i] else GT_UNSEEN, 1)
    if detections is not None:
        canvas.draw_boxes(img, detections, DETECTION, 2)
    if tracks is not None:
        canvas.draw_boxes(img, tracks, lambda i: _track_colour(int(tracks.track_ids[i])), 2, label_ids=True)

    ego_id = frame.ego_id if frame is not None else None
    for aid, pos in positions.items():
        p = np.round(canvas.to_px(np.asarray(pos)[:2])[0]).astype(int)
        col = colours[aid]
        if aid in rsu_ids:
            cv2.drawMarker(img, tuple(p), (0, 0, 0), cv2.MARKER_TRIANGLE_UP, 16, 5, cv2.LINE_AA)
            cv2.drawMarker(img, tuple(p), col, cv2.MARKER_TRIANGLE_UP, 14, 2, cv2.LINE_AA)
        else:
            cv2.circle(img, tuple(p), 7, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(img, tuple(p), 5, col, -1, cv2.LINE_AA)
        _text(img, aid + (" ego" if aid == ego_id else ""), (p[0] + 9, p[1] - 9), col, 0.45)

    canvas.draw_scale(img)
    if legend:
        _legend(img, colours, rsu_ids, ego_id)
    if title is None and frame is not None:
        title = f"{frame.scenario}  frame {frame.index}  t={frame.timestamp_ns / 1e9:.1f} s"
    if title:
        _text(img, title, (10, 20), (235, 235, 235), 0.5)
    return img


def _legend(img, colours: dict, rsu_ids: set, ego_id: str | None) -> None:
    """Agent colour swatches in the top right corner."""
    w = img.shape[1]
    for k, (aid, col) in enumerate(colours.items()):
        kind = "RSU" if aid in rsu_ids else ("ego" if aid == ego_id else "CAV")
        y = 18 + 17 * k
        cv2.rectangle(img, (w - 120, y - 9), (w - 110, y + 1), col, -1)
        _text(img, f"{aid} {kind}", (w - 104, y), col, 0.42)


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
    """:func:`render_bev` of a Frame on a given canvas (kept for callers written against it)."""
    canvas = canvas or BEVCanvas()
    return render_bev(
        frame,
        None,
        detections,
        tracks,
        sent_cells,
        view="ego" if world_from_view is None else world_from_view,
        x_range=canvas.x_range,
        y_range=canvas.y_range,
        pixels_per_metre=canvas.pixels_per_metre,
        cell=cell,
        show_gt=show_gt,
        title=title,
    )


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
