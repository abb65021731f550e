"""Spending what the assigned blocks leave of the budget: the fill after information filling.

Information filling (``selection.assign_blocks``) gives each collaborator the demanded blocks it
covers best. Once their cells are in the message, bytes of the budget are usually left over. The
collaborator then sends its other cells, ranked by the information each adds *for the ego*:

    value = ego uncertainty x own supply x what the offers ahead of it leave uncovered

* **ego uncertainty**: the demand carries a level per ego block, not the ego's confidence; a
  level stands for a range of ego confidence, and the value takes ``1 - `` its midpoint
  (:func:`uncertainty_of_levels`). Blocks the ego does not demand are not filled: there the ego
  said it is confident, and the protocol lets it decline what it did not ask for.
* **own supply**: the sender's block maximum of its detection confidence (as for the assigned
  blocks), then its cell's own confidence.
* **what is left uncovered** (:func:`fill_residuals`): for each ego block, the product of
  ``1 - coverage`` over the offers of *other* agents that come before this agent in information
  filling's order (level descending, agent, block), coverage being the midpoint of the offered
  level's supply range or a measured ``SelectionConfig.coverage``. A block another agent already fills is worth less; a block nobody offered
  is worth its full value.

Every input but the sender's own maps is shared (the demand and the broadcast offers), so every
collaborator computes every other one's ranking the same way, and two agents only send the same
block once each has nothing less covered left to send. The ranking is a total order (ties: cell
confidence, then cell index), so it is deterministic.

The residuals travel with each agent's assigned blocks as an :class:`Assignment` (a sorted int64
array of blocks, as before, with ``residual`` attached), so the pipeline's stages pass them to the
codec unchanged.
"""

from __future__ import annotations

import numpy as np

from v2x.core.grid import BEVGrid
from v2x.messages.selection import (
    MAX_LEVEL,
    SelectionConfig,
    block_shape,
    filling_order,
)

__all__ = ["Assignment", "fill_ranking", "fill_residuals", "level_coverage", "uncertainty_of_levels"]


class Assignment(np.ndarray):
    """An agent's assigned blocks (its own frame, sorted int64) with ``residual``: per ego block,
    the share of the ego's uncertainty the other agents' offers ahead of it leave (0..1)."""

    residual: np.ndarray | None

    def __new__(cls, blocks: np.ndarray, residual: np.ndarray | None = None) -> Assignment:
        obj = np.asarray(blocks, dtype=np.int64).view(cls)
        obj.residual = residual
        return obj

    def __array_finalize__(self, obj: object) -> None:
        self.residual = getattr(obj, "residual", None)


def uncertainty_of_levels(cfg: SelectionConfig) -> np.ndarray:
    """(4,) the ego's uncertainty a demand level 0..3 stands for: 1 - the midpoint of its confidence
    range (0 for level 0: the ego did not ask)."""
    u = np.zeros(MAX_LEVEL + 1, dtype=np.float64)
    thr = cfg.ego_threshold
    if not cfg.demand_levels:
        u[MAX_LEVEL] = 1.0 - thr / 2
        return u
    e0, e1 = cfg.demand_edges
    u[3] = 1.0 - e0 / 2
    u[2] = 1.0 - (e0 + e1) / 2
    u[1] = 1.0 - (e1 + thr) / 2
    return u


def level_coverage(cfg: SelectionConfig) -> np.ndarray:
    """(4,) the chance an offer of level 1..3 covers its block: ``cfg.coverage`` (measured, e.g. by
    ``scripts/reliability.py``), else the midpoint of the level's confidence range."""
    if cfg.coverage is not None:
        return np.r_[0.0, np.asarray(cfg.coverage, dtype=np.float64)]
    edges = np.array([*cfg.level_edges, 1.0], dtype=np.float64)
    return np.r_[0.0, (edges[:-1] + edges[1:]) / 2]


def fill_residuals(
    offers: dict[str, tuple[np.ndarray, np.ndarray]],
    poses: dict[str, np.ndarray],
    world_from_ego: np.ndarray,
    grid: BEVGrid,
    cfg: SelectionConfig,
) -> dict[str, np.ndarray]:
    """Per agent, (Hb * Wb,) over the ego's blocks: the product of ``1 - coverage`` over the other
    agents' offers ahead of its own in information filling's order (all of them where it offers
    nothing in that block). Same inputs as ``assign_blocks``, same answer on every agent."""
    agents, rows = filling_order(offers, poses, world_from_ego, grid, cfg)
    n_ego = int(np.prod(block_shape(grid, cfg.block)))
    cover = level_coverage(cfg)
    pos = np.arange(len(rows))
    keep = np.log1p(-np.clip(cover[np.clip(rows[:, 1], 0, MAX_LEVEL)], 0.0, 1.0 - 1e-6))
    out = {}
    for rank, agent in enumerate(agents):
        first = np.full(n_ego, len(rows), dtype=np.int64)  # this agent's first offer per ego block
        mine = rows[:, 2] == rank
        np.minimum.at(first, rows[mine, 0], pos[mine])
        ahead = ~mine & (pos < first[rows[:, 0]])
        log_left = np.zeros(n_ego)
        np.add.at(log_left, rows[ahead, 0], keep[ahead])
        out[agent] = np.exp(log_left).astype(np.float32)
    return out


def fill_ranking(
    cells: np.ndarray,
    ego_block: np.ndarray,
    demand_level: np.ndarray,
    supply: np.ndarray,
    confidence: np.ndarray,
    residual: np.ndarray | None,
    cfg: SelectionConfig,
) -> np.ndarray:
    """``cells`` (flat, the sender's grid) most valuable for the ego first; those of undemanded
    ego blocks are dropped.

    ``ego_block``, ``demand_level``, ``supply`` and ``confidence`` are per cell of the sender's
    grid (the ego block under each cell, the demand level there, the sender's block supply and
    its cell confidence); ``residual`` is per ego block (None: nobody else offered anything).
    """
    cells = np.asarray(cells, dtype=np.int64)
    level = demand_level[cells]
    cells = cells[level > 0]
    level = level[level > 0]
    value = uncertainty_of_levels(cfg)[level] * supply[cells]
    if residual is not None:
        value = value * residual[ego_block[cells]]
    return cells[np.lexsort((cells, -confidence[cells], -value))]
