"""A procedural town: a grid of roads with intersections, lanes, sidewalks, buildings, walls,
trees and parking strips, plus the lane graph traffic drives on.

Right-hand traffic. Roads run along x ("horizontal") and y ("vertical") through grid
intersections; every road has the same number of lanes per direction in a town. Buildings and
walls line the blocks so that cross streets are hidden from each other, which is what makes
cooperation worth having.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from v2x.sim.meshes import Mesh, box_mesh, merge, prism_mesh

__all__ = ["KERB", "LANE_WIDTH", "Lane", "Town", "TownConfig", "build_town", "grid_lines", "road_lane_length"]

LANE_WIDTH = 3.5
SIDEWALK = 3.0
PARKING = 2.5
#: height of the raised sidewalk above the road
KERB = 0.15
#: depth of the ring of blocks built outside the outermost roads
OUTER_BLOCK = 45.0
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
    #: buildings stand this far (drawn per building, metres) behind the sidewalk; DAIR-V2X-C's
    #: wide suburban crossings have them far back
    setback: tuple[float, float] = (0.0, 1.5)


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
        # plain-Python copies: ``at`` runs tens of thousands of times per simulated second,
        # and scalar numpy calls would dominate the traffic step
        self._cum = self.cumlen.tolist()
        self._xy = self.points.tolist()
        self._heading = np.arctan2(*np.diff(self.points, axis=0).T[::-1]).tolist()

    def at(self, s: float) -> tuple[np.ndarray, float]:
        """Position and heading at arc length ``s`` (clamped to the lane)."""
        x, y, heading = self.at_xy(s)
        return np.array((x, y)), heading

    def at_xy(self, s: float) -> tuple[float, float, float]:
        """``at`` as plain floats (x, y, heading)."""
        cum = self._cum
        s = min(max(float(s), 0.0), self.length)
        i = min(max(bisect_right(cum, s) - 1, 0), len(cum) - 2)
        seg = max(cum[i + 1] - cum[i], 1e-9)
        f = (s - cum[i]) / seg
        (x0, y0), (x1, y1) = self._xy[i], self._xy[i + 1]
        return x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, self._heading[i]


@dataclass
class StaticObject:
    """A static obstacle in the world: its mesh and, for parked vehicles, its ground-truth box."""

    mesh: Mesh
    kind: str  # sidewalk, building, wall, tree, pole
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
        m = OUTER_BLOCK + 30.0
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


def grid_lines(cfg: TownConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The x positions of the north-south roads and the y positions of the east-west ones,
    centred on the origin (the first draws of :func:`build_town`)."""
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(cfg.block_min, cfg.block_max, cfg.blocks_x))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(cfg.block_min, cfg.block_max, cfg.blocks_y))])
    return xs - xs.mean(), ys - ys.mean()


def _half_width(cfg: TownConfig) -> float:
    return cfg.lanes_per_direction * LANE_WIDTH + (PARKING if cfg.parking else 0.0)


def _stop_distance(cfg: TownConfig) -> float:
    """From an intersection's centre to its stop lines: behind a crosswalk, leaving room for
    long vehicles to turn."""
    return _half_width(cfg) + 4.0


def road_lane_length(cfg: TownConfig, xs: np.ndarray, ys: np.ndarray) -> float:
    """Total length (m) of the road lanes between intersections, as :func:`build_town` lays them."""
    segments = np.concatenate([np.diff(xs)] * len(ys) + [np.diff(ys)] * len(xs))
    return float(np.sum(segments - 2 * _stop_distance(cfg)) * 2 * cfg.lanes_per_direction)


def build_town(cfg: TownConfig, rng: np.random.Generator) -> Town:
    xs, ys = grid_lines(cfg, rng)
    L = cfg.lanes_per_direction
    hw = _half_width(cfg)
    stop = _stop_distance(cfg)
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
    """Kerbs, buildings, walls, trees and poles on every block, and the parking places.

    The grid of blocks is extended by one ring of outer blocks, so the outermost roads are
    lined with buildings too (instead of opening onto empty land); lots are only placed on a
    block side that faces a real road.
    """
    statics: list[StaticObject] = []
    slots: list[tuple[float, float, float]] = []
    edge = hw + SIDEWALK
    rects: list[tuple[float, float, float, float]] = []
    xe = np.concatenate([[xs[0] - OUTER_BLOCK], xs, [xs[-1] + OUTER_BLOCK]])
    ye = np.concatenate([[ys[0] - OUTER_BLOCK], ys, [ys[-1] + OUTER_BLOCK]])
    nx, ny = len(xs), len(ys)

    def free(r) -> bool:
        return all(r[1] <= q[0] or q[1] <= r[0] or r[3] <= q[2] or q[3] <= r[2] for q in rects)

    def faces_road(i: int, j: int, side: str) -> bool:
        """Whether side ``side`` of extended block (i, j) lies along a road of the grid."""
        x_seg = i >= 1 and i + 1 <= nx  # the block spans two real x grid lines
        y_seg = j >= 1 and j + 1 <= ny
        if side == "S":
            return x_seg and 1 <= j <= ny
        if side == "N":
            return x_seg and 1 <= j + 1 <= ny
        if side == "W":
            return y_seg and 1 <= i <= nx
        return y_seg and 1 <= i + 1 <= nx

    for i in range(len(xe) - 1):
        for j in range(len(ye) - 1):
            sides = [side for side in ("S", "N", "W", "E") if faces_road(i, j, side)]
            if not sides:
                continue
            # the raised sidewalk and the block behind it: one slab (a kerb step for the LiDAR)
            kx0 = xe[i] + hw if faces_road(i, j, "W") else xe[i]
            kx1 = xe[i + 1] - hw if faces_road(i, j, "E") else xe[i + 1]
            ky0 = ye[j] + hw if faces_road(i, j, "S") else ye[j]
            ky1 = ye[j + 1] - hw if faces_road(i, j, "N") else ye[j + 1]
            statics.append(StaticObject(box_mesh(kx0, kx1, ky0, ky1, 0.0, KERB), "sidewalk"))
            bx0, bx1, by0, by1 = xe[i] + edge, xe[i + 1] - edge, ye[j] + edge, ye[j + 1] - edge
            # lots along each side, facing the road
            for side in sides:
                horizontal = side in ("S", "N")
                lo, hi = (bx0, bx1) if horizontal else (by0, by1)
                pos = lo + rng.uniform(0, 4)
                built = rng.random() < cfg.built_up
                walled = not built and rng.random() < cfg.wall_probability
                while pos < hi - 6:
                    width = rng.uniform(10, 28)
                    if pos + width > hi:
                        width = hi - pos
                    setback = rng.uniform(*cfg.setback)
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
            for side in sides:
                horizontal = side in ("S", "N")
                lo, hi = (bx0, bx1) if horizontal else (by0, by1)
                for p in np.arange(lo + rng.uniform(2, cfg.tree_spacing), hi - 2, cfg.tree_spacing):
                    off = edge - 0.8
                    if side == "S":
                        c = (p, ye[j] + off)
                    elif side == "N":
                        c = (p, ye[j + 1] - off)
                    elif side == "W":
                        c = (xe[i] + off, p)
                    else:
                        c = (xe[i + 1] - off, p)
                    if rng.random() < 0.6:
                        trunk = prism_mesh(0.18, 0.0, 2.5, sides=6)
                        crown = prism_mesh(rng.uniform(1.2, 2.2), 2.5, rng.uniform(5, 8), sides=8)
                        v, t = merge([trunk, crown])
                        kind = "tree"
                    else:
                        (v, t), kind = prism_mesh(0.12, 0.0, rng.uniform(4, 8), sides=6), "pole"
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
