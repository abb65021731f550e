"""A procedural town: a grid of roads with intersections, lanes, sidewalks, buildings, walls,
trees and parking strips, plus the lane graph traffic drives on.

Right-hand traffic. Roads run along x ("horizontal") and y ("vertical") through grid
intersections; every road has the same number of lanes per direction in a town. Buildings and
walls line the blocks so that cross streets are hidden from each other, which is what makes
cooperation worth having.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from v2x.sim.meshes import Mesh, box_mesh, merge, prism_mesh

__all__ = ["LANE_WIDTH", "Lane", "Town", "TownConfig", "build_town"]

LANE_WIDTH = 3.5
SIDEWALK = 3.0
PARKING = 2.5
#: heading of each travel direction
DIRECTIONS = {"+x": 0.0, "-x": np.pi, "+y": np.pi / 2, "-y": -np.pi / 2}


@dataclass
class TownConfig:
    blocks_x: int = 3
    blocks_y: int = 3
    block_min: float = 55.0
    block_max: float = 90.0
    lanes_per_direction: int = 1
    parking: bool = True
    building_height: tuple[float, float] = (6.0, 30.0)
    #: share of block sides lined with buildings (the rest: walls, trees, open space)
    built_up: float = 0.85
    wall_probability: float = 0.5
    parked_density: float = 0.35  # parked cars per parking slot
    tree_spacing: float = 18.0


@dataclass
class Lane:
    """A directed polyline traffic follows: a road lane between two intersections or a connector."""

    id: int
    points: np.ndarray  # (N, 2)
    kind: str  # "road" or "turn"
    direction: str  # travel direction at the end of the lane (+x, -x, +y, -y)
    lane_index: int  # 0 = rightmost
    start_node: tuple[int, int] | None = None
    end_node: tuple[int, int] | None = None
    movement: str = "straight"  # for connectors: straight, left, right
    next: list[int] = field(default_factory=list)
    length: float = 0.0
    cumlen: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        seg = np.hypot(*np.diff(self.points, axis=0).T)
        self.cumlen = np.concatenate([[0.0], np.cumsum(seg)])
        self.length = float(self.cumlen[-1])

    def at(self, s: float) -> tuple[np.ndarray, float]:
        """Position and heading at arc length ``s``."""
        s = float(np.clip(s, 0.0, self.length))
        i = int(np.clip(np.searchsorted(self.cumlen, s, side="right") - 1, 0, len(self.points) - 2))
        d = self.points[i + 1] - self.points[i]
        seg = max(self.cumlen[i + 1] - self.cumlen[i], 1e-9)
        p = self.points[i] + d * (s - self.cumlen[i]) / seg
        return p, float(np.arctan2(d[1], d[0]))


@dataclass
class StaticObject:
    """A static obstacle in the world: its mesh and, for parked vehicles, its ground-truth box."""

    mesh: Mesh
    kind: str  # building, wall, tree, pole, parked
    box: tuple[float, float, float, float, float, float, float] | None = None  # x, y, z, l, w, h, yaw


@dataclass
class Town:
    cfg: TownConfig
    xs: np.ndarray
    ys: np.ndarray
    half_width: float  # road half width (lanes + parking)
    lanes: list[Lane]
    statics: list[StaticObject]
    parking_slots: list[tuple[float, float, float]]  # x, y, yaw of free parking places
    sidewalk_loops: list[np.ndarray]  # closed polylines around blocks, for pedestrians

    @property
    def intersections(self) -> list[tuple[float, float]]:
        return [(x, y) for x in self.xs for y in self.ys]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        m = self.half_width + SIDEWALK + 40.0
        return self.xs[0] - m, self.ys[0] - m, self.xs[-1] + m, self.ys[-1] + m

    def road_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes if lane.kind == "road"]


def _bezier(p0: np.ndarray, h0: float, p3: np.ndarray, h3: float, step: float = 0.5) -> np.ndarray:
    d = np.hypot(*(p3 - p0))
    k = 0.55 * d
    p1 = p0 + k * np.array([np.cos(h0), np.sin(h0)])
    p2 = p3 - k * np.array([np.cos(h3), np.sin(h3)])
    n = max(4, int(np.ceil(1.6 * d / step)))
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _lane_offset(direction: str, k: int) -> np.ndarray:
    """Offset of lane k (0 = rightmost... counted from the centre line) for a direction."""
    off = (k + 0.5) * LANE_WIDTH
    return {
        "+x": np.array([0, -off]),
        "-x": np.array([0, off]),
        "+y": np.array([off, 0]),
        "-y": np.array([-off, 0]),
    }[direction]


def build_town(cfg: TownConfig, rng: np.random.Generator) -> Town:
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(cfg.block_min, cfg.block_max, cfg.blocks_x))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(cfg.block_min, cfg.block_max, cfg.blocks_y))])
    xs -= xs.mean()
    ys -= ys.mean()
    L = cfg.lanes_per_direction
    hw = L * LANE_WIDTH + (PARKING if cfg.parking else 0.0)
    stop = hw + 4.0  # stop lines sit behind a crosswalk, leaving room for long vehicles to turn
    lanes: list[Lane] = []

    def add(points, kind, direction, k, start=None, end=None, movement="straight") -> Lane:
        lane = Lane(
            len(lanes), np.asarray(points, dtype=np.float64), kind, direction, k, start, end, movement
        )
        lanes.append(lane)
        return lane

    # road lanes between neighbouring intersections, one per direction and lane index;
    # lane index counts from the centre line outwards, rightmost = L - 1
    incoming: dict[tuple[int, int], list[Lane]] = {}
    outgoing: dict[tuple[int, int], list[Lane]] = {}
    for i in range(len(xs)):
        for j in range(len(ys)):
            for di, dj, dirs in ((1, 0, ("+x", "-x")), (0, 1, ("+y", "-y"))):
                i2, j2 = i + di, j + dj
                if i2 >= len(xs) or j2 >= len(ys):
                    continue
                a, b = np.array([xs[i], ys[j]]), np.array([xs[i2], ys[j2]])
                u = (b - a) / np.hypot(*(b - a))
                for direction, (n0, n1, p0, p1) in zip(
                    dirs, (((i, j), (i2, j2), a, b), ((i2, j2), (i, j), b, a)), strict=True
                ):
                    ud = u if direction.startswith("+") else -u
                    for k in range(L):
                        off = _lane_offset(direction, k)
                        pts = np.array([p0 + ud * stop + off, p1 - ud * stop + off])
                        lane = add(pts, "road", direction, k, n0, n1)
                        outgoing.setdefault(n0, []).append(lane)
                        incoming.setdefault(n1, []).append(lane)
    # connectors through each intersection
    turn_of = {
        ("+x", "+y"): "left",
        ("+x", "-y"): "right",
        ("-x", "-y"): "left",
        ("-x", "+y"): "right",
        ("+y", "-x"): "left",
        ("+y", "+x"): "right",
        ("-y", "+x"): "left",
        ("-y", "-x"): "right",
    }
    for node, ins in incoming.items():
        for lin in ins:
            for lout in outgoing.get(node, []):
                if lout.end_node == lin.start_node:
                    continue  # no U-turns
                if lout.direction == lin.direction:
                    movement = "straight"
                    if lout.lane_index != lin.lane_index:
                        continue
                else:
                    movement = turn_of[(lin.direction, lout.direction)]
                    # right turns from the rightmost lane, left turns from the innermost
                    want = L - 1 if movement == "right" else 0
                    if lin.lane_index != want or lout.lane_index != want:
                        continue
                pts = _bezier(
                    lin.points[-1], DIRECTIONS[lin.direction], lout.points[0], DIRECTIONS[lout.direction]
                )
                conn = add(pts, "turn", lout.direction, lout.lane_index, node, node, movement)
                conn.next = [lout.id]
                lin.next.append(conn.id)

    statics, slots = _build_statics(cfg, xs, ys, hw, rng)
    loops = []
    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            m = hw + SIDEWALK / 2
            x0, x1, y0, y1 = xs[i] + m, xs[i + 1] - m, ys[j] + m, ys[j + 1] - m
            loops.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]))
    return Town(cfg, xs, ys, hw, lanes, statics, slots, loops)


def _build_statics(
    cfg: TownConfig, xs, ys, hw, rng
) -> tuple[list[StaticObject], list[tuple[float, float, float]]]:
    statics: list[StaticObject] = []
    slots: list[tuple[float, float, float]] = []
    edge = hw + SIDEWALK
    rects: list[tuple[float, float, float, float]] = []

    def free(r) -> bool:
        return all(r[1] <= q[0] or q[1] <= r[0] or r[3] <= q[2] or q[3] <= r[2] for q in rects)

    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            bx0, bx1, by0, by1 = xs[i] + edge, xs[i + 1] - edge, ys[j] + edge, ys[j + 1] - edge
            # four sides of the block: lots along each, facing the road
            for side in ("S", "N", "W", "E"):
                horizontal = side in ("S", "N")
                lo, hi = (bx0, bx1) if horizontal else (by0, by1)
                pos = lo + rng.uniform(0, 4)
                built = rng.random() < cfg.built_up
                walled = not built and rng.random() < cfg.wall_probability
                while pos < hi - 6:
                    width = rng.uniform(10, 28)
                    if pos + width > hi:
                        width = hi - pos
                    setback = rng.uniform(0.0, 1.5)
                    depth = rng.uniform(10, 22)
                    a, b = pos, pos + width
                    if side == "S":
                        r = (a, b, by0 + setback, by0 + setback + depth)
                    elif side == "N":
                        r = (a, b, by1 - setback - depth, by1 - setback)
                    elif side == "W":
                        r = (bx0 + setback, bx0 + setback + depth, a, b)
                    else:
                        r = (bx1 - setback - depth, bx1 - setback, a, b)
                    r = (max(r[0], bx0), min(r[1], bx1), max(r[2], by0), min(r[3], by1))
                    if built and r[1] - r[0] > 3 and r[3] - r[2] > 3 and free(r):
                        h = rng.uniform(*cfg.building_height)
                        statics.append(StaticObject(box_mesh(r[0], r[1], r[2], r[3], 0.0, h), "building"))
                        rects.append(r)
                    elif walled:
                        t = 0.3
                        if side == "S":
                            w = (a, b, by0, by0 + t)
                        elif side == "N":
                            w = (a, b, by1 - t, by1)
                        elif side == "W":
                            w = (bx0, bx0 + t, a, b)
                        else:
                            w = (bx1 - t, bx1, a, b)
                        statics.append(
                            StaticObject(box_mesh(w[0], w[1], w[2], w[3], 0.0, rng.uniform(1.8, 3.0)), "wall")
                        )
                    pos += width + rng.uniform(0, 7)
            # trees or poles along the sidewalks of the block
            for side in ("S", "N", "W", "E"):
                horizontal = side in ("S", "N")
                lo, hi = (bx0, bx1) if horizontal else (by0, by1)
                for p in np.arange(lo + rng.uniform(2, cfg.tree_spacing), hi - 2, cfg.tree_spacing):
                    off = edge - 0.8
                    if side == "S":
                        c = (p, ys[j] + off)
                    elif side == "N":
                        c = (p, ys[j + 1] - off)
                    elif side == "W":
                        c = (xs[i] + off, p)
                    else:
                        c = (xs[i + 1] - off, p)
                    if rng.random() < 0.6:
                        trunk = prism_mesh(0.18, 0.0, 2.5, sides=6)
                        crown = prism_mesh(rng.uniform(1.2, 2.2), 2.5, rng.uniform(5, 8), sides=8)
                        mesh = merge([trunk, crown])
                        kind = "tree"
                    else:
                        mesh, kind = prism_mesh(0.12, 0.0, rng.uniform(4, 8), sides=6), "pole"
                    v, t = mesh
                    statics.append(StaticObject((v + np.array([c[0], c[1], 0.0], dtype=np.float32), t), kind))
    # parking strips along the kerb, parallel to the road, facing the traffic direction
    if cfg.parking:
        off = hw - PARKING / 2
        for i in range(len(xs)):
            for j in range(len(ys)):
                if i + 1 < len(xs):
                    for p in np.arange(xs[i] + edge + 4, xs[i + 1] - edge - 4, 6.5):
                        slots.append((p, ys[j] - off, 0.0))
                        slots.append((p, ys[j] + off, np.pi))
                if j + 1 < len(ys):
                    for p in np.arange(ys[j] + edge + 4, ys[j + 1] - edge - 4, 6.5):
                        slots.append((xs[i] + off, p, np.pi / 2))
                        slots.append((xs[i] - off, p, -np.pi / 2))
    return statics, slots
