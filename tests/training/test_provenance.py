"""The machine a training run records: named from the real /proc/cpuinfo and torch's build, and
from a cpuinfo that says nothing the run still records what it can."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from v2x.training.provenance import cpu_model, training_machine


def test_names_this_machines_cpu_instruction_set_and_blas():
    m = training_machine()
    assert set(m) == {"machine", "cpu", "cpu_capability", "blas", "torch"}
    assert m["machine"] == platform.machine() and m["torch"] == torch.__version__
    assert m["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
    assert m["blas"] in torch.__config__.show()  # the value read from torch's build settings
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    named = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    model = next(named, platform.processor() or "unknown")  # a CPU without one (ARM) falls back
    assert m["cpu"] == model


def test_a_cpuinfo_without_a_model_name_falls_back(tmp_path):
    empty = tmp_path / "cpuinfo"
    empty.write_text("processor\t: 0\nflags\t\t: fpu sse\n")
    assert cpu_model(empty) == platform.processor()  # the benchmarks' record, as it was
    assert training_machine(empty)["cpu"] == (platform.processor() or "unknown")
    assert training_machine(tmp_path / "missing")["cpu"] == (platform.processor() or "unknown")
    named = tmp_path / "named"
    named.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\n")
    assert training_machine(named)["cpu"] == "Some CPU 9000"
