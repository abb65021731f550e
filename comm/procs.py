"""Whether a process id names a running process: what the node graph and the namespace cleanup
both ask about processes they did not start."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pid_alive"]


def pid_alive(pid: int | None) -> bool:
    """True for a live process (also one of another user's); False for none, an exited one, or
    a zombie (it still answers ``kill(pid, 0)``, so its state is read from /proc where it exists)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True
