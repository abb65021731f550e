"""A spinning LiDAR cast against triangle meshes with Open3D's ``RaycastingScene``.

The default sensor is OPV2V's: 64 channels spread evenly over -25..+2 degrees, 120 m range.
Returns carry range noise and random dropout. Intensity (0..1) is either

* ``"material"`` (default): the surface's reflectivity, the incidence angle and the distance,
  with multiplicative noise — asphalt is dark, paint, metal and foliage brighter, glass and
  tyres dark — so intensity carries information as on a real sensor; or
* ``"carla"``: CARLA's model, ``exp(-0.004 d)`` only, which is what OPV2V's intensities are
  (the real samples span 0.62..0.99 over 0..120 m).

Real sensors need more than evenly spread channels: ``elevations_deg`` gives the beams' own
vertical angles (a Hesai Pandar40's are uneven), ``azimuth_fov_deg`` a forward-looking field of
view, ``pattern="non_repetitive"`` a scanner whose rays move from sweep to sweep (each ray
jittered within its cell, so no rings form), ``intensity_gain``/``intensity_gamma`` the
sensor's response curve, and ``frame_height`` a frame the points are given in that is not the
sensor's own (DAIR-V2X's roadside "virtual LiDAR"). The defaults leave OPV2V's sensor and its
rays exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["LidarConfig", "Scene", "cast_scan", "ray_directions", "scan_directions"]

INTENSITY_MODELS = ("material", "carla")
PATTERNS = ("spinning", "non_repetitive")


@dataclass(frozen=True)
class LidarConfig:
    channels: int = 64
    fov_down_deg: float = -25.0
    fov_up_deg: float = 2.0
    horizontal_steps: int = 1024
    max_range: float = 120.0
    min_range: float = 1.0
    range_noise: float = 0.02
    dropout: float = 0.05
    attenuation: float = 0.004
    mount_height: float = 1.9
    intensity: str = "material"
    #: relative standard deviation of the material intensity
    intensity_noise: float = 0.1
    #: the beams' vertical angles (degrees, any order); set, they replace the even spread and
    #: ``channels``, ``fov_down_deg`` and ``fov_up_deg`` follow from them
    elevations_deg: tuple[float, ...] | None = None
    #: horizontal field of view (degrees, 0 = the sensor's forward axis)
    azimuth_fov_deg: tuple[float, float] = (-180.0, 180.0)
    #: "spinning": the same rays every sweep; "non_repetitive": each ray jittered within its
    #: cell (half-way to the neighbouring beams and steps), drawn afresh every sweep
    pattern: str = "spinning"
    #: the sensor's response: reported intensity = gain * modelled ** gamma (clipped to 0..1)
    intensity_gain: float = 1.0
    intensity_gamma: float = 1.0
    #: height above the ground of the frame points are given in (level, straight below the
    #: sensor); None: the sensor's own frame
    frame_height: float | None = None

    def __post_init__(self) -> None:
        if self.elevations_deg is not None:
            table = tuple(sorted(float(e) for e in self.elevations_deg))
            if len(table) < 2 or len(set(table)) < len(table):
                raise ValueError(f"LiDAR elevation table needs >= 2 distinct angles: {self.elevations_deg}")
            object.__setattr__(self, "elevations_deg", table)
            object.__setattr__(self, "channels", len(table))
            object.__setattr__(self, "fov_down_deg", table[0])
            object.__setattr__(self, "fov_up_deg", table[-1])
        lo, hi = self.azimuth_fov_deg
        if not -180.0 <= lo < hi <= 180.0:
            raise ValueError(
                f"LiDAR azimuth FOV must lie in -180..180 and not be empty: {self.azimuth_fov_deg}"
            )
        if self.pattern not in PATTERNS:
            raise ValueError(f"LiDAR pattern {self.pattern!r}: use one of {PATTERNS}")
        if self.intensity_gain <= 0 or self.intensity_gamma <= 0:
            raise ValueError(f"LiDAR intensity gain and gamma must be > 0: {self}")
        if self.frame_height is not None and not 0.0 <= self.frame_height <= self.mount_height:
            raise ValueError(
                f"LiDAR frame height {self.frame_height} must be in 0..mount height {self.mount_height}"
            )
        if self.channels < 1 or self.horizontal_steps < 8:
            raise ValueError(f"LiDAR needs >= 1 channel and >= 8 horizontal steps: {self}")
        if self.fov_up_deg <= self.fov_down_deg:
            raise ValueError(f"LiDAR vertical FOV is empty: {self.fov_down_deg}..{self.fov_up_deg}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LiDAR dropout must be in [0, 1): {self.dropout}")
        if self.max_range <= self.min_range:
            raise ValueError(f"LiDAR range is empty: {self.min_range}..{self.max_range} m")
        if self.intensity not in INTENSITY_MODELS:
            raise ValueError(f"LiDAR intensity model {self.intensity!r}: use one of {INTENSITY_MODELS}")


def _beam_angles(cfg: LidarConfig) -> tuple[np.ndarray, np.ndarray]:
    """Elevations and azimuths (radians) of the beams and steps, before any jitter."""
    if cfg.elevations_deg is None:
        el = np.radians(np.linspace(cfg.fov_down_deg, cfg.fov_up_deg, cfg.channels))
    else:
        el = np.radians(np.asarray(cfg.elevations_deg, dtype=np.float64))
    lo, hi = cfg.azimuth_fov_deg
    if (lo, hi) == (-180.0, 180.0):
        az = np.linspace(-np.pi, np.pi, cfg.horizontal_steps, endpoint=False)
    else:  # a forward-looking sensor: steps centred in their cells, edges included
        step = (hi - lo) / cfg.horizontal_steps
        az = np.radians(lo + step * (np.arange(cfg.horizontal_steps) + 0.5))
    return el, az


def _directions(E: np.ndarray, A: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], axis=-1).reshape(-1, 3)


@lru_cache(maxsize=8)
def ray_directions(cfg: LidarConfig) -> np.ndarray:
    """(channels * steps, 3) unit directions in the sensor frame (the cells' centres)."""
    el, az = _beam_angles(cfg)
    E, A = np.meshgrid(el, az, indexing="ij")
    d = _directions(E, A)
    d.setflags(write=False)
    return d


def scan_directions(cfg: LidarConfig, rng: np.random.Generator) -> np.ndarray:
    """One sweep's ray directions: :func:`ray_directions` for a spinning sensor (no draw from
    ``rng``); for a non-repetitive one every ray moved uniformly within its cell, afresh."""
    if cfg.pattern == "spinning":
        return ray_directions(cfg)
    el, az = _beam_angles(cfg)
    mid = (el[1:] + el[:-1]) / 2  # cell edges half-way between beams; the end cells symmetric
    lo = np.concatenate([[2 * el[0] - mid[0]], mid])
    hi = np.concatenate([mid, [2 * el[-1] - mid[-1]]])
    n, m = len(el), len(az)
    step = (az[1] - az[0]) if m > 1 else 2 * np.pi
    u = rng.random((2, n, m))
    E = lo[:, None] + (hi - lo)[:, None] * u[0]
    A = az[None, :] + step * (u[1] - 0.5)
    return _directions(E, A)


class Scene:
    """Triangle meshes, each triangle tagged with the id of the object it belongs to (-1:
    background) and a reflectivity in 0..1.

    Merge many small objects into one :meth:`add` call (per-triangle tags) rather than adding
    them one by one: Open3D builds its acceleration structure per geometry.
    """

    def __init__(self) -> None:
        import open3d as o3d

        o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self._owners: list[np.ndarray] = []
        self._refl: list[np.ndarray] = []
        self._offsets: list[int] = [0]
        self._tables: tuple[np.ndarray, np.ndarray] | None = None

    def add(
        self,
        vertices: np.ndarray,
        triangles: np.ndarray,
        owner: int | np.ndarray = -1,
        reflectivity: float | np.ndarray = 0.3,
    ) -> None:
        if len(triangles) == 0:
            return
        o3c = self._o3d.core
        gid = self.scene.add_triangles(
            o3c.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
            o3c.Tensor(np.ascontiguousarray(triangles, dtype=np.uint32)),
        )
        if gid != len(self._owners):
            raise RuntimeError(f"Open3D gave geometry id {gid}, expected {len(self._owners)}")
        n = len(triangles)
        self._owners.append(np.broadcast_to(np.asarray(owner, dtype=np.int64), (n,)).copy())
        self._refl.append(np.broadcast_to(np.asarray(reflectivity, dtype=np.float32), (n,)).copy())
        self._offsets.append(self._offsets[-1] + n)
        self._tables = None

    def cast(self, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For each ray (N, 6): hit distance (inf for none), owner id (-2 for none), the hit
        triangle's reflectivity and the |cosine| of the incidence angle."""
        n = len(rays)
        if not self._owners:
            return (
                np.full(n, np.inf, np.float32),
                np.full(n, -2, np.int64),
                np.zeros(n, np.float32),
                np.zeros(n, np.float32),
            )
        if self._tables is None:
            self._tables = (
                np.concatenate([*self._owners, [-2]]),
                np.concatenate([*self._refl, [0.0]]).astype(np.float32),
            )
        owners, refl = self._tables
        res = self.scene.cast_rays(self._o3d.core.Tensor(np.ascontiguousarray(rays, dtype=np.float32)))
        t = res["t_hit"].numpy()
        hit = np.isfinite(t)
        gid = res["geometry_ids"].numpy().astype(np.int64)
        pid = res["primitive_ids"].numpy().astype(np.int64)
        offsets = np.asarray(self._offsets[:-1], dtype=np.int64)
        index = np.where(hit, offsets[np.where(hit, gid, 0)] + pid, len(owners) - 1)
        normals = res["primitive_normals"].numpy()
        cos = np.abs(np.einsum("ij,ij->i", normals, rays[:, 3:6].astype(np.float32)))
        return t, owners[index], refl[index], np.where(hit, cos, 0.0).astype(np.float32)


def cast_scan(
    scenes: list[Scene],
    world_from_lidar: np.ndarray,
    cfg: LidarConfig,
    rng: np.random.Generator,
    ignore_owner: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One sweep: (N, 4) float32 points ``x, y, z, intensity`` in the sensor frame, and the
    id of the object each point hit (-1 for background). Hits on ``ignore_owner`` (the
    sensor's own vehicle) are not returned."""
    dirs_local = scan_directions(cfg, rng)
    R, t = world_from_lidar[:3, :3], world_from_lidar[:3, 3]
    dirs = dirs_local @ R.T
    rays = np.concatenate([np.broadcast_to(t, dirs.shape), dirs], axis=1)
    best_t = np.full(len(rays), np.inf, np.float32)
    best_owner = np.full(len(rays), -2, np.int64)
    best_refl = np.zeros(len(rays), np.float32)
    best_cos = np.zeros(len(rays), np.float32)
    for scene in scenes:
        th, owner, refl, cos = scene.cast(rays)
        closer = th < best_t
        best_t[closer] = th[closer]
        best_owner[closer] = owner[closer]
        best_refl[closer] = refl[closer]
        best_cos[closer] = cos[closer]
    keep = (best_t >= cfg.min_range) & (best_t <= cfg.max_range)
    if ignore_owner is not None:
        keep &= best_owner != ignore_owner
    if cfg.dropout > 0:
        keep &= rng.random(len(rays)) >= cfg.dropout
    rng_t = best_t[keep].astype(np.float64)
    if cfg.range_noise > 0:
        rng_t = rng_t + rng.normal(0.0, cfg.range_noise, len(rng_t))
    pts = dirs_local[keep] * rng_t[:, None]
    falloff = np.exp(-cfg.attenuation * rng_t)
    if cfg.intensity == "carla":
        intensity = falloff
    else:
        # Lambertian-ish: a surface seen edge-on returns less light, but never none
        lambert = 0.35 + 0.65 * best_cos[keep]
        noise = 1.0 + cfg.intensity_noise * rng.standard_normal(len(rng_t))
        intensity = np.clip(best_refl[keep] * lambert * falloff * noise, 0.0, 1.0)
    if cfg.intensity_gain != 1.0 or cfg.intensity_gamma != 1.0:
        intensity = np.clip(cfg.intensity_gain * intensity**cfg.intensity_gamma, 0.0, 1.0)
    out = np.concatenate([pts, intensity[:, None]], axis=1).astype(np.float32)
    return out, best_owner[keep]
