"""docs/wire-format.md can be implemented from alone: a decoder in JavaScript, written from the
document (``decoder.mjs``), decodes every documented example to the values the document states,
recomputes the grid fingerprint, verifies the codebook file, and rebuilds the codebook messages'
features, which must match Python's decoder. Runs where ``node`` is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "wire-format.md"
DECODER = Path(__file__).with_name("decoder.mjs")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node (JavaScript) is not installed")


def _run(doc: Path, root: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NODE, str(DECODER), str(doc), str(root)], capture_output=True, text=True, timeout=60, check=False
    )


def _hex(text: str, name: str) -> bytes:
    block = text[text.index(f"(`{name}`):") :]
    dump = re.search(r"```text\n(.*?)```", block, re.S).group(1)
    return bytes(int(b, 16) for line in dump.strip().splitlines() for b in line.split(":", 1)[1].split())


def test_the_javascript_decoder_reads_every_example_as_the_document_says():
    from v2x.messages.codebook import load_codebook
    from v2x.messages.codec import MessageCodec
    from v2x.pipeline.wire_profile import SHIPPED_CODEBOOK, load_profile

    res = _run(DOC)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    profile = load_profile(codebook=SHIPPED_CODEBOOK)  # the .pt checkpoint, not the file node read
    assert out["grid_fingerprint"] == f"{profile.grid_fingerprint:#010x}"
    assert out["codebook_identity"] == f"{profile.codebook.identity:#010x}"
    codec = MessageCodec(profile.grid, load_codebook(SHIPPED_CODEBOOK))
    text = DOC.read_text()
    rebuilt = {name: ex["features"] for name, ex in out["examples"].items() if ex.get("features")}
    assert len(rebuilt) >= 3 and len(out["examples"]) >= 8, out["examples"].keys()
    for name, features in rebuilt.items():
        python = codec.read_sparse(_hex(text, name)).values.numpy()
        assert np.allclose(np.array(features), python, rtol=1e-5, atol=1e-6), name
    assert out["envelope"]["type"] == 6 and out["envelope"]["kind"] == "offer"


def _tamper(text: str, what: str) -> str:
    if what == "a byte of a message":  # the CRC no longer matches
        at = text.index("(`codebook`):")
        at = text.index("0040: ", at) + len("0040: ")
        return text[:at] + ("00" if text[at : at + 2] != "00" else "01") + text[at + 2 :]
    if what == "a decoded value":
        at = text.index("Decoded (`offer`):")
        return text[:at] + text[at:].replace('"levels": [3, 1, 2]', '"levels": [3, 2, 1]', 1)
    if what == "the grid fingerprint":  # the configuration's, which the examples then disagree with
        at = text.index("```json", text.index("<!-- BEGIN GENERATED CONFIGURATION"))
        return text[:at] + re.sub(
            r'"grid_fingerprint": "0x\w{8}"', '"grid_fingerprint": "0x00000000"', text[at:], count=1
        )
    raise ValueError(what)


@pytest.mark.parametrize("what", ["a byte of a message", "a decoded value", "the grid fingerprint"])
def test_the_javascript_decoder_refuses_a_document_that_disagrees(tmp_path, what):
    doc = tmp_path / "wire-format.md"
    text = DOC.read_text()
    doc.write_text(_tamper(text, what))
    assert doc.read_text() != text
    res = _run(doc)
    assert res.returncode == 1, res.stdout[-500:]
    assert res.stderr.strip()


def test_the_javascript_decoder_refuses_a_codebook_file_that_is_not_the_documented_one(tmp_path):
    from v2x.pipeline.wire_profile import SHIPPED_CODEBOOK_FILE

    rel = SHIPPED_CODEBOOK_FILE.relative_to(REPO)
    copy = tmp_path / rel
    copy.parent.mkdir(parents=True)
    raw = bytearray(SHIPPED_CODEBOOK_FILE.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last codeword
    copy.write_bytes(bytes(raw))
    res = _run(DOC, tmp_path)
    assert res.returncode == 1
    assert "identity" in res.stderr
