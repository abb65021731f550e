import json

import numpy as np
import torch
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.comm.wire import decode
from v2x.core.frame import AgentKind
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import load_codebook
from v2x.messages.codec import MessageCodec
from v2x.perception.cooperative import AgentPerception
from v2x.pipeline.methods import get_method

GRID = BEVGrid(x_min=-12.0, x_max=12.0, y_min=-8.0, y_max=8.0, voxel=0.4, stride=2)  # 20 x 30 cells


def _save_maps(folder, n=4, channels=16):
    g = torch.Generator().manual_seed(0)
    h, w = GRID.shape
    for i in range(n):
        occ = torch.rand(2, h, w, generator=g) < 0.3
        feats = torch.relu(torch.randn(2, channels, h, w, generator=g)) * occ[:, None]
        torch.save({"features": feats, "occupied": occ}, folder / f"{i:03d}.pt")
    return feats[0], occ[0]


def test_train_codebook_on_saved_features_then_use_it_on_the_wire(tmp_path):
    feats, occ = _save_maps(tmp_path)
    out = tmp_path / "cb" / "codebook.pt"
    args = ["train", "codebook", "--features", str(tmp_path), "--out", str(out), "--k", "16", "--iters", "4"]
    r = CliRunner().invoke(cli, [*args, "--refine-steps", "5", "--holdout-every", "4"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{") :])
    assert report["bits_per_cell"] == 16 and report["maps"] == {"train": 6, "holdout": 2}
    assert 0 < report["holdout"]["relative_error"] < 1
    cb = load_codebook(out)
    assert f"{cb.identity():#010x}" == report["identity"]
    # the trained codebook carries one agent's map to the ego and back
    agent = AgentPerception(
        "7", AgentKind.VEHICLE, 5, np.eye(4), feats, occ, np.full(GRID.shape, 0.5, np.float32)
    )
    codec = MessageCodec(GRID, cb)
    enc = codec.feature_message(get_method("codebook").features, agent, budget=300)
    assert len(enc) <= 300 and len(enc.cells) > 0
    got = codec.read_sparse(enc.data)
    assert torch.allclose(
        got.values, cb.decode(cb.encode(feats.reshape(16, -1)[:, enc.cells].T)).clamp(min=0)
    )
    assert decode(enc.data, GRID.shape).header.codebook_id == cb.identity()


def test_train_codebook_wants_exactly_one_source(tmp_path):
    r = CliRunner().invoke(cli, ["train", "codebook", "--out", str(tmp_path / "x.pt")])
    assert r.exit_code != 0 and "exactly one of --data" in r.output


def test_train_codebook_takes_frames_and_pick_like_every_command(tmp_path):
    """``--frames 300`` by default, the first ones unless ``--pick`` says otherwise."""
    from v2x.cli.codebook import train_codebook

    options = {p.name: p for p in train_codebook.params}
    assert options["frames"].default == 300 and options["pick"].default == "first"
    r = CliRunner().invoke(
        cli, ["train", "codebook", "--data", str(tmp_path), "--out", "x.pt", "--pick", "some"]
    )
    assert r.exit_code == 2 and "'some' is not one of 'first', 'spread', 'random'" in r.output
