"""What a foreign receiver must agree on with a running configuration: the grid and its
fingerprint, the codebook's identity and shape, and the wire messages each method puts on which
topic. ``v2x wire info`` prints it; ``scripts/wire_examples.py`` writes it into
``docs/wire-format.md``, so the document follows whatever grid and codebook are shipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from v2x import WEIGHTS
from v2x.core.grid import BEVGrid
from v2x.messages.scheme import FeatureEncoding
from v2x.messages.selection import SelectionConfig, block_shape
from v2x.pipeline.methods import DEFAULT_METHOD, Method, Sends, get_method

__all__ = ["CodebookInfo", "MessageKind", "WireProfile", "grid_text", "load_profile", "message_kinds"]

#: the shipped codebook, and its language-neutral twin (``v2x wire export-codebook``)
SHIPPED_CODEBOOK = WEIGHTS / "codebook.pt"
SHIPPED_CODEBOOK_FILE = WEIGHTS / "codebook.safetensors"


def grid_text(grid: BEVGrid) -> str:
    """The JSON text whose SHA-256 gives :meth:`BEVGrid.fingerprint` (checked by :func:`load_profile`)."""
    return json.dumps({k: round(float(v), 6) for k, v in asdict(grid).items()}, sort_keys=True)


@dataclass(frozen=True)
class CodebookInfo:
    """The identity and shape of a codebook, as its messages and its file state them."""

    path: str
    identity: int
    identity_sha256: str
    channels: int
    m: int
    r: int
    k: int
    bits: int

    @property
    def indices_per_cell(self) -> int:
        return self.r * self.m


@dataclass(frozen=True)
class MessageKind:
    """One message a method puts on the wire: its format, type number, sender and topic."""

    name: str
    sender: str  # "ego" or "collaborator"
    topic: str
    wire_type: int | None  # wire format v1 message type; None for early fusion's points
    format: str = "v1"  # or "V2XP", the points format of comm/wire_points.py


@dataclass(frozen=True)
class WireProfile:
    grid: BEVGrid
    grid_source: str
    block: int
    method: str
    kinds: list[MessageKind] = field(default_factory=list)
    codebook: CodebookInfo | None = None

    @property
    def grid_fingerprint(self) -> int:
        return self.grid.fingerprint()

    @property
    def grid_text(self) -> str:
        return grid_text(self.grid)

    def to_dict(self) -> dict[str, Any]:
        h, w = self.grid.shape
        hb, wb = block_shape(self.grid, self.block)
        cb = None
        if self.codebook is not None:
            cb = asdict(self.codebook) | {
                "identity": f"{self.codebook.identity:#010x}",
                "indices_per_cell": self.codebook.indices_per_cell,
            }
        return {
            "grid_fingerprint": f"{self.grid_fingerprint:#010x}",
            "grid": self.grid.to_dict() | {"source": self.grid_source},
            "grid_text": self.grid_text,
            "feature_grid": {"H": h, "W": w, "cells": h * w, "cell_m": self.grid.cell},
            "block_grid": {"b": self.block, "Hb": hb, "Wb": wb, "blocks": hb * wb},
            "codebook": cb,
            "method": self.method,
            "messages": [asdict(k) for k in self.kinds],
        }


def message_kinds(method: Method) -> list[MessageKind]:
    """The wire messages of ``method``, in the order a frame sends them (replay topics)."""
    out = []
    if method.uses_demand:
        out.append(MessageKind("demand", "ego", "/ego/<ego id>/demand", 5))
    if method.uses_offers:
        out.append(MessageKind("offer", "collaborator", "/agents/<id>/offer", 6))
    topic = f"/agents/<id>/{method.topic_kind}"
    if method.sends is Sends.BOXES:
        out.append(MessageKind("detections", "collaborator", topic, 4))
    elif method.sends is Sends.POINTS:
        out.append(MessageKind("points", "collaborator", topic, None, "V2XP"))
    elif method.features is not None:
        enc = method.features.encoding
        wire_type = {FeatureEncoding.CODES: 1, FeatureEncoding.FP32: 2, FeatureEncoding.FP16: 3}[enc]
        name = {1: "codebook features", 2: "raw fp32 features", 3: "raw fp16 features"}[wire_type]
        if method.attaches_boxes:
            name += " with a detections block"
        out.append(MessageKind(name, "collaborator", topic, wire_type))
    return out


def _detector_grid(weights: Path) -> BEVGrid:
    """The grid a detector checkpoint was trained on (what ``Models.load`` runs with)."""
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    return BEVGrid.from_dict(ckpt["config"]["grid"])


def _codebook_info(path: Path) -> CodebookInfo:
    from v2x.messages.codebook import load_codebook

    cb = load_codebook(path)
    c = cb.cfg
    return CodebookInfo(str(path), cb.identity(), cb.identity_hex(), c.channels, c.m, c.r, c.k, c.bits)


def _message_weights_info(path: Path, detector: Path) -> CodebookInfo:
    from v2x.messages.message_weights import load_message_weights
    from v2x.perception.detector import load_detector

    mw = load_message_weights(path, load_detector(detector))
    c = mw.codebook.cfg
    return CodebookInfo(str(path), mw.identity(), mw.identity_hex(), c.channels, c.m, c.r, c.k, c.bits)


def load_profile(
    weights: str | Path | None = None,
    config: str | Path | None = None,
    codebook: str | Path | None = None,
    method: str = DEFAULT_METHOD,
    message_weights: str | None = None,
) -> WireProfile:
    """The profile of a configuration: the grid of ``config`` (a detector YAML) if given, else of
    the detector ``weights`` (default: shipped); the codebook at ``codebook`` (default: shipped,
    when present); the messages of ``method``. A method that sends codes runs with the
    detector's message weights where a run would (``message_weights_path``): its messages then
    carry their identity, and the codebook reported is theirs."""
    from v2x.perception.detector import DEFAULT_WEIGHTS

    spec = get_method(method)
    if config is not None:
        from v2x.perception.config import load_config

        grid, source = load_config(config).grid, str(config)
    else:
        path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        grid, source = _detector_grid(path), str(path)
    digest = hashlib.sha256(grid_text(grid).encode()).digest()
    if int.from_bytes(digest[:4], "little") != grid.fingerprint():  # the document's recipe, checked
        raise AssertionError("BEVGrid.fingerprint no longer hashes grid_text(grid)")
    if spec.needs_codebook and config is None:
        from v2x.messages.message_weights import message_weights_path

        detector = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        chosen = message_weights_path(message_weights, codebook, detector)
        if chosen is not None:
            info = _message_weights_info(chosen, detector)
            return WireProfile(grid, source, SelectionConfig().block, spec.name, message_kinds(spec), info)
    book = Path(codebook) if codebook is not None else SHIPPED_CODEBOOK
    if codebook is None and not book.is_file() and not spec.needs_codebook:
        info = None
    else:
        if not book.is_file():
            raise FileNotFoundError(f"codebook {book} not found (train one: v2x train codebook)")
        info = _codebook_info(book)
    return WireProfile(grid, source, SelectionConfig().block, spec.name, message_kinds(spec), info)
