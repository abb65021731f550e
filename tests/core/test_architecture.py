"""The layer rules of docs/architecture.md hold: import-linter's contracts in pyproject.toml pass on
the code, and they fail on a copy that breaks one (so the check itself is alive)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "lint-imports.sh"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _check(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LINT_IMPORTS": str(LINT_IMPORTS)}
    return subprocess.run(["bash", str(SCRIPT), str(root)], capture_output=True, text=True, env=env)


def test_the_import_contracts_hold():
    res = _check(REPO)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout or "broken" not in res.stdout.split("Contracts:")[-1]


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    for part in ("v2x", "comm", "tracking", "datasets", "sim"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("weights", "__pycache__"))
    return root


def test_a_tracking_module_reading_datasets_is_refused(tmp_path):
    root = _copy(tmp_path)
    (root / "tracking" / "reads_files.py").write_text("from v2x.datasets import open_log\n")
    res = _check(root)
    assert res.returncode != 0
    assert "v2x.tracking.reads_files -> v2x.datasets" in res.stdout


def test_a_stage_importing_upstream_is_refused(tmp_path):
    root = _copy(tmp_path)
    (root / "v2x" / "perception" / "asks_pipeline.py").write_text("import v2x.pipeline.config\n")
    res = _check(root)
    assert res.returncode != 0
    assert "v2x.perception.asks_pipeline -> v2x.pipeline.config" in res.stdout
