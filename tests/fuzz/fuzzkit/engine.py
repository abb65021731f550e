"""Run inputs through a target and sort the outcomes.

Input ``i`` of decoder ``d`` under seed ``s`` is made by ``random.Random(f"{s}:{d}:{i}")``, so any
input is reproducible alone (:func:`make_one`) and ranges of inputs can run in any process in any
order. Each outcome is exactly one of: accepted (and the accepted message satisfies the target's
check), refused with the decoder's documented error type and one of its documented reasons
(counted by reason and by the stage that refused), or a failure: anything else, including the
decoders' last-resort net (``DecodeError.unexpected``) and an accepted message that breaks the
check. Every ``mem_every``-th input runs under ``tracemalloc`` to sample the decoder's peak memory.
"""

from __future__ import annotations

import random
import time
import traceback
import tracemalloc
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fuzzkit.targets import Target, make_target

__all__ = ["DecoderStats", "make_one", "run_range", "run_target"]

_EXAMPLES = 5


@dataclass
class DecoderStats:
    decoder: str
    inputs: int = 0
    accepted: int = 0
    reached_payload: int = 0  # accepted, or refused by a payload parser (the target's payload stages)
    input_bytes: int = 0
    seconds: float = 0.0
    refused: Counter[str] = field(default_factory=Counter)  # by reason
    stages: Counter[str] = field(default_factory=Counter)  # by the stage that refused
    made: Counter[str] = field(default_factory=Counter)  # how the inputs were made (mutator's words)
    failures: int = 0
    failure_kinds: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    mem_samples: int = 0
    mem_peak_max: int = 0  # bytes, the largest peak seen
    mem_peak_max_size: int = 0  # the size of the input that had it
    mem_ratio_max: float = 0.0  # the largest peak / size among inputs of 1 KiB or more
    mem_over_bound: int = 0  # samples above the decoder's documented bound

    def merge(self, other: DecoderStats) -> None:
        for name in (
            "inputs",
            "accepted",
            "reached_payload",
            "input_bytes",
            "seconds",
            "failures",
            "mem_samples",
            "mem_over_bound",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("refused", "stages", "made", "failure_kinds"):
            getattr(self, name).update(getattr(other, name))
        self.examples = (self.examples + other.examples)[:_EXAMPLES]
        if other.mem_peak_max > self.mem_peak_max:
            self.mem_peak_max, self.mem_peak_max_size = other.mem_peak_max, other.mem_peak_max_size
        self.mem_ratio_max = max(self.mem_ratio_max, other.mem_ratio_max)

    def as_dict(self) -> dict[str, Any]:
        n = max(self.inputs, 1)
        return {
            "decoder": self.decoder,
            "inputs": self.inputs,
            "accepted": self.accepted,
            "refused": sum(self.refused.values()),
            "failures": self.failures,
            "reached_payload_share": round(self.reached_payload / n, 4),
            "accepted_share": round(self.accepted / n, 4),
            "inputs_per_s": round(self.inputs / self.seconds, 1) if self.seconds else None,
            "mean_input_bytes": round(self.input_bytes / n, 1),
            "refused_by_reason": dict(self.refused.most_common()),
            "refused_by_stage": dict(self.stages.most_common()),
            "inputs_by_mutation": dict(self.made.most_common()),
            "failure_kinds": dict(self.failure_kinds.most_common()),
            "failure_examples": self.examples,
            "memory": {
                "samples": self.mem_samples,
                "peak_max_bytes": self.mem_peak_max,
                "peak_max_input_bytes": self.mem_peak_max_size,
                "peak_per_input_byte_max": round(self.mem_ratio_max, 2),
                "samples_over_documented_bound": self.mem_over_bound,
            },
        }


def make_one(target: Target, seed: int, i: int) -> tuple[Any, int, str]:
    """Input ``i`` of ``target`` under ``seed`` (what :func:`run_range` feeds it)."""
    return target.make_input(random.Random(f"{seed}:{target.name}:{i}"))


def _describe(inp: Any) -> Any:
    """A JSON-able, bounded picture of an input (hex of the first bytes of each part)."""
    if isinstance(inp, (bytes, bytearray)):
        return {"bytes": len(inp), "hex": bytes(inp[:256]).hex()}
    if isinstance(inp, (list, tuple)):
        return [_describe(x) for x in inp[:8]]
    return getattr(inp, "__name__", repr(inp)[:80])


def run_range(name: str, seed: int, start: int, stop: int, mem_every: int = 50) -> DecoderStats:
    """Inputs ``start..stop-1`` of decoder ``name``."""
    return run_target(make_target(name), seed, start, stop, mem_every)


def run_target(target: Target, seed: int, start: int, stop: int, mem_every: int = 50) -> DecoderStats:
    """Inputs ``start..stop-1`` of ``target`` (a decoder of :data:`~fuzzkit.targets.TARGETS`, or a
    variant of one)."""
    stats = DecoderStats(target.name)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a decoder that warns (overflow, invalid value) fails too
        for i in range(start, stop):
            _run_one(target, stats, seed, i, mem_every)
    stats.seconds = time.perf_counter() - t0
    return stats


def _run_one(target: Target, stats: DecoderStats, seed: int, i: int, mem_every: int) -> None:
    inp, size, how = make_one(target, seed, i)
    stats.inputs += 1
    stats.input_bytes += size
    stats.made[how] += 1
    traced = mem_every > 0 and i % mem_every == 0
    if traced:
        tracemalloc.start()
    try:
        out = target.decode(inp)
    except target.error as exc:
        if exc.unexpected or exc.reason not in target.reasons:
            why = "last-resort net" if exc.unexpected else f"undocumented reason {exc.reason!r}"
            _fail(stats, i, inp, f"{why}: {exc!r}"[:300], exc)
        else:
            stats.refused[exc.reason] += 1
            stats.stages[exc.stage or "?"] += 1
            stats.reached_payload += exc.stage in target.payload_stages
    except Exception as exc:  # the point of the exercise: anything else is a failure
        _fail(stats, i, inp, f"{type(exc).__name__}: {exc}"[:300], exc)
    else:
        problem = target.check(out)
        if problem:
            _fail(stats, i, inp, f"accepted, but {problem}", None)
        else:
            stats.accepted += 1
            stats.reached_payload += 1
    finally:
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            _memory(stats, target, peak, size)


def _memory(stats: DecoderStats, target: Target, peak: int, size: int) -> None:
    stats.mem_samples += 1
    if peak > stats.mem_peak_max:
        stats.mem_peak_max, stats.mem_peak_max_size = peak, size
    if size >= 1024:
        stats.mem_ratio_max = max(stats.mem_ratio_max, peak / size)
    if peak > target.memory_bound(size):
        stats.mem_over_bound += 1


def _fail(stats: DecoderStats, i: int, inp: Any, what: str, exc: BaseException | None) -> None:
    stats.failures += 1
    stats.failure_kinds[what.split(":")[0]] += 1
    if len(stats.examples) < _EXAMPLES:
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc is not None and exc.__traceback__ else None
        stats.examples.append(
            {
                "index": i,
                "error": what,
                "where": f"{where.filename}:{where.lineno}" if where else "",
                "input": _describe(inp),
            }
        )
