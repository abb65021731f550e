"""Structured, seeded fuzzing of every decoder on a node's receive path.

Valid seed messages come from the real encoders (:mod:`fuzzkit.seeds`); a structure-aware
mutator changes them and re-seals what a sender would have made consistent (payload length,
checksum, point count, the msgpack envelope) so that most inputs get past the integrity checks
to the payload parsers (:mod:`fuzzkit.mutate`); each decoder is wrapped as a :class:`Target`
that knows its documented error type and reasons (:mod:`fuzzkit.targets`); :mod:`fuzzkit.engine`
runs inputs, sorts the outcomes (accepted, refused by reason and stage, failures) and samples
peak memory with ``tracemalloc``. The suite runs a few thousand inputs per decoder
(``tests/fuzz/test_fuzz_decoders.py``); ``scripts/fuzz.py`` (``make fuzz``) runs millions.
"""

from fuzzkit.engine import DecoderStats, run_range
from fuzzkit.targets import TARGETS, Target, make_target

__all__ = ["TARGETS", "DecoderStats", "Target", "make_target", "run_range"]
