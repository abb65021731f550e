"""Moving traffic: vehicles and cyclists follow lanes with the Intelligent Driver Model,
traffic lights keep crossing movements apart, pedestrians walk the sidewalks.

Every step is 0.1 s. Headings follow the lane tangent, so they follow the motion. Signals,
claims on the paths through each crossing and exit-lane capacity keep intersections moving
(see :meth:`Traffic._stop_line_gap`). A final overlap check makes collisions impossible: a
participant whose move would overlap another one's footprint stays where it was and stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely import STRtree, polygons

from v2x.core.boxes import ObjectClass, bev_corners
from v2x.sim.town import DIRECTIONS as DIRECTIONS_RAD
from v2x.sim.town import KERB, Lane, Town

__all__ = ["SIZES", "Actor", "Traffic"]

DT = 0.1
#: seconds at the end of each signal phase when every approach has red
ALL_RED = 2.0
#: metres pedestrians keep to the right of the middle of the sidewalk
KEEP_RIGHT = 0.5
#: m/s^2: the hardest braking (an emergency stop)
MAX_BRAKE = 8.0
#: metres between stopped vehicles in a queue (IDM's jam distance, with some slack)
QUEUE_GAP = 3.0
#: metres: how strongly a goal biases turns (a movement ending this much farther is e times less likely)
GOAL_SCALE = 25.0

#: (class, mesh kind, (length, width, height) ranges) of traffic participants
SIZES = {
    "car": (ObjectClass.CAR, ((4.2, 4.9), (1.75, 1.95), (1.4, 1.6))),
    "van": (ObjectClass.VAN, ((4.8, 5.6), (1.9, 2.1), (1.9, 2.4))),
    "truck": (ObjectClass.TRUCK, ((7.5, 10.5), (2.3, 2.5), (3.0, 3.6))),
    "bus": (ObjectClass.BUS, ((10.5, 12.0), (2.45, 2.55), (3.0, 3.3))),
    "cyclist": (ObjectClass.CYCLIST, ((1.7, 1.9), (0.55, 0.7), (1.6, 1.8))),
    "pedestrian": (ObjectClass.PEDESTRIAN, ((0.5, 0.7), (0.5, 0.7), (1.6, 1.85))),
}


@dataclass
class Actor:
    id: int
    kind: str
    size: np.ndarray  # l, w, h
    x: float
    y: float
    yaw: float
    speed: float = 0.0
    v0: float = 10.0  # desired speed
    moving: bool = True
    lane: int | None = None
    s: float = 0.0  # arc length along the current lane / loop
    loop: np.ndarray | None = None  # pedestrians: closed sidewalk polyline
    route: list[int] = field(default_factory=list)  # upcoming lanes
    z0: float = 0.0  # height of the surface it stands on (pedestrians walk on the raised sidewalk)

    @property
    def cls(self) -> ObjectClass:
        return SIZES[self.kind][0]

    def box(self) -> np.ndarray:
        """(x, y, z, l, w, h, yaw): z is the box centre above flat ground."""
        return np.array([self.x, self.y, self.z0 + self.size[2] / 2, *self.size, self.yaw])


def _loop_at(loop: np.ndarray, s: float) -> tuple[float, float, float]:
    seg = np.hypot(*np.diff(loop, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s = s % cum[-1]
    i = int(np.searchsorted(cum, s, side="right") - 1)
    d = loop[i + 1] - loop[i]
    p = loop[i] + d * (s - cum[i]) / seg[i]
    return float(p[0]), float(p[1]), float(np.arctan2(d[1], d[0]))


class Traffic:
    """All traffic participants of a scene and their motion."""

    def __init__(
        self, town: Town, rng: np.random.Generator, light_phase_s: tuple[float, float] = (9.0, 14.0)
    ) -> None:
        self.town = town
        self.rng = rng
        self.actors: list[Actor] = []
        self.t = 0.0
        #: per intersection: the length of each of its two phases (s) and where in its cycle it starts
        self.light_phase = {node: rng.uniform(*light_phase_s) for node in self._nodes()}
        self.light_offset = {node: rng.uniform(0, 2 * self.light_phase[node]) for node in self._nodes()}
        self._lanes = town.lanes
        self._next_id = 100
        #: actor id -> where it tends to drive: a point (x, y) or another actor's id to stay near
        self.goals: dict[int, tuple[float, float] | int] = {}
        self._by_id: dict[int, Actor] = {}
        self._conflicts = self._connector_conflicts()
        self._inside: dict[int, list[int]] = {}  # connector id -> actors on it
        self._claims: dict[int, int] = {}  # connector id -> actor committed to entering it
        self._load: dict[int, float] = {}  # road lane id -> metres of it taken (see step)

    def _nodes(self):
        return [(i, j) for i in range(len(self.town.xs)) for j in range(len(self.town.ys))]

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def random_size(self, kind: str) -> np.ndarray:
        _, ranges = SIZES[kind]
        return np.array([self.rng.uniform(*r) for r in ranges])

    # -- spawning -------------------------------------------------------------------------------
    def _fits(self, box: np.ndarray, margin: float, side_margin: float | None = None) -> bool:
        """Whether a box, grown by ``margin`` ahead and behind (``side_margin`` to the sides),
        is clear of everyone already placed."""
        if not self.actors:
            return True
        grown = box.copy()
        grown[3] += 2 * margin
        grown[4] += 2 * (margin if side_margin is None else side_margin)
        others = np.array([a.box() for a in self.actors])
        near = np.hypot(others[:, 0] - box[0], others[:, 1] - box[1]) < 25
        if not near.any():
            return True
        poly = polygons(bev_corners(grown))[0]
        return not any(poly.intersects(p) for p in polygons(bev_corners(others[near])))

    def spawn_parked(self, density: float) -> None:
        for x, y, yaw in self.town.parking_slots:
            if self.rng.random() >= density:
                continue
            kind = "car" if self.rng.random() < 0.8 else "van"
            size = self.random_size(kind)
            a = Actor(self.new_id(), kind, size, x, y, yaw, moving=False)
            if self._fits(a.box(), 0.3):
                self.actors.append(a)

    def spawn_vehicles(self, count: int, mix: dict[str, float]) -> None:
        road = self.town.road_lanes()
        kinds = list(mix)
        p = np.array([mix[k] for k in kinds], dtype=float)
        p /= p.sum()
        tries = 0
        placed = 0
        while placed < count and tries < count * 30:
            tries += 1
            lane = road[int(self.rng.integers(len(road)))]
            kind = kinds[int(self.rng.choice(len(kinds), p=p))]
            size = self.random_size(kind)
            if lane.length < size[0] + 4:
                continue
            s = self.rng.uniform(size[0] / 2 + 1, lane.length - size[0] / 2 - 1)
            (x, y), yaw = lane.at(s)
            v0 = self.rng.uniform(4.0, 6.0) if kind == "cyclist" else self.rng.uniform(8.0, 13.5)
            # no faster than it can stop before the crossing ahead, so nobody starts committed
            to_stop = lane.length - s - size[0] / 2
            speed = min(self.rng.uniform(0.3, 0.9) * v0, np.sqrt(2 * 3.0 * max(to_stop - 5.0, 0.0)))
            a = Actor(
                self.new_id(),
                kind,
                size,
                float(x),
                float(y),
                yaw,
                float(speed),
                v0,
                True,
                lane.id,
                s,
            )
            if self._fits(a.box(), 2.5, side_margin=0.3):  # the parking lane may be full beside it
                self.actors.append(a)
                placed += 1

    def spawn_pedestrians(self, count: int) -> None:
        loops = self.town.sidewalk_loops
        for _ in range(count):
            loop = loops[int(self.rng.integers(len(loops)))]
            # keep right: walking anticlockwise round the block, the right is the kerb side;
            # clockwise, the building side. Opposite walkers then pass instead of meeting head on.
            centre = loop[:-1].mean(axis=0)
            if self.rng.random() < 0.5:
                loop = loop + np.sign(loop - centre) * KEEP_RIGHT
            else:
                loop = (loop - np.sign(loop - centre) * KEEP_RIGHT)[::-1].copy()
            s = self.rng.uniform(0, np.hypot(*np.diff(loop, axis=0).T).sum())
            x, y, yaw = _loop_at(loop, s)
            size = self.random_size("pedestrian")
            a = Actor(
                self.new_id(),
                "pedestrian",
                size,
                x,
                y,
                yaw,
                1.3,
                self.rng.uniform(0.9, 1.6),
                True,
                None,
                s,
                loop,
                z0=KERB,
            )
            if self._fits(a.box(), 0.2):
                self.actors.append(a)

    # -- traffic lights -------------------------------------------------------------------------
    def green(self, lane: Lane, t: float) -> tuple[bool, float]:
        """Whether the movement entering ``lane`` (a connector) has green, and the green time left.

        Two phases per intersection, north-south then east-west; the last 2 s of each are
        all-red, so the crossing is clear before the other direction starts. Left turns are
        permissive: they also yield to oncoming traffic (see :meth:`_left_turn_blocked`).
        """
        phase_s = self.light_phase[lane.start_node]
        tc = (t + self.light_offset[lane.start_node]) % (2 * phase_s)
        phase = int(tc // phase_s)
        wanted = 0 if self._incoming_direction(lane) in ("+y", "-y") else 1
        remaining = (phase + 1) * phase_s - tc - ALL_RED
        return phase == wanted and remaining > 0, remaining

    def _turning_left(self, a: Actor) -> bool:
        """Whether the participant is in, or next enters, a left-turn connector."""
        if a.lane is None:
            return False
        lane = self._lanes[a.lane]
        if lane.kind == "turn":
            return lane.movement == "left"
        return bool(a.route) and self._lanes[a.route[0]].movement == "left"

    def _left_turn_blocked(self, conn: Lane, others: np.ndarray, me: np.ndarray) -> bool:
        """An oncoming vehicle coming through the crossing: a permissive left turn must wait.

        ``others`` rows are box, speed, turning-left flag. Oncoming vehicles that turn left
        themselves pass in front of us and do not block (two waiting for each other would
        never move); nor do ones standing still before the crossing (queued at their stop line).
        """
        incoming = self._incoming_direction(conn)
        opposite = {"+x": "-x", "-x": "+x", "+y": "-y", "-y": "+y"}[incoming]
        heading = DIRECTIONS_RAD[opposite]
        node_xy = np.array([self.town.xs[conn.start_node[0]], self.town.ys[conn.start_node[1]]])
        rel = others[:, :2] - node_xy
        # oncoming: heading the opposite way, on the far side of the crossing and coming closer
        along = -(rel[:, 0] * np.cos(heading) + rel[:, 1] * np.sin(heading))
        lateral = np.abs(-rel[:, 0] * np.sin(heading) + rel[:, 1] * np.cos(heading))
        same_way = np.cos(others[:, 6] - heading) > 0.7
        window = (along > -self.town.half_width) & (along < 40.0) & (lateral < self.town.half_width)
        inside = along < self.town.half_width + 2.0
        coming = (others[:, 7] > 0.5) | inside
        return bool((same_way & window & coming & (others[:, 8] < 0.5) & ~me).any())

    def _incoming_direction(self, conn: Lane) -> str:
        d = conn.points[1] - conn.points[0]
        if abs(d[0]) > abs(d[1]):
            return "+x" if d[0] > 0 else "-x"
        return "+y" if d[1] > 0 else "-y"

    # -- motion ---------------------------------------------------------------------------------
    def _goal_xy(self, a: Actor | None) -> tuple[float, float] | None:
        goal = self.goals.get(a.id) if a is not None else None
        if isinstance(goal, int):  # follow another participant
            other = self._by_id.get(goal)
            return None if other is None else (other.x, other.y)
        return goal

    def _choose_next(self, lane: Lane, a: Actor | None = None) -> int | None:
        """The movement to take at the end of a road lane: straight, left or right at random,
        biased towards the actor's goal when it has one (:attr:`goals`)."""
        if not lane.next:
            return None
        if lane.kind == "turn":
            return lane.next[0]
        weights = np.array(
            [{"straight": 0.5, "right": 0.25, "left": 0.25}[self._lanes[n].movement] for n in lane.next]
        )
        goal = self._goal_xy(a)
        if goal is not None:
            ends = np.array([self._lanes[self._lanes[n].next[0]].points[-1] for n in lane.next])
            d = np.hypot(ends[:, 0] - goal[0], ends[:, 1] - goal[1])
            weights = weights * np.exp(-(d - d.min()) / GOAL_SCALE)
        return lane.next[int(self.rng.choice(len(lane.next), p=weights / weights.sum()))]

    def _lookahead(
        self, a: Actor, horizon: float, step: float = 2.0
    ) -> list[tuple[np.ndarray, float, float]]:
        """Points ahead along the actor's route: (position, path distance, heading).

        Walking the route also plans it: turns are chosen here, once, and kept in ``a.route``.
        """
        pts: list[tuple[np.ndarray, float, float]] = []
        lane = self._lanes[a.lane]
        s, dist, k = a.s, 0.0, 0
        while dist < horizon:
            s += step
            dist += step
            while s > lane.length:
                s -= lane.length
                if k >= len(a.route):
                    nxt = self._choose_next(lane, a)
                    if nxt is None:
                        return pts
                    a.route.append(nxt)
                lane = self._lanes[a.route[k]]
                k += 1
            x, y, heading = lane.at_xy(s)
            pts.append(((x, y), dist, heading))
        return pts

    @staticmethod
    def _near_footprint(P: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(len(P), len(boxes)) distance from points to box footprints."""
        dx = P[:, None, 0] - boxes[None, :, 0]
        dy = P[:, None, 1] - boxes[None, :, 1]
        c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
        lx = np.abs(c * dx + s * dy) - boxes[:, 3] / 2
        ly = np.abs(-s * dx + c * dy) - boxes[:, 4] / 2
        return np.hypot(np.maximum(lx, 0), np.maximum(ly, 0))

    def _gap(
        self, a: Actor, state: np.ndarray, other_ids: np.ndarray, tree: STRtree | None
    ) -> tuple[float, float]:
        """Free distance ahead along the route to the nearest participant or a stop line, and
        the speed of that obstacle along the route (0 for a stop line or a crossing vehicle).

        ``state`` rows are everyone's box, speed and turning-left flag.
        """
        gap, lead_speed = 80.0, 0.0
        look = self._lookahead(a, 50.0)
        me_all = other_ids == a.id
        # only participants within reach of the look-ahead (and of a crossing ahead) matter
        close = (state[:, 0] - a.x) ** 2 + (state[:, 1] - a.y) ** 2 < 75.0**2
        others, me = state[close], me_all[close]
        if look and len(others):
            P = np.array([p for p, _, _ in look])
            D = np.array([d for _, d, _ in look])
            H = np.array([h for _, _, h in look])
            # the path's centre line against everyone's footprint (not their centre: a long bus
            # reaching into the path counts) ...
            hit = (self._near_footprint(P, others) < a.size[1] / 2 + 0.35) & ~me[None, :]
            first, who = len(P), None
            if hit.any():
                first = int(np.flatnonzero(hit.any(axis=1))[0])
                who = others[int(np.flatnonzero(hit[first])[0])]
            # ... and, close ahead, the actor's own footprint swept along a curving path
            near = min(first, int(np.searchsorted(D, 16.0)))
            if tree is not None and near > 0:
                mine = np.array(
                    [[p[0], p[1], 0.0, a.size[0] + 0.6, a.size[1] + 0.3, 1.0, h] for p, _, h in look[:near]]
                )
                pairs = tree.query(polygons(bev_corners(mine)), predicate="intersects")
                pairs = pairs[:, ~me_all[pairs[1]]]
                if pairs.shape[1] and int(pairs[0].min()) < first:
                    first = int(pairs[0].min())
                    who = state[int(pairs[1][pairs[0] == first][0])]
            if first < len(P):
                gap = D[first] - a.size[0] / 2
                # how fast it moves along our path there: a leader drives away, a crosser does not
                lead_speed = max(0.0, float(who[7] * np.cos(who[6] - H[first])))
        lane = self._lanes[a.lane]
        if lane.kind == "road":
            if not a.route:
                nxt = self._choose_next(lane, a)
                if nxt is not None:
                    a.route.append(nxt)
            if a.route:
                stop = self._stop_line_gap(a, lane, self._lanes[a.route[0]], others, me)
                if stop < gap:
                    gap, lead_speed = stop, 0.0
        return gap, lead_speed

    def _stop_line_gap(self, a: Actor, lane: Lane, conn: Lane, others: np.ndarray, me: np.ndarray) -> float:
        """Distance to the stop line when the vehicle must not enter the crossing, else no limit.

        It may enter on green when it can be past the middle of the crossing before the crossing
        movements get theirs, its exit lane has room for everyone bound for it (a queue spilling
        back never catches it inside: no gridlock), no one is on (or has claimed) a connector
        whose path crosses its own, and, turning left, no oncoming traffic is coming through.
        A vehicle committed to entering claims its connector until it is inside, so two never
        enter crossing paths at once. It stops unless too close to stop (comfortably for the
        light, hard for a crossing path).
        """
        to_stop = lane.length - a.s - a.size[0] / 2
        ok, remaining = self.green(conn, self.t)
        if ok:  # past the middle of the crossing before the crossing movements get green
            dist = max(to_stop, 0.0) + (conn.length + a.size[0]) / 2
            acc = 1.6
            t_clear = (-a.speed + np.sqrt(a.speed**2 + 2 * acc * dist)) / acc
            ok = remaining + ALL_RED >= t_clear
        if ok and conn.movement == "left" and len(others):
            ok = not self._left_turn_blocked(conn, others, me)
        exit_id = conn.next[0]
        claimed = self._claims.get(conn.id) == a.id
        if ok and not claimed:
            # the exit lane must hold everyone bound for it, us included, even if they all stop:
            # otherwise a queue spilling back would catch us inside the crossing (gridlock)
            room = self._lanes[exit_id].length - QUEUE_GAP  # the first one stops short of its line
            ok = self._load.get(exit_id, 0.0) + a.size[0] + QUEUE_GAP <= room
        if ok and len(others):
            exit_lane = self._lanes[exit_id]
            zone = np.array([exit_lane.at(s)[0] for s in np.arange(0.0, a.size[0] + 4.0, 1.5)])
            ok = not ((self._near_footprint(zone, others) < a.size[1] / 2 + 0.3) & ~me[None, :]).any()
        decel = 4.0
        if ok and self._path_taken(conn, a.id):
            ok, decel = False, 8.0
        can_stop = to_stop > a.speed**2 / (2 * decel) - 0.5
        if not ok and can_stop and to_stop > -0.5:
            if claimed:
                del self._claims[conn.id]
                self._load[exit_id] = self._load.get(exit_id, 0.0) - a.size[0] - QUEUE_GAP
            return max(to_stop, 0.0)
        if not claimed and to_stop < a.speed**2 / (2 * 3.0) + 4.0:  # committed: hold it until inside
            self._claims[conn.id] = a.id
            self._load[exit_id] = self._load.get(exit_id, 0.0) + a.size[0] + QUEUE_GAP
        return 80.0

    def _path_taken(self, conn: Lane, me: int) -> bool:
        """Someone else is on, or has claimed, a connector crossing ``conn``'s path."""
        for other in self._conflicts.get(conn.id, ()):
            if any(i != me for i in self._inside.get(other, ())):
                return True
            if self._claims.get(other, me) != me:
                return True
        return False

    def _connector_conflicts(self) -> dict[int, set[int]]:
        """For each connector, the connectors of the same crossing whose paths cross or merge
        with it (footprints of a wide vehicle along both overlap); those from the same lane
        follow each other instead."""
        by_node: dict[tuple[int, int], list[Lane]] = {}
        for lane in self._lanes:
            if lane.kind == "turn":
                by_node.setdefault(lane.start_node, []).append(lane)
        out: dict[int, set[int]] = {}
        for conns in by_node.values():
            paths = [shapely.buffer(shapely.linestrings(c.points), 1.3) for c in conns]
            for i, c in enumerate(conns):
                out[c.id] = {
                    d.id
                    for j, d in enumerate(conns)
                    if j != i
                    and not np.allclose(d.points[0], c.points[0])
                    and shapely.intersects(paths[i], paths[j])
                }
        return out

    def _idm(self, a: Actor, gap: float, lead_speed: float) -> float:
        """The Intelligent Driver Model's acceleration, with its approach term: closing in on a
        standing obstacle at speed brakes early and smoothly instead of at the last moment."""
        a_max, b, s0, T = 1.6, 2.0, 2.0, 1.2  # max acceleration, comfortable braking, jam gap, headway
        v = a.speed
        lane = self._lanes[a.lane]
        v0 = a.v0
        if lane.kind == "turn" and lane.movement != "straight":
            v0 = min(v0, 6.5)
        s_star = s0 + max(0.0, v * T + v * (v - lead_speed) / (2 * np.sqrt(a_max * b)))
        acc = a_max * (1 - (v / max(v0, 0.1)) ** 4 - (s_star / max(gap, 0.1)) ** 2)
        return float(np.clip(acc, -MAX_BRAKE, a_max))

    def step(self) -> None:
        """Advance every participant by one 0.1 s step."""
        self._by_id = {a.id: a for a in self.actors}
        self._inside = {}
        for a in self.actors:
            if a.lane is not None and self._lanes[a.lane].kind == "turn":
                self._inside.setdefault(a.lane, []).append(a.id)
        # a claim lasts from commitment until the claimant is inside (or has given it up)
        self._claims = {
            c: i
            for c, i in self._claims.items()
            if i in self._by_id and self._by_id[i].route[:1] == [c] and self._by_id[i].lane != c
        }
        # room taken on each road lane: by those on it, in a connector into it, or committed to one
        self._load = {}
        for a in self.actors:
            if a.lane is None or not a.moving:
                continue
            lane = self._lanes[a.lane]
            target = lane.id if lane.kind == "road" else lane.next[0]
            self._load[target] = self._load.get(target, 0.0) + a.size[0] + QUEUE_GAP
        for c, i in self._claims.items():
            target = self._lanes[c].next[0]
            self._load[target] = self._load.get(target, 0.0) + self._by_id[i].size[0] + QUEUE_GAP
        boxes = np.array([a.box() for a in self.actors]) if self.actors else np.zeros((0, 7))
        ids = np.array([a.id for a in self.actors])
        tree = STRtree(polygons(bev_corners(boxes))) if len(boxes) else None
        # box, speed and whether it is about to turn left: what the others need to know of it
        state = np.column_stack(
            [boxes, [a.speed for a in self.actors], [self._turning_left(a) for a in self.actors]]
        ).reshape(-1, 9)
        proposals = {}
        for a in self.actors:
            if not a.moving:
                continue
            if a.loop is not None:  # pedestrian on its sidewalk loop
                s = a.s + a.v0 * DT
                x, y, yaw = _loop_at(a.loop, s)
                proposals[a.id] = (x, y, yaw, a.v0, None, s, a.route)
                continue
            gap, lead_speed = self._gap(a, state, ids, tree)
            acc = self._idm(a, gap, lead_speed)
            v = max(0.0, a.speed + acc * DT)
            s = a.s + v * DT
            lane_id, route = a.lane, list(a.route)
            lane = self._lanes[lane_id]
            while s > lane.length:
                s -= lane.length
                if not route:
                    nxt = self._choose_next(lane, a)
                    if nxt is None:
                        s = lane.length
                        v = 0.0
                        break
                    route.append(nxt)
                lane_id = route.pop(0)
                lane = self._lanes[lane_id]
            (x, y), yaw = lane.at(s)
            proposals[a.id] = (float(x), float(y), yaw, v, lane_id, s, route)
        # accept moves that keep every footprint apart; the rest stop where they are
        self._apply(proposals)
        self.t += DT

    def _apply(self, proposals: dict) -> None:
        by_id = {a.id: a for a in self.actors}
        new_boxes = {}
        for a in self.actors:
            if a.id in proposals:
                x, y, yaw = proposals[a.id][:3]
                new_boxes[a.id] = np.array([x, y, a.size[2] / 2, *a.size, yaw])
            else:
                new_boxes[a.id] = a.box()
        order = sorted(proposals, key=lambda i: -proposals[i][3])  # slow movers last
        for _ in range(3):
            ids = list(new_boxes)
            polys = polygons(bev_corners(np.array([new_boxes[i] for i in ids])))
            tree = STRtree(polys)
            pairs = tree.query(polys, predicate="intersects")
            clash = {ids[i] for i, j in pairs.T if i != j}
            if not clash:
                break
            for aid in order:
                if aid in clash:
                    a = by_id[aid]
                    new_boxes[aid] = a.box()  # revert
                    proposals[aid] = (a.x, a.y, a.yaw, 0.0, a.lane, a.s, a.route)
        for aid, (x, y, yaw, v, lane_id, s, route) in proposals.items():
            a = by_id[aid]
            a.x, a.y, a.yaw, a.speed, a.s = x, y, yaw, v, s
            if a.loop is None:
                a.lane, a.route = lane_id, route

    def boxes(self) -> np.ndarray:
        return np.array([a.box() for a in self.actors]).reshape(-1, 7)
