"""One simulated scene: a town, its traffic, the connected vehicles and roadside units, and
the frames their LiDARs produce.

A :class:`World` is fully determined by its :class:`SceneConfig` (seed included). Each
:meth:`World.frames` item is a :class:`~v2x.core.frame.Frame` in our right-handed world frame, plus,
per agent, how many of its LiDAR points hit each object: what every agent saw.

The static scene (ground, kerbs, buildings, walls, trees, poles, parked cars) is built once;
only the moving participants are rebuilt into a second, small Open3D scene each frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from v2x.core.boxes import Boxes
from v2x.core.frame import AgentKind, AgentScan, Frame
from v2x.core.geometry import pose_from_xyz_rpy
from v2x.sim.lidar import LidarConfig, Scene, cast_scan
from v2x.sim.meshes import BODY, GLASS, TYRE, merge, object_mesh, object_parts, prism_mesh, transform_mesh
from v2x.sim.town import SIDEWALK, Town, TownConfig, build_town, grid_lines, road_lane_length
from v2x.sim.traffic import Actor, Traffic

__all__ = ["RSU_LIDAR", "SceneConfig", "SimFrame", "World", "planned_cars", "planned_vehicles"]

#: roadside LiDAR: mounted high on a pole at a corner of a crossing (DAIR-V2X's are 5-6 m up),
#: with a wider downward field of view than a car's
RSU_LIDAR = LidarConfig(channels=64, fov_down_deg=-35.0, fov_up_deg=5.0, mount_height=5.5)

#: reflectivity (0..1) of static surfaces at the LiDAR's wavelength
STATIC_REFLECTIVITY = {
    "ground": 0.12,  # asphalt
    "sidewalk": 0.30,  # concrete
    "building": 0.40,
    "wall": 0.35,
    "tree": 0.45,  # foliage is bright in the near infrared
    "pole": 0.55,
    "rsu_pole": 0.55,
}
#: reflectivity of a participant's glass and tyres; its body colour varies per participant
PART_REFLECTIVITY = {GLASS: 0.08, TYRE: 0.04}


@dataclass
class SceneConfig:
    name: str = "scene_000"
    seed: int = 0
    frames: int = 100
    #: simulation steps (0.1 s) between written frames; 1 keeps the 10 Hz rate
    frame_step: int = 1
    warmup_steps: int = 30
    cavs: int = 3
    rsus: int = 1
    #: moving vehicles (cars, vans, trucks, buses, cyclists); None: ``traffic_density`` per lane-km
    vehicles: int | None = None
    traffic_density: float = 30.0
    pedestrians: int = 30
    parked_density: float = 0.35
    vehicle_mix: dict[str, float] = field(
        default_factory=lambda: {"car": 0.70, "van": 0.13, "truck": 0.09, "bus": 0.03, "cyclist": 0.05}
    )
    town: TownConfig = field(default_factory=TownConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    rsu_lidar: LidarConfig = RSU_LIDAR
    #: roadside LiDAR heights are drawn from this range (metres)
    rsu_height: tuple[float, float] = (5.0, 6.0)
    #: CAVs are chosen among cars between these distances of the ego, spread out from each other
    cav_distance: tuple[float, float] = (12.0, 55.0)

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"a scene needs at least 1 frame, got {self.frames}")
        if not 1 <= self.cavs <= 7:
            raise ValueError(f"cavs must be 1..7, got {self.cavs}")
        if not 0 <= self.rsus <= 4:
            raise ValueError(f"rsus must be 0..4, got {self.rsus}")
        if self.frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {self.frame_step}")
        if self.rsus > (self.town.blocks_x + 1) * (self.town.blocks_y + 1):
            raise ValueError(
                f"{self.rsus} RSUs but only {(self.town.blocks_x + 1) * (self.town.blocks_y + 1)} intersections"
            )


@dataclass
class SimFrame:
    frame: Frame
    #: agent id -> {object track id: LiDAR points of that agent on it}
    hits: dict[str, dict[int, int]]
    #: agent id -> its speed in km/h (0 for roadside units)
    speeds: dict[str, float] = field(default_factory=dict)


def _seeds(cfg: SceneConfig) -> list[np.random.SeedSequence]:
    """Independent streams for the town, the traffic, the agents' placement and the LiDAR noise."""
    return np.random.SeedSequence(cfg.seed).spawn(4)


def planned_vehicles(cfg: SceneConfig) -> int:
    """How many moving vehicles a scene asks for, known without building it (the town's grid
    is its first draw), so impossible requests are refused before any work."""
    if cfg.vehicles is not None:
        return cfg.vehicles
    xs, ys = grid_lines(cfg.town, np.random.default_rng(_seeds(cfg)[0]))
    return round(cfg.traffic_density * road_lane_length(cfg.town, xs, ys) / 1000.0)


def planned_cars(cfg: SceneConfig) -> float:
    """Expected number of moving cars (the candidates for CAVs)."""
    mix = cfg.vehicle_mix
    return planned_vehicles(cfg) * mix.get("car", 0.0) / max(sum(mix.values()), 1e-9)


def _unit_hash(k: int) -> float:
    """A deterministic number in [0, 1) per integer (golden-ratio sequence): per-object
    appearance without drawing from (and so disturbing) the scene's random streams."""
    return (k * 0.6180339887498949) % 1.0


class World:
    def __init__(self, cfg: SceneConfig) -> None:
        self.cfg = cfg
        town_seed, traffic_seed, agent_seed, self._lidar_seed = _seeds(cfg)
        self.town: Town = build_town(cfg.town, np.random.default_rng(town_seed))
        self.traffic = Traffic(self.town, np.random.default_rng(traffic_seed))
        self.traffic.spawn_parked(cfg.parked_density)
        self.traffic.spawn_vehicles(self.vehicle_count(), cfg.vehicle_mix)
        self.traffic.spawn_pedestrians(cfg.pedestrians)
        for _ in range(cfg.warmup_steps):
            self.traffic.step()
        agent_rng = np.random.default_rng(agent_seed)
        self.cav_ids = self._choose_cavs(agent_rng)
        if len(self.cav_ids) < cfg.cavs:
            raise ValueError(
                f"scene {cfg.name}: only {len(self.cav_ids)} moving cars for {cfg.cavs} CAVs "
                "(more vehicles or a bigger town needed)"
            )
        self._steer_agents()
        self.rsu_poses, self.rsu_lidars = self._place_rsus(agent_rng)
        self._static = self._build_static()

    def vehicle_count(self) -> int:
        return planned_vehicles(self.cfg)

    # -- set-up ---------------------------------------------------------------------------------
    def _build_static(self) -> Scene:
        scene = Scene()
        b = self.town.bounds
        ground_v = np.array(
            [[b[0], b[1], 0], [b[2], b[1], 0], [b[2], b[3], 0], [b[0], b[3], 0]], dtype=np.float32
        )
        scene.add(ground_v, np.array([[0, 1, 2], [0, 2, 3]]), -1, STATIC_REFLECTIVITY["ground"])
        parts, refl = [], []
        for k, s in enumerate(self.town.statics):
            r = STATIC_REFLECTIVITY[s.kind]
            if s.kind == "building":  # facades differ: plaster, brick, glass
                r = 0.2 + 0.4 * _unit_hash(k)
            parts.append(s.mesh)
            refl.append(np.full(len(s.mesh[1]), r, np.float32))
        for pose, lidar in zip(self.rsu_poses, self.rsu_lidars, strict=True):
            v, t = prism_mesh(0.15, 0.0, lidar.mount_height - 0.3, sides=6)
            parts.append((v + pose[:3, 3].astype(np.float32) * np.array([1, 1, 0], np.float32), t))
            refl.append(np.full(len(t), STATIC_REFLECTIVITY["rsu_pole"], np.float32))
        if parts:
            verts, tris = merge(parts)
            scene.add(verts, tris, -1, np.concatenate(refl))
        parked = [a for a in self.traffic.actors if not a.moving]
        if parked:
            self._add_actors(scene, parked)
        return scene

    @staticmethod
    def _add_actors(scene: Scene, actors: list[Actor]) -> None:
        parts, owners, refl = [], [], []
        for a in actors:
            mesh = transform_mesh(object_mesh(a.kind, *a.size), a.x, a.y, a.z0, a.yaw)
            codes = object_parts(a.kind, *a.size)
            body = 0.25 + 0.6 * _unit_hash(a.id)  # paint: dark to white
            r = np.where(codes == BODY, body, 0.0).astype(np.float32)
            for code, value in PART_REFLECTIVITY.items():
                r[codes == code] = value
            parts.append(mesh)
            owners.append(np.full(len(mesh[1]), a.id))
            refl.append(r)
        v, t = merge(parts)
        scene.add(v, t, np.concatenate(owners), np.concatenate(refl))

    def _choose_cavs(self, rng: np.random.Generator) -> list[int]:
        """The ego near the town centre, then CAVs spread around it (each as far as possible
        from those already chosen, with some randomness), so that they see different streets."""
        cars = [a for a in self.traffic.actors if a.moving and a.kind == "car"]
        if not cars:
            return []
        xy = np.array([(a.x, a.y) for a in cars])
        pool = np.argsort(np.hypot(xy[:, 0], xy[:, 1]))[: max(3, len(cars) // 5)]
        ego = int(rng.choice(pool))
        chosen = [ego]
        lo, hi = self.cfg.cav_distance
        d_ego = np.hypot(*(xy - xy[ego]).T)
        candidates = [i for i in np.flatnonzero((d_ego >= lo) & (d_ego <= hi)) if i != ego]
        while len(chosen) < self.cfg.cavs and candidates:
            spread = np.array([np.hypot(*(xy[chosen] - xy[i]).T).min() for i in candidates])
            score = np.minimum(spread, 40.0) + rng.uniform(0.0, 15.0, len(candidates))
            chosen.append(candidates.pop(int(np.argmax(score))))
        if len(chosen) < self.cfg.cavs:  # not enough in the ring: take the nearest others
            for i in np.argsort(d_ego):
                if len(chosen) >= self.cfg.cavs:
                    break
                if i not in chosen and d_ego[i] >= 6.0:
                    chosen.append(int(i))
        ids = [cars[i].id for i in chosen]
        return self._ego_first_ids(ids)

    def _ego_first_ids(self, ids: list[int]) -> list[int]:
        """Swap the ego's id with the CAV id that sorts first as a string, if it is not the ego's.

        OPV2V has no ego field: readers take the first CAV folder in string order. Only two
        CAVs swap ids, before any frame exists, so track ids stay unique and persistent.
        """
        first = min(ids, key=str)
        if first == ids[0]:
            return ids
        by_id = {a.id: a for a in self.traffic.actors}
        by_id[ids[0]].id, by_id[first].id = first, ids[0]
        return [first] + [ids[0] if i == first else i for i in ids[1:]]

    def _steer_agents(self) -> None:
        """Keep the group together: the ego tends towards the town centre, the other CAVs
        towards the ego, so they stay within communication range for the whole scene."""
        self.traffic.goals[self.cav_ids[0]] = (0.0, 0.0)
        for cav in self.cav_ids[1:]:
            self.traffic.goals[cav] = self.cav_ids[0]

    def _place_rsus(self, rng: np.random.Generator) -> tuple[list[np.ndarray], list[LidarConfig]]:
        """Roadside units on a corner of the intersections nearest the ego, facing the crossing."""
        ego = self.actor(self.cav_ids[0])
        nodes = sorted(self.town.intersections, key=lambda p: np.hypot(p[0] - ego.x, p[1] - ego.y))
        poses, lidars = [], []
        corner = self.town.half_width + SIDEWALK - 0.5  # on the sidewalk corner, clear of walkers
        for x, y in nodes[: self.cfg.rsus]:
            sx, sy = ((1, 1), (-1, -1), (1, -1), (-1, 1))[int(rng.integers(4))]
            px, py = x + sx * corner, y + sy * corner
            yaw = float(np.arctan2(y - py, x - px))  # facing the centre of the crossing
            height = float(rng.uniform(*self.cfg.rsu_height))
            lidars.append(replace(self.cfg.rsu_lidar, mount_height=height))
            poses.append(pose_from_xyz_rpy(px, py, height, 0.0, 0.0, yaw))
        return poses, lidars

    def actor(self, actor_id: int) -> Actor:
        return next(a for a in self.traffic.actors if a.id == actor_id)

    # -- frames ---------------------------------------------------------------------------------
    def frames(self) -> Iterator[SimFrame]:
        rng = np.random.default_rng(self._lidar_seed)
        for k in range(self.cfg.frames):
            if k > 0:
                for _ in range(self.cfg.frame_step):
                    self.traffic.step()
            yield self._frame(k, rng)

    def _frame(self, index: int, rng: np.random.Generator) -> SimFrame:
        dynamic = Scene()
        moving = [a for a in self.traffic.actors if a.moving]
        if moving:
            self._add_actors(dynamic, moving)
        scenes = [self._static, dynamic]
        ts = round(self.traffic.t * 1e9)
        agents: dict[str, AgentScan] = {}
        hits: dict[str, dict[int, int]] = {}
        speeds: dict[str, float] = {}
        lidar = self.cfg.lidar
        for cav_id in self.cav_ids:
            a = self.actor(cav_id)
            pose = pose_from_xyz_rpy(a.x, a.y, lidar.mount_height, 0.0, 0.0, a.yaw)
            pts, owner = cast_scan(scenes, pose, lidar, rng, ignore_owner=a.id)
            hits[str(cav_id)] = _count(owner)
            pts, pose, mount = _as_written(pts, pose, lidar)
            agents[str(cav_id)] = AgentScan(
                str(cav_id), AgentKind.VEHICLE, pts, pose, ts, mount, hits=hits[str(cav_id)]
            )
            speeds[str(cav_id)] = round(3.6 * a.speed, 3)
        for k, (pose, rsu_lidar) in enumerate(zip(self.rsu_poses, self.rsu_lidars, strict=True)):
            rid = str(-(k + 1))
            pts, owner = cast_scan(scenes, pose, rsu_lidar, rng)
            hits[rid] = _count(owner)
            pts, written_pose, mount = _as_written(pts, pose, rsu_lidar)
            agents[rid] = AgentScan(rid, AgentKind.RSU, pts, written_pose, ts, mount, hits=hits[rid])
            speeds[rid] = 0.0
        actors = self.traffic.actors
        gt = Boxes(
            np.array([a.box() for a in actors]).reshape(-1, 7),
            labels=[int(a.cls) for a in actors],
            track_ids=[a.id for a in actors],
        )
        frame = Frame(self.cfg.name, index, ts, agents, str(self.cav_ids[0]), gt)
        return SimFrame(frame, hits, speeds)


def _as_written(
    pts: np.ndarray, pose: np.ndarray, lidar: LidarConfig
) -> tuple[np.ndarray, np.ndarray, float]:
    """Points, pose and mount height as the log gives them: the sensor's own frame, or, with
    ``frame_height``, a level frame that high above the ground straight below the (level)
    sensor, as DAIR-V2X's roadside "virtual LiDAR" is."""
    if lidar.frame_height is None:
        return pts, pose, lidar.mount_height
    drop = lidar.mount_height - lidar.frame_height
    pts = pts.copy()
    pts[:, 2] += drop
    pose = pose.copy()
    pose[2, 3] -= drop
    return pts, pose, lidar.frame_height


def _count(owner: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(owner[owner >= 0], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
