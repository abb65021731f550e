"""Message weights: a codebook trained together with the ego's fusion, neck and head.

CodeFilling trains the codebook with the fusion and the detection head on what the ego really
receives (quantised cells of the selected blocks), the encoder frozen. ``v2x train messages``
does that (:mod:`v2x.training.messages`) and writes one file holding

* the codebook (its codewords),
* the ego's *decoder*: the fusion, warp alignment, neck and head weights that read codes,
* the identity of the frozen detector it was trained with (its encoder makes the features the
  codes quantise, and its head makes the confidence that selects cells),
* provenance (command, seed, data, validation AP per budget).

Senders need only the codebook; the ego runs the decoder on code messages. A file trained with
another detector is refused at load, naming both identities. Its identity (a hash of codewords
and decoder) replaces the bare codebook's identity on the wire, so a message made with other
message weights is refused by the receiver and counted, like any codebook mismatch.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import torch

from v2x import WEIGHTS
from v2x.messages.codebook import Codebook, CodebookConfig
from v2x.perception.detector import DAIR_WEIGHTS, CooperativeDetector

__all__ = [
    "DECODER_PREFIXES",
    "DEFAULT_MESSAGE_WEIGHTS",
    "NO_MESSAGE_WEIGHTS",
    "MessageWeights",
    "MessageWeightsMismatchError",
    "clone_detector",
    "decoder_state",
    "load_message_weights",
    "message_weights_path",
    "resolve_message_weights",
    "save_message_weights",
]

#: the detector's parts the ego's decoder trains (the encoder stays the detector's)
DECODER_PREFIXES = ("fusion.", "align.", "neck.", "head.")
DEFAULT_MESSAGE_WEIGHTS = WEIGHTS / "messages.pt"
#: message weights by detector file (other detectors have none shipped yet)
_BY_DETECTOR = {DAIR_WEIGHTS.resolve(): WEIGHTS / "messages_dair.pt"}


class MessageWeightsMismatchError(ValueError):
    """Message weights trained with another detector than the one loaded (names both)."""


class MessageWeights:
    """The codebook a sender encodes with, and the decoder the ego fuses and detects with."""

    def __init__(self, codebook: Codebook, decoder: CooperativeDetector, path: Path | None = None) -> None:
        self.codebook = codebook.eval()
        self.decoder = decoder.eval()
        self.path = path
        self._identity = _identity(codebook, decoder)

    def identity(self) -> int:
        """32-bit identity messages carry instead of the bare codebook's (first 4 bytes of the hash)."""
        return int(self._identity[:8], 16)

    def identity_hex(self) -> str:
        return self._identity


def clone_detector(model: CooperativeDetector) -> CooperativeDetector:
    """An independent copy (deepcopy cannot copy the sparse encoder), in eval mode."""
    out = CooperativeDetector(model.cfg)
    out.load_state_dict(model.state_dict())
    return out.eval()


def decoder_state(model: CooperativeDetector) -> dict[str, torch.Tensor]:
    """The decoder's part of a detector's state dict."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith(DECODER_PREFIXES)}


def _identity(codebook: Codebook, decoder: CooperativeDetector) -> str:
    buf = io.BytesIO()
    torch.save({k: v for k, v in sorted(decoder_state(decoder).items())}, buf)
    h = hashlib.sha256(codebook.identity_hex().encode())
    h.update(buf.getvalue())
    return h.hexdigest()[:16]


def save_message_weights(
    path: str | Path, codebook: Codebook, decoder: CooperativeDetector, detector_identity: str, **extra
) -> str:
    """Write the file; returns its identity (hex)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "kind": "v2x-message-weights",
            "codebook": {"config": asdict(codebook.cfg), "codewords": codebook.codewords.detach().cpu()},
            "decoder": decoder_state(decoder),
            "detector": detector_identity,
            **extra,
        },
        path,
    )
    return _identity(codebook, decoder)


def load_message_weights(path: str | Path, detector: CooperativeDetector) -> MessageWeights:
    """The message weights at ``path`` for ``detector``; refused (MessageWeightsMismatchError)
    when they were trained with another detector, and ValueError naming the file and field when
    the file is not message weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"message weights not found: {path} (train them with `v2x train messages`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable message-weights file ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "v2x-message-weights":
        raise ValueError(f"{path}: field 'kind' is not 'v2x-message-weights'; not a message-weights file")
    for key in ("codebook", "decoder", "detector"):
        if key not in ckpt:
            raise ValueError(f"{path}: field {key!r} is missing")
    made_for, loaded = str(ckpt["detector"]), _fp32_identity(detector)
    if made_for != loaded:
        raise MessageWeightsMismatchError(
            f"message weights {path} were trained with detector {made_for}, not with the loaded "
            f"detector {loaded}: train them for it with `v2x train messages --weights <detector>`"
        )
    cb = Codebook(CodebookConfig(**ckpt["codebook"]["config"]))
    cb.codewords.data.copy_(ckpt["codebook"]["codewords"])
    decoder = clone_detector(detector)
    state = ckpt["decoder"]
    wrong = [k for k in state if not k.startswith(DECODER_PREFIXES)]
    if wrong:
        raise ValueError(f"{path}: field 'decoder' holds non-decoder weights {wrong[:3]}")
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith(DECODER_PREFIXES)]
    if missing or unexpected:
        raise ValueError(
            f"{path}: field 'decoder' does not fit the detector (missing {missing[:3]}, "
            f"unexpected {list(unexpected)[:3]})"
        )
    return MessageWeights(cb, decoder.eval().set_precision(detector.precision), path)


def resolve_message_weights(message_weights: str | Path | None, detector: str | Path) -> Path:
    """``message_weights`` (``--message-weights``) when given, else the shipped ones of the
    ``detector`` file (which may not exist: then codes decode with the detector's own head)."""
    if message_weights is not None and str(message_weights) != "":
        return Path(message_weights)
    return _BY_DETECTOR.get(Path(detector).resolve(), DEFAULT_MESSAGE_WEIGHTS)


#: what ``--message-weights`` takes to decode codes with the detector's own head instead
NO_MESSAGE_WEIGHTS = "none"


def message_weights_path(
    message_weights: str | Path | None, codebook: str | Path | None, detector: str | Path
) -> Path | None:
    """The message weights a run of a code method loads, or None for the bare codebook.

    Given (``--message-weights PATH``): that file, which must exist. ``none``: none. Not given:
    the detector's shipped ones if they exist, unless a codebook was named (``--codebook``:
    the user asked for that codebook and the detector's own head)."""
    if message_weights is not None and str(message_weights) != "":
        if str(message_weights) == NO_MESSAGE_WEIGHTS:
            return None
        if codebook is not None and str(codebook) != "":
            raise ValueError(
                "give --message-weights or --codebook, not both: message weights hold their codebook"
            )
        path = Path(message_weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"message weights not found: {path} (train them with `v2x train messages`)"
            )
        return path
    if codebook is not None and str(codebook) != "":
        return None
    path = resolve_message_weights(None, detector)
    return path if path.is_file() else None


def _fp32_identity(detector: CooperativeDetector) -> str:
    """The detector's identity as training recorded it (fp32: other precisions hash differently)."""
    saved = detector.precision
    detector.precision = "fp32"
    try:
        return detector.identity()
    finally:
        detector.precision = saved
