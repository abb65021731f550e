"""Which codebook goes with which detector.

A codebook quantises one detector's BEV features; with another detector's it decodes into
features that detector never made. So each shipped detector has its own codebook, picked with
it (the same one rule for every command), and a codebook records the identity of the detector
it was fitted on (``v2x train codebook`` writes it), which loading compares.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from v2x import WEIGHTS
from v2x.perception.detector import DAIR_WEIGHTS

__all__ = [
    "DAIR_CODEBOOK",
    "DEFAULT_CODEBOOK",
    "codebook_detector",
    "pairing_problem",
    "resolve_codebook",
    "warn_if_mispaired",
]

log = logging.getLogger("v2x.messages")

DEFAULT_CODEBOOK = WEIGHTS / "codebook.pt"
#: fitted on the DAIR-V2X-C detector's features (docs/perception.md)
DAIR_CODEBOOK = WEIGHTS / "codebook_dair.pt"
_BY_DETECTOR = {DAIR_WEIGHTS.resolve(): DAIR_CODEBOOK}


def resolve_codebook(codebook: str | Path | None, detector: str | Path) -> Path:
    """``codebook`` (``--codebook``) when given, else the shipped one of the ``detector`` file."""
    if codebook is not None and str(codebook) != "":
        return Path(codebook)
    return _BY_DETECTOR.get(Path(detector).resolve(), DEFAULT_CODEBOOK)


def codebook_detector(path: str | Path) -> str | None:
    """The identity of the detector a ``.pt`` codebook was fitted on, if it says."""
    if Path(path).suffix != ".pt":
        return None
    found = torch.load(path, map_location="cpu", weights_only=True).get("detector")
    return str(found) if found else None


def pairing_problem(codebook: str | Path, detector_identity: str) -> str | None:
    """A sentence naming both when ``codebook`` was fitted on another detector, else None.

    Why a warning and not a refusal: the shipped OPV2V-like codebook predates the shipped
    detector's last fine-tuning (it records detector af3321cb272aef60), and refusing it would
    stop every codebook method until it is refitted."""
    made_for = codebook_detector(codebook)
    if made_for is None or made_for == detector_identity:
        return None
    return (
        f"codebook {codebook} was fitted on detector {made_for}, not on the loaded detector "
        f"{detector_identity}: its messages decode into features this detector never made"
    )


def warn_if_mispaired(codebook: str | Path, detector_identity: str) -> None:
    problem = pairing_problem(codebook, detector_identity)
    if problem:
        log.warning(problem)
