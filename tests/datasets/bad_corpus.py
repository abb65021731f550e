"""A corpus of damaged logs, and a judge of what ``v2x data info|check`` say about each.

Every variant starts from a small valid log (an OPV2V log written by our writer, or a copy of one
real DAIR-V2X-C pair) and damages one file or folder: numbers that are not numbers or are
infinite, wrong types, unreadable files and folders, headers that disagree with payloads,
missing calibration, broken JSON/YAML, truncated PCDs, FIFOs and endless files where a file
should be, ids and sizes too large to allocate from. Each command runs in a forked child with
a time limit, so a hang is caught and reported instead of hanging the tests. Root reads any
file whatever its mode, so as root the child of an unreadable variant first gives up the two
capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH).

``python tests/datasets/bad_corpus.py [REALDATA]`` prints every run that fails the contract
and the totals (used to measure the corpus before and after fixes).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: the pairs of the real DAIR example copied into the corpus (vehicle frame, roadside frame)
DAIR_PAIRS = (("015404", "000049"),)
COMMANDS = (("data", "info", "--json"), ("data", "info", "--json", "--skip-bad"), ("data", "check", "--json"))
TIME_LIMIT_S = 20.0

# ------------------------------------------------------------------------------------------
# sources


def build_opv2v(root: Path) -> Path:
    """Two frames, ego + CAV + RSU, 300 points each, five boxes, hit counts: our writer's log."""
    from v2x.core.boxes import Boxes, ObjectClass
    from v2x.core.frame import AgentKind, AgentScan, Frame
    from v2x.core.geometry import pose_from_xyz_rpy
    from v2x.datasets.opv2v import OPV2VWriter

    rng = np.random.default_rng(7)
    with OPV2VWriter(root, split=None) as w:
        for index in (1, 2):
            agents = {}
            for k, aid in enumerate(("100", "110", "-1")):
                kind = AgentKind.RSU if aid == "-1" else AgentKind.VEHICLE
                pose = pose_from_xyz_rpy(8.0 * k, 2.0 * k, 5.0 if k == 2 else 1.9, 0.0, 0.0, 0.3 * k)
                pts = np.c_[rng.uniform(-40, 40, (300, 3)), rng.uniform(0, 1, 300)].astype(np.float32)
                agents[aid] = AgentScan(aid, kind, pts, pose, index * 100_000_000, pose[2, 3])
            boxes = np.c_[rng.uniform(-20, 20, (5, 2)), np.full(5, 0.8), np.tile([4.2, 1.8, 1.5], (5, 1))]
            cars = [int(ObjectClass.CAR)] * 5
            gt = Boxes(np.c_[boxes, rng.uniform(-3, 3, 5)], labels=cars, track_ids=np.arange(200, 205))
            frame = Frame("scene_a", index, index * 100_000_000, agents, "100", gt)
            hits = {
                aid: {"vehicles": {t: {"num_lidar_points": 9} for t in range(200, 205)}} for aid in agents
            }
            w.write(frame, extra=hits)
    return root


def build_dair(root: Path, realdata: Path) -> Path:
    """The files of ``DAIR_PAIRS`` from the real example, in its own layout, with indexes that
    list only them."""
    src = realdata / "dair-v2x-c-example"
    coop = [
        e
        for e in json.loads((src / "cooperative" / "data_info.json").read_text())
        if Path(e["vehicle_pointcloud_path"]).stem in {v for v, _ in DAIR_PAIRS}
    ]
    rels = []
    for vid, iid in DAIR_PAIRS:
        rels += [
            f"vehicle-side/velodyne/{vid}.pcd",
            f"vehicle-side/label/lidar/{vid}.json",
            f"vehicle-side/calib/lidar_to_novatel/{vid}.json",
            f"vehicle-side/calib/novatel_to_world/{vid}.json",
            f"infrastructure-side/velodyne/{iid}.pcd",
            f"infrastructure-side/label/virtuallidar/{iid}.json",
            f"infrastructure-side/calib/virtuallidar_to_world/{iid}.json",
            f"cooperative/calib/lidar_i2v/{vid}.json",
            f"cooperative/label_world/{vid}.json",
        ]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, root / rel)
    (root / "cooperative" / "data_info.json").write_text(json.dumps(coop, indent=1))
    for side, k in (("vehicle-side", 0), ("infrastructure-side", 1)):
        ids = {p[k] for p in DAIR_PAIRS}
        items = [
            it
            for it in json.loads((src / side / "data_info.json").read_text())
            if Path(it["pointcloud_path"]).stem in ids
        ]
        (root / side / "data_info.json").write_text(json.dumps(items, indent=1))
    return root


# ------------------------------------------------------------------------------------------
# damage


def _yaml_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(p: Path) -> None:
        data = yaml.safe_load(p.read_text())
        fn(data)
        p.write_text(yaml.safe_dump(data, sort_keys=False))

    return apply


def _json_edit(fn: Callable[[Any], object]) -> Callable[[Path], None]:
    """Edit the parsed JSON in place (``fn``'s result is ignored)."""

    def apply(p: Path) -> None:
        data = json.loads(p.read_text())
        fn(data)
        p.write_text(json.dumps(data))

    return apply


def _json_replace(fn: Callable[[Any], object]) -> Callable[[Path], None]:
    """Replace the JSON by ``fn(parsed)``."""
    return lambda p: p.write_text(json.dumps(fn(json.loads(p.read_text()))))


def _first_vehicle(d: dict) -> dict:
    return next(iter(d["vehicles"].values()))


def _set_vehicle(key: str, value) -> Callable[[dict], None]:
    return lambda d: _first_vehicle(d).__setitem__(key, value)


def _set_item(key: str, i: int, value) -> Callable[[dict], None]:
    return lambda d: d[key].__setitem__(i, value)


def _bytes(b: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(b)


def _truncate(keep: int | float) -> Callable[[Path], None]:
    def apply(p: Path) -> None:
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])

    return apply


def _chmod0(p: Path) -> None:
    p.chmod(0)


def _fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


def _dev_zero(p: Path) -> None:
    p.unlink()
    p.symlink_to("/dev/zero")


def _dir(p: Path) -> None:
    p.unlink()
    p.mkdir()


def _delete(p: Path) -> None:
    p.unlink()


def _header_split(data: bytes) -> tuple[list[bytes], bytes]:
    lines, rest = [], data
    while rest:
        line, _, rest = rest.partition(b"\n")
        lines.append(line)
        if line.startswith(b"DATA"):
            break
    return lines, rest


def _pcd_header(**entries: str) -> Callable[[Path], None]:
    """Replace header entries (``POINTS="0"``) of a PCD, payload untouched."""

    def apply(p: Path) -> None:
        lines, rest = _header_split(p.read_bytes())
        out = []
        for line in lines:
            key = line.split(b" ", 1)[0].decode()
            out.append(f"{key} {entries[key]}".encode() if key in entries else line)
        p.write_bytes(b"\n".join(out) + b"\n" + rest)

    return apply


def _ascii_pcd(edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Rewrite a PCD as ascii (x y z intensity), then edit its lines."""

    def apply(p: Path) -> None:
        from v2x.datasets.pcd import read_pcd, write_pcd

        write_pcd(p, read_pcd(p), "ascii", "float")
        p.write_text("\n".join(edit(p.read_text().splitlines())) + "\n")

    return apply


def _replace_line(prefix: str, new: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [new if ln.startswith(prefix) else ln for ln in lines]


def _data_row(i: int, value: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        start = next(j for j, ln in enumerate(lines) if ln.startswith("DATA")) + 1
        cols = lines[start + i].split()
        cols[0] = value
        lines[start + i] = " ".join(cols)
        return lines

    return edit


def _lzf_sizes(compressed: int | None = None, uncompressed: int | None = None) -> Callable[[Path], None]:
    """Overwrite the size words that open a binary_compressed payload."""

    def apply(p: Path) -> None:
        lines, rest = _header_split(p.read_bytes())
        c, u = np.frombuffer(rest[:8], "<u4")
        words = np.array(
            [c if compressed is None else compressed, u if uncompressed is None else uncompressed]
        )
        p.write_bytes(b"\n".join(lines) + b"\n" + words.astype("<u4").tobytes() + rest[8:])

    return apply


def _rename_frame(new: str) -> Callable[[Path], None]:
    def apply(p: Path) -> None:
        for ext in (".yaml", ".pcd"):
            p.with_suffix(ext).rename(p.with_name(new + ext))

    return apply


def _offset_timestamp(us: int) -> Callable[[object], None]:
    def fn(items) -> None:
        items[0]["pointcloud_timestamp"] = str(int(items[0]["pointcloud_timestamp"]) + us)

    return fn


@dataclass(frozen=True)
class Damage:
    """One damaged variant: ``apply`` breaks ``target`` (relative to the log root)."""

    name: str
    source: str  # "opv2v" | "dair"
    target: str
    apply: Callable[[Path], None]
    unreadable: bool = False  # needs a reader that file modes apply to
    named_as: str | None = None  # the path the report names, when not target (e.g. a rename)


def _opv2v() -> list[Damage]:
    y = "scene_a/110/000001.yaml"
    ego = "scene_a/100/000001.yaml"
    pcd = "scene_a/110/000001.pcd"
    inf = float("inf")
    d = [
        ("lidar_pose-not-a-number", y, _yaml_edit(_set_item("lidar_pose", 0, "many"))),
        ("lidar_pose-infinite", y, _yaml_edit(_set_item("lidar_pose", 1, inf))),
        ("lidar_pose-string", y, _yaml_edit(lambda d: d.__setitem__("lidar_pose", "here"))),
        ("lidar_pose-short", y, _yaml_edit(lambda d: d.__setitem__("lidar_pose", [1, 2, 3]))),
        ("lidar_pose-mapping", y, _yaml_edit(lambda d: d.__setitem__("lidar_pose", {"x": 1}))),
        ("lidar_pose-bool", y, _yaml_edit(_set_item("lidar_pose", 3, True))),
        ("ego-lidar_pose-not-a-number", ego, _yaml_edit(_set_item("lidar_pose", 0, "many"))),
        ("timestamp-1e30", y, _yaml_edit(lambda d: d.__setitem__("timestamp_ns", 1e30))),
        ("timestamp-not-a-number", y, _yaml_edit(lambda d: d.__setitem__("timestamp_ns", "many"))),
        ("timestamp-nan", y, _yaml_edit(lambda d: d.__setitem__("timestamp_ns", float("nan")))),
        ("timestamp-negative", y, _yaml_edit(lambda d: d.__setitem__("timestamp_ns", -5))),
        ("timestamp-bool", y, _yaml_edit(lambda d: d.__setitem__("timestamp_ns", True))),
        ("ego-timestamp-1e30", ego, _yaml_edit(lambda d: d.__setitem__("timestamp_ns", 1e30))),
        ("mount_height-string", y, _yaml_edit(lambda d: d.__setitem__("mount_height", "tall"))),
        ("mount_height-infinite", y, _yaml_edit(lambda d: d.__setitem__("mount_height", inf))),
        ("true_ego_pos-string", ego, _yaml_edit(lambda d: d.__setitem__("true_ego_pos", "x"))),
        ("vehicles-list", y, _yaml_edit(lambda d: d.__setitem__("vehicles", [1, 2]))),
        ("vehicle-not-mapping", y, _yaml_edit(lambda d: d["vehicles"].__setitem__(200, 5))),
        (
            "vehicle-location-not-a-number",
            y,
            _yaml_edit(lambda d: _first_vehicle(d)["location"].__setitem__(0, "x")),
        ),
        (
            "vehicle-extent-negative",
            y,
            _yaml_edit(lambda d: _first_vehicle(d)["extent"].__setitem__(0, -1.0)),
        ),
        ("vehicle-extent-infinite", y, _yaml_edit(lambda d: _first_vehicle(d)["extent"].__setitem__(1, inf))),
        ("vehicle-angle-string", y, _yaml_edit(lambda d: _first_vehicle(d)["angle"].__setitem__(1, "x"))),
        ("vehicle-center-string", y, _yaml_edit(_set_vehicle("center", "c"))),
        ("num_lidar_points-many", y, _yaml_edit(_set_vehicle("num_lidar_points", "many"))),
        ("num_lidar_points-negative", y, _yaml_edit(_set_vehicle("num_lidar_points", -3))),
        ("num_lidar_points-1e30", y, _yaml_edit(_set_vehicle("num_lidar_points", 1e30))),
        ("num_lidar_points-float", y, _yaml_edit(_set_vehicle("num_lidar_points", 2.5))),
        ("ass_id-string", y, _yaml_edit(_set_vehicle("ass_id", "x"))),
        ("ass_id-1e30", y, _yaml_edit(_set_vehicle("ass_id", 1e30))),
        ("obj_type-number", y, _yaml_edit(_set_vehicle("obj_type", 5))),
        (
            "vehicle-id-not-integer",
            y,
            _yaml_edit(lambda d: d["vehicles"].__setitem__("car_a", _first_vehicle(d))),
        ),
        ("yaml-top-level-list", y, _bytes(b"- 1\n- 2\n")),
        ("yaml-syntax", y, _bytes(b"lidar_pose: [1, 2\nvehicles: {\n")),
        ("yaml-empty", y, _bytes(b"")),
        ("yaml-binary", y, _bytes(bytes(range(256)) * 4)),
        ("yaml-unsafe-tag", y, _bytes(b"lidar_pose: !!python/object/apply:os.system ['true']\n")),
        ("yaml-fifo", y, _fifo),
        ("ego-yaml-fifo", "scene_a/100/000002.yaml", _fifo),
        ("yaml-dev-zero", y, _dev_zero),
        ("yaml-directory", y, _dir),
        ("yaml-unreadable", y, _chmod0, True),
        ("agent-folder-unreadable", "scene_a/110", _chmod0, True),
        ("scenario-folder-unreadable", "scene_a", _chmod0, True),
        (
            "frame-number-huge",
            "scene_a/100/000002.yaml",
            _rename_frame("9" * 30),
            False,
            "scene_a/100/" + "9" * 30 + ".yaml",
        ),
        ("pcd-truncated", pcd, _truncate(0.6)),
        ("pcd-header-only", pcd, lambda p: p.write_bytes(_header_split(p.read_bytes())[0][0] + b"\n")),
        ("pcd-empty", pcd, _bytes(b"")),
        ("pcd-binary-noise", pcd, _bytes(np.random.default_rng(3).bytes(5000))),
        ("pcd-points-0-binary_compressed", pcd, _pcd_header(POINTS="0", WIDTH="0")),
        (
            "pcd-points-0-ascii",
            pcd,
            _ascii_pcd(lambda ls: _replace_line("WIDTH", "WIDTH 0")(_replace_line("POINTS", "POINTS 0")(ls))),
        ),
        (
            "pcd-points-more-than-rows-ascii",
            pcd,
            _ascii_pcd(
                lambda ls: _replace_line("WIDTH", "WIDTH 301")(_replace_line("POINTS", "POINTS 301")(ls))
            ),
        ),
        ("pcd-points-huge", pcd, _pcd_header(POINTS=str(10**12), WIDTH=str(10**12))),
        ("pcd-points-not-a-number", pcd, _pcd_header(POINTS="many")),
        ("pcd-width-disagrees", pcd, _pcd_header(WIDTH="17")),
        ("pcd-no-x-field", pcd, _pcd_header(FIELDS="q y z rgb")),
        ("pcd-size-entries-short", pcd, _pcd_header(SIZE="4 4 4")),
        ("pcd-type-unknown", pcd, _pcd_header(TYPE="X F F F")),
        ("pcd-size-3", pcd, _pcd_header(SIZE="3 4 4 4")),
        ("pcd-count-0", pcd, _pcd_header(COUNT="0 1 1 1")),
        ("pcd-data-unknown", pcd, _pcd_header(DATA="lzma")),
        ("pcd-lzf-compressed-size-huge", pcd, _lzf_sizes(compressed=2**31)),
        ("pcd-lzf-uncompressed-size-huge", pcd, _lzf_sizes(uncompressed=2**32 - 1)),
        ("pcd-nan-ascii", pcd, _ascii_pcd(_data_row(3, "nan"))),
        ("pcd-inf-ascii", pcd, _ascii_pcd(_data_row(4, "inf"))),
        ("pcd-word-in-data-ascii", pcd, _ascii_pcd(_data_row(5, "many"))),
        ("pcd-fifo", pcd, _fifo),
        ("pcd-dev-zero", pcd, _dev_zero),
        ("pcd-directory", pcd, _dir),
        ("pcd-unreadable", pcd, _chmod0, True),
        ("ego-pcd-missing", "scene_a/100/000001.pcd", _delete),
    ]
    return [Damage(f"opv2v/{n}", "opv2v", *rest) for n, *rest in d]


def _dair() -> list[Damage]:
    v, i = DAIR_PAIRS[0]
    info = "cooperative/data_info.json"
    vinfo, iinfo = "vehicle-side/data_info.json", "infrastructure-side/data_info.json"
    n2w = f"vehicle-side/calib/novatel_to_world/{v}.json"
    l2n = f"vehicle-side/calib/lidar_to_novatel/{v}.json"
    v2w = f"infrastructure-side/calib/virtuallidar_to_world/{i}.json"
    i2v = f"cooperative/calib/lidar_i2v/{v}.json"
    world = f"cooperative/label_world/{v}.json"
    vlab = f"vehicle-side/label/lidar/{v}.json"
    ilab = f"infrastructure-side/label/virtuallidar/{i}.json"
    vpcd, ipcd = f"vehicle-side/velodyne/{v}.pcd", f"infrastructure-side/velodyne/{i}.pcd"
    inf = float("inf")

    def entry(key, value):
        return lambda items: items[0].__setitem__(key, value)

    def obj(j, *path, value):
        def fn(items):
            o = items[j]
            for k in path[:-1]:
                o = o[k]
            o[path[-1]] = value

        return fn

    def rot(value):
        return lambda d: d.__setitem__("rotation", value)

    d = [
        ("data_info-truncated", info, _truncate(0.5)),
        ("data_info-mapping", info, _json_replace(lambda items: {"pairs": items})),
        ("data_info-empty-list", info, _bytes(b"[]")),
        ("data_info-entry-string", info, _json_replace(lambda items: ["pair"] + items[1:])),
        ("data_info-path-number", info, _json_edit(entry("vehicle_pointcloud_path", 5))),
        ("data_info-path-absolute", info, _json_edit(entry("vehicle_pointcloud_path", "/etc/hostname"))),
        ("data_info-path-outside", info, _json_edit(entry("infrastructure_pointcloud_path", "../../x.pcd"))),
        ("data_info-offset-string", info, _json_edit(entry("system_error_offset", "many"))),
        (
            "data_info-offset-not-a-number",
            info,
            _json_edit(entry("system_error_offset", {"delta_x": "many", "delta_y": 0})),
        ),
        (
            "data_info-offset-infinite",
            info,
            _json_edit(entry("system_error_offset", {"delta_x": inf, "delta_y": 0})),
        ),
        ("data_info-label-path-number", info, _json_edit(entry("cooperative_label_path", 7))),
        ("data_info-binary", info, _bytes(bytes(range(256)))),
        ("data_info-fifo", info, _fifo),
        ("data_info-dev-zero", info, _dev_zero),
        ("data_info-unreadable", info, _chmod0, True),
        ("side-info-truncated", vinfo, _truncate(0.5)),
        ("side-info-mapping", vinfo, _json_replace(lambda items: {"frames": items})),
        ("side-info-timestamp-not-a-number", vinfo, _json_edit(entry("pointcloud_timestamp", "many"))),
        ("side-info-timestamp-1e30", vinfo, _json_edit(entry("pointcloud_timestamp", 1e30))),
        ("side-info-timestamp-negative", vinfo, _json_edit(entry("pointcloud_timestamp", "-5"))),
        ("side-info-batch-list", vinfo, _json_edit(entry("batch_id", [1]))),
        ("side-info-entry-string", iinfo, _json_replace(lambda items: ["frame"] + items)),
        ("side-info-offset-10s", iinfo, _json_edit(_offset_timestamp(10_000_000))),
        ("novatel_to_world-missing", n2w, _delete),
        ("lidar_to_novatel-missing", l2n, _delete),
        ("virtuallidar_to_world-missing", v2w, _delete),
        ("novatel_to_world-not-a-number", n2w, _json_edit(rot("many"))),
        ("novatel_to_world-not-rigid", n2w, _json_edit(rot([[2, 0, 0], [0, 2, 0], [0, 0, 2]]))),
        (
            "novatel_to_world-infinite",
            n2w,
            _json_edit(lambda d: d.__setitem__("translation", [[inf], [0], [0]])),
        ),
        ("novatel_to_world-truncated", n2w, _truncate(0.5)),
        ("novatel_to_world-unreadable", n2w, _chmod0, True),
        ("lidar_to_novatel-list", l2n, _bytes(b"[1, 2, 3]")),
        ("lidar_to_novatel-no-transform", l2n, _json_edit(lambda d: d.pop("transform"))),
        ("virtuallidar_to_world-truncated", v2w, _truncate(0.4)),
        ("lidar_i2v-not-a-number", i2v, _json_edit(rot("many"))),
        ("lidar_i2v-truncated", i2v, _truncate(0.5)),
        ("label_world-missing", world, _delete),
        ("label_world-truncated", world, _truncate(0.5)),
        (
            "label_world-corner-not-a-number",
            world,
            _json_edit(lambda items: items[0]["world_8_points"][0].__setitem__(0, "x")),
        ),
        (
            "label_world-corner-infinite",
            world,
            _json_edit(lambda items: items[0]["world_8_points"][0].__setitem__(0, inf)),
        ),
        ("label_world-object-string", world, _json_replace(lambda items: ["car"] + items)),
        (
            "label_world-corners-zero",
            world,
            _json_edit(lambda items: items[0].__setitem__("world_8_points", [[0, 0, 0]] * 8)),
        ),
        ("label-size-negative", vlab, _json_edit(obj(0, "3d_dimensions", "l", value=-2.0))),
        ("label-location-nan-string", vlab, _json_edit(obj(0, "3d_location", "x", value="NaN"))),
        ("label-location-word", vlab, _json_edit(obj(0, "3d_location", "x", value="many"))),
        ("label-rotation-infinite", vlab, _json_edit(obj(0, "rotation", value=inf))),
        ("label-no-rotation", vlab, _json_edit(lambda items: items[0].pop("rotation"))),
        ("label-object-string", vlab, _json_replace(lambda items: ["car"] + items)),
        ("label-type-number", vlab, _json_edit(obj(0, "type", value=5))),
        ("label-mapping", vlab, _json_replace(lambda items: {"objects": items})),
        ("label-missing", vlab, _delete),
        ("label-fifo", vlab, _fifo),
        ("infra-label-unreadable", ilab, _chmod0, True),
        ("vehicle-pcd-truncated", vpcd, _truncate(0.7)),
        ("vehicle-pcd-points-0", vpcd, _pcd_header(POINTS="0", WIDTH="0")),
        ("vehicle-pcd-fifo", vpcd, _fifo),
        ("infra-pcd-missing", ipcd, _delete),
        ("infra-pcd-width-disagrees", ipcd, _pcd_header(WIDTH="5")),
        ("velodyne-folder-unreadable", "vehicle-side/velodyne", _chmod0, True),
        ("calib-folder-unreadable", "vehicle-side/calib/novatel_to_world", _chmod0, True),
        ("cooperative-folder-unreadable", "cooperative", _chmod0, True),
    ]
    return [Damage(f"dair/{n}", "dair", *rest) for n, *rest in d]


def damages() -> list[Damage]:
    return _opv2v() + _dair()


# ------------------------------------------------------------------------------------------
# running


@dataclass
class Outcome:
    exit_code: int | None
    output: str
    traceback: str | None
    timed_out: bool
    seconds: float


def drop_file_capabilities() -> bool:
    """Give up root's right to ignore file modes (this process only); False where it cannot."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    dac = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    data[0].effective &= ~dac
    data[0].permitted &= ~dac
    return libc.capset(ctypes.byref(header), data) == 0


def modes_apply() -> bool:
    """Whether a child of this process can be made to obey file modes."""
    if os.geteuid() != 0:
        return True
    pid = os.fork()
    if pid == 0:
        os._exit(0 if drop_file_capabilities() else 1)
    return os.waitpid(pid, 0)[1] == 0


def run_in_child(fn: Callable[[], dict], timeout: float, obey_modes: bool = False) -> Outcome:
    """``fn()`` (a dict with exit, output, traceback) in a forked child, killed after ``timeout``
    seconds; with ``obey_modes`` a root child first gives up reading files whatever their mode.
    Anything the child raises comes back as a traceback."""
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            os.close(r)
            try:
                if obey_modes and os.geteuid() == 0 and not drop_file_capabilities():
                    raise OSError("cannot drop CAP_DAC_OVERRIDE")
                payload = fn()
            except BaseException:  # everything is reported to the parent
                payload = {"exit": None, "output": "", "traceback": traceback.format_exc()}
            with os.fdopen(w, "w") as fh:
                fh.write(json.dumps(payload))
        finally:
            os._exit(0)
    os.close(w)
    chunks: list[bytes] = []
    timed_out = False
    with os.fdopen(r, "rb") as fh:
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([fh], [], [], left)
            if ready:
                chunk = os.read(fh.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    os.waitpid(pid, 0)
    seconds = time.monotonic() - t0
    if timed_out:
        return Outcome(None, "", None, True, seconds)
    if not chunks:
        return Outcome(None, "", "the child died without a word", False, seconds)
    payload = json.loads(b"".join(chunks))
    return Outcome(payload["exit"], payload["output"], payload["traceback"], False, seconds)


def run_cli(args: list[str], timeout: float = TIME_LIMIT_S, obey_modes: bool = False) -> Outcome:
    """``v2x args`` (click's runner) in a forked child: see :func:`run_in_child`."""
    from click.testing import CliRunner

    from v2x.cli.main import cli

    def invoke() -> dict:
        os.environ["V2X_CACHE_DIR"] = "off"  # every variant is a new path: caching it is wasted work
        res = CliRunner().invoke(cli, args)
        tb = None
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            tb = "".join(traceback.format_exception(*res.exc_info))
        return {"exit": res.exit_code, "output": res.output, "traceback": tb}

    return run_in_child(invoke, timeout, obey_modes)


# ------------------------------------------------------------------------------------------
# judging

#: counters of ``info --json`` that say something was skipped, dropped or doubtful
COUNTERS = (
    "skipped_frames",
    "missing_frames",
    "dropped_agents",
    "dropped_points",
    "ignored_files",
    "time_offsets_over_limit",
)


def counters(info: dict) -> dict[str, int]:
    out = {k: int(info.get(k, 0)) for k in COUNTERS}
    out.update({f"dropped_objects.{k}": int(v) for k, v in (info.get("dropped_objects") or {}).items()})
    return out


def counted(info: dict, baseline: dict) -> bool:
    """Whether some counter of ``info --json`` is above the clean log's."""
    base = counters(baseline)
    return any(v > base.get(k, 0) for k, v in counters(info).items())


def _names(path: str, target: Path) -> bool:
    p = Path(path)
    return p == target or target in p.parents


def _one_line_error(output: str, target: Path) -> bool:
    """``Error: <path>: <field>: <message>`` on one line, the path being the target or in it."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    if len(lines) != 1 or not lines[0].startswith("Error: "):
        return False
    path, sep, rest = lines[0][len("Error: ") :].partition(": ")
    field_, sep2, _ = rest.partition(": ")
    return bool(sep and sep2 and field_.strip()) and _names(path, target)


@dataclass
class Verdict:
    damage: str
    command: str
    kind: str  # "ok" | "traceback" | "hang" | "silent" | "unnamed"
    detail: str = ""


def judge(damage: Damage, command: tuple[str, ...], out: Outcome, root: Path, baseline: dict) -> Verdict:
    name = " ".join(command)
    target = root / (damage.named_as or damage.target)
    if out.timed_out:
        return Verdict(damage.name, name, "hang", f"no exit within {TIME_LIMIT_S:.0f} s")
    if out.traceback or "Traceback (most recent call last)" in out.output:
        return Verdict(damage.name, name, "traceback", (out.traceback or out.output).strip().splitlines()[-1])
    if command[1] == "info":
        if out.exit_code == 0:
            info = json.loads(out.output)
            if counted(info, baseline):
                return Verdict(damage.name, name, "ok", "counted")
            return Verdict(damage.name, name, "silent", "exit 0, nothing counted")
        if _one_line_error(out.output, target):
            return Verdict(damage.name, name, "ok", "refused")
        return Verdict(damage.name, name, "unnamed", out.output.strip()[-300:])
    report = json.loads(out.output)
    listed = report.get("problems", []) + report.get("warnings", [])
    if any(_names(p["path"], target) and p["field"] for p in listed):
        return Verdict(damage.name, name, "ok", f"exit {out.exit_code}")
    if out.exit_code == 0 and not listed:
        return Verdict(damage.name, name, "silent", "OK")
    return Verdict(damage.name, name, "unnamed", json.dumps(listed[:2])[:300])


@dataclass
class Corpus:
    """Clean sources built once; each variant is a fresh copy with one damage applied."""

    base: Path
    realdata: Path | None
    sources: dict[str, Path] = field(default_factory=dict)
    baselines: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from click.testing import CliRunner

        from v2x.cli.main import cli

        self.modes_apply = modes_apply()
        self.sources["opv2v"] = build_opv2v(self.base / "src-opv2v")
        for cmd in COMMANDS:  # import what the commands import, once, before the children fork
            CliRunner().invoke(cli, [*cmd, str(self.sources["opv2v"])])
        if self.realdata is not None and (self.realdata / "dair-v2x-c-example").is_dir():
            self.sources["dair"] = build_dair(self.base / "src-dair", self.realdata)
        for name, src in self.sources.items():
            out = run_cli(["data", "info", "--json", str(src)])
            self.baselines[name] = json.loads(out.output) if out.exit_code == 0 else {}

    def variants(self) -> list[Damage]:
        """The damages this machine can make (unreadable files need modes that apply)."""
        return [d for d in damages() if d.source in self.sources and (self.modes_apply or not d.unreadable)]

    def make(self, damage: Damage) -> Path:
        root = self.base / damage.name.replace("/", "__")
        shutil.copytree(self.sources[damage.source], root, symlinks=True)
        damage.apply(root / damage.target)
        return root

    def run(self, damage: Damage) -> list[Verdict]:
        root = self.make(damage)
        try:
            return [
                judge(
                    damage,
                    cmd,
                    run_cli([*cmd, str(root)], obey_modes=damage.unreadable),
                    root,
                    self.baselines[damage.source],
                )
                for cmd in COMMANDS
            ]
        finally:
            _restore_modes(root)
            shutil.rmtree(root, ignore_errors=True)


def _restore_modes(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                p.chmod(0o755)
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.chmod(0o644)


def main(argv: list[str]) -> int:
    realdata = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "realdata"
    base = Path(tempfile.mkdtemp(prefix="v2x-bad-corpus-"))
    os.environ.setdefault("V2X_CACHE_DIR", "off")
    try:
        corpus = Corpus(base, realdata if realdata.is_dir() else None)
        verdicts = [v for d in corpus.variants() for v in corpus.run(d)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    kinds = {k: sum(v.kind == k for v in verdicts) for k in ("ok", "traceback", "hang", "silent", "unnamed")}
    for v in verdicts:
        if v.kind != "ok":
            print(f"{v.kind:9s} {v.damage:45s} {v.command:28s} {v.detail}")
    print(
        f"variants {len(corpus.variants())}, runs {len(verdicts)}: "
        + ", ".join(f"{k} {n}" for k, n in kinds.items())
    )
    return 0 if kinds["ok"] == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
