"""One error type for every refusal of received bytes, and the count a node keeps of them.

Every decoder on a node's receive path (the node envelope, :mod:`v2x.comm.envelope`; wire
format v1, :mod:`v2x.comm.wire`, with the codec's readers on top of it; the points message,
:mod:`v2x.comm.wire_points`) raises a :class:`DecodeError` subclass and nothing else for bytes
it cannot parse. The error says which decoder refused (``decoder``), why, as a short stable
code from that decoder's documented list (``reason``; ``docs/wire-format.md``, "Decoding
untrusted bytes"), and how far it got (``stage``), so a node can count refusals by reason and
sender (:func:`count_refusal`) and carry on, and a fuzzer can tell how deep its inputs reached.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

__all__ = ["MAX_REFUSAL_KEYS", "DecodeError", "count_refusal", "refusal_key"]

#: a node's counters take at most this many keys before refusals from new senders are lumped
#: together as ``other`` (sender names come from the untrusted bytes themselves)
MAX_REFUSAL_KEYS = 512
_SENDER_CHARS = 48


class DecodeError(ValueError):
    """Bytes a decoder refuses; ``reason`` is a machine-readable code documented per decoder.

    ``stage`` names the decoder's step that refused (``header``, ``checksum``, ``payload``, ...).
    ``unexpected`` is True only when a decoder's last-resort net caught an error its own checks
    should have turned into a reason first: a bug to fix, counted as a failure by the fuzzers.
    A ValueError subclass, so callers that caught ``ValueError`` before keep working.
    """

    decoder: ClassVar[str] = ""
    reason: str = "malformed"

    def __init__(self, message: str, *, reason: str | None = None, stage: str = "") -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.stage = stage
        self.unexpected = False


def _sender_name(sender: object) -> str:
    text = "?" if sender is None or sender == "" else str(sender)[:_SENDER_CHARS]
    return "".join(ch if ch.isprintable() and ch not in ":\n" else "_" for ch in text)


def refusal_key(exc: DecodeError, sender: object = None) -> str:
    """``refused:<decoder>.<reason>``, or with a sender ``refused:<decoder>.<reason>:<sender>``."""
    base = f"refused:{exc.decoder or 'decoder'}.{exc.reason}"
    return base if sender is None else f"{base}:{_sender_name(sender)}"


def count_refusal(counters: Counter[str], exc: DecodeError, sender: object = None) -> None:
    """Count one refusal in a node's counters: once by reason, once by reason and sender.

    The number of keys stays bounded (:data:`MAX_REFUSAL_KEYS`): once the counters are that
    large, a sender not seen before is counted as ``other``.
    """
    counters[refusal_key(exc)] += 1
    key = refusal_key(exc, "?" if sender is None else sender)
    if key not in counters and len(counters) >= MAX_REFUSAL_KEYS:
        key = refusal_key(exc, "other")
    counters[key] += 1
