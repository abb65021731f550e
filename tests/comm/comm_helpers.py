"""Helpers shared by the comm tests (imported as a plain module: tests have no packages)."""

import json
import subprocess
import sys
import time
from pathlib import Path

from v2x.comm.launch import NodeEntry

__all__ = ["NodeEntry", "run_node_process", "summary", "wait_for"]


def wait_for(predicate, timeout=15.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_node_process(spec: dict, path: Path) -> subprocess.Popen:
    path.write_text(json.dumps(spec))
    return subprocess.Popen(
        [sys.executable, "-m", "v2x.comm.run", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
