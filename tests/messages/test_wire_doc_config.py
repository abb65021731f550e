"""The wire document follows the running configuration: its grid fingerprint, codebook identity and
messages are the shipped weights' (so retraining cannot leave it stale), the codebook file it names
is the shipped codebook, its envelope table is what the code sends, and its CurveZMQ client runs."""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
from dataclasses import fields
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from v2x.comm.envelope import Packet, encode_frames
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import load_codebook
from v2x.perception.config import load_config
from v2x.pipeline.wire_profile import SHIPPED_CODEBOOK, SHIPPED_CODEBOOK_FILE

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "wire-format.md"


def _generator():
    spec = importlib.util.spec_from_file_location("wire_examples", REPO / "scripts" / "wire_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _section(text: str, title: str) -> str:
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + len(title) + 2)
    return text[start : end if end >= 0 else len(text)]


def test_the_configuration_section_is_regenerated():
    gen = _generator()
    text = DOC.read_text()
    section = text[text.index(gen.CONFIG_BEGIN) : text.index(gen.CONFIG_END) + len(gen.CONFIG_END)]
    assert section == gen.render_config(), (
        "regenerate: python scripts/wire_examples.py --update docs/wire-format.md"
    )


def test_the_document_states_the_shipped_grid_and_codebook():
    """Computed here from the shipped files, without the generator."""
    ckpt = torch.load(REPO / "v2x" / "weights" / "detector.pt", map_location="cpu", weights_only=True)
    grid = BEVGrid.from_dict(ckpt["config"]["grid"])
    assert grid == load_config().grid, (
        "v2x/configs/default.yaml and the shipped detector disagree on the grid"
    )
    text = DOC.read_text()
    assert f"`{grid.fingerprint():#010x}`" in text
    cb = load_codebook(SHIPPED_CODEBOOK)
    assert f"`{cb.identity():#010x}`" in text and f"k = {cb.cfg.k} codewords" in text
    examples = text[text.index("## Examples") :]
    assert examples.count(f"| grid fingerprint | {grid.fingerprint():#010x} |") >= 1
    assert f"| codebook id | {cb.identity():#010x} |" in examples
    stale = BEVGrid().fingerprint()  # the dataclass default is not the shipped grid
    if stale != grid.fingerprint():
        assert f"{stale:#010x}" not in text


def test_the_shipped_codebook_file_is_the_shipped_codebook():
    """Retraining the .pt without `v2x wire export-codebook` fails here."""
    pt, st = load_codebook(SHIPPED_CODEBOOK), load_codebook(SHIPPED_CODEBOOK_FILE)
    assert st.cfg == pt.cfg and st.identity_hex() == pt.identity_hex()
    assert torch.equal(st.codewords, pt.codewords)


def test_the_envelope_table_lists_what_the_code_sends():
    # as a node publishes it: with its epoch and message number (the freshness window's keys)
    frames = encode_frames(
        "/agents/3/offer",
        Packet.of(b"\x01\x02"),
        source="agent3",
        seq=1,
        epoch=1_700_000_000_000_000_000,
        number=7,
    )
    header = msgpack.unpackb(bytes(frames[1]), raw=False)
    section = _section(DOC.read_text(), "### Framing and the envelope")
    table = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert table == set(header), f"envelope keys: documented {sorted(table)}, sent {sorted(header)}"
    for f in fields(Packet):
        if f.name != "payload":
            assert f"`{f.name}`" in section, f"Packet field {f.name} is not documented"
    assert len(frames) == 3 and bytes(frames[2]) == b"\x01\x02"


def _serve_tap(tap_box: list, stop: threading.Event, keys_dir: Path, wire: bytes) -> None:
    """A node's outbox with CurveZMQ, publishing one packet every 20 ms on /rx/ until ``stop``."""
    from v2x.comm.security import KeyRing
    from v2x.comm.transport import Transport

    t = Transport("channel", None, [], tap="tcp://127.0.0.1:0", keys=KeyRing(keys_dir, "channel"))
    try:
        tap_box.append(t.tap)
        while not stop.wait(0.02):
            t.service()
            t.send(encode_frames("/rx/1/agents/3/offer", Packet.of(wire, sender="3", kind="offer")))
    finally:
        t.close()


@pytest.mark.integration
def test_the_documented_curve_client_receives_a_wire_message(tmp_path):
    from v2x.comm.security import generate_keys

    generate_keys(tmp_path / "keys", ["channel"])
    section = _section(DOC.read_text(), "### CurveZMQ")
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    wire = _generator().examples()[0].data
    tap_box: list[str] = []
    stop = threading.Event()
    server = threading.Thread(target=_serve_tap, args=(tap_box, stop, tmp_path / "keys", wire), daemon=True)
    server.start()
    try:
        for _ in range(200):
            if tap_box:
                break
            stop.wait(0.01)
        code = re.sub(r"^keys = .*$", f"keys = {str(tmp_path / 'keys')!r}", code, count=1, flags=re.M)
        code = re.sub(r"^tap = .*$", f"tap = {tap_box[0]!r}", code, count=1, flags=re.M)
        ns: dict = {}
        exec(compile(code, str(DOC), "exec"), ns)
        ns["sock"].close(0)
    finally:
        stop.set()
        server.join(5)
    assert ns["topic"] == b"/rx/1/agents/3/offer" and ns["message"] == wire


def test_every_refusal_reason_in_the_code_is_documented():
    """The wire decoder's reasons and the envelope's (the two decoders of a received wire message)
    are each named in the document's refusal section, and it names no reason the code lacks."""
    from v2x.comm import envelope, wire, wire_points

    reasons = {
        c.reason
        for c in vars(wire).values()
        if isinstance(c, type) and issubclass(c, wire.WireError) and c is not wire.WireError
    }
    reasons |= set(getattr(envelope, "REASONS", ()))
    section = _section(DOC.read_text(), "## Decoding untrusted bytes")
    missing = sorted(r for r in reasons if f"`{r}`" not in section)
    assert not missing, f"refusal reasons the document does not list: {missing}"
    known = reasons | set(getattr(wire_points, "REASONS", ())) | {"wrong_type"}
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert documented <= known, f"documented reasons the code does not have: {sorted(documented - known)}"


def test_a_codebook_example_rebuilds_with_the_file_as_documented():
    """The document's recipe (sum the stages' sub-codewords, clamp at 0) on the file's raw tensor."""
    from v2x.comm.wire import decode
    from v2x.messages.codebook_file import read_codebook_file

    gen = _generator()
    config, codewords, _ = read_codebook_file(SHIPPED_CODEBOOK_FILE)
    r, m = config["r"], config["m"]
    for ex in gen.examples()[:3]:
        codes = decode(ex.data, gen.profile().grid.shape).codes
        rebuilt = np.stack(
            [
                np.maximum(
                    0,
                    sum(
                        np.concatenate([codewords[s, t, row[s * m + t]] for t in range(m)]) for s in range(r)
                    ),
                )
                for row in codes
            ]
        )
        shown = np.array(ex.decoded["features"])
        assert np.allclose(rebuilt[:, : shown.shape[1]], shown, rtol=1e-5, atol=1e-6)
        assert np.allclose(rebuilt, gen.cell_features(ex.data), atol=1e-6)
