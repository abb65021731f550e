"""The AP-versus-bytes experiment end to end on a small synthetic log written to disk, with an
untrained detector: codebook training and every method in one ``v2x eval comm`` call, real
messages, budgets kept, requests counted. (AP values need the trained detector; here only the
machinery is checked.)"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.comm.wire import HEADER
from v2x.core.boxes import Boxes, ObjectClass
from v2x.core.frame import AgentScan, Frame
from v2x.core.geometry import inverse, pose_from_xyz_yaw, transform_points
from v2x.datasets.opv2v import OPV2VWriter
from v2x.messages.codebook import load_codebook
from v2x.perception.config import load_config
from v2x.perception.detector import CooperativeDetector
from v2x.pipeline.methods import comm_method_names

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


def test_train_codebook_and_eval_comm_through_the_command_line(tmp_path):
    """A log on disk, a detector checkpoint, then ``v2x train codebook --data`` and ``v2x eval comm``."""
    torch.manual_seed(0)
    w = OPV2VWriter(tmp_path / "log", split="test")
    for seed in (0, 1):
        w.write(_frame(seed))
    w.close()
    model = CooperativeDetector(load_config()).eval()
    torch.save(model.checkpoint(), tmp_path / "det.pt")
    log, det, cb = str(tmp_path / "log" / "test"), str(tmp_path / "det.pt"), str(tmp_path / "cb.pt")
    r = CliRunner().invoke(
        cli,
        ["train", "codebook", "--data", log, "--weights", det, "--out", cb]
        + ["--k", "16", "--r", "1", "--frames", "1", "--pick", "random"]
        + ["--iters", "2", "--holdout-every", "0"],
    )
    assert r.exit_code == 0, r.output
    assert load_codebook(cb).cfg.channels == model.cfg.bev_channels
    # the recorded command says which frames were sampled
    assert "--frames 1 --pick random " in torch.load(cb, weights_only=False)["command"]
    out = tmp_path / "comm.json"
    methods = comm_method_names()  # every feature method, the hybrid and late fusion's boxes
    r = CliRunner().invoke(
        cli,
        ["eval", "comm", "--data", log, "--weights", det, "--codebook", cb, "--methods", ",".join(methods)]
        + ["--budgets", "300,2000", "--json", str(out), "--plot", str(tmp_path / "comm.png")],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert {r["method"] for r in rows} == set(methods)
    keys = {"method", "budget_bytes", "bytes_mean", "bytes_max", "ap_bev", "log2_bytes"}
    for row in rows:
        assert keys | {"log2_bytes_per_ego_frame"} <= set(row)
        assert {"0.5", "0.7"} <= set(row["ap_bev"]) and row["frames"] == 2
        if row["budget_bytes"] is not None:
            assert row["bytes_max"] <= row["budget_bytes"]
        # per ego frame: both collaborators' links summed (each synthetic frame has two)
        if row["bytes_mean"] > 0:
            assert 2 ** row["log2_bytes_per_ego_frame"] == pytest.approx(2 * row["bytes_mean"])
    by = {(r["method"], r["budget_bytes"], r["threshold"]): r for r in rows}
    # late fusion: a point at every budget and one unbudgeted; only the hybrid splits its bytes
    assert [b for m, b, _ in by if m == "late"] == [300, 2000, None]
    extra = {"code_bytes_mean", "boxes_mean", "ap_bev_boxes_only"}
    assert {r["method"] for r in rows if extra <= set(r)} == {"hybrid"}
    assert not any(extra & set(r) for r in rows if r["method"] != "hybrid")
    raw = next(r for r in rows if r["method"] == "raw")
    half = next(r for r in rows if r["method"] == "raw-fp16")
    assert raw["bytes_mean"] > 1.9 * half["bytes_mean"] > 0  # every occupied cell, 4 vs 2 bytes a channel
    big = next(r for r in rows if r["method"] == "codebook" and r["budget_bytes"] == 2000)
    # the request is on the link: more than one header's worth beyond the feature message alone
    assert big["bytes_mean"] > big["paper_formula_bytes"] + 2 * HEADER.size
    w2c = sorted((r["threshold"], r["bytes_mean"]) for r in rows if r["method"] == "where2comm")
    assert [b for _, b in w2c] == sorted((b for _, b in w2c), reverse=True)  # a higher threshold sends less
    assert (tmp_path / "comm.png").stat().st_size > 10_000

    # --frames N --pick spread: N of the log's frames, evenly spaced
    r = CliRunner().invoke(
        cli,
        ["eval", "comm", "--data", log, "--weights", det, "--codebook", cb, "--methods", "raw"]
        + ["--frames", "1", "--pick", "spread", "--json", str(out)],
    )
    assert r.exit_code == 0, r.output
    assert [row["frames"] for row in json.loads(out.read_text())] == [1]


def test_late_and_hybrid_rows_with_the_shipped_weights(tmp_path, generate_log):
    """Trained weights, so collaborators have confident boxes: late fusion sends the most
    confident boxes that fit each budget, and the hybrid's boxes take room its codes had."""
    from v2x.datasets import open_log
    from v2x.experiments.comm_eval import evaluate_comm, settings_for
    from v2x.messages.codec import MessageCodec
    from v2x.perception.cooperative import Perception
    from v2x.perception.detector import DEFAULT_WEIGHTS, load_detector

    log = open_log(generate_log(tmp_path / "log", frames=2, cavs=3, rsus=1, channels=32, seed=5))
    model = load_detector()
    codec = MessageCodec(model.cfg.grid, load_codebook(DEFAULT_WEIGHTS.with_name("codebook.pt")))
    settings = settings_for(["late", "codebook", "hybrid"], [400, 1200])
    rows = evaluate_comm(log, Perception(model), codec, settings, progress=False, bootstrap=40)
    by = {(r["method"], r["budget_bytes"]): r for r in rows}
    [senders] = {len(log[i].collaborators) for i in range(len(log))}
    for row in rows:  # per ego frame: every sender's link summed
        assert 2 ** row["log2_bytes_per_ego_frame"] == pytest.approx(senders * row["bytes_mean"])
    unlimited = by["late", None]
    assert unlimited["bytes_mean"] > 400  # more boxes than 400 bytes hold: the budget cuts them
    for budget in (400, 1200):
        late, hybrid, codes = by["late", budget], by["hybrid", budget], by["codebook", budget]
        assert late["bytes_max"] <= budget and late["bytes_mean"] <= unlimited["bytes_mean"]
        assert hybrid["bytes_max"] <= budget and hybrid["boxes_mean"] > 0
        assert hybrid["cells_mean"] < codes["cells_mean"]  # the boxes went first
        # what is not codes is the boxes (16 bytes each), the headers and the request
        assert hybrid["bytes_mean"] - hybrid["code_bytes_mean"] > 16 * hybrid["boxes_mean"] + HEADER.size
        assert hybrid["ap_bev_boxes_only"].keys() == hybrid["ap_bev"].keys()
    assert by["late", 400]["bytes_mean"] < unlimited["bytes_mean"]
    # --bootstrap: each feature row against late fusion at its own budget, paired over frames
    assert all("vs_late" not in r for r in rows if r["method"] == "late")
    for method in ("codebook", "hybrid"):
        for budget in (400, 1200):
            row = by[method, budget]
            vs = row["vs_late"]
            assert vs["late_budget_bytes"] == budget and vs["resamples"] == 40
            for thr in ("0.5", "0.7"):
                d = vs["ap_bev"][thr]
                assert d["difference"] == pytest.approx(
                    row["ap_bev"][thr] - by["late", budget]["ap_bev"][thr], abs=1e-5
                )
                assert d["low"] <= d["high"]
