"""The machine a set of weights was trained on, for their provenance.

Why: on CPU the same command and seed can give other weights on another processor. The math library
picks its kernels by CPU vendor and instruction set, training takes another path, and on small
real sets the held-out figures move by several points (docs/perception.md, the DAIR-V2X-C
leave-one-run-out rebuilt on 2026-12-07). A provenance that names the CPU lets a reader tell a
changed recipe from a changed machine.

Imports torch only when asked for the whole record: the benchmarks read :func:`cpu_model` alone.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_model", "training_machine"]

CPUINFO = Path("/proc/cpuinfo")


def training_machine(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """``machine`` (architecture), ``cpu`` (model name, "unknown" if nothing names it),
    ``cpu_capability`` (the instruction set torch's kernels use, e.g. AVX2), ``blas`` (torch's
    BLAS) and ``torch`` (its version)."""
    import torch

    return {
        "machine": platform.machine(),
        "cpu": cpu_model(cpuinfo) or "unknown",
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "blas": _build_setting(torch.__config__.show(), "BLAS_INFO"),
        "torch": torch.__version__,
    }


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The first ``model name`` of ``cpuinfo`` (Linux), else what ``platform`` knows (may be "")."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor()


def _build_setting(config: str, name: str) -> str:
    """One ``NAME=value`` of torch's build settings (``torch.__config__.show()``), or "unknown"."""
    for part in config.replace("\n", ",").split(","):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return "unknown"
