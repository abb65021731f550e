"""One simulated scene: a town, its traffic, the connected vehicles and roadside units, and
the frames their LiDARs produce.

A :class:`World` is fully determined by its :class:`SceneConfig` (seed included). Each
:meth:`World.frames` item is a :class:`~v2x.frame.Frame` in our right-handed world frame, plus,
per agent, how many of its LiDAR points hit each object: what every agent saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from v2x.boxes import Boxes
from v2x.frame import AgentKind, AgentScan, Frame
from v2x.geometry import pose_from_xyz_rpy
from v2x.sim.lidar import LidarConfig, Scene, cast_scan
from v2x.sim.meshes import merge, object_mesh, transform_mesh
from v2x.sim.town import SIDEWALK, Town, TownConfig, build_town
from v2x.sim.traffic import Actor, Traffic

__all__ = ["SceneConfig", "SimFrame", "World"]

RSU_LIDAR = LidarConfig(channels=64, fov_down_deg=-35.0, fov_up_deg=5.0, mount_height=5.5)


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
    vehicles: int = 60
    pedestrians: int = 30
    parked_density: float = 0.35
    vehicle_mix: dict[str, float] = field(
        default_factory=lambda: {"car": 0.72, "van": 0.12, "truck": 0.08, "bus": 0.03, "cyclist": 0.05}
    )
    town: TownConfig = field(default_factory=TownConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    rsu_lidar: LidarConfig = RSU_LIDAR
    #: CAVs are chosen among cars within this distance of the ego (then the nearest ones)
    cav_radius: float = 60.0

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


class World:
    def __init__(self, cfg: SceneConfig) -> None:
        self.cfg = cfg
        root = np.random.SeedSequence(cfg.seed)
        town_seed, traffic_seed, agent_seed, self._lidar_seed = root.spawn(4)
        self.town: Town = build_town(cfg.town, np.random.default_rng(town_seed))
        self.traffic = Traffic(self.town, np.random.default_rng(traffic_seed))
        self.traffic.spawn_parked(cfg.parked_density)
        self.traffic.spawn_vehicles(cfg.vehicles, cfg.vehicle_mix)
        self.traffic.spawn_pedestrians(cfg.pedestrians)
        for _ in range(cfg.warmup_steps):
            self.traffic.step()
        self._static = self._build_static()
        self.cav_ids = self._choose_cavs(np.random.default_rng(agent_seed))
        if len(self.cav_ids) < cfg.cavs:
            raise ValueError(
                f"scene {cfg.name}: only {len(self.cav_ids)} cars available for {cfg.cavs} CAVs (more vehicles needed)"
            )
        self.rsu_poses = self._place_rsus()

    # -- set-up ---------------------------------------------------------------------------------
    def _build_static(self) -> Scene:
        scene = Scene()
        b = self.town.bounds
        ground_v = np.array(
            [[b[0], b[1], 0], [b[2], b[1], 0], [b[2], b[3], 0], [b[0], b[3], 0]], dtype=np.float32
        )
        scene.add(ground_v, np.array([[0, 1, 2], [0, 2, 3]]), -1)
        verts, tris = (
            merge([s.mesh for s in self.town.statics])
            if self.town.statics
            else (np.zeros((0, 3)), np.zeros((0, 3)))
        )
        scene.add(verts, tris, -1)
        parked = [a for a in self.traffic.actors if not a.moving]
        if parked:
            self._add_actors(scene, parked)
        return scene

    @staticmethod
    def _add_actors(scene: Scene, actors: list[Actor]) -> None:
        parts, owners = [], []
        for a in actors:
            mesh = transform_mesh(object_mesh(a.kind, *a.size), a.x, a.y, 0.0, a.yaw)
            parts.append(mesh)
            owners.append(np.full(len(mesh[1]), a.id))
        v, t = merge(parts)
        scene.add(v, t, np.concatenate(owners))

    def _choose_cavs(self, rng: np.random.Generator) -> list[int]:
        cars = [a for a in self.traffic.actors if a.moving and a.kind == "car"]
        if not cars:
            return []
        centre = np.zeros(2)
        dist_c = np.array([np.hypot(a.x - centre[0], a.y - centre[1]) for a in cars])
        # the ego: a random car among those nearest the town centre, so its view is full of town
        pool = np.argsort(dist_c)[: max(3, len(cars) // 4)]
        ego = cars[int(rng.choice(pool))]
        others = [a for a in cars if a.id != ego.id]
        d = np.array([np.hypot(a.x - ego.x, a.y - ego.y) for a in others])
        near = [others[i] for i in np.flatnonzero((d > 8.0) & (d < self.cfg.cav_radius))]
        rng.shuffle(near)
        chosen = near[: self.cfg.cavs - 1]
        if len(chosen) < self.cfg.cavs - 1:
            rest = [others[i] for i in np.argsort(d) if others[i] not in chosen]
            chosen += rest[: self.cfg.cavs - 1 - len(chosen)]
        return [ego.id] + [a.id for a in chosen]

    def _place_rsus(self) -> list[np.ndarray]:
        """Roadside units on a corner of the intersections nearest the ego, looking over the crossing."""
        ego = self.actor(self.cav_ids[0])
        nodes = sorted(self.town.intersections, key=lambda p: np.hypot(p[0] - ego.x, p[1] - ego.y))
        poses = []
        corner = self.town.half_width + SIDEWALK / 2
        for k, (x, y) in enumerate(nodes[: self.cfg.rsus]):
            sx, sy = ((1, 1), (-1, -1), (1, -1), (-1, 1))[k % 4]
            px, py = x + sx * corner, y + sy * corner
            yaw = np.arctan2(y - py, x - px)  # facing the centre of the crossing
            poses.append(pose_from_xyz_rpy(px, py, self.cfg.rsu_lidar.mount_height, 0.0, 0.0, yaw))
        return poses

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
        lidar = self.cfg.lidar
        for cav_id in self.cav_ids:
            a = self.actor(cav_id)
            pose = pose_from_xyz_rpy(a.x, a.y, lidar.mount_height, 0.0, 0.0, a.yaw)
            pts, owner = cast_scan(scenes, pose, lidar, rng, ignore_owner=a.id)
            agents[str(cav_id)] = AgentScan(str(cav_id), AgentKind.VEHICLE, pts, pose, ts, lidar.mount_height)
            hits[str(cav_id)] = _count(owner)
        for k, pose in enumerate(self.rsu_poses):
            rid = str(-(k + 1))
            pts, owner = cast_scan(scenes, pose, self.cfg.rsu_lidar, rng)
            agents[rid] = AgentScan(rid, AgentKind.RSU, pts, pose, ts, self.cfg.rsu_lidar.mount_height)
            hits[rid] = _count(owner)
        actors = self.traffic.actors
        gt = Boxes(
            np.array([a.box() for a in actors]).reshape(-1, 7),
            labels=[int(a.cls) for a in actors],
            track_ids=[a.id for a in actors],
        )
        frame = Frame(self.cfg.name, index, ts, agents, str(self.cav_ids[0]), gt)
        return SimFrame(frame, hits)


def _count(owner: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(owner[owner >= 0], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
