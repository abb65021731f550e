"""DAIR-V2X-C cooperative logs: reader and writer.

Layout (paths in ``cooperative/data_info.json`` are relative to the root)::

    cooperative/data_info.json          pairs: vehicle + infrastructure point clouds, label, system_error_offset
    cooperative/label_world/<v>.json    cooperative ground truth in the world frame (optional)
    cooperative/calib/lidar_i2v/<v>.json infrastructure LiDAR -> vehicle LiDAR
    vehicle-side/velodyne/<v>.pcd, label/lidar/<v>.json, calib/{lidar_to_novatel,novatel_to_world}/<v>.json
    infrastructure-side/velodyne/<i>.pcd, label/virtuallidar/<i>.json, calib/virtuallidar_to_world/<i>.json

Poses: world <- vehicle = novatel_to_world . lidar_to_novatel; world <- infrastructure =
virtuallidar_to_world with ``system_error_offset`` added to its x and y translation. When the
log has no world calibrations at all (no ``novatel_to_world`` nor ``virtuallidar_to_world``
folder: the public cooperative calibration alone, as in our sample), the vehicle LiDAR frame
*is* the world and the infrastructure sits at ``lidar_i2v``; in a log that has them, a pair
missing one is an error naming the file, never a silent move into that other frame. The
vehicle is the ego (agent id ``"vehicle"``), the roadside unit the collaborator
(``"infrastructure"``), dropped beyond 100 m as in the reference protocol.

Ground truth: ``cooperative/label_world`` (its ``world_8_points``, as the reference loaders read
it) when the world calibrations exist; otherwise the vehicle's labels plus the infrastructure
labels that overlap none of them. Boxes outside DAIR's evaluation range (all corners within
:data:`~v2x.datasets.dair_labels.DAIR_GT_RANGE` in the vehicle LiDAR frame) are left out and
counted. Each side's own labels are ``AgentScan.labels``; objects without a 3D box are dropped
and counted (:mod:`v2x.datasets.dair_labels`).

Time stamps come from each side's ``data_info.json`` (microseconds); without them they are 0.
DAIR's two scans of a pair are not simultaneous: each agent keeps its own time stamp, and
offsets beyond ``max_time_offset_ms`` are reported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from v2x.core.boxes import Boxes, ObjectClass, box_corners
from v2x.core.frame import AgentKind, AgentScan, Frame, estimate_mount_height
from v2x.core.geometry import NotRigidError, check_rigid, inverse
from v2x.core.iou import bev_iou_matrix
from v2x.datasets.dair_labels import (
    DAIR_GT_RANGE,
    in_eval_range,
    parse_labels,
    parse_labels_counted,
    world_label_boxes,
)
from v2x.datasets.errors import DatasetError
from v2x.datasets.files import exists, read_json
from v2x.datasets.pcd import read_pcd_counted, write_pcd
from v2x.datasets.values import number, whole

__all__ = [
    "DAIR_GT_RANGE",
    "DEFAULT_MAX_TIME_OFFSET_MS",
    "DairLog",
    "DairWriter",
    "is_dair_root",
    "parse_labels",
    "pose_from_rt",
]

VEHICLE, INFRA = "vehicle", "infrastructure"
_INFO_NAMES = ("data_info.json", "selected_data_info.json")
#: folders whose presence means the log has world calibrations (the full DAIR-V2X-C release)
_WORLD_CALIB_DIRS = ("vehicle-side/calib/novatel_to_world", "infrastructure-side/calib/virtuallidar_to_world")
#: a roadside scan further than this from the vehicle's (one 10 Hz LiDAR period) is reported
DEFAULT_MAX_TIME_OFFSET_MS = 100.0
#: a gap between consecutive vehicle scans of one batch longer than this starts a new run
#: (a new scenario: fresh tracks); 5 LiDAR periods at 10 Hz
RUN_GAP_US = 500_000
MAX_TIMESTAMP_US = (2**63 - 1) // 1000  # so that nanoseconds fit int64


def is_dair_root(root: Path) -> bool:
    """Whether ``root`` has a cooperative index (anything by that name: a FIFO or folder there is
    reported by the reader); a ``cooperative`` folder that cannot be read is an error."""
    return any(exists(root / "cooperative" / n) for n in _INFO_NAMES)


def pose_from_rt(d: Any, path: Path, field: str) -> np.ndarray:
    """4x4 from a DAIR calibration's ``{"rotation": 3x3, "translation": 3x1}``, checked finite
    and rigid; errors name ``path`` and ``field``."""
    try:
        R = np.asarray(d["rotation"], dtype=np.float64).reshape(3, 3)
        t = np.asarray(d["translation"], dtype=np.float64).reshape(3)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DatasetError(path, field, f"expected rotation (3x3) and translation (3): {exc}") from exc
    if not (np.isfinite(R).all() and np.isfinite(t).all()):
        raise DatasetError(path, field, "not finite")
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    try:
        return check_rigid(T, field, tol=1e-3)
    except NotRigidError as exc:
        raise DatasetError(path, field, str(exc)) from exc


def _split_runs(entries: list[dict]) -> None:
    """Cut each batch, sorted by time, into runs at gaps of more than :data:`RUN_GAP_US` between
    vehicle scans; runs after the first are named ``<batch>-<n>``.

    Why: a sequence is what a tracker may follow from frame to frame. DAIR-V2X-C's released
    pairs are a subset of each batch's scans, so one batch can hold runs seconds apart (the real
    example: 015372-015385, then 015400-015414 1.5 s later); tracks must not be carried across.
    """
    runs: dict[str, int] = {}
    prev: dict | None = None
    for e in entries:
        batch = e["_batch"]
        if batch is None:
            continue
        same = prev is not None and prev["_batch_id"] == batch
        if same and e["_ts"] > 0 and prev["_ts"] > 0 and e["_ts"] - prev["_ts"] > RUN_GAP_US:
            runs[batch] = runs.get(batch, 0) + 1
        elif not same:
            runs.setdefault(batch, 0)
        e["_batch_id"] = batch
        e["_batch"] = batch if runs[batch] == 0 else f"{batch}-{runs[batch]}"
        prev = e


class DairLog:
    """Lazily loaded frames of a DAIR-V2X-C cooperative log.

    Bad input is named, never guessed around: an index entry that cannot be a pair (wrong
    types, a path outside the log, a time stamp that is no time) is a :class:`DatasetError`
    when its frame is read (so ``skip_bad`` skips just that pair); a pair of a log with world
    calibrations that lacks one of its own is an error, not a silent move into the
    ``lidar_i2v`` fallback's frame. Label objects without a 3D box are dropped and counted
    (``dropped_objects``, ``dropped_per_frame``), and so are ground-truth boxes outside
    :data:`DAIR_GT_RANGE` (``gt_out_of_range``). The roadside scan's time offset from the
    vehicle's is read from the side indexes (``time_offsets_ms``); offsets beyond
    ``max_time_offset_ms`` are listed in ``offsets_over_limit``.
    """

    format = "dair-v2x-c"

    def __init__(
        self,
        root: str | Path,
        max_cav: int = 2,
        comm_range: float | None = None,
        skip_bad: bool = False,
        max_time_offset_ms: float | None = None,
        gt_range: tuple[float, ...] | None = DAIR_GT_RANGE,
    ):
        self.root = Path(root)
        coop = self.root / "cooperative"
        info_path = next((coop / n for n in _INFO_NAMES if exists(coop / n)), None)
        if info_path is None:
            raise DatasetError(coop / "data_info.json", "file", "missing")
        self.info_path = info_path
        entries = read_json(info_path)
        if not isinstance(entries, list):
            raise DatasetError(info_path, "entries", "expected a list")
        if not entries:
            raise DatasetError(info_path, "entries", "the index lists no pairs")
        self.max_cav = max_cav
        self.comm_range = float(comm_range) if comm_range is not None else 100.0
        self.skip_bad = skip_bad
        self.gt_range = gt_range
        self.max_time_offset_ms = (
            DEFAULT_MAX_TIME_OFFSET_MS if max_time_offset_ms is None else float(max_time_offset_ms)
        )
        #: world calibrations present: every pair must have its own (no lidar_i2v fallback)
        self.world_calibrated = any(exists(self.root / d) for d in _WORLD_CALIB_DIRS)
        self.skipped: list[tuple[str, str]] = []
        self.dropped_agents = 0
        self.dropped_points = 0
        self.out_of_range_agents = 0
        self.missing: list[tuple[str, str]] = []
        #: index entries left out, as (path, field, message): counted warnings
        self.ignored: list[tuple[str, str, str]] = []
        #: frame name -> {reason: objects dropped from its labels}; frame name -> GT boxes out of range
        self.dropped_per_frame: dict[str, dict[str, int]] = {}
        self.gt_out_of_range_per_frame: dict[str, int] = {}
        side_info = {s: self._side_info(s) for s in ("vehicle-side", "infrastructure-side")}
        self._entries: list[dict] = []
        for n, e in enumerate(entries):
            entry = self._entry(n, e, side_info)
            if entry is not None:
                self._entries.append(entry)
        self._entries.sort(key=lambda e: (e["_batch"] is None, e["_batch"] or "", e["_ts"], e["_vid"]))
        _split_runs(self._entries)
        self.time_offsets_ms: dict[str, float] = {
            self.frame_name(i): (e["_its"] - e["_ts"]) / 1000.0
            for i, e in enumerate(self._entries)
            if e["_error"] is None and e["_ts"] > 0 and e["_its"] > 0
        }
        self.offsets_over_limit = [
            (name, off) for name, off in self.time_offsets_ms.items() if abs(off) > self.max_time_offset_ms
        ]

    # -- the index ------------------------------------------------------------------------------
    def _path_field(self, e: dict, key: str, where: str, required: bool = True) -> str | None:
        """A path of an index entry: a string, relative, inside the log."""
        if key not in e and not required:
            return None
        value = e.get(key)
        field = f"{where}.{key}"
        if not isinstance(value, str) or not value:
            raise DatasetError(self.info_path, field, f"expected a relative path, got {value!r}")
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts:
            raise DatasetError(self.info_path, field, f"{value!r} points outside the log")
        return value

    def _entry(self, n: int, e: Any, side_info: dict[str, dict]) -> dict | None:
        """One pair of the index, or an entry holding the error its frame raises; None when its
        vehicle point cloud is absent (listed in ``missing``)."""
        where = f"[{n}]"
        bad = {"_n": n, "_batch": None, "_ts": 0, "_its": 0, "_vid": f"entry{where}", "_iid": ""}
        try:
            if not isinstance(e, dict):
                raise DatasetError(self.info_path, where, f"expected an object, got {type(e).__name__}")
            vpath = self._path_field(e, "vehicle_pointcloud_path", where)
            ipath = self._path_field(e, "infrastructure_pointcloud_path", where)
            label = self._path_field(e, "cooperative_label_path", where, required=False)
        except DatasetError as exc:
            return {**bad, "_error": exc}
        if not exists(self.root / vpath):
            self.missing.append((vpath, "vehicle point cloud missing"))
            return None
        vid, iid = PurePosixPath(vpath).stem, PurePosixPath(ipath).stem
        try:
            vj, vinfo = side_info["vehicle-side"].get(vid, (None, {}))
            ij, iinfo = side_info["infrastructure-side"].get(iid, (None, {}))
            batch = vinfo.get("batch_id", "dair")
            if isinstance(batch, bool) or not isinstance(batch, str | int):
                raise DatasetError(
                    self._side_path("vehicle-side"), f"[{vj}].batch_id", f"not an id: {batch!r}"
                )
            ts = self._timestamp_us(vinfo, vj, "vehicle-side")
            its = self._timestamp_us(iinfo, ij, "infrastructure-side")
        except DatasetError as exc:
            return {**bad, "_vid": vid, "_error": exc}
        return dict(
            e,
            _n=n,
            _vid=vid,
            _iid=iid,
            _batch=str(batch),
            _ts=ts,
            _its=its,
            _label=label,
            _error=None,
            _vpath=vpath,
            _ipath=ipath,
        )

    def _side_path(self, side: str) -> Path:
        return self.root / side / "data_info.json"

    def _timestamp_us(self, info: dict, j: int | None, side: str) -> int:
        raw = info.get("pointcloud_timestamp", 0) or 0
        return whole(raw, self._side_path(side), f"[{j}].pointcloud_timestamp", 0, MAX_TIMESTAMP_US)

    def _side_info(self, side: str) -> dict[str, tuple[int, dict]]:
        """``{frame id: (position in the side index, entry)}``; entries that name no point cloud
        are left out and listed in ``ignored``."""
        path = self._side_path(side)
        if not exists(path):
            return {}
        items = read_json(path)
        if not isinstance(items, list):
            raise DatasetError(path, "entries", "expected a list")
        out = {}
        for j, it in enumerate(items):
            pc = it.get("pointcloud_path") if isinstance(it, dict) else None
            if not isinstance(pc, str) or not pc:
                self.ignored.append((str(path), f"[{j}]", "not an entry with a pointcloud_path: ignored"))
                continue
            out[PurePosixPath(pc).stem] = (j, it)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(e["_batch"] for e in self._entries if e["_batch"] is not None))

    def scenario_indices(self, scenario: str) -> list[int]:
        return [i for i, e in enumerate(self._entries) if e["_batch"] == scenario]

    def frame_name(self, i: int) -> str:
        e = self._entries[i]
        return e["_vid"] if e["_batch"] is None else f"{e['_batch']}/{e['_vid']}"

    @property
    def dropped_objects(self) -> dict[str, int]:
        """Objects dropped from the labels of the frames read so far, by reason."""
        out: dict[str, int] = {}
        for drops in self.dropped_per_frame.values():
            for reason, count in drops.items():
                out[reason] = out.get(reason, 0) + count
        return out

    @property
    def gt_out_of_range(self) -> int:
        return sum(self.gt_out_of_range_per_frame.values())

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
    def calib_paths(self, e: dict) -> dict[str, Path]:
        r, vid, iid = self.root, e["_vid"], e["_iid"]
        return {
            "lidar_to_novatel": r / "vehicle-side" / "calib" / "lidar_to_novatel" / f"{vid}.json",
            "novatel_to_world": r / "vehicle-side" / "calib" / "novatel_to_world" / f"{vid}.json",
            "virtuallidar_to_world": r
            / "infrastructure-side"
            / "calib"
            / "virtuallidar_to_world"
            / f"{iid}.json",
            "lidar_i2v": r / "cooperative" / "calib" / "lidar_i2v" / f"{vid}.json",
        }

    def _poses(self, e: dict) -> tuple[np.ndarray, np.ndarray, bool]:
        """world <- vehicle, world <- infrastructure, and whether those are real world poses."""
        paths = self.calib_paths(e)
        i2v = paths["lidar_i2v"]
        if not self.world_calibrated:
            return np.eye(4), pose_from_rt(read_json(i2v), i2v, "lidar_i2v"), False
        calib = {}
        for name in ("lidar_to_novatel", "novatel_to_world", "virtuallidar_to_world"):
            if not exists(paths[name]):
                raise DatasetError(
                    paths[name],
                    "file",
                    "missing: the log has world calibrations, and this pair has no world pose without it",
                )
            calib[name] = read_json(paths[name])
            if not isinstance(calib[name], dict):
                raise DatasetError(paths[name], name, "expected an object with rotation and translation")
        l2n = calib["lidar_to_novatel"]
        world_from_vehicle = pose_from_rt(
            calib["novatel_to_world"], paths["novatel_to_world"], "novatel_to_world"
        ) @ pose_from_rt(l2n.get("transform", l2n), paths["lidar_to_novatel"], "transform")
        world_from_infra = pose_from_rt(
            calib["virtuallidar_to_world"], paths["virtuallidar_to_world"], "virtuallidar_to_world"
        )
        where = f"[{e['_n']}].system_error_offset"
        off = e.get("system_error_offset") or {}
        if not isinstance(off, dict):
            raise DatasetError(self.info_path, where, f"expected delta_x and delta_y, got {off!r}")
        world_from_infra[0, 3] += number(off.get("delta_x", 0.0), self.info_path, f"{where}.delta_x")
        world_from_infra[1, 3] += number(off.get("delta_y", 0.0), self.info_path, f"{where}.delta_y")
        if exists(i2v):  # not used with world poses, but a broken one is still a broken file
            pose_from_rt(read_json(i2v), i2v, "lidar_i2v")
        return world_from_vehicle, world_from_infra, True

    def _read_points(self, path: Path) -> np.ndarray:
        points, dropped = read_pcd_counted(path, drop_nonfinite=self.skip_bad)
        self.dropped_points += dropped
        return points

    def __getitem__(self, i: int) -> Frame:
        e = self._entries[i]
        if e["_error"] is not None:
            raise e["_error"]
        world_from_vehicle, world_from_infra, in_world = self._poses(e)
        ts = e["_ts"] * 1000
        vpts = self._read_points(self.root / e["_vpath"])
        vlab, drops = parse_labels_counted(
            self.root / "vehicle-side" / "label" / "lidar" / f"{e['_vid']}.json"
        )
        counts = {k: len(v) for k, v in drops.items()}
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
            ipts = self._read_points(self.root / e["_ipath"])
            ilab, drops = parse_labels_counted(
                self.root / "infrastructure-side" / "label" / "virtuallidar" / f"{e['_iid']}.json"
            )
            for k, v in drops.items():
                counts[k] = counts.get(k, 0) + len(v)
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
        if in_world and e["_label"]:
            gt, drops = world_label_boxes(self.root / e["_label"], inverse(world_from_vehicle))
            for k, v in drops.items():
                counts[k] = counts.get(k, 0) + len(v)
        else:
            gt = agents[VEHICLE].labels
            if INFRA in agents and len(agents[INFRA].labels):
                extra = agents[INFRA].labels
                if len(gt):
                    overlap = bev_iou_matrix(extra.xyzlwhy, gt.xyzlwhy).max(axis=1) > 0.1
                    extra = extra[~overlap]
                gt = Boxes.concat([gt, extra])
        name = self.frame_name(i)
        if self.gt_range is not None:
            keep = in_eval_range(gt.transformed(inverse(world_from_vehicle)), self.gt_range)
            self.gt_out_of_range_per_frame[name] = int((~keep).sum())
            gt = gt[keep]
        if counts:
            self.dropped_per_frame[name] = counts
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
