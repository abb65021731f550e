"""Which agent node serves which collaborator.

The replay starts a fixed number of agent nodes ("slots"), not one per agent id: a log of many
scenes has many ids but never more than ``max_agents - 1`` collaborators at a time, and each
node costs a process with its own copy of the models. The assignment is *sticky*: an agent keeps
its slot while it stays in range, and one that comes back gets its old slot when it is free, so
an agent's state (the newest demand it holds, as ``run_frames`` keeps it per agent id) stays in
the same process whenever the log allows.
"""

from __future__ import annotations

__all__ = ["SlotMap", "count_slots"]


class SlotMap:
    def __init__(self, slots: int) -> None:
        if slots < 0:
            raise ValueError(f"slots must be >= 0, got {slots}")
        self.slots = slots
        self.current: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def assign(self, agent_ids: list[str]) -> dict[str, int]:
        """Slot of each of this frame's collaborators (at most ``slots`` of them, in order)."""
        ids = list(agent_ids)[: self.slots]
        keep = {a: s for a, s in self.current.items() if a in ids}
        free = [s for s in range(self.slots) if s not in keep.values()]
        out: dict[str, int] = {}
        for a in ids:
            if a in keep:
                out[a] = keep[a]
                continue
            s = self._last.get(a)
            if s is None or s not in free:
                s = free[0]
            free.remove(s)
            out[a] = s
        self.current = out
        self._last.update(out)
        return out

    def preview(self, agent_ids: list[str]) -> dict[str, int]:
        """What :meth:`assign` would give, without changing anything (to announce ahead)."""
        saved = dict(self.current), dict(self._last)
        try:
            return self.assign(agent_ids)
        finally:
            self.current, self._last = saved


def count_slots(log, max_agents: int) -> int:
    """Agent nodes a log needs: its largest number of collaborators (capped at ``max_agents - 1``).

    Read from the log's index where it has one (OPV2V family: the agent folders of each
    scenario), else ``max_agents - 1`` (idle slots cost a process, never a result)."""
    cap = max(0, max_agents - 1)
    if getattr(log, "format", "") == "dair-v2x-c":
        return min(cap, 1)
    cavs = getattr(log, "_scenario_cavs", None)
    if isinstance(cavs, dict) and cavs:
        return min(cap, max(len(v) for v in cavs.values()) - 1)
    return cap
