"""The wire-format document and the code agree: its examples are the code's bytes, and they decode."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from v2x.comm.wire import HEADER, decode

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "wire-format.md"


def _load_generator():
    """The examples' generator is a script (scripts/), not part of the installed package."""
    spec = importlib.util.spec_from_file_location("wire_examples", REPO / "scripts" / "wire_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


_gen = _load_generator()
BEGIN, END, examples, parse_hexdump, render = (
    _gen.BEGIN,
    _gen.END,
    _gen.examples,
    _gen.parse_hexdump,
    _gen.render,
)
GRID = _gen.profile().grid
CODEBOOK_ID = _gen.profile().codebook.identity


def test_the_documented_examples_are_what_the_code_writes():
    text = DOC.read_text()
    section = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert section == render(), "regenerate: python scripts/wire_examples.py --update docs/wire-format.md"


@pytest.mark.parametrize("ex", examples(), ids=lambda e: e.name)
def test_each_hex_dump_decodes_and_its_annotations_tile_the_payload(ex):
    text = DOC.read_text()
    block = text[text.index(f"(`{ex.name}`):") :]
    dump = re.search(r"```text\n(.*?)```", block, re.S).group(1)
    data = parse_hexdump(dump)
    assert data == ex.data
    msg = decode(data, GRID.shape, GRID.fingerprint(), CODEBOOK_ID)
    assert msg.header.sender in (1, 2, 3)
    payload = sorted((o, n) for o, n, *_ in ex.fields if o >= HEADER.size)
    ends = [HEADER.size] + [o + n for o, n in payload]
    assert [o for o, _ in payload] == ends[:-1] and ends[-1] == len(data), payload


def test_annotated_values_match_the_bytes():
    ex = {e.name: e for e in examples()}
    cb = decode(ex["codebook"].data, GRID.shape)
    codes = _gen._codes(4)  # rows for cells 1236, 1234, 9000, 1235, as the example gives them
    assert cb.cells.tolist() == [1234, 1235, 1236, 9000] and cb.codes[2].tolist() == codes[0].tolist()
    rl = decode(ex["run-length"].data, GRID.shape)
    assert rl.cells.tolist() == list(range(3000, 3006)) and rl.header.unit == _gen.profile().codebook.bits
    assert rl.codes.tolist() == _gen._codes(6).tolist()
    bitmap = decode(ex["demand-bitmap"].data, GRID.shape)
    assert bitmap.header.coding == 1 and bitmap.cells.tolist() == list(range(0, 1100, 2))
    offer = decode(ex["offer"].data, GRID.shape)
    assert offer.cells.tolist() == [7, 8, 300] and offer.levels.tolist() == [3, 1, 2]
    raw = decode(ex["raw-fp16"].data, GRID.shape)
    assert raw.features[0].tolist() == [1.5, 0.25, -0.125, 65504.0]
    det = decode(ex["detections"].data, GRID.shape)
    assert np.allclose(det.detections[0, :6], [12.34, -5.67, 0.8, 4.5, 1.9, 1.5])
    assert abs(det.detections[0, 6] - 3.0) < 1e-4 and det.scores[0] == pytest.approx(223 / 255)
