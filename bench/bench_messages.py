"""Messages benchmark: encode / decode time per message, index-coding sizes, coordination bytes,
and the pose precision the header needs. Writes ``bench/results/messages.json``.

The scene is synthetic where the detector is not needed, and real where it matters for sizes:
cell occupancy comes from a real OPV2V LiDAR scan (``../shared/realdata/opv2v``) when present
(about 18 % of the 17,600 cells), otherwise from a synthetic range-decaying pattern. Features are
64 non-negative channels drawn around cluster centres; confidence maps have object-like peaks.
Timings use one torch / BLAS thread (the machine is shared), median of repeated runs.

Run: ``.venv/bin/python -m bench.bench_messages`` (about a minute).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import write_result
from v2x.comm.wire import CellCoding, cell_set_sizes, encode_cells
from v2x.core.boxes import Boxes
from v2x.core.frame import AgentKind
from v2x.core.geometry import pose_from_xyz_yaw, relative_pose
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import Codebook, CodebookConfig
from v2x.messages.codec import MessageCodec, exchange, hybrid_boxes, warp_cells
from v2x.messages.scheme import FeatureEncoding
from v2x.messages.selection import SelectionConfig
from v2x.perception.cooperative import AgentPerception
from v2x.pipeline.methods import get_method

HERE = Path(__file__).resolve().parent
REALDATA = Path(os.environ.get("V2X_REALDATA", HERE.parent.parent / "shared" / "realdata"))
GRID = BEVGrid()
C = 64
WORLD = (5123.0, -2210.0)  # where the scene sits in the world frame (metres)


# -- scene ------------------------------------------------------------------------------------------
def _occupancy(name: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    path = REALDATA / "opv2v" / f"{name}.pcd"
    if path.is_file():
        from v2x.datasets.pcd import read_pcd

        p = read_pcd(path)
        p[:, 1] *= -1  # CARLA's left-handed sensor frame -> ours
        z = p[:, 2] + 1.9  # roughly the LiDAR's height above the ground (the BEV frame's origin)
        k = (z >= GRID.z_min) & (z < GRID.z_max)
        r, c, ok = GRID.cell_of(p[k, :2])
        occ = np.zeros(GRID.num_cells, bool)
        occ[(r * GRID.shape[1] + c)[ok]] = True
        return occ.reshape(GRID.shape), f"real OPV2V scan {name}.pcd"
    xy = GRID.cell_centers()
    d = np.hypot(xy[..., 0], xy[..., 1])
    return rng.random(GRID.shape) < np.clip(8.0 / np.maximum(d, 1), 0, 0.9), "synthetic"


def _agent(agent_id: str, pose: np.ndarray, occ: np.ndarray, rng: np.random.Generator, objects: int = 25):
    h, w = GRID.shape
    centres = rng.random((24, C)).astype(np.float32) * 2
    n = int(occ.sum())
    feats = torch.zeros(C, h, w)
    vals = centres[rng.integers(0, 24, n)] + 0.1 * rng.standard_normal((n, C)).astype(np.float32)
    feats[:, torch.from_numpy(occ)] = torch.from_numpy(np.maximum(vals, 0).T)
    conf = (rng.random((h, w)) ** 6 * 0.15).astype(np.float32)
    occ_cells = np.argwhere(occ)
    for r, c in occ_cells[rng.choice(len(occ_cells), objects, replace=False)]:
        conf[max(r - 1, 0) : r + 2, max(c - 2, 0) : c + 3] = rng.uniform(0.3, 0.95)
    # boxes (for the hybrid) on 20 of the confident spots: cars of 4.5 x 1.9 m, random headings
    peaks = occ_cells[rng.choice(len(occ_cells), 20, replace=False)]
    xy = np.stack(
        [GRID.x_min + (peaks[:, 1] + 0.5) * GRID.cell, GRID.y_min + (peaks[:, 0] + 0.5) * GRID.cell], 1
    )
    xyz = np.column_stack(
        [xy, np.full(20, 0.8), np.full(20, 4.5), np.full(20, 1.9), np.full(20, 1.6), rng.uniform(-3, 3, 20)]
    )
    boxes = Boxes(xyz, labels=np.zeros(20, np.int64), scores=rng.uniform(0.1, 0.95, 20).astype(np.float32))
    return AgentPerception(
        agent_id, AgentKind.VEHICLE, 1_000_000_000, pose, feats, torch.from_numpy(occ), conf, boxes
    )


def _timed(fn, repeats: int = 30) -> dict:
    """Median and 90th percentile wall time, and median CPU time of this process (ms).

    On a shared machine wall time includes waiting for a core; CPU time is the work itself.
    """
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": round(float(np.median(wall)), 3),
        "p90_ms": round(float(np.percentile(wall, 90)), 3),
        "cpu_median_ms": round(float(np.median(cpu)), 3),
    }


# -- sections ---------------------------------------------------------------------------------------
def coding_sizes(occ: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """Bytes of each cell-set coding for typical selections (count varint included)."""
    n_all = GRID.num_cells
    occupied = np.flatnonzero(occ.ravel())
    rows = []

    def row(pattern: str, cells: np.ndarray) -> None:
        cells = np.sort(cells)
        sizes = cell_set_sizes(cells, n_all)
        chosen, data = encode_cells(cells, n_all)
        rows.append(
            {
                "pattern": pattern,
                "cells": len(cells),
                "rice": sizes[CellCoding.RICE],
                "bitmap": sizes[CellCoding.BITMAP],
                "delta_varint": sizes[CellCoding.DELTA_VARINT],
                "run_length": sizes[CellCoding.RUN_LENGTH],
                "chosen": chosen.name.lower(),
                "chosen_bytes": len(data),
                "bytes_per_cell": round(len(data) / max(len(cells), 1), 3),
            }
        )

    for n in (10, 50, 200, 1000, 3000):
        if n <= len(occupied):
            row("scattered occupied cells", rng.choice(occupied, n, replace=False))
    row("all occupied cells", occupied)
    h, w = GRID.shape
    for blocks in (5, 20, 80, 300):  # whole 4x4 blocks, as information filling assigns them
        picked = rng.choice((h // 4) * (w // 4), blocks, replace=False)
        br, bc = np.divmod(picked, w // 4)
        rr = (br[:, None] * 4 + np.repeat(np.arange(4), 4)[None]).ravel()
        cc = (bc[:, None] * 4 + np.tile(np.arange(4), 4)[None]).ravel()
        cells = np.unique(rr * w + cc)
        row(f"{blocks} whole 4x4 blocks", cells)
        row(f"{blocks} blocks, occupied cells only", cells[occ.ravel()[cells]])
    return rows


def _measure(codec, cb, sender, demand, method, allowance, blocks, ego_from_sender) -> dict:
    """Timings of one agent-side encode and one ego-side decode for one method and budget."""
    spec = get_method(method)
    scheme = spec.features
    boxes = hybrid_boxes(sender) if spec.attaches_boxes else None
    demand = demand if scheme.uses_demand else None
    enc = codec.feature_message(scheme, sender, allowance, demand, blocks, 0.3, boxes)
    ranked = codec.candidate_cells(scheme, sender, demand, blocks, 0.3)
    r = {
        "method": method,
        "message_bytes": len(enc),
        "cells_sent": len(enc.cells),
        "boxes_sent": enc.boxes,
        "encode_total": _timed(
            lambda: codec.feature_message(scheme, sender, allowance, demand, blocks, 0.3, boxes)
        ),
        "encode_selection": _timed(lambda: codec.candidate_cells(scheme, sender, demand, blocks, 0.3)),
        "encode_fit_and_pack": _timed(lambda: codec.fit_to_budget(scheme, sender, ranked, allowance, boxes)),
    }
    if enc.data is None:  # the coordination messages alone fill this budget
        return r
    if scheme.needs_codebook and len(enc.cells):
        feats = sender.features.reshape(C, -1)[:, torch.from_numpy(enc.cells)].T.contiguous()
        r["encode_quantize_only"] = _timed(lambda: cb.encode(feats))
    got = codec.read_sparse(enc.data)
    r["decode_unpack_lookup"] = _timed(lambda: codec.read_sparse(enc.data))
    r["decode_warp"] = _timed(lambda: warp_cells(got.cells, ego_from_sender, GRID))
    r["decode_total"] = _timed(lambda: warp_cells(codec.read_sparse(enc.data).cells, ego_from_sender, GRID))
    r["decode_dense_for_fusion"] = _timed(lambda: codec.read_features(enc.data, C), repeats=10)
    return r


def encode_decode_timing(ego, others, cb) -> list[dict]:
    codec = MessageCodec(GRID, cb)
    sender = others[0]
    rows = []
    demand_bytes = codec.demand_message(ego)
    demand = codec.read_demand(demand_bytes)
    offers_bytes = [codec.offer_message(a, demand) for a in others]
    offers = [codec.read_offer(b) for b in offers_bytes if b is not None]
    plan = codec.assign(offers, demand)
    assigned = plan.get(codec.sender_of(sender))
    ego_from_sender = relative_pose(ego.world_from_bev, sender.world_from_bev)
    settings = [("raw", None), ("raw-fp16", None), ("where2comm", None)]
    settings += [(m, b) for m in ("codebook", "codefilling", "hybrid") for b in (256, 1024, 4096, 16384)]
    for method, budget in settings:
        request = len(demand_bytes) if get_method(method).uses_demand else 0
        allowance = None if budget is None else budget - request
        offers_too = get_method(method).uses_offers
        if offers_too and allowance is not None:
            allowance -= len(offers_bytes[0] or b"")
        blocks = assigned if offers_too else None
        r = _measure(codec, cb, sender, demand, method, allowance, blocks, ego_from_sender)
        r["budget_bytes"] = budget
        if r["message_bytes"] == 0:
            r["note"] = f"demand ({len(demand_bytes)} B) and offer leave no room for a message"
        rows.append(r)
    return rows


def coordination(ego_occ, others) -> list[dict]:
    """Bytes of the demand and offer messages, and the filling's cost, per block size."""
    rows = []
    for block in (1, 2, 4, 8):
        for graded in (False, True):
            sel = SelectionConfig(block=block, demand_levels=graded)
            codec = MessageCodec(GRID, selection=sel)
            for seen in (5, 40):  # objects the ego already detects confidently
                ego = _agent("1", pose_from_xyz_yaw(*WORLD, 0, 0), ego_occ, np.random.default_rng(5), seen)
                d = codec.demand_message(ego)
                demand = codec.read_demand(d)
                offers = [codec.offer_message(a, demand) for a in others]
                parsed = [codec.read_offer(o) for o in offers if o is not None]
                rows.append(
                    {
                        "block": block,
                        "demand_levels": graded,
                        "ego_detected_objects": seen,
                        "demanded_blocks": int((demand.levels > 0).sum()),
                        "blocks": len(demand.levels),
                        "demand_bytes": len(d),
                        "offer_bytes": [len(o) if o is not None else 0 for o in offers],
                        "offered_blocks": [len(p.blocks) for p in parsed],
                        "assign": _timed(
                            lambda codec=codec, parsed=parsed, demand=demand: codec.assign(parsed, demand), 10
                        ),
                        "offer_encode": _timed(
                            lambda codec=codec, demand=demand: codec.offer_message(others[0], demand), 10
                        ),
                    }
                )
    return rows


def pose_precision() -> list[dict]:
    """Why x, y travel as float64: nearest-cell warps under float32 poses far from the origin."""
    rows = []
    cells = np.arange(0, GRID.num_cells, 3)
    for offset in (0.0, 1e3, 1e5, 4.4e6):  # 4.4e6 m: a UTM northing, as geo-referenced logs use
        ego = pose_from_xyz_yaw(offset + 0.37, offset - 0.61, 0.0, 0.1)
        snd = pose_from_xyz_yaw(offset + 31.13, offset + 7.71, 0.2, 1.3)
        exact = warp_cells(cells, relative_pose(ego, snd), GRID)
        f32 = [
            pose_from_xyz_yaw(*np.float32(p[:2, 3]).astype(float), 0, float(np.float32(y)))
            for p, y in ((ego, 0.1), (snd, 1.3))
        ]
        approx = warp_cells(cells, relative_pose(*f32), GRID)
        moved = len(set(zip(*exact)) ^ set(zip(*approx))) / 2
        rows.append(
            {
                "world_offset_m": offset,
                "float32_xy_error_m": abs(float(np.float32(offset + 31.13)) - (offset + 31.13)),
                "cells_mapped_differently_float32": int(moved),
                "cells_warped": len(exact[0]),
            }
        )
    return rows


def paper_formula(rows: list[dict], cb: Codebook) -> list[dict]:
    """Wire bytes against the papers' formula (cells x bits per cell / 8, no header, no indices)."""
    out = []
    for r in rows:
        encoding = get_method(r["method"]).features.encoding
        if encoding.needs_codebook and r["cells_sent"]:
            formula = r["cells_sent"] * cb.cfg.bits_per_cell / 8
        elif encoding is FeatureEncoding.FP32:
            formula = r["cells_sent"] * C * 4
        elif encoding is FeatureEncoding.FP16:
            formula = r["cells_sent"] * C * 2
        else:
            continue
        out.append(
            {
                "method": r["method"],
                "budget_bytes": r["budget_bytes"],
                "cells": r["cells_sent"],
                "wire_bytes": r["message_bytes"],
                "formula_bytes": formula,
                "log2_wire": round(float(np.log2(r["message_bytes"])), 2),
                "log2_formula": round(float(np.log2(formula)), 2),
            }
        )
    return out


def main() -> dict:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    occ_a, source = _occupancy("000070", rng)
    occ_b, _ = _occupancy("000072", rng)
    ego = _agent("1", pose_from_xyz_yaw(*WORLD, 0, 0.0), occ_a, np.random.default_rng(1))
    ego.confidence *= 0.5  # an unsure ego: it demands most of its map
    others = [
        _agent(
            "2", pose_from_xyz_yaw(WORLD[0] + 25.0, WORLD[1] + 4.0, 0, 0.3), occ_b, np.random.default_rng(2)
        ),
        _agent(
            "3", pose_from_xyz_yaw(WORLD[0] - 18.0, WORLD[1] - 6.0, 0, 2.9), occ_a, np.random.default_rng(3)
        ),
    ]
    cfg = CodebookConfig(channels=C, m=2, r=2, k=256)
    cb = Codebook(cfg)
    train = others[0].features[:, others[0].occupied].T
    cb.fit(train, iters=8)
    timing = encode_decode_timing(ego, others, cb)
    in_process = []
    codec = MessageCodec(GRID, cb)
    for method, budget in [("codefilling", 1024), ("codebook", 1024), ("raw", None)]:
        scheme = get_method(method).features
        _, _, out = exchange(codec, scheme, ego, others, budget)
        in_process.append(
            {
                "method": method,
                "budget_bytes": budget,
                "bytes_per_link": {k: o.bytes for k, o in out.items()},
                "messages_per_link": {k: [len(m) for m in o.messages] for k, o in out.items()},
                "frame_exchange": _timed(
                    lambda scheme=scheme, budget=budget: exchange(codec, scheme, ego, others, budget), 5
                ),
            }
        )
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "scene": {
            "grid_shape": list(GRID.shape),
            "channels": C,
            "occupancy_source": source,
            "occupied_cells": [int(occ_a.sum()), int(occ_b.sum())],
            "codebook": cfg.label(),
            "bits_per_cell": cfg.bits_per_cell,
        },
        "encode_decode": timing,
        "in_process_exchange": in_process,
        "cell_coding_sizes": coding_sizes(occ_a, rng),
        "coordination": coordination(occ_a, others),
        "pose_precision": pose_precision(),
        "wire_vs_paper_formula": paper_formula(timing, cb),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    _print(result)
    write_result("messages", result)
    return result


def _print(r: dict) -> None:
    print(f"scene: {r['scene']}")
    print(
        f"{'method':>12} {'budget':>7} {'bytes':>7} {'cells':>6} {'encode ms (cpu)':>16} {'decode ms (cpu)':>16}"
    )
    for t in r["encode_decode"]:
        print(
            f"{t['method']:>12} {t['budget_bytes']!s:>7} {t['message_bytes']:>7} {t['cells_sent']:>6} "
            f"{t['encode_total']['median_ms']:>8.2f} ({t['encode_total']['cpu_median_ms']:>5.2f}) "
            f"{t.get('decode_total', {}).get('median_ms', float('nan')):>8.2f} "
            f"({t.get('decode_total', {}).get('cpu_median_ms', float('nan')):>5.2f})"
        )
    print("cell codings (bytes):")
    for c in r["cell_coding_sizes"]:
        print(
            f"  {c['pattern']:>36} n={c['cells']:>5}: rice {c['rice']:>5} bitmap {c['bitmap']:>5} delta {c['delta_varint']:>5} "
            f"rle {c['run_length']:>5} -> {c['chosen']} ({c['bytes_per_cell']} B/cell)"
        )
    print("pose precision:", r["pose_precision"])
    print(f"took {r['seconds']} s")


if __name__ == "__main__":
    main()
