"""The AP-versus-bytes experiment end to end on a small synthetic scene, with an untrained detector:
every method in one call, real messages, budgets kept, requests counted. (AP values need the
trained detector; here only the machinery is checked.)"""

import json

import numpy as np
import pytest
import torch

from v2x.boxes import Boxes, ObjectClass
from v2x.codebook import CodebookConfig
from v2x.comm.wire import HEADER
from v2x.comm_eval import evaluate_comm, fit_codebook, plot_comm, settings_for, write_rows
from v2x.config import load_config
from v2x.cooperative import Perception
from v2x.detector import CooperativeDetector
from v2x.frame import AgentScan, Frame
from v2x.geometry import inverse, pose_from_xyz_yaw, transform_points
from v2x.messages import METHODS, MessageCodec

pytestmark = pytest.mark.slow


def _frame(seed: int) -> Frame:
    """Ground points and box-shaped clusters seen by three agents."""
    r = np.random.default_rng(seed)
    n = 8
    gt = np.c_[
        r.uniform(-35, 35, (n, 2)) * [1, 0.6],
        np.full(n, 0.75),
        np.tile([4.5, 1.9, 1.5], (n, 1)),
        r.uniform(-3, 3, n),
    ]
    ground = np.c_[r.uniform(-70, 70, 8000), r.uniform(-40, 40, 8000), np.zeros(8000)]
    objs = [b[:3] + (r.uniform(-0.5, 0.5, (150, 3)) * b[3:6]) for b in gt]
    world = np.vstack([ground, *objs])
    agents = {}
    for i in range(3):
        T = pose_from_xyz_yaw(i * 12.0 - 12, i * 4.0 - 4, 1.8, i * 0.6)
        p = transform_points(inverse(T), world).astype(np.float32)
        agents[str(i)] = AgentScan(
            str(i), "vehicle", np.c_[p, np.full(len(p), 0.3, np.float32)], T, mount_height=1.8
        )
    return Frame("synthetic", seed, seed * 100_000_000, agents, "0", Boxes(gt, labels=int(ObjectClass.CAR)))


def test_every_method_runs_through_one_evaluation(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = CooperativeDetector(load_config()).eval()
    perception = Perception(model)
    frames = [_frame(0), _frame(1)]
    cfg = CodebookConfig(channels=model.cfg.bev_channels, m=2, r=1, k=16)
    cb, info = fit_codebook(frames, perception, cfg, frames=2, iters=3, progress=False)
    assert info["train"]["cells"] > 0
    codec = MessageCodec(model.cfg.grid, cb)
    budgets = [300, 2000]
    settings = settings_for(list(METHODS), budgets, hybrid=True)
    rows = evaluate_comm(frames, perception, codec, settings, progress=False)
    assert {r["method"] for r in rows} == {*METHODS, "codebook+boxes", "codefilling+boxes"}
    for r in rows:
        assert {"method", "budget_bytes", "bytes_mean", "bytes_max", "ap_bev"} <= set(r)
        assert {"0.5", "0.7"} <= set(r["ap_bev"]) and r["frames"] == 2
        if r["budget_bytes"] is not None:
            assert r["bytes_max"] <= r["budget_bytes"]
    raw = next(r for r in rows if r["method"] == "raw")
    half = next(r for r in rows if r["method"] == "raw-fp16")
    assert raw["bytes_mean"] > 1.9 * half["bytes_mean"] > 0  # every occupied cell, 4 vs 2 bytes a channel
    big = next(r for r in rows if r["method"] == "codebook" and r["budget_bytes"] == 2000)
    # the request is on the link: more than one header's worth beyond the feature message alone
    assert big["bytes_mean"] > big["paper_formula_bytes"] + 2 * HEADER.size
    w2c = sorted((r["threshold"], r["bytes_mean"]) for r in rows if r["method"] == "where2comm")
    assert [b for _, b in w2c] == sorted((b for _, b in w2c), reverse=True)  # a higher threshold sends less
    write_rows(rows, tmp_path / "comm.json")
    plot_comm(rows, tmp_path / "comm.png")
    assert json.loads((tmp_path / "comm.json").read_text())[0]["method"] == rows[0]["method"]
    assert (tmp_path / "comm.png").stat().st_size > 10_000
