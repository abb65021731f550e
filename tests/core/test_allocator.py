"""The malloc tuning inference relies on (v2x.perception.allocator), checked in fresh processes: glibc
raises its mmap threshold on its own once a large mapped block is freed, so each process makes
one 16 MB allocation only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from v2x.perception.allocator import heap_mapped_bytes

pytestmark = pytest.mark.skipif(heap_mapped_bytes() is None, reason="needs glibc 2.33+ (mallinfo2)")

PROBE = """
import json, sys
import numpy as np
from v2x.perception.allocator import heap_mapped_bytes, keep_freed_memory
out = {}
if sys.argv[1] == "tuned":
    out["applied"], out["again"] = keep_freed_memory(), keep_freed_memory()
elif sys.argv[1] == "detector":
    from v2x.perception.detector import DEFAULT_WEIGHTS, load_detector
    load_detector(DEFAULT_WEIGHTS)  # no call of our own: loading must tune the process
before = heap_mapped_bytes()
block = np.ones(2 << 20)  # 16 MB
out["mapped"] = heap_mapped_bytes() - before
print(json.dumps(out))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_glibc_maps_a_16_mb_block_of_its_own_by_default():
    assert _probe("plain")["mapped"] >= 16 << 20


def test_a_tuned_process_serves_it_from_the_heap():
    out = _probe("tuned")
    assert out["applied"] is True and out["again"] is True
    assert out["mapped"] == 0


def test_loading_the_detector_tunes_the_process():
    assert _probe("detector")["mapped"] == 0
