"""DAIR-V2X-C cooperative logs: reader and writer.

Layout (paths in ``cooperative/data_info.json`` are relative to the root)::

    cooperative/data_info.json          pairs: vehicle + infrastructure point clouds, label, system_error_offset
    cooperative/label_world/<v>.json    cooperative ground truth in the world frame (optional)
    cooperative/calib/lidar_i2v/<v>.json infrastructure LiDAR -> vehicle LiDAR
    vehicle-side/velodyne/<v>.pcd, label/lidar/<v>.json, calib/{lidar_to_novatel,novatel_to_world}/<v>.json
    infrastructure-side/velodyne/<i>.pcd, label/virtuallidar/<i>.json, calib/virtuallidar_to_world/<i>.json

Poses: world <- vehicle = novatel_to_world . lidar_to_novatel; world <- infrastructure =
virtuallidar_to_world with ``system_error_offset`` added to its x and y translation. When the
world calibrations are absent (the public cooperative calibration alone, as in our sample),
the vehicle LiDAR frame *is* the world and the infrastructure sits at ``lidar_i2v``. The
vehicle is the ego (agent id ``"vehicle"``), the roadside unit the collaborator
(``"infrastructure"``), dropped beyond 100 m as in the reference protocol.

Ground truth: ``cooperative/label_world`` (its ``world_8_points``, as the reference loaders read
it) when the world calibrations exist; otherwise the vehicle's labels plus the infrastructure
labels that overlap none of them. Each side's own labels are ``AgentScan.labels``.

Labels may hold numbers as strings (the infrastructure side does): they are parsed, and a
string that is not a number is a :class:`DatasetError` naming the field. Time stamps come from
each side's ``data_info.json`` (microseconds); without them they are 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from v2x.core.boxes import Boxes, ObjectClass, box_corners, class_from_name
from v2x.core.frame import AgentKind, AgentScan, Frame, estimate_mount_height
from v2x.core.geometry import NotRigidError, check_rigid, inverse
from v2x.core.iou import bev_iou_matrix
from v2x.datasets.errors import DatasetError
from v2x.datasets.pcd import read_pcd_counted, write_pcd

__all__ = ["DairLog", "DairWriter", "is_dair_root"]

VEHICLE, INFRA = "vehicle", "infrastructure"
_INFO_NAMES = ("data_info.json", "selected_data_info.json")


def is_dair_root(root: Path) -> bool:
    return any((root / "cooperative" / n).is_file() for n in _INFO_NAMES)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DatasetError(path, "file", "missing") from exc
    except OSError as exc:
        raise DatasetError(path, "file", f"cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(path, "json", f"invalid JSON: {exc}") from exc


def _num(value: Any, path: Path, field: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise DatasetError(path, field, f"not a number: {value!r}") from exc
    if not np.isfinite(v):
        raise DatasetError(path, field, f"not finite: {value!r}")
    return v


def _rt(d: dict, path: Path, field: str) -> np.ndarray:
    """4x4 from ``{"rotation": 3x3, "translation": 3x1}``."""
    try:
        R = np.asarray(d["rotation"], dtype=np.float64).reshape(3, 3)
        t = np.asarray(d["translation"], dtype=np.float64).reshape(3)
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(path, field, f"expected rotation (3x3) and translation (3): {exc}") from exc
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    try:
        return check_rigid(T, field, tol=1e-3)
    except NotRigidError as exc:
        raise DatasetError(path, field, str(exc)) from exc


def _label_row(obj: Any, path: Path, where: str) -> list[float]:
    try:
        dims, loc = obj["3d_dimensions"], obj["3d_location"]
        row = [_num(loc[k], path, f"{where}.3d_location.{k}") for k in "xyz"]
        row += [_num(dims[k], path, f"{where}.3d_dimensions.{k}") for k in "lwh"]
        row.append(_num(obj["rotation"], path, f"{where}.rotation"))
    except (KeyError, TypeError) as exc:
        raise DatasetError(path, where, f"missing key {exc}") from exc
    if min(row[3:6]) <= 0:
        raise DatasetError(path, f"{where}.3d_dimensions", f"sizes must be positive: {row[3:6]}")
    return row


def parse_labels(path: Path) -> Boxes:
    """A DAIR label file (list of objects, sensor frame) as :class:`Boxes`."""
    items = _read_json(path)
    if not isinstance(items, list):
        raise DatasetError(path, "labels", "expected a list of objects")
    rows = [_label_row(obj, path, f"[{i}]") for i, obj in enumerate(items)]
    classes = [int(class_from_name(obj.get("type", ""))) for obj in items]
    return Boxes(np.array(rows).reshape(-1, 7), labels=classes)


def _box_from_corners(corners: np.ndarray) -> list[float]:
    """An upright box from its 8 corners in any order.

    Seen from above, one corner's nearest neighbours are: the corner straight above it, then
    the two ends of its shorter and longer edges (each with its twin above), then the diagonal.
    """
    c = np.asarray(corners, dtype=np.float64).reshape(8, 3)
    order = np.argsort(np.linalg.norm(c[:, :2] - c[0, :2], axis=1), kind="stable")
    e_short, e_long = c[order[2]] - c[0], c[order[4]] - c[0]
    yaw = float(np.arctan2(e_long[1], e_long[0]))
    height = float(c[:, 2].max() - c[:, 2].min())
    return [
        *c.mean(axis=0),
        float(np.linalg.norm(e_long[:2])),
        float(np.linalg.norm(e_short[:2])),
        height,
        yaw,
    ]


def _world_label_boxes(path: Path) -> Boxes:
    """``cooperative/label_world`` boxes in the world frame.

    DAIR-V2X documents only ``world_8_points`` as valid in these files (the reference loaders
    read nothing else), and corners fix a box only up to a half turn of heading. So the
    location/size/rotation entries are used when their corners agree with ``world_8_points``
    within 2 cm (files our writer made: exact heading), else the box comes from the corners.
    """
    items = _read_json(path)
    if not isinstance(items, list):
        raise DatasetError(path, "labels", "expected a list of objects")
    rows = []
    for i, obj in enumerate(items):
        if isinstance(obj, dict) and "world_8_points" in obj:
            try:
                corners = np.asarray(obj["world_8_points"], dtype=np.float64).reshape(8, 3)
            except (TypeError, ValueError) as exc:
                raise DatasetError(path, f"[{i}].world_8_points", f"expected 8 x 3 numbers: {exc}") from exc
            if not np.isfinite(corners).all():
                raise DatasetError(path, f"[{i}].world_8_points", "not finite")
            row = _box_from_corners(corners)
            if "3d_location" in obj:
                try:
                    param = _label_row(obj, path, f"[{i}]")
                except DatasetError:
                    param = None
                if param is not None:
                    d = np.linalg.norm(box_corners(np.array(param))[0][:, None] - corners[None], axis=2)
                    if d.min(axis=1).max() < 0.02:
                        row = param
            rows.append(row)
        else:
            rows.append(_label_row(obj, path, f"[{i}]"))
    classes = [int(class_from_name(obj.get("type", ""))) for obj in items]
    return Boxes(np.array(rows).reshape(-1, 7), labels=classes)


class DairLog:
    """Lazily loaded frames of a DAIR-V2X-C cooperative log."""

    format = "dair-v2x-c"

    def __init__(
        self, root: str | Path, max_cav: int = 2, comm_range: float | None = None, skip_bad: bool = False
    ):
        self.root = Path(root)
        info_path = next(
            (self.root / "cooperative" / n for n in _INFO_NAMES if (self.root / "cooperative" / n).is_file()),
            None,
        )
        if info_path is None:
            raise DatasetError(self.root / "cooperative" / "data_info.json", "file", "missing")
        self.info_path = info_path
        entries = _read_json(info_path)
        if not isinstance(entries, list):
            raise DatasetError(info_path, "entries", "expected a list")
        self.max_cav = max_cav
        self.comm_range = float(comm_range) if comm_range is not None else 100.0
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []
        self.dropped_agents = 0
        self.dropped_points = 0
        self.out_of_range_agents = 0
        self.missing: list[tuple[str, str]] = []
        side_info = {s: self._side_info(s) for s in ("vehicle-side", "infrastructure-side")}
        self._entries: list[dict] = []
        for i, e in enumerate(entries):
            try:
                vpath = e["vehicle_pointcloud_path"]
                ipath = e["infrastructure_pointcloud_path"]
            except (KeyError, TypeError):
                raise DatasetError(
                    info_path, f"[{i}]", "entry without vehicle/infrastructure point cloud paths"
                ) from None
            if not (self.root / vpath).is_file():
                self.missing.append((vpath, "vehicle point cloud missing"))
                continue
            vid, iid = Path(vpath).stem, Path(ipath).stem
            vinfo = side_info["vehicle-side"].get(vid, {})
            iinfo = side_info["infrastructure-side"].get(iid, {})
            e = dict(
                e,
                _vid=vid,
                _iid=iid,
                _batch=str(vinfo.get("batch_id", "dair")),
                _ts=self._timestamp_us(vinfo, "vehicle-side"),
                _its=self._timestamp_us(iinfo, "infrastructure-side"),
            )
            self._entries.append(e)
        self._entries.sort(key=lambda e: (e["_batch"], e["_ts"], e["_vid"]))

    def _timestamp_us(self, info: dict, side: str) -> int:
        raw = info.get("pointcloud_timestamp", 0) or 0
        return int(_num(raw, self.root / side / "data_info.json", "pointcloud_timestamp"))

    def _side_info(self, side: str) -> dict[str, dict]:
        path = self.root / side / "data_info.json"
        if not path.is_file():
            return {}
        items = _read_json(path)
        return {Path(it.get("pointcloud_path", "")).stem: it for it in items if isinstance(it, dict)}

    def __len__(self) -> int:
        return len(self._entries)

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(e["_batch"] for e in self._entries))

    def scenario_indices(self, scenario: str) -> list[int]:
        return [i for i, e in enumerate(self._entries) if e["_batch"] == scenario]

    def frame_name(self, i: int) -> str:
        return f"{self._entries[i]['_batch']}/{self._entries[i]['_vid']}"

    def iter_scenario(self, scenario: str) -> Iterator[Frame]:
        """One batch's frames in time order (``skip_bad`` applies as in iteration)."""
        yield from self._iter(self.scenario_indices(scenario))

    def __iter__(self) -> Iterator[Frame]:
        yield from self._iter(range(len(self)))

    def _iter(self, indices) -> Iterator[Frame]:
        for i in indices:
            try:
                yield self[i]
            except DatasetError as exc:
                if not self.skip_bad:
                    raise
                self.skipped.append((self.frame_name(i), str(exc)))

    # -- poses ----------------------------------------------------------------------------------
    def _poses(self, e: dict) -> tuple[np.ndarray, np.ndarray, bool]:
        """world <- vehicle, world <- infrastructure, and whether those are real world poses."""
        vid, iid = e["_vid"], e["_iid"]
        r = self.root
        l2n = r / "vehicle-side" / "calib" / "lidar_to_novatel" / f"{vid}.json"
        n2w = r / "vehicle-side" / "calib" / "novatel_to_world" / f"{vid}.json"
        v2w = r / "infrastructure-side" / "calib" / "virtuallidar_to_world" / f"{iid}.json"
        if l2n.is_file() and n2w.is_file() and v2w.is_file():
            lidar_to_novatel = _read_json(l2n)
            world_from_vehicle = _rt(_read_json(n2w), n2w, "novatel_to_world") @ _rt(
                lidar_to_novatel.get("transform", lidar_to_novatel), l2n, "transform"
            )
            world_from_infra = _rt(_read_json(v2w), v2w, "virtuallidar_to_world")
            off = e.get("system_error_offset") or {}
            world_from_infra[0, 3] += _num(
                off.get("delta_x", 0.0), self.info_path, "system_error_offset.delta_x"
            )
            world_from_infra[1, 3] += _num(
                off.get("delta_y", 0.0), self.info_path, "system_error_offset.delta_y"
            )
            return world_from_vehicle, world_from_infra, True
        i2v = r / "cooperative" / "calib" / "lidar_i2v" / f"{vid}.json"
        return np.eye(4), _rt(_read_json(i2v), i2v, "lidar_i2v"), False

    def _read_points(self, path: Path) -> np.ndarray:
        points, dropped = read_pcd_counted(path, drop_nonfinite=self.skip_bad)
        self.dropped_points += dropped
        return points

    def __getitem__(self, i: int) -> Frame:
        e = self._entries[i]
        world_from_vehicle, world_from_infra, in_world = self._poses(e)
        ts = e["_ts"] * 1000
        vpts = self._read_points(self.root / e["vehicle_pointcloud_path"])
        vlab = parse_labels(self.root / "vehicle-side" / "label" / "lidar" / f"{e['_vid']}.json")
        agents = {
            VEHICLE: AgentScan(
                VEHICLE,
                AgentKind.VEHICLE,
                vpts,
                world_from_vehicle,
                ts,
                estimate_mount_height(vpts),
                vlab.transformed(world_from_vehicle),
            )
        }
        far = np.hypot(*(world_from_infra[:2, 3] - world_from_vehicle[:2, 3])) > self.comm_range
        if self.max_cav >= 2 and not far:
            ipts = self._read_points(self.root / e["infrastructure_pointcloud_path"])
            ilab = parse_labels(
                self.root / "infrastructure-side" / "label" / "virtuallidar" / f"{e['_iid']}.json"
            )
            agents[INFRA] = AgentScan(
                INFRA,
                AgentKind.RSU,
                ipts,
                world_from_infra,
                e["_its"] * 1000 or ts,
                estimate_mount_height(ipts),
                ilab.transformed(world_from_infra),
            )
        elif far:
            self.out_of_range_agents += 1
        coop = self.root / e.get("cooperative_label_path", "")
        if in_world and e.get("cooperative_label_path") and coop.is_file():
            gt = _world_label_boxes(coop)
        else:
            gt = agents[VEHICLE].labels
            if INFRA in agents and len(agents[INFRA].labels):
                extra = agents[INFRA].labels
                if len(gt):
                    overlap = bev_iou_matrix(extra.xyzlwhy, gt.xyzlwhy).max(axis=1) > 0.1
                    extra = extra[~overlap]
                gt = Boxes.concat([gt, extra])
        return Frame(e["_batch"], i, ts, agents, VEHICLE, gt)


class DairWriter:
    """Writes frames as a DAIR-V2X-C cooperative tree: the ego and its first roadside unit.

    DAIR-V2X-C pairs one vehicle with one infrastructure unit, so a frame needs an RSU among
    its agents; further agents are not written. Files are renamed into place only after all of
    a frame's files exist, and ``cooperative/data_info.json`` is rewritten (atomically) last, so
    an interrupted write leaves either ``.tmp`` files (which ``check`` reports) or files that no
    index lists (which readers never see).

    The vehicle's own label file leaves out the vehicle itself (a car does not label itself);
    the cooperative label keeps every object. The format has no place for per-object extras
    such as LiDAR hit counts, so ``extra`` is accepted and ignored.
    """

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root) / split if split else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._pairs: list[dict] = []
        self._side: dict[str, list[dict]] = {"vehicle-side": [], "infrastructure-side": []}
        info = self.root / "cooperative" / "data_info.json"
        if info.is_file():  # appending to an existing tree
            self._pairs = json.loads(info.read_text())
            for side in self._side:
                p = self.root / side / "data_info.json"
                if p.is_file():
                    self._side[side] = json.loads(p.read_text())
        self._next = len(self._pairs)
        self.frames = 0

    def write(self, frame: Frame, extra: dict | None = None) -> None:
        rsus = [a for a in frame.collaborators if a.kind == AgentKind.RSU]
        if not rsus:
            raise ValueError(f"frame {frame.scenario}/{frame.index}: DAIR-V2X-C needs a roadside unit")
        veh, inf = frame.ego, rsus[0]
        vid, iid = f"{2 * self._next:06d}", f"{2 * self._next + 1:06d}"
        files: list[tuple[Path, Path]] = []
        try:
            self._stage_frame(frame, veh, inf, vid, iid, files)
            for tmp, final in files:
                os.replace(tmp, final)
        finally:
            for tmp, _ in files:
                if tmp.exists():
                    tmp.unlink()
        self._next += 1
        self._index_frame(frame, vid, iid, inf.timestamp_ns or frame.timestamp_ns)
        self.frames += 1

    def _stage_frame(
        self, frame: Frame, veh: AgentScan, inf: AgentScan, vid: str, iid: str, files: list
    ) -> None:
        r = self.root

        def stage(rel: str, writer) -> None:
            final = r / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp")
            files.append((tmp, final))
            writer(tmp)

        def stage_json(rel: str, obj: Any) -> None:
            stage(rel, lambda p: p.write_text(json.dumps(obj, indent=1)))

        ts_us = frame.timestamp_ns // 1000
        t_col = np.full(len(veh.points), ts_us / 1e6, dtype=np.float64)
        stage(
            f"vehicle-side/velodyne/{vid}.pcd",
            lambda p: write_pcd(
                p, veh.points, "binary_compressed", "uint8", extra_fields={"timestamp": t_col}
            ),
        )
        stage(
            f"infrastructure-side/velodyne/{iid}.pcd",
            lambda p: write_pcd(p, inf.points, "binary_compressed", "float"),
        )
        own = frame.gt.track_ids == (int(frame.ego_id) if frame.ego_id.lstrip("-").isdigit() else -2)
        stage_json(
            f"vehicle-side/label/lidar/{vid}.json",
            _labels_json(frame.gt[~own].transformed(inverse(veh.world_from_lidar)), False),
        )
        stage_json(
            f"infrastructure-side/label/virtuallidar/{iid}.json",
            _labels_json(frame.gt.transformed(inverse(inf.world_from_lidar)), True),
        )
        stage_json(f"vehicle-side/calib/lidar_to_novatel/{vid}.json", {"transform": _rt_json(np.eye(4))})
        stage_json(f"vehicle-side/calib/novatel_to_world/{vid}.json", _rt_json(veh.world_from_lidar))
        stage_json(
            f"infrastructure-side/calib/virtuallidar_to_world/{iid}.json", _rt_json(inf.world_from_lidar)
        )
        stage_json(
            f"cooperative/calib/lidar_i2v/{vid}.json",
            _rt_json(inverse(veh.world_from_lidar) @ inf.world_from_lidar),
        )
        world = []
        for item, corners in zip(_labels_json(frame.gt, False), box_corners(frame.gt.xyzlwhy), strict=True):
            item["world_8_points"] = corners.tolist()
            world.append(item)
        stage_json(f"cooperative/label_world/{vid}.json", world)

    def _index_frame(self, frame: Frame, vid: str, iid: str, infra_ts_ns: int) -> None:
        ts_us = frame.timestamp_ns // 1000
        batch = str(frame.scenario)
        self._side["vehicle-side"].append(
            {
                "pointcloud_path": f"vehicle-side/velodyne/{vid}.pcd",
                "image_path": f"vehicle-side/image/{vid}.jpg",
                "label_lidar_std_path": f"vehicle-side/label/lidar/{vid}.json",
                "calib_lidar_to_novatel_path": f"vehicle-side/calib/lidar_to_novatel/{vid}.json",
                "calib_novatel_to_world_path": f"vehicle-side/calib/novatel_to_world/{vid}.json",
                "pointcloud_timestamp": str(ts_us),
                "frame_id": vid,
                "batch_id": batch,
            }
        )
        self._side["infrastructure-side"].append(
            {
                "pointcloud_path": f"infrastructure-side/velodyne/{iid}.pcd",
                "image_path": f"infrastructure-side/image/{iid}.jpg",
                "label_lidar_std_path": f"infrastructure-side/label/virtuallidar/{iid}.json",
                "calib_virtuallidar_to_world_path": f"infrastructure-side/calib/virtuallidar_to_world/{iid}.json",
                "pointcloud_timestamp": str(infra_ts_ns // 1000),
                "frame_id": iid,
                "batch_id": batch,
            }
        )
        self._pairs.append(
            {
                "vehicle_pointcloud_path": f"vehicle-side/velodyne/{vid}.pcd",
                "infrastructure_pointcloud_path": f"infrastructure-side/velodyne/{iid}.pcd",
                "vehicle_image_path": f"vehicle-side/image/{vid}.jpg",
                "infrastructure_image_path": f"infrastructure-side/image/{iid}.jpg",
                "cooperative_label_path": f"cooperative/label_world/{vid}.json",
                "system_error_offset": {"delta_x": 0.0, "delta_y": 0.0},
            }
        )
        self._flush_index()

    def _flush_index(self) -> None:
        for rel, obj in (
            ("vehicle-side/data_info.json", self._side["vehicle-side"]),
            ("infrastructure-side/data_info.json", self._side["infrastructure-side"]),
            ("cooperative/data_info.json", self._pairs),
        ):
            final = self.root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp")
            tmp.write_text(json.dumps(obj, indent=1))
            os.replace(tmp, final)

    def close(self) -> None:
        """Index files are rewritten after every frame; nothing is left to flush."""

    def __enter__(self) -> DairWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rt_json(T: np.ndarray) -> dict:
    return {"rotation": T[:3, :3].tolist(), "translation": [[float(v)] for v in T[:3, 3]]}


def _labels_json(boxes: Boxes, strings: bool) -> list[dict]:
    """DAIR label objects; the infrastructure side writes its numbers as strings, as the real one does."""
    out = []
    s = (lambda v: str(v)) if strings else (lambda v: v)
    for b, c in zip(boxes.xyzlwhy, boxes.labels, strict=True):
        name = ObjectClass(int(c)).name.capitalize()
        out.append(
            {
                "type": name,
                "truncated_state": s(0),
                "occluded_state": s(0),
                "alpha": s(0),
                "2d_box": {"xmin": 0, "ymin": 0, "xmax": 0, "ymax": 0},
                "3d_dimensions": {"h": float(b[5]), "w": float(b[4]), "l": float(b[3])},
                "3d_location": {"x": s(float(b[0])), "y": s(float(b[1])), "z": s(float(b[2]))},
                "rotation": s(float(b[6])),
            }
        )
    return out
