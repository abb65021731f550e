"""pid_alive, shared by the node graph and the namespace cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from v2x.comm.procs import pid_alive


def test_live_exited_zombie_and_missing_processes():
    assert pid_alive(os.getpid())
    assert not pid_alive(None) and not pid_alive(0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:  # exited, not reaped: a zombie
        time.sleep(0.02)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)  # reaped: no such process
