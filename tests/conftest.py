"""Shared fixtures: the real data samples live beside the checkout in ../shared/realdata."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("V2X_REALDATA", REPO.parent / "shared" / "realdata"))

# Parsed log metadata is cached on disk (v2x.datasets.meta_cache): in a folder of the test run's
# own, never the user's cache, removed when the process that made it exits.
if "V2X_CACHE_DIR" not in os.environ:
    os.environ["V2X_CACHE_DIR"] = tempfile.mkdtemp(prefix="v2x-test-cache-")
    atexit.register(shutil.rmtree, os.environ["V2X_CACHE_DIR"], True)

# Tests share two cores with each other (pytest -n 2): keep torch to one thread per worker.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:  # pragma: no cover - torch is a hard dependency, but keep collection cheap if absent
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: the module of ``scripts/<name>.py`` (scripts are not a package), for
    tests of their parts. A fixture, since ``tests`` itself is not importable under ``pytest``."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _same_global_rng_for_every_test():
    """Each test starts from the same global torch and numpy RNG state: under pytest-xdist the
    order of tests on a worker varies between runs, and a net initialised from the global RNG
    would otherwise train to a different result on every run (CI saw one such test fail)."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Root of the real data samples; tests that need them skip, naming the path, when absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data samples not found at {REALDATA} (set V2X_REALDATA)")
    return REALDATA


@pytest.fixture(scope="session")
def dair_example(realdata) -> Path:
    """The 29 real DAIR-V2X-C cooperative pairs (a train set, see the real data's README)."""
    root = realdata / "dair-v2x-c-example"
    if not root.is_dir():
        pytest.skip(f"no DAIR-V2X-C example at {root}")
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def generate_log():
    """``generate_log(out, frames=.., cavs=.., rsus=.., channels=.., seed=.., scenes=1)``: a small
    simulated log written by the ``v2x sim generate`` command itself; returns ``out``."""
    from click.testing import CliRunner

    from v2x.cli.main import cli

    def generate(out: Path, *, frames: int, cavs: int, rsus: int, channels: int, seed: int, scenes: int = 1):
        res = CliRunner().invoke(
            cli,
            ["sim", "generate", "--scenes", str(scenes), "--frames", str(frames), "--cavs", str(cavs)]
            + ["--rsus", str(rsus), "--channels", str(channels), "--seed", str(seed)]
            + ["--out", str(out), "--quiet"],
        )
        assert res.exit_code == 0, res.output
        return out

    return generate
