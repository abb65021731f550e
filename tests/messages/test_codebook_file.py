"""The language-neutral codebook file (safetensors): round trip, the identity recipe the wire
document gives, and refusal of files whose contents or shape do not match what they claim."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict

import numpy as np
import pytest
import torch

from v2x.messages.codebook import Codebook, CodebookConfig, load_codebook
from v2x.messages.codebook_file import CodebookFileError, identity_text, read_codebook_file


def _codebook(seed: int = 0, **cfg) -> Codebook:
    cb = Codebook(CodebookConfig(**({"channels": 16, "m": 2, "r": 3, "k": 10} | cfg)))
    cb.codewords.data = torch.from_numpy(np.random.default_rng(seed).normal(size=cb.codewords.shape)).float()
    return cb


def test_round_trip_keeps_tensors_shape_and_identity(tmp_path):
    cb = _codebook()
    cb.save(tmp_path / "cb.safetensors", command="v2x train codebook ...", detector="abc")
    back = load_codebook(tmp_path / "cb.safetensors")
    assert back.cfg == cb.cfg and torch.equal(back.codewords, cb.codewords)
    assert back.identity() == cb.identity()
    x = torch.rand(5, 16)
    assert torch.equal(back.decode(cb.encode(x)), cb.decode(cb.encode(x)))
    _, _, meta = read_codebook_file(tmp_path / "cb.safetensors")
    assert meta["identity"] == f"{cb.identity():#010x}" and meta["command"] == "v2x train codebook ..."
    assert meta["bits"] == "4" and meta["k"] == "10"


def test_the_layout_is_plain_safetensors(tmp_path):
    """8-byte length, JSON header, data 8-byte aligned, C-order little-endian float32."""
    cb = _codebook(k=4)
    cb.save(tmp_path / "cb.safetensors")
    raw = (tmp_path / "cb.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    assert (8 + n) % 8 == 0
    assert header["codewords"] == {
        "dtype": "F32",
        "shape": [3, 2, 4, 8],
        "data_offsets": [0, 3 * 2 * 4 * 8 * 4],
    }
    data = np.frombuffer(raw[8 + n :], dtype="<f4").reshape(3, 2, 4, 8)
    assert np.array_equal(data, cb.codewords.detach().numpy())


def test_identity_is_the_recipe_the_document_gives():
    """SHA-256 of "[('channels', C), ('k', k), ('m', m), ('r', r)]" then the float32 codewords,
    the same text Python's repr of the sorted config gives (identities stay what they were)."""
    import hashlib

    cb = _codebook(seed=3)
    assert identity_text(asdict(cb.cfg)) == repr(sorted(asdict(cb.cfg).items()))
    h = hashlib.sha256(b"[('channels', 16), ('k', 10), ('m', 2), ('r', 3)]")
    h.update(cb.codewords.detach().numpy().astype("<f4").tobytes())
    assert cb.identity_hex() == h.hexdigest() and cb.identity() == int(h.hexdigest()[:8], 16)


def test_the_pt_checkpoint_still_loads(tmp_path):
    cb = _codebook(seed=1)
    cb.save(tmp_path / "cb.pt")
    assert load_codebook(tmp_path / "cb.pt").identity() == cb.identity()


def _rewrite(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header, data = json.loads(raw[8 : 8 + n]), bytearray(raw[8 + n :])
    edit(header, data)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h, d: d.__setitem__(0, d[0] ^ 1), "hash to"),  # one bit of a codeword
        (lambda h, d: h["__metadata__"].update(k="9"), "do not fit"),  # shape claims another k
        (lambda h, d: h["__metadata__"].update(format="other"), "format"),
        (lambda h, d: h["codewords"].update(dtype="F16"), "F32"),
        (lambda h, d: h["codewords"].update(data_offsets=[0, 8]), "offsets"),
        (lambda h, d: h["__metadata__"].pop("r"), "lacks"),
        (lambda h, d: h.update(__metadata__="v2x-codebook"), "not a v2x codebook"),
    ],
)
def test_a_file_that_does_not_match_its_claims_is_refused(tmp_path, edit, match):
    path = tmp_path / "cb.safetensors"
    _codebook().save(path)
    _rewrite(path, edit)
    with pytest.raises(CodebookFileError, match=match):
        load_codebook(path)


@pytest.mark.parametrize(
    "raw", [b"", b"\xff" * 8 + b"{}", struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 2) + b"{}"]
)
def test_garbage_is_refused_with_the_files_error(tmp_path, raw):
    path = tmp_path / "cb.safetensors"
    path.write_bytes(raw)
    with pytest.raises(CodebookFileError):
        read_codebook_file(path)
