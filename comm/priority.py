"""Lower a node process's CPU priority (a launch entry's ``nice``).

Why two knobs: the supervisor starts every node in a session of its own (so Ctrl-C reaches only
the supervisor), and where the kernel groups scheduling by session (``autogroup``, on by default
on desktop and many server kernels) CPU time is shared between *sessions* first: a process's
own nice value then only ranks it against its session's other processes, and a niced node
would still take an equal share from the one it should yield to. So both the process's nice
value and, where autogroup is on, its session group's are set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["AUTOGROUP_SWITCH", "autogroup_enabled", "lower_priority", "priority_of"]

log = logging.getLogger("v2x.launch")

AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")


def autogroup_enabled() -> bool:
    try:
        return AUTOGROUP_SWITCH.read_text().strip() == "1"
    except OSError:
        return False


def lower_priority(pid: int, nice: int) -> list[str]:
    """Give process ``pid`` (and, with autogroup, its session) the nice value ``nice`` (0..19).
    Returns what was set ("process", "autogroup"); what the system refuses is logged, never
    raised: a node runs either way."""
    if not 0 <= nice <= 19:
        raise ValueError(f"nice must be 0..19, got {nice}")
    done: list[str] = []
    if nice == 0:
        return done
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        done.append("process")
    except OSError as exc:
        log.warning("could not set nice %d on pid %d: %s", nice, pid, exc)
    if autogroup_enabled():
        try:
            Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
            done.append("autogroup")
        except OSError as exc:
            log.warning("could not set the autogroup nice of pid %d: %s", pid, exc)
    return done


def priority_of(pid: int) -> dict[str, int | None]:
    """The process's nice value and its autogroup's (None where there is none): what the tests
    check."""
    out: dict[str, int | None] = {"process": os.getpriority(os.PRIO_PROCESS, pid), "autogroup": None}
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()  # "/autogroup-123 nice 10"
        out["autogroup"] = int(text.split("nice")[1])
    except (OSError, IndexError, ValueError):
        pass
    return out
