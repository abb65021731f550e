"""``v2x wire info`` prints the running configuration's grid fingerprint, codebook and messages, and
``v2x wire export-codebook`` writes the codebook file the wire document describes."""

from __future__ import annotations

import json

import torch
import yaml
from click.testing import CliRunner

from v2x.cli.main import cli
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import Codebook, CodebookConfig, load_codebook
from v2x.messages.message_weights import DEFAULT_MESSAGE_WEIGHTS, load_message_weights
from v2x.perception.config import DEFAULT_CONFIG
from v2x.perception.detector import DEFAULT_WEIGHTS, load_detector
from v2x.pipeline.wire_profile import SHIPPED_CODEBOOK


def _info(*args: str) -> dict:
    res = CliRunner().invoke(cli, ["wire", "info", "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_info_reports_the_shipped_configuration():
    ckpt = torch.load(
        DEFAULT_CONFIG.parents[1] / "weights" / "detector.pt", map_location="cpu", weights_only=True
    )
    grid = BEVGrid.from_dict(ckpt["config"]["grid"])
    cb = load_codebook(SHIPPED_CODEBOOK)
    d = _info("--message-weights", "none")
    assert d["grid_fingerprint"] == f"{grid.fingerprint():#010x}"
    assert d["codebook"]["identity"] == f"{cb.identity():#010x}" and d["codebook"]["k"] == cb.cfg.k
    # by default a code method runs with the detector's shipped message weights: their identity
    shipped = DEFAULT_MESSAGE_WEIGHTS
    if shipped.is_file():
        mw = load_message_weights(shipped, load_detector(DEFAULT_WEIGHTS))
        default = _info()
        assert default["codebook"]["identity"] == f"{mw.identity():#010x}"
        assert default["codebook"]["path"] == str(shipped) and default["codebook"]["k"] == mw.codebook.cfg.k
        d = default
    assert [m["wire_type"] for m in d["messages"]] == [5, 6, 1]  # codefilling: demand, offer, codes
    text = CliRunner().invoke(cli, ["wire", "info"]).output
    assert d["grid_fingerprint"] in text and d["codebook"]["identity"] in text


def test_info_follows_the_config_codebook_and_method_given(tmp_path):
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["detector"]["grid"]["z_max"] = 3.0
    config = tmp_path / "detector.yaml"
    config.write_text(yaml.safe_dump(raw))
    cb = Codebook(CodebookConfig(channels=64, m=4, r=1, k=16))
    cb.save(tmp_path / "cb.safetensors")
    d = _info("--config", str(config), "--codebook", str(tmp_path / "cb.safetensors"), "--method", "late")
    assert d["grid_fingerprint"] == f"{BEVGrid.from_dict(raw['detector']['grid']).fingerprint():#010x}"
    assert d["grid_fingerprint"] != _info()["grid_fingerprint"]
    assert d["codebook"]["identity"] == f"{cb.identity():#010x}" and d["codebook"]["bits"] == 4
    assert [(m["name"], m["wire_type"]) for m in d["messages"]] == [("detections", 4)]


def test_export_codebook_writes_a_file_that_loads_as_the_same_codebook(tmp_path):
    cb = Codebook(CodebookConfig(channels=8, m=2, r=2, k=5))
    cb.codewords.data.normal_()
    cb.save(tmp_path / "cb.pt", command="v2x train codebook --x", detector="d1")
    res = CliRunner().invoke(cli, ["wire", "export-codebook", "--codebook", str(tmp_path / "cb.pt")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["identity"] == f"{cb.identity():#010x}"
    back = load_codebook(tmp_path / "cb.safetensors")
    assert back.identity() == cb.identity() and torch.equal(back.codewords, cb.codewords)
    bad = CliRunner().invoke(
        cli,
        ["wire", "export-codebook", "--codebook", str(tmp_path / "cb.pt"), "--out", str(tmp_path / "x.pt")],
    )
    assert bad.exit_code != 0 and ".safetensors" in bad.output
