"""The seeded in-suite fuzzers: a few thousand structured mutations of real messages per decoder.

Each must end accepted (and valid) or refused with the decoder's documented error type and one
of its documented reasons; most must get past the integrity checks to the payload parsers; no
memory sample may exceed the documented bound. ``make fuzz`` runs the same with millions.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fuzzkit import make_target, run_range
from fuzzkit.engine import run_target
from fuzzkit.targets import TARGETS, Target

from v2x.comm import wire

SEED = 2026
INPUTS = {"envelope": 4000, "wire": 3000, "codec": 2500, "points": 3000, "detections": 3000}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzzed_inputs_are_accepted_or_refused_with_a_documented_reason(name):
    stats = run_range(name, SEED, 0, INPUTS[name], mem_every=25)
    d = stats.as_dict()
    assert stats.failures == 0, d["failure_examples"]
    assert stats.accepted > 0 and sum(stats.refused.values()) > 0
    # re-sealed mutations get past lengths and checksums: at least half reach the payload parsers
    assert d["reached_payload_share"] >= 0.5, d["refused_by_stage"]
    assert stats.mem_samples >= INPUTS[name] // 25 and stats.mem_over_bound == 0, d["memory"]


def _misbehaving(target: Target, fault: str) -> Target:
    """The wire target with a decoder that goes wrong on every tenth input, in one way."""
    calls = [0]

    def decode(data: bytes):
        calls[0] += 1
        if calls[0] % 10:
            return target.decode(data)
        if fault == "crash":
            raise OverflowError("cannot convert float infinity to integer")
        err = wire.MalformedError(f"a {fault}")
        if fault == "undocumented reason":
            err.reason = "mystery"
        elif fault == "last-resort net":
            err.unexpected = True
        else:  # an invalid message accepted: a cell outside the grid
            msg = wire.DecodedMessage(wire.peek_header(_VALID))
            msg.cells = np.array([10**6])
            return msg
        raise err

    return replace(target, decode=decode)


_VALID = wire.encode(wire.Header(wire.MessageType.DETECTIONS, 1, 1, 0, (0.0, 0.0, 0.0, 0.0), 0))


@pytest.mark.parametrize(
    "fault", ["crash", "undocumented reason", "last-resort net", "invalid message accepted"]
)
def test_the_fuzzer_reports_each_kind_of_failure(fault):
    """The harness itself can fail: a decoder that crashes, names an undocumented reason, falls
    into its last-resort net, or accepts an invalid message is caught on the inputs it did so."""
    stats = run_target(_misbehaving(make_target("wire"), fault), SEED, 0, 200, mem_every=0)
    assert stats.failures == 20, stats.as_dict()["failure_kinds"]
    assert stats.accepted + sum(stats.refused.values()) == 180
    assert len(stats.examples) == 5 and all(e["input"]["bytes"] > 0 for e in stats.examples)
