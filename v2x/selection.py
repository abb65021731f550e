"""What is worth saying: demand, supply and information filling.

Coordination works on *blocks* of ``block x block`` feature cells (3.2 m at the defaults), which
keeps the coordination messages small while features still travel per 0.8 m cell:

1. **Demand** (ego -> all): the ego's confident blocks (max confidence >= ``ego_threshold``);
   every other block of its grid is demanded. Sparse, so cheap to send.
2. **Offer** (each collaborator -> all): demanded blocks where the collaborator's own supply
   (its max detection confidence in the block) reaches ``supply_threshold``, with a 2-bit level.
3. **Filling** (computed identically by everyone from the offers): per ego block, collaborators
   in decreasing offered confidence (ties: lower agent id) are chosen until the filled amount
   (level / 3 each) meets the demand of 1, so two agents do not send the same information.
4. **Features**: each collaborator sends its chosen blocks' occupied cells, the most valuable
   first (demand x supply per byte), cut exactly to its byte budget.

Where2comm is the single-round baseline: cells whose supply exceeds a threshold and that the ego
demands, no coordination between collaborators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from v2x.geometry import inverse
from v2x.grid import BEVGrid

__all__ = [
    "SelectionConfig",
    "assign_blocks",
    "block_centres",
    "block_max",
    "blocks_to_cells",
    "demand_blocks",
    "offer_blocks",
]


@dataclass(frozen=True)
class SelectionConfig:
    block: int = 4
    ego_threshold: float = 0.35
    supply_threshold: float = 0.2
    #: offered confidence levels: 1, 2, 3 for supply at or above these
    level_edges: tuple[float, float, float] = (0.2, 0.45, 0.7)


def block_shape(grid: BEVGrid, block: int) -> tuple[int, int]:
    h, w = grid.shape
    return -(-h // block), -(-w // block)


def block_max(conf: np.ndarray, block: int) -> np.ndarray:
    """(Hb, Wb) maximum of a (H, W) map over ``block x block`` tiles (edges padded with 0)."""
    h, w = conf.shape
    hb, wb = -(-h // block), -(-w // block)
    padded = np.zeros((hb * block, wb * block), dtype=np.float32)
    padded[:h, :w] = conf
    return padded.reshape(hb, block, wb, block).max(axis=(1, 3))


def block_centres(grid: BEVGrid, block: int) -> np.ndarray:
    """(Hb * Wb, 2) x, y of every block centre in the map's frame."""
    hb, wb = block_shape(grid, block)
    size = grid.cell * block
    xs = grid.x_min + (np.arange(wb) + 0.5) * size
    ys = grid.y_min + (np.arange(hb) + 0.5) * size
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _blocks_of(xy: np.ndarray, grid: BEVGrid, block: int) -> tuple[np.ndarray, np.ndarray]:
    hb, wb = block_shape(grid, block)
    size = grid.cell * block
    col = np.floor((xy[:, 0] - grid.x_min) / size).astype(np.int64)
    row = np.floor((xy[:, 1] - grid.y_min) / size).astype(np.int64)
    ok = (col >= 0) & (col < wb) & (row >= 0) & (row < hb)
    return row * wb + col, ok


def demand_blocks(ego_confidence: np.ndarray, grid: BEVGrid, cfg: SelectionConfig) -> np.ndarray:
    """Flat indices of the ego's *confident* blocks: the complement is what it demands."""
    return np.flatnonzero(block_max(ego_confidence, cfg.block).ravel() >= cfg.ego_threshold)


def demanded_mask(confident_blocks: np.ndarray, grid: BEVGrid, block: int) -> np.ndarray:
    hb, wb = block_shape(grid, block)
    mask = np.ones(hb * wb, dtype=bool)
    mask[confident_blocks] = False
    return mask


def to_ego_blocks(
    world_from_sender: np.ndarray, world_from_ego: np.ndarray, grid: BEVGrid, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each of the sender's blocks, the ego block holding its centre (and whether it is in the grid)."""
    c = block_centres(grid, block)
    T = inverse(world_from_ego) @ world_from_sender
    xy = c @ T[:2, :2].T + T[:2, 3]
    return _blocks_of(xy, grid, block)


def offer_blocks(
    supply: np.ndarray,
    world_from_agent: np.ndarray,
    world_from_ego: np.ndarray,
    demanded: np.ndarray,
    grid: BEVGrid,
    cfg: SelectionConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The agent's blocks (its own frame) that the ego demands and where it can supply, with levels 1..3."""
    bmax = block_max(supply, cfg.block).ravel()
    ego_block, inside = to_ego_blocks(world_from_agent, world_from_ego, grid, cfg.block)
    wanted = inside & demanded[np.where(inside, ego_block, 0)]
    level = np.searchsorted(np.asarray(cfg.level_edges), bmax, side="right")
    chosen = np.flatnonzero(wanted & (level > 0))
    return chosen, level[chosen].astype(np.uint8)


def assign_blocks(
    offers: dict[str, tuple[np.ndarray, np.ndarray]],
    poses: dict[str, np.ndarray],
    world_from_ego: np.ndarray,
    grid: BEVGrid,
    cfg: SelectionConfig,
) -> dict[str, np.ndarray]:
    """Information filling: per ego block, offers in decreasing level until the demand is met.

    Every collaborator computes the same answer from the same offers; returns, per agent, the
    blocks (in its own frame) it should fill.
    """
    rows = []
    for agent, (blocks, levels) in offers.items():
        ego_block, inside = to_ego_blocks(poses[agent], world_from_ego, grid, cfg.block)
        for b, lv in zip(blocks, levels, strict=True):
            if inside[b]:
                rows.append((int(ego_block[b]), -int(lv), agent, int(b)))
    rows.sort(key=lambda r: (r[0], r[1], _agent_key(r[2])))
    chosen: dict[str, list[int]] = {a: [] for a in offers}
    filled: dict[int, float] = {}
    for ego_b, neg_level, agent, b in rows:
        if filled.get(ego_b, 0.0) >= 1.0:
            continue
        filled[ego_b] = filled.get(ego_b, 0.0) - neg_level / 3.0
        chosen[agent].append(b)
    return {a: np.array(sorted(set(v)), dtype=np.int64) for a, v in chosen.items()}


def _agent_key(agent_id: str) -> tuple[int, str]:
    try:
        return (0, f"{int(agent_id):+012d}")
    except ValueError:
        return (1, agent_id)


def blocks_to_cells(blocks: np.ndarray, grid: BEVGrid, block: int) -> np.ndarray:
    """Flat feature-cell indices covered by the given blocks."""
    h, w = grid.shape
    _, wb = block_shape(grid, block)
    if len(blocks) == 0:
        return np.zeros(0, dtype=np.int64)
    br, bc = np.divmod(np.asarray(blocks, dtype=np.int64), wb)
    dr, dc = np.meshgrid(np.arange(block), np.arange(block), indexing="ij")
    rows = (br[:, None] * block + dr.ravel()[None]).ravel()
    cols = (bc[:, None] * block + dc.ravel()[None]).ravel()
    ok = (rows < h) & (cols < w)
    return np.unique(rows[ok] * w + cols[ok])
