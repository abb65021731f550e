"""What is worth saying: demand, supply and information filling.

Coordination works on *blocks* of ``block x block`` feature cells (3.2 m at the defaults; ``block=1``
makes it per cell), which keeps the coordination messages small while features still travel
per 0.8 m cell. The protocol of one frame (bytes of every step are counted, see ``docs/messages.md``):

1. **Demand** (ego -> all): per ego block a level 0..3 from the ego's own confidence (its block
   maximum): 0 where the ego is confident (>= ``ego_threshold``), else 3 (binary demand), or 1..3
   by how unsure it is (``demand_levels=True``). Sent as whichever is smaller: the set of
   undemanded blocks (complement) or the demanded blocks with 2-bit levels.
2. **Offer** (each collaborator -> all, broadcast): demanded blocks (warped into the
   collaborator's frame with both poses) where its own supply (block maximum of its detection
   confidence) reaches ``supply_threshold``, with a 2-bit level from ``level_edges``.
3. **Filling** (computed identically by every collaborator from the same offers): per ego block,
   offers in decreasing level (ties: lower agent id, then lower block) are taken until they add up to the
   demand level, so two agents do not send the same information.
4. **Features**: each collaborator sends the occupied cells of its assigned blocks, most demand
   filled per byte first, then fills what the budget leaves with its other cells the ego demands,
   by the information they add for it (``v2x.messages.filling``), cut exactly to its byte budget
   (``v2x.messages.codec``).

Where2comm is the single-round baseline: cells whose supply exceeds a threshold and that the ego
demands, no coordination between collaborators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from v2x.core.geometry import inverse
from v2x.core.grid import BEVGrid

__all__ = [
    "SelectionConfig",
    "assign_blocks",
    "block_centres",
    "block_max",
    "block_shape",
    "blocks_to_cells",
    "cells_outside_boxes",
    "cells_to_ego_blocks",
    "demand_levels",
    "filling_order",
    "offer_blocks",
    "to_ego_blocks",
    "upsample_blocks",
    "where2comm_cells",
]

MAX_LEVEL = 3


@dataclass(frozen=True)
class SelectionConfig:
    block: int = 4
    #: the ego demands nothing where its block confidence reaches this
    ego_threshold: float = 0.35
    #: demand 3 / 2 / 1 below these ego confidences (only with ``demand_levels``)
    demand_edges: tuple[float, float] = (0.1, 0.2)
    demand_levels: bool = False
    #: offered supply levels 1, 2, 3 at or above these block confidences (the first is the threshold)
    level_edges: tuple[float, float, float] = (0.2, 0.45, 0.7)
    #: the chance that an offer of level 1, 2, 3 covers its block, for the fill's discount
    #: (``filling.level_coverage``); None: the midpoints of the levels' confidence ranges
    coverage: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.block <= 255:
            raise ValueError(f"block edge must be 1..255 cells, got {self.block}")
        if not self.demand_edges[0] <= self.demand_edges[1] <= self.ego_threshold:
            raise ValueError(
                f"demand edges {self.demand_edges} must rise to ego_threshold {self.ego_threshold}"
            )
        if self.coverage is not None and (
            len(self.coverage) != 3 or not all(0.0 <= c <= 1.0 for c in self.coverage)
        ):
            raise ValueError(f"coverage: three chances in [0, 1] for levels 1..3, got {self.coverage}")

    @property
    def supply_threshold(self) -> float:
        return self.level_edges[0]


# -- blocks --------------------------------------------------------------------------------------
def block_shape(grid: BEVGrid, block: int) -> tuple[int, int]:
    h, w = grid.shape
    return -(-h // block), -(-w // block)


def block_max(conf: np.ndarray, block: int) -> np.ndarray:
    """(Hb, Wb) maximum of a (H, W) map over ``block x block`` tiles (edges padded with 0)."""
    h, w = conf.shape
    if block == 1:
        return np.asarray(conf, dtype=np.float32)
    hb, wb = -(-h // block), -(-w // block)
    padded = np.zeros((hb * block, wb * block), dtype=np.float32)
    padded[:h, :w] = conf
    return padded.reshape(hb, block, wb, block).max(axis=(1, 3))


def upsample_blocks(values: np.ndarray, grid: BEVGrid, block: int) -> np.ndarray:
    """(H * W,) per-cell copy of a per-block array (flat over the block grid)."""
    hb, wb = block_shape(grid, block)
    h, w = grid.shape
    full = np.repeat(np.repeat(np.asarray(values).reshape(hb, wb), block, 0), block, 1)
    return full[:h, :w].ravel()


def block_centres(grid: BEVGrid, block: int) -> np.ndarray:
    """(Hb * Wb, 2) x, y of every block centre in the map's frame."""
    hb, wb = block_shape(grid, block)
    size = grid.cell * block
    xs = grid.x_min + (np.arange(wb) + 0.5) * size
    ys = grid.y_min + (np.arange(hb) + 0.5) * size
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _blocks_of(xy: np.ndarray, grid: BEVGrid, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Block holding each point (nearest-cell rule: floor of the position) and an in-grid mask."""
    hb, wb = block_shape(grid, block)
    size = grid.cell * block
    col = np.floor((xy[:, 0] - grid.x_min) / size).astype(np.int64)
    row = np.floor((xy[:, 1] - grid.y_min) / size).astype(np.int64)
    ok = (col >= 0) & (col < wb) & (row >= 0) & (row < hb)
    return np.where(ok, row * wb + col, 0), ok


def _to_ego(xy: np.ndarray, world_from_sender: np.ndarray, world_from_ego: np.ndarray) -> np.ndarray:
    T = inverse(world_from_ego) @ world_from_sender
    return xy @ T[:2, :2].T + T[:2, 3]


def to_ego_blocks(
    world_from_sender: np.ndarray, world_from_ego: np.ndarray, grid: BEVGrid, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each of the sender's blocks, the ego block holding its centre, and whether it is in the grid."""
    return _blocks_of(_to_ego(block_centres(grid, block), world_from_sender, world_from_ego), grid, block)


def cells_to_ego_blocks(
    world_from_sender: np.ndarray, world_from_ego: np.ndarray, grid: BEVGrid, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each of the sender's (H * W) cells, the ego block holding its centre, and an in-grid mask."""
    centres = grid.cell_centers().reshape(-1, 2)
    return _blocks_of(_to_ego(centres, world_from_sender, world_from_ego), grid, block)


# -- demand and supply ---------------------------------------------------------------------------
def demand_levels(ego_confidence: np.ndarray, cfg: SelectionConfig) -> np.ndarray:
    """(Hb * Wb,) uint8 demand per ego block: 0 where the ego is confident, else 3 (or 1..3)."""
    c = block_max(ego_confidence, cfg.block).ravel()
    if not cfg.demand_levels:
        return np.where(c >= cfg.ego_threshold, 0, MAX_LEVEL).astype(np.uint8)
    edges = np.array([*cfg.demand_edges, cfg.ego_threshold])
    return (MAX_LEVEL - np.searchsorted(edges, c, side="right")).astype(np.uint8)


def offer_blocks(
    supply: np.ndarray,
    world_from_agent: np.ndarray,
    world_from_ego: np.ndarray,
    demand: np.ndarray,
    grid: BEVGrid,
    cfg: SelectionConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The agent's blocks (its own frame) that the ego demands and where it can supply, levels 1..3.

    ``demand`` is per ego block (levels, or a boolean mask); the warp maps each of the agent's
    block centres into the ego's block grid with both poses.
    """
    bmax = block_max(supply, cfg.block).ravel()
    ego_block, inside = to_ego_blocks(world_from_agent, world_from_ego, grid, cfg.block)
    wanted = inside & (np.asarray(demand)[ego_block] > 0)
    level = np.searchsorted(np.asarray(cfg.level_edges), bmax, side="right")
    chosen = np.flatnonzero(wanted & (level > 0))
    return chosen, level[chosen].astype(np.uint8)


def _agent_key(agent_id: str) -> tuple[int, int, str]:
    """Tie-break order every agent computes the same way: numeric ids by value, then names."""
    try:
        return (0, int(agent_id), "")
    except ValueError:
        return (1, 0, agent_id)


def filling_order(
    offers: dict[str, tuple[np.ndarray, np.ndarray]],
    poses: dict[str, np.ndarray],
    world_from_ego: np.ndarray,
    grid: BEVGrid,
    cfg: SelectionConfig,
) -> tuple[list[str], np.ndarray]:
    """The agents in tie-break order, and every offer inside the ego's grid as a row (ego block,
    level, agent rank, the agent's own block) in information filling's order: ego block, then
    level descending, then agent rank, then the agent's block (a total order, the same on every
    agent). ``assign_blocks`` and ``filling.fill_residuals`` both walk it."""
    agents = sorted(offers, key=_agent_key)
    parts = []
    for rank, agent in enumerate(agents):
        blocks, levels = offers[agent]
        blocks = np.asarray(blocks, dtype=np.int64)
        ego_block, inside = to_ego_blocks(poses[agent], world_from_ego, grid, cfg.block)
        ok = inside[blocks]
        n = int(ok.sum())
        parts.append(
            np.stack(
                [ego_block[blocks[ok]], np.asarray(levels, np.int64)[ok], np.full(n, rank), blocks[ok]],
                axis=1,
            )
        )
    rows = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
    return agents, rows[np.lexsort((rows[:, 3], rows[:, 2], -rows[:, 1], rows[:, 0]))]


def assign_blocks(
    offers: dict[str, tuple[np.ndarray, np.ndarray]],
    poses: dict[str, np.ndarray],
    world_from_ego: np.ndarray,
    grid: BEVGrid,
    cfg: SelectionConfig,
    demand: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Information filling: per ego block, offers in decreasing level until the demand is met.

    Every collaborator computes the same answer from the same offers (and the ego's demand
    levels; full demand where not given). Returns, per agent, the blocks in its own frame it
    should fill, sorted.
    """
    agents, rows = filling_order(offers, poses, world_from_ego, grid, cfg)
    out = {a: np.zeros(0, np.int64) for a in offers}
    if len(rows) == 0:
        return out
    # levels already taken in the same ego block before each offer
    group_start = np.flatnonzero(np.r_[True, rows[1:, 0] != rows[:-1, 0]])
    csum = np.cumsum(rows[:, 1])
    before = (
        csum
        - rows[:, 1]
        - np.repeat(csum[group_start] - rows[group_start, 1], np.diff(np.r_[group_start, len(rows)]))
    )
    need = np.full(len(rows), MAX_LEVEL) if demand is None else np.asarray(demand, np.int64)[rows[:, 0]]
    take = before < need
    for rank, agent in enumerate(agents):
        mine = take & (rows[:, 2] == rank)
        out[agent] = np.unique(rows[mine, 3])
    return out


def blocks_to_cells(blocks: np.ndarray, grid: BEVGrid, block: int) -> np.ndarray:
    """Flat feature-cell indices covered by the given blocks, sorted."""
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


def where2comm_cells(supply: np.ndarray, occupied: np.ndarray, threshold: float) -> np.ndarray:
    """Where2comm's rule: the agent's occupied cells whose own confidence reaches ``threshold``."""
    return np.flatnonzero(np.asarray(occupied).ravel() & (np.asarray(supply).ravel() >= threshold))


def cells_outside_boxes(
    cells: np.ndarray, xyzlwhy: np.ndarray, grid: BEVGrid, margin: float = 0.5
) -> np.ndarray:
    """``cells`` (flat, in order) whose centres lie outside every box (BEV footprints grown by
    ``margin`` metres): the hybrid does not spend codes where it already sends a box. Each box
    tests only the cells of its own window, so the cost follows the boxes, not the map."""
    cells = np.asarray(cells, dtype=np.int64)
    if len(cells) == 0 or len(xyzlwhy) == 0:
        return cells
    h, w = grid.shape
    covered = np.zeros(h * w, dtype=bool)
    for bx, by, _, length, width, _, yaw in np.asarray(xyzlwhy, dtype=np.float64):
        reach = np.hypot(length, width) / 2 + margin
        c0, c1 = np.floor((np.array([bx - reach, bx + reach]) - grid.x_min) / grid.cell).astype(int)
        r0, r1 = np.floor((np.array([by - reach, by + reach]) - grid.y_min) / grid.cell).astype(int)
        c0, c1, r0, r1 = max(c0, 0), min(c1, w - 1), max(r0, 0), min(r1, h - 1)
        if c0 > c1 or r0 > r1:
            continue
        rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
        dx = grid.x_min + (cc + 0.5) * grid.cell - bx
        dy = grid.y_min + (rr + 0.5) * grid.cell - by
        c, s = np.cos(yaw), np.sin(yaw)
        hit = (np.abs(dx * c + dy * s) <= length / 2 + margin) & (
            np.abs(-dx * s + dy * c) <= width / 2 + margin
        )
        covered[(rr * w + cc)[hit]] = True
    return cells[~covered[cells]]
