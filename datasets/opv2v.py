"""OPV2V-family logs (OPV2V, V2XSet, V2V4Real and our simulator's output): reader and writer.

Layout: ``<split>/<scenario>/<cav_id>/<NNNNNN>.pcd`` and ``.yaml`` per agent and frame, plus
``<scenario>/data_protocol.yaml``. The reader follows OpenCOOD's protocol:

* CAV folders are integer names sorted as strings; the first is the ego, roadside units
  (negative ids, V2XSet) move to the end; at most ``max_cav`` agents are taken in that order,
  then agents farther than ``comm_range`` (70 m) from the ego in BEV are dropped;
* YAML files whose name contains ``additional`` are skipped;
* ground truth is the union of the kept agents' ``vehicles``, deduplicated by id (V2V4Real:
  by ``ass_id``, or ``object id + 100 * cav id`` when ``ass_id`` is -1). As in OpenCOOD, the
  ego's own car is part of it when another agent lists it (no agent lists itself).

``skip_bad``: a frame with any unreadable or inconsistent file is skipped and recorded in
``log.skipped`` (iteration only; indexing still raises); points with NaN/inf values are
dropped and counted in ``log.dropped_points`` instead of failing the frame.

Conventions: OPV2V is CARLA, left-handed (y right, yaw clockwise seen from above, degrees).
Points, poses and boxes are mirrored in y on the way in (and back on the way out), so every
frame leaves here right-handed. V2V4Real is recorded by real, right-handed LiDARs: its
``lidar_pose`` is already a 4x4 world-from-LiDAR matrix and its ``vehicles`` are in the CAV's
own LiDAR frame, with ``obj_type`` and ``ass_id`` (the track id when not -1).
"""

from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from v2x.core.boxes import Boxes, ObjectClass, class_from_name, wrap_angle
from v2x.core.frame import AgentKind, AgentScan, Frame, estimate_mount_height
from v2x.core.geometry import NotRigidError, check_rigid, inverse
from v2x.datasets.errors import DatasetError
from v2x.datasets.files import exists, list_dir, stat_file
from v2x.datasets.meta_cache import MetaDiskCache
from v2x.datasets.pcd import read_pcd_counted, write_pcd
from v2x.datasets.values import number as _num
from v2x.datasets.values import whole as _int
from v2x.datasets.yamlio import dump_yaml, load_yaml

__all__ = [
    "OPV2VLog",
    "OPV2VWriter",
    "carla_pose_to_matrix",
    "is_opv2v_root",
    "matrix_to_carla_pose",
    "protocol_order",
]

_FLIP = np.diag([1.0, -1.0, 1.0, 1.0])
_FRAME = re.compile(r"^(\d+)\.yaml$")
#: frames 0.1 s apart whatever their file-name step (OPV2V names step by 2)
FRAME_PERIOD_NS = 100_000_000
#: communication range of the reference loaders (OpenCOOD and V2V4Real's fork: COM_RANGE = 70)
COMM_RANGE_M = 70.0
#: bounds checked before a number from a file becomes an index, a time or an array size
MAX_FRAME_NUMBER = 2**31 - 1
MAX_TIMESTAMP_NS = 2**63 - 1
MAX_ID = 2**53  # object and track ids: exact in float64 and int64
MAX_HITS = 2**31 - 1


def carla_pose_to_matrix(pose: list[float]) -> np.ndarray:
    """CARLA's transform matrix of ``[x, y, z, roll, yaw, pitch]`` (metres, degrees), left-handed."""
    x, y, z, roll, yaw, pitch = (float(v) for v in pose)
    cy, sy = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
    cr, sr = np.cos(np.radians(roll)), np.sin(np.radians(roll))
    cp, sp = np.cos(np.radians(pitch)), np.sin(np.radians(pitch))
    T = np.eye(4)
    T[:3, :3] = [
        [cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr],
        [sp, -cp * sr, cp * cr],
    ]
    T[:3, 3] = (x, y, z)
    return T


def matrix_to_carla_pose(T: np.ndarray) -> list[float]:
    """Inverse of :func:`carla_pose_to_matrix`: ``[x, y, z, roll, yaw, pitch]`` in degrees."""
    R = T[:3, :3]
    pitch = np.degrees(np.arcsin(np.clip(R[2, 0], -1, 1)))
    yaw = np.degrees(np.arctan2(R[1, 0], R[0, 0]))
    roll = np.degrees(np.arctan2(-R[2, 1], R[2, 2]))
    return [float(T[0, 3]), float(T[1, 3]), float(T[2, 3]), float(roll), float(yaw), float(pitch)]


def _is_cav_dir(p: Path) -> bool:
    if re.fullmatch(r"-?\d+", p.name) is None:
        return False
    try:
        return p.is_dir()
    except OSError as exc:
        raise DatasetError(p, "folder", f"cannot read: {exc.strerror or exc}") from exc


def protocol_order(agent_ids: list[str]) -> list[str]:
    """Agent ids in the reference order: sorted as strings, roadside units (negative) last.

    The first is the ego. (OpenCOOD moves a leading negative id to the end; with several RSUs
    all of them go to the end here, so an RSU is never the ego.)
    """
    ids = sorted(agent_ids)
    return [c for c in ids if not c.startswith("-")] + [c for c in ids if c.startswith("-")]


def _cav_order(scenario: Path) -> list[str]:
    return protocol_order([p.name for p in list_dir(scenario) if _is_cav_dir(p)])


def _frame_names(cav_dir: Path, ignored: list[tuple[str, str, str]] | None = None) -> list[str]:
    """Frame names of an agent folder in number order. A name whose number is beyond
    ``MAX_FRAME_NUMBER`` (it would overflow the time stamps made from it) is left out and
    listed in ``ignored``."""
    names = []
    for f in list_dir(cav_dir):
        if "additional" in f.name:
            continue
        m = _FRAME.match(f.name)
        if m:
            if int(m.group(1)) > MAX_FRAME_NUMBER:
                if ignored is not None:
                    ignored.append((str(f), "name", f"frame number beyond {MAX_FRAME_NUMBER}: not read"))
                continue
            names.append(m.group(1))
    return sorted(names, key=int)


def _subdirs(folder: Path) -> list[Path]:
    out = []
    for p in list_dir(folder):
        try:
            if p.is_dir():
                out.append(p)
        except OSError as exc:
            raise DatasetError(p, "folder", f"cannot read: {exc.strerror or exc}") from exc
    return out


def _scenario_dirs(root: Path) -> list[Path]:
    """Scenario folders under a split folder, or under every split of a data-set root."""
    if any(_is_cav_dir(p) for p in list_dir(root)):
        return [root]
    found = []
    for child in _subdirs(root):
        if any(_is_cav_dir(p) for p in list_dir(child)):
            found.append(child)
        else:
            found.extend(s for s in _subdirs(child) if any(_is_cav_dir(p) for p in list_dir(s)))
    return found


def is_opv2v_root(root: Path) -> bool:
    """Whether ``root`` holds OPV2V scenario folders; a folder on the way that cannot be read is a
    :class:`DatasetError` naming it."""
    return bool(_scenario_dirs(root))


def _vector(value: Any, n: int, path: Path, field: str) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != n:
        raise DatasetError(path, field, f"expected a list of {n} numbers, got {value!r}")
    return [_num(v, path, f"{field}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class _AgentMeta:
    """The parsed content of one agent's YAML file (cached by :class:`OPV2VLog`)."""

    world_from_lidar: np.ndarray
    mirrored: bool  # CARLA, left-handed: points need y negated
    mount_height: float | None
    timestamp_ns: int
    boxes: dict[str, tuple[np.ndarray, int, int]]
    hits: dict[int, int] | None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Numbers only, for :class:`~v2x.datasets.meta_cache.MetaDiskCache`."""
        vals = list(self.boxes.values())
        return {
            "pose": np.asarray(self.world_from_lidar, dtype=np.float64),
            "mirrored": np.array(self.mirrored),
            "mount": np.array(np.nan if self.mount_height is None else self.mount_height, dtype=np.float64),
            "ts": np.array(self.timestamp_ns, dtype=np.int64),
            "box_keys": np.array(list(self.boxes), dtype=str),
            "boxes": np.array([v[0] for v in vals], dtype=np.float64).reshape(-1, 7),
            "cls": np.array([v[1] for v in vals], dtype=np.int64),
            "track": np.array([v[2] for v in vals], dtype=np.int64),
            "has_hits": np.array(self.hits is not None),
            "hit_ids": np.array(list((self.hits or {}).keys()), dtype=np.int64),
            "hit_counts": np.array(list((self.hits or {}).values()), dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> _AgentMeta:
        mount = float(a["mount"])
        boxes = {
            str(k): (a["boxes"][i].copy(), int(a["cls"][i]), int(a["track"][i]))
            for i, k in enumerate(a["box_keys"])
        }
        hits = (
            {int(k): int(v) for k, v in zip(a["hit_ids"], a["hit_counts"], strict=True)}
            if bool(a["has_hits"])
            else None
        )
        return cls(
            a["pose"].copy(),
            bool(a["mirrored"]),
            None if np.isnan(mount) else mount,
            int(a["ts"]),
            boxes,
            hits,
        )


@dataclass
class _FrameKey:
    scenario_dir: Path
    scenario: str
    name: str
    number: int
    period_ns: int


class OPV2VLog:
    """Lazily loaded frames of an OPV2V-family log (a split folder or a data-set root)."""

    def __init__(
        self,
        root: str | Path,
        max_cav: int = 5,
        comm_range: float | None = None,
        skip_bad: bool = False,
        meta_cache_size: int = 10_000,
        disk_cache: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(self.root, "folder", "missing or not a folder")
        self.meta_cache_size = int(meta_cache_size)
        self._meta_cache: OrderedDict[tuple[str, int, int], _AgentMeta] = OrderedDict()
        self.disk_cache = MetaDiskCache("opv2v-agent-meta", enabled=disk_cache)
        self.max_cav = int(max_cav)
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []
        self.dropped_agents = 0
        self.dropped_points = 0
        self.out_of_range_agents = 0
        self._keys: list[_FrameKey] = []
        self._scenario_cavs: dict[Path, list[str]] = {}
        #: files left out because of their names: (path, field, message)
        self.ignored: list[tuple[str, str, str]] = []
        for sdir in _scenario_dirs(self.root):
            cavs = _cav_order(sdir)
            if not cavs:
                continue
            self._scenario_cavs[sdir] = cavs
            names = _frame_names(sdir / cavs[0], self.ignored)
            numbers = [int(n) for n in names]
            step = int(np.median(np.diff(numbers))) if len(numbers) > 1 else 1
            rel = sdir.relative_to(self.root).as_posix() if sdir != self.root else sdir.name
            for n in names:
                self._keys.append(_FrameKey(sdir, rel, n, int(n), FRAME_PERIOD_NS // max(step, 1)))
        self.format = self._detect_variant()
        self.comm_range = float(comm_range) if comm_range is not None else COMM_RANGE_M

    def _detect_variant(self) -> str:
        """From the first ego YAML that parses: a broken one is the frame's problem, found when
        the frame is read, not the whole log's."""
        for key in self._keys[:8]:
            cav = self._scenario_cavs[key.scenario_dir][0]
            try:
                pose = load_yaml(key.scenario_dir / cav / f"{key.name}.yaml").get("lidar_pose")
            except DatasetError:
                continue
            return "v2v4real" if pose is not None and np.asarray(pose, dtype=object).size == 16 else "opv2v"
        return "opv2v"

    # -- index --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(k.scenario for k in self._keys))

    def scenario_indices(self, scenario: str) -> list[int]:
        """Indices of one scenario's frames, in time order (what a tracker consumes)."""
        return [i for i, k in enumerate(self._keys) if k.scenario == scenario]

    def iter_scenario(self, scenario: str) -> Iterator[Frame]:
        """One scenario's frames in time order (``skip_bad`` applies as in iteration)."""
        yield from self._iter(self.scenario_indices(scenario))

    def frame_name(self, i: int) -> str:
        k = self._keys[i]
        return f"{k.scenario}/{k.name}"

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

    def __getitem__(self, i: int) -> Frame:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        key = self._keys[i]
        cavs = self._scenario_cavs[key.scenario_dir][: self.max_cav]
        agents: dict[str, AgentScan] = {}
        boxes: dict[str, tuple[np.ndarray, int, int]] = {}
        ego_id = cavs[0]
        ego_xy = None
        for cav in cavs:
            ypath = key.scenario_dir / cav / f"{key.name}.yaml"
            if cav != ego_id and not exists(ypath):
                self.dropped_agents += 1  # an agent without this frame: fewer agents, not a broken frame
                continue
            loaded = self._load_agent(key, cav, ego_xy)
            if loaded is None:
                self.out_of_range_agents += 1
                continue
            scan, cav_boxes = loaded
            if ego_xy is None:
                ego_xy = scan.position[:2]
            agents[cav] = scan
            for obj_id, val in cav_boxes.items():
                boxes.setdefault(obj_id, val)
        ids = sorted(boxes, key=lambda k: boxes[k][2])
        gt = Boxes(
            np.array([boxes[k][0] for k in ids]).reshape(-1, 7),
            labels=[boxes[k][1] for k in ids],
            track_ids=[boxes[k][2] for k in ids],
        )
        ts = agents[ego_id].timestamp_ns
        return Frame(key.scenario, key.number, ts, agents, ego_id, gt)

    # -- one agent ----------------------------------------------------------------------------
    def _load_agent(
        self, key: _FrameKey, cav: str, ego_xy: np.ndarray | None = None
    ) -> tuple[AgentScan, dict[str, tuple[np.ndarray, int, int]]] | None:
        """One agent's scan and boxes; None when it is beyond ``comm_range`` of ``ego_xy`` (its
        point cloud is then not read)."""
        meta = self._agent_meta(key.scenario_dir / cav / f"{key.name}.yaml", cav, key)
        world_from_lidar = meta.world_from_lidar.copy()
        if ego_xy is not None and np.hypot(*(world_from_lidar[:2, 3] - ego_xy)) > self.comm_range:
            return None
        points, dropped = read_pcd_counted(key.scenario_dir / cav / f"{key.name}.pcd", self.skip_bad)
        self.dropped_points += dropped
        if meta.mirrored:
            points[:, 1] *= -1
        mount = meta.mount_height
        if mount is None or not 0.2 < mount < 20:
            mount = estimate_mount_height(points)
        kind = AgentKind.RSU if cav.startswith("-") else AgentKind.VEHICLE
        cav_boxes = meta.boxes
        labels = Boxes(
            np.array([v[0] for v in cav_boxes.values()]).reshape(-1, 7),
            labels=[v[1] for v in cav_boxes.values()],
            track_ids=[v[2] for v in cav_boxes.values()],
        )
        hits = dict(meta.hits) if meta.hits is not None else None
        scan = AgentScan(cav, kind, points, world_from_lidar, meta.timestamp_ns, mount, labels, hits)
        return scan, cav_boxes

    def _agent_meta(self, ypath: Path, cav: str, key: _FrameKey) -> _AgentMeta:
        """What an agent's YAML says, parsed once: YAML parsing costs more than reading a binary
        point cloud, and training reads the same frames every epoch. Cached per file (path,
        modification time, size) in a bounded LRU, and on disk for other processes and runs
        (:mod:`v2x.datasets.meta_cache`)."""
        st = stat_file(ypath)
        stamp = (str(ypath), st.st_mtime_ns, st.st_size)
        hit = self._meta_cache.get(stamp)
        if hit is not None:
            self._meta_cache.move_to_end(stamp)
            return hit
        disk_key = self.disk_cache.key(ypath, st, f"{key.number}|{key.period_ns}")
        cached = self.disk_cache.get(disk_key)
        meta = None
        if cached is not None:
            try:
                meta = _AgentMeta.from_arrays(cached)
            except (KeyError, ValueError, IndexError, TypeError):
                self.disk_cache.failures += 1  # an entry of another layout: parse again
        if meta is None:
            meta = self._parse_agent_yaml(ypath, cav, key)
            self.disk_cache.put(disk_key, meta.to_arrays())
        if self.meta_cache_size > 0:
            self._meta_cache[stamp] = meta
            if len(self._meta_cache) > self.meta_cache_size:
                self._meta_cache.popitem(last=False)
        return meta

    def _parse_agent_yaml(self, ypath: Path, cav: str, key: _FrameKey) -> _AgentMeta:
        meta = load_yaml(ypath)
        if "lidar_pose" not in meta:
            raise DatasetError(ypath, "lidar_pose", "missing")
        raw_pose = meta["lidar_pose"]
        lidar_frame_labels = False
        try:
            if np.asarray(raw_pose, dtype=object).size == 16:
                world_from_lidar = check_rigid(
                    np.asarray(raw_pose, dtype=np.float64).reshape(4, 4), "lidar_pose"
                )
                lidar_frame_labels = True  # V2V4Real
            else:
                carla = carla_pose_to_matrix(_vector(raw_pose, 6, ypath, "lidar_pose"))
                world_from_lidar = check_rigid(_FLIP @ carla @ _FLIP, "lidar_pose")
        except (NotRigidError, ValueError, TypeError) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(ypath, "lidar_pose", str(exc)) from exc
        mount = None
        if "true_ego_pos" in meta and not cav.startswith("-") and not lidar_frame_labels:
            ego_pos = _vector(meta["true_ego_pos"], 6, ypath, "true_ego_pos")
            mount = float(raw_pose[2]) - ego_pos[2]
        if "mount_height" in meta:
            mount = _num(meta["mount_height"], ypath, "mount_height")
        if "timestamp_ns" in meta:
            ts = _int(meta["timestamp_ns"], ypath, "timestamp_ns", 0, MAX_TIMESTAMP_NS)
        else:
            ts = key.number * key.period_ns
        vehicles = meta.get("vehicles") or {}
        boxes = self._boxes(vehicles, ypath, world_from_lidar if lidar_frame_labels else None, cav)
        hits = self._hits(vehicles, ypath)
        return _AgentMeta(world_from_lidar, not lidar_frame_labels, mount, ts, boxes, hits)

    @staticmethod
    def _hits(vehicles: dict, ypath: Path) -> dict[int, int] | None:
        """Per-object LiDAR hit counts of this agent, when the log records them (our simulator).
        Called after :meth:`_boxes` has checked the ids."""
        if not any(isinstance(v, dict) and "num_lidar_points" in v for v in vehicles.values()):
            return None
        out = {}
        for obj_id, v in vehicles.items():
            where = f"vehicles.{obj_id}"
            track = _int(v.get("ass_id", -1), ypath, f"{where}.ass_id", -1, MAX_ID)
            key = track if track != -1 else _int(obj_id, ypath, where, -MAX_ID, MAX_ID)
            # listed without a count: not hit
            out[key] = _int(v.get("num_lidar_points", 0), ypath, f"{where}.num_lidar_points", 0, MAX_HITS)
        return out

    @staticmethod
    def _boxes(
        vehicles: dict, ypath: Path, world_from_lidar: np.ndarray | None, cav: str = "0"
    ) -> dict[str, tuple[np.ndarray, int, int]]:
        """{dedup key: (box in the world frame, class, track id)} from a ``vehicles`` mapping.

        OPV2V ids are CARLA actor ids, shared by all agents. V2V4Real ids are per CAV; its
        ``ass_id`` links one object across CAVs, and an object without one gets
        ``id + 100 * cav id``, as V2V4Real's loader does.
        """
        if not isinstance(vehicles, dict):
            raise DatasetError(ypath, "vehicles", "not a mapping")
        out = {}
        for obj_id, v in vehicles.items():
            where = f"vehicles.{obj_id}"
            if not isinstance(v, dict):
                raise DatasetError(ypath, where, "not a mapping")
            for k in ("location", "angle", "extent"):
                if k not in v:
                    raise DatasetError(ypath, f"{where}.{k}", "missing")
            loc = _vector(v["location"], 3, ypath, f"{where}.location")
            centre = _vector(v.get("center", [0, 0, 0]), 3, ypath, f"{where}.center")
            _roll, yaw, _pitch = _vector(v["angle"], 3, ypath, f"{where}.angle")
            ext = _vector(v["extent"], 3, ypath, f"{where}.extent")
            if min(ext) <= 0:
                raise DatasetError(ypath, f"{where}.extent", f"sizes must be positive: {ext}")
            x, y, z = (a + b for a, b in zip(loc, centre, strict=True))
            if "obj_type" in v and not isinstance(v["obj_type"], str):
                raise DatasetError(ypath, f"{where}.obj_type", f"not a class name: {v['obj_type']!r}")
            cls = class_from_name(v["obj_type"]) if "obj_type" in v else ObjectClass.CAR
            number = _int(obj_id, ypath, where, -MAX_ID, MAX_ID)  # CARLA actor ids are integers
            track = _int(v.get("ass_id", -1), ypath, f"{where}.ass_id", -1, MAX_ID)
            if track == -1:
                track = number + (100 * int(cav) if world_from_lidar is not None else 0)
            key = str(track) if track != -1 else f"{cav}:{obj_id}"
            if world_from_lidar is None:  # OPV2V: CARLA world, mirror into right-handed
                box = np.array([x, -y, z, 2 * ext[0], 2 * ext[1], 2 * ext[2], wrap_angle(-np.radians(yaw))])
            else:  # V2V4Real: the CAV's LiDAR frame, right-handed
                local = Boxes(np.array([[x, y, z, 2 * ext[0], 2 * ext[1], 2 * ext[2], np.radians(yaw)]]))
                box = local.transformed(world_from_lidar).xyzlwhy[0]
            out[key] = (box, int(cls), track)
        return out


class OPV2VWriter:
    """Writes :class:`~v2x.core.frame.Frame` objects as an OPV2V (or V2V4Real-style) log.

    Each frame is written atomically: files go to temporary names first, then are renamed,
    the ego's YAML last, so the reader (which indexes frames by the ego's YAML files) never sees
    a half-written frame, and ``check`` flags the leftovers of an interrupted one.

    Agent ids become folder names, so they must be integers: negative for roadside units,
    as V2XSet does. The format has no ego field: the reader takes the first id in
    :func:`protocol_order`; a frame whose ego is not that one is written with a warning (it
    will read back with another ego).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        pcd_encoding: str = "binary_compressed",
        variant: str = "opv2v",
        gt_radius: float = 100.0,
    ) -> None:
        if variant not in ("opv2v", "v2v4real"):
            raise ValueError(f"unknown variant {variant!r}: use opv2v or v2v4real")
        self.root = Path(root) / split if split else Path(root)
        self.pcd_encoding = pcd_encoding
        self.variant = variant
        self.gt_radius = gt_radius
        self.root.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self._scenarios_seen: set[str] = set()
        self._ego_warned: set[str] = set()

    def write_protocol(self, scenario: str, protocol: dict) -> None:
        """``<scenario>/data_protocol.yaml``; a minimal one is written with a scenario's first frame
        when none exists."""
        sdir = self.root / scenario
        sdir.mkdir(parents=True, exist_ok=True)
        dump_yaml(sdir / "data_protocol.yaml", protocol)

    def write(self, frame: Frame, extra: dict[str, dict[str, Any]] | None = None) -> None:
        """Write one frame. ``extra[agent_id]`` may hold ``vehicles: {track_id: {key: value}}``
        (merged into that agent's vehicle entries) and any other top-level YAML keys."""
        extra = extra or {}
        sdir = self.root / frame.scenario
        name = f"{frame.index:06d}"
        self._check_ids(frame)
        if frame.scenario not in self._scenarios_seen:
            self._scenarios_seen.add(frame.scenario)
            if not (sdir / "data_protocol.yaml").is_file():
                self.write_protocol(frame.scenario, {"writer": "v2x-coop", "variant": self.variant})
        pending: list[tuple[Path, Path]] = []
        try:
            for agent_id, scan in frame.agents.items():
                adir = sdir / agent_id
                adir.mkdir(parents=True, exist_ok=True)
                pcd_tmp = adir / f".{name}.pcd.tmp"
                pts = scan.points.copy()
                if self.variant == "opv2v":
                    pts[:, 1] *= -1
                write_pcd(pcd_tmp, pts, self.pcd_encoding, "rgb" if self.variant == "opv2v" else "float")
                pending.append((pcd_tmp, adir / f"{name}.pcd"))
                yaml_tmp = adir / f".{name}.yaml.tmp"
                dump_yaml(yaml_tmp, self._agent_yaml(frame, scan, extra.get(agent_id, {})))
                pending.append((yaml_tmp, adir / f"{name}.yaml"))
            # the yaml of the agent readers take as the ego commits the frame: rename it last
            ego_yaml = sdir / protocol_order(list(frame.agents))[0] / f"{name}.yaml"
            pending.sort(key=lambda p: p[1] == ego_yaml)
            for tmp, final in pending:
                os.replace(tmp, final)
        finally:
            for tmp, _ in pending:
                if tmp.exists():
                    tmp.unlink()
        self.frames += 1

    def _check_ids(self, frame: Frame) -> None:
        for aid, scan in frame.agents.items():
            if re.fullmatch(r"-?\d+", aid) is None:
                raise ValueError(f"agent id {aid!r}: OPV2V agent folders must be integers")
            if (scan.kind == AgentKind.RSU) != aid.startswith("-"):
                raise ValueError(
                    f"agent {aid!r} is a {scan.kind.value}: roadside units need negative ids, vehicles"
                    " non-negative ones"
                )
        first = protocol_order(list(frame.agents))[0]
        if first != frame.ego_id and frame.scenario not in self._ego_warned:
            self._ego_warned.add(frame.scenario)
            warnings.warn(
                f"scenario {frame.scenario}: ego {frame.ego_id} is not the first agent in the OPV2V "
                f"order, so readers will take {first} as the ego",
                stacklevel=3,
            )

    def _agent_yaml(self, frame: Frame, scan: AgentScan, extra: dict[str, Any]) -> dict[str, Any]:
        T = scan.world_from_lidar
        vehicles_extra = extra.get("vehicles", {})
        out: dict[str, Any] = {}
        if self.variant == "opv2v":
            lh = _FLIP @ T @ _FLIP
            out["lidar_pose"] = matrix_to_carla_pose(lh)
            ground = lh.copy()
            ground[2, 3] -= scan.mount_height
            out["true_ego_pos"] = matrix_to_carla_pose(ground)
            out["predicted_ego_pos"] = out["true_ego_pos"]
        else:
            out["lidar_pose"] = T.tolist()
        out["ego_speed"] = float(extra.get("ego_speed", 0.0))
        out["timestamp_ns"] = int(scan.timestamp_ns or frame.timestamp_ns)
        out["mount_height"] = float(scan.mount_height)
        gt = frame.gt
        near = (
            np.hypot(*(gt.xyzlwhy[:, :2] - scan.position[:2]).T) <= self.gt_radius
            if len(gt)
            else np.zeros(0, bool)
        )
        vehicles: dict[int, dict[str, Any]] = {}
        local = gt.transformed(inverse(T)) if self.variant == "v2v4real" else None
        for j in np.flatnonzero(near):
            tid = int(gt.track_ids[j])
            if str(tid) == scan.agent_id:
                continue  # an agent is not listed among its own vehicles
            if self.variant == "opv2v":
                x, y, z, length, width, height, yaw = gt.xyzlwhy[j]
                y, yaw = -y, -yaw
            else:
                x, y, z, length, width, height, yaw = local.xyzlwhy[j]
            entry: dict[str, Any] = {
                "location": [float(x), float(y), float(z - height / 2)],
                "center": [0.0, 0.0, float(height / 2)],
                "angle": [0.0, float(np.degrees(yaw)), 0.0],
                "extent": [float(length / 2), float(width / 2), float(height / 2)],
                "obj_type": ObjectClass(int(gt.labels[j])).name.capitalize(),
            }
            if self.variant == "v2v4real":
                entry["ass_id"] = tid
            entry.update(vehicles_extra.get(tid, {}))
            vehicles[tid if tid >= 0 else 1_000_000 + int(j)] = entry
        out["vehicles"] = vehicles
        out.update({k: v for k, v in extra.items() if k not in ("vehicles", "ego_speed")})
        return out

    def close(self) -> None:
        """Nothing is buffered; kept so writers can be used as context managers uniformly."""

    def __enter__(self) -> OPV2VWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
