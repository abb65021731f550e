"""DAIR-V2X label files as boxes, and which of their objects count as ground truth.

Real DAIR labels list objects annotated in the camera only, with all-zero 3D size and location:
normal, not damage. Those, and objects whose box cannot exist (a size that is not positive, a
value that is NaN or infinite), are dropped and counted by reason, object by object, instead of
failing the frame. A value that is not a number at all, or a file that is not a list of
objects, is still a :class:`DatasetError` naming the file and the field.

The cooperative ground truth is evaluated as DAIR-V2X's reference loaders do (OpenCOOD/CoAlign's
DAIR configs, ``cav_lidar_range`` / ``gt_range`` [-100.8, -40, -3.5, 100.8, 40, 1.5] and the
loader's z widened by 1 m): a box counts when all eight corners, in the vehicle's LiDAR frame,
lie inside :data:`DAIR_GT_RANGE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from v2x.core.boxes import Boxes, box_corners, class_from_name
from v2x.datasets.errors import DatasetError
from v2x.datasets.files import read_json
from v2x.datasets.values import any_float

__all__ = [
    "BAD_SIZE",
    "DAIR_GT_RANGE",
    "DROP_REASONS",
    "NOT_FINITE",
    "NO_3D_BOX",
    "in_eval_range",
    "parse_labels",
    "parse_labels_counted",
    "world_label_boxes",
]

#: x_min, y_min, z_min, x_max, y_max, z_max in the vehicle LiDAR frame (metres)
DAIR_GT_RANGE = (-100.8, -40.0, -4.5, 100.8, 40.0, 2.5)

NO_3D_BOX = "no_3d_box"
BAD_SIZE = "nonpositive_size"
NOT_FINITE = "not_finite"
DROP_REASONS = {
    NO_3D_BOX: "annotated without a 3D box (all-zero size and location)",
    BAD_SIZE: "with a size that is not positive",
    NOT_FINITE: "with a NaN or infinite value",
}

#: reason -> indices of the dropped objects in their file
Drops = dict[str, list[int]]


def box_problem(row: Sequence[float]) -> str | None:
    """Why an ``x y z l w h yaw`` row is no box, or None."""
    if not np.isfinite(row).all():
        return NOT_FINITE
    if not any(row[:6]):
        return NO_3D_BOX
    if min(row[3:6]) <= 0:
        return BAD_SIZE
    return None


def _class(obj: dict, path: Path, where: str) -> int:
    name = obj.get("type", "")
    if not isinstance(name, str):
        raise DatasetError(path, f"{where}.type", f"not a class name: {name!r}")
    return int(class_from_name(name))


def _label_row(obj: Any, path: Path, where: str) -> list[float]:
    if not isinstance(obj, dict):
        raise DatasetError(path, where, f"expected an object, got {type(obj).__name__}")
    for key in ("3d_dimensions", "3d_location", "rotation"):
        if key not in obj:
            raise DatasetError(path, where, f"missing key {key!r}")
    dims, loc = obj["3d_dimensions"], obj["3d_location"]
    for key, part in (("3d_dimensions", dims), ("3d_location", loc)):
        if not isinstance(part, dict):
            raise DatasetError(path, f"{where}.{key}", "expected an object")
    try:
        row = [any_float(loc[k], path, f"{where}.3d_location.{k}") for k in "xyz"]
        row += [any_float(dims[k], path, f"{where}.3d_dimensions.{k}") for k in "lwh"]
    except KeyError as exc:
        raise DatasetError(path, where, f"missing key {exc}") from exc
    row.append(any_float(obj["rotation"], path, f"{where}.rotation"))
    return row


def _objects(path: Path) -> list:
    items = read_json(path)
    if not isinstance(items, list):
        raise DatasetError(path, "labels", "expected a list of objects")
    return items


def _keep(rows: list[list[float]], classes: list[int], drops: Drops) -> Boxes:
    dropped = {i for v in drops.values() for i in v}
    keep = [i for i in range(len(rows)) if i not in dropped]
    return Boxes(
        np.array([rows[i] for i in keep], dtype=np.float64).reshape(-1, 7), labels=[classes[i] for i in keep]
    )


def parse_labels_counted(path: str | Path) -> tuple[Boxes, Drops]:
    """A DAIR label file (list of objects, sensor frame) as :class:`Boxes`, and the objects
    dropped, by reason."""
    path = Path(path)
    items = _objects(path)
    rows, classes, drops = [], [], {}
    for i, obj in enumerate(items):
        rows.append(_label_row(obj, path, f"[{i}]"))
        classes.append(_class(obj, path, f"[{i}]"))
        reason = box_problem(rows[-1])
        if reason:
            drops.setdefault(reason, []).append(i)
    return _keep(rows, classes, drops), drops


def parse_labels(path: str | Path) -> Boxes:
    """:func:`parse_labels_counted` without the count."""
    return parse_labels_counted(path)[0]


def _box_from_corners(corners: np.ndarray) -> list[float]:
    """An upright box from its 8 corners in any order.

    Seen from above, one corner's nearest neighbours are: the corner straight above it, then
    the two ends of its shorter and longer edges (each with its twin above), then the diagonal.
    Sizes are the edges' 3D lengths, so a box tilted a little in this frame keeps its size.
    """
    c = np.asarray(corners, dtype=np.float64).reshape(8, 3)
    order = np.argsort(np.linalg.norm(c[:, :2] - c[0, :2], axis=1), kind="stable")

    def edge(a: int, b: int) -> np.ndarray:  # of two candidates, the one at the same level
        ea, eb = c[order[a]] - c[0], c[order[b]] - c[0]
        return ea if np.linalg.norm(ea) <= np.linalg.norm(eb) else eb

    e_up, e_short, e_long = c[order[1]] - c[0], edge(2, 3), edge(4, 5)
    yaw = float(np.arctan2(e_long[1], e_long[0]))
    return [
        *c.mean(axis=0),
        float(np.linalg.norm(e_long)),
        float(np.linalg.norm(e_short)),
        float(np.linalg.norm(e_up)),
        yaw,
    ]


def _verticality(c: np.ndarray) -> float:
    """How upright a box's corners stand: |cos| of its vertical edges' angle to z (the edge from
    a corner to its twin above, its nearest neighbour seen from above)."""
    order = np.argsort(np.linalg.norm(c[:, :2] - c[0, :2], axis=1), kind="stable")
    up = c[order[1]] - c[0]
    return float(abs(up[2]) / (np.linalg.norm(up) or 1.0))


def _world_row(obj: Any, path: Path, where: str, lidar_from_world: np.ndarray) -> list[float]:
    """One object as a box in the world frame."""
    if not isinstance(obj, dict) or "world_8_points" not in obj:
        return _label_row(obj, path, where)
    try:
        corners = np.asarray(obj["world_8_points"], dtype=np.float64).reshape(8, 3)
    except (TypeError, ValueError) as exc:
        raise DatasetError(path, f"{where}.world_8_points", f"expected 8 x 3 numbers: {exc}") from exc
    if not np.isfinite(corners).all():
        return [float("nan")] * 7
    if not corners.any():
        return [0.0] * 7
    if "3d_location" in obj:
        try:
            param = _label_row(obj, path, where)
        except DatasetError:
            param = None
        if param is not None and box_problem(param) is None:
            d = np.linalg.norm(box_corners(np.array(param))[0][:, None] - corners[None], axis=2)
            if d.min(axis=1).max() < 0.02:
                return param
    local = corners @ lidar_from_world[:3, :3].T + lidar_from_world[:3, 3]
    if _verticality(local) <= _verticality(corners):
        return _box_from_corners(corners)
    # labelled upright in the LiDAR frame (DAIR's own labels): fitted there, then moved
    box = Boxes(np.array([_box_from_corners(local)])).transformed(np.linalg.inv(lidar_from_world))
    return list(box.xyzlwhy[0])


def world_label_boxes(path: str | Path, lidar_from_world: np.ndarray | None = None) -> tuple[Boxes, Drops]:
    """``cooperative/label_world`` boxes in the world frame, and the objects dropped.

    DAIR-V2X documents only ``world_8_points`` as valid in these files (the reference loaders
    read nothing else), and corners fix a box only up to a half turn of heading. So the
    location/size/rotation entries are used when their corners agree with ``world_8_points``
    within 2 cm (files our writer made: exact heading), else the box comes from the corners,
    fitted in the frame where it stands upright: the vehicle LiDAR's (``lidar_from_world``) for
    DAIR's labels, drawn there, as the reference loaders fit them; the world's for ours.
    """
    path = Path(path)
    lidar_from_world = (
        np.eye(4) if lidar_from_world is None else np.asarray(lidar_from_world, dtype=np.float64)
    )
    items = _objects(path)
    rows, classes, drops = [], [], {}
    for i, obj in enumerate(items):
        rows.append(_world_row(obj, path, f"[{i}]", lidar_from_world))
        classes.append(_class(obj, path, f"[{i}]"))
        reason = box_problem(rows[-1])
        if reason:
            drops.setdefault(reason, []).append(i)
    return _keep(rows, classes, drops), drops


def in_eval_range(boxes: Boxes, xyz_range: Sequence[float] = DAIR_GT_RANGE) -> np.ndarray:
    """Mask of boxes (in the vehicle LiDAR frame) whose eight corners all lie in ``xyz_range``."""
    if not len(boxes):
        return np.zeros(0, dtype=bool)
    lo, hi = np.asarray(xyz_range[:3]), np.asarray(xyz_range[3:])
    corners = box_corners(boxes.xyzlwhy)
    return ((corners >= lo) & (corners <= hi)).all(axis=(1, 2))
