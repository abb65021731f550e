"""Named sensor sets: which LiDAR the vehicles carry and which the roadside units, and how high
the roadside ones are mounted.

* ``"opv2v"`` (default): OPV2V's 64-channel car LiDAR and our 64-channel pole LiDAR.
* ``"dair"``: DAIR-V2X-C's sensors, measured from the real files in
  ``../shared/realdata/dair-v2x-c-example`` (docs/simulator.md, "DAIR-V2X-C sensors"):

  - vehicle: a 40-beam spinning LiDAR like a Hesai Pandar40 — the beams' elevations are the
    ring centres found in the real scans (dense 0.34 degree spacing from -5.8 to +2 degrees,
    sparse below and above), 0.2 degree azimuth steps, 1.96 m above the ground, 200 m range,
    intensity a calibrated reflectivity (no fall-off with distance);
  - roadside: a forward-looking scanner without rings (100 x 39 degrees, -24..+15 degrees in a
    level frame), its rays denser towards the horizon as the real returns are, 7 m up
    (5.3 m above the frame its points are given in, itself 1.7 m above the ground: DAIR's
    "virtual LiDAR"), 300 m range, intensity falling with distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from v2x.sim.lidar import LidarConfig
from v2x.sim.world import RSU_LIDAR, SceneConfig

__all__ = [
    "DAIR_RSU_LIDAR",
    "DAIR_VEHICLE_LIDAR",
    "PANDAR40_ELEVATIONS",
    "SENSORS",
    "SensorSet",
    "lines_from_density",
]

#: ring centres (degrees) of the DAIR-V2X-C vehicle LiDAR, from the real scans' elevation
#: histogram (points beyond 15 m for the upper beams, beyond 3 m for the lowest ones)
PANDAR40_ELEVATIONS: tuple[float, ...] = (
    14.79, 10.95, 7.97, 4.97, 2.97,
    1.95, 1.61, 1.27, 0.93, 0.59, 0.25, -0.07, -0.41, -0.75, -1.09, -1.43, -1.77, -2.11,
    -2.45, -2.77, -3.11, -3.45, -3.79, -4.13, -4.46, -4.79, -5.13, -5.47, -5.79,
    -6.13, -7.13, -8.13, -9.13, -10.11, -11.09, -12.07, -13.03, -13.99, -18.93, -24.89,
)  # fmt: skip

#: the roadside scanner's returns per degree of elevation (seen from the sensor), measured
#: below the horizon where every ray hits something; above it (mostly sky in the real scans)
#: the density is assumed to fall back to the lower edge's
DAIR_RSU_DENSITY: tuple[tuple[float, float], ...] = (
    (-24.0, 1200.0),
    (-11.0, 1850.0),
    (-1.0, 3050.0),
    (0.0, 3050.0),
    (15.0, 1200.0),
)


def lines_from_density(density: tuple[tuple[float, float], ...], lines: int) -> tuple[float, ...]:
    """``lines`` elevations (degrees) spread so that their density follows ``density`` (a
    piecewise-linear weight per degree through (angle, weight) points): line k sits at the
    (k + 0.5) / lines quantile."""
    deg = np.array([d for d, _ in density], dtype=np.float64)
    w = np.array([v for _, v in density], dtype=np.float64)
    if len(deg) < 2 or np.any(np.diff(deg) <= 0) or np.any(w <= 0) or lines < 2:
        raise ValueError(f"density needs increasing angles and positive weights, and >= 2 lines: {density}")
    fine = np.linspace(deg[0], deg[-1], 4001)
    cdf = np.concatenate([[0.0], np.cumsum((np.interp(fine, deg, w)[1:] + np.interp(fine, deg, w)[:-1]) / 2)])
    q = (np.arange(lines) + 0.5) / lines * cdf[-1]
    return tuple(float(round(v, 4)) for v in np.interp(q, cdf, fine))


# Dropout and the intensity response (gain, gamma) were fitted once, on 30 frames of the
# ``dair`` preset (seeds 40000, 45000 and 47000, 2 scenes x 5 frames each, every 5th step): the
# dropout to the real points per scan, the response to the real intensity distribution (least
# earth mover's distance). The figures in docs/simulator.md come from other seeds.

#: DAIR-V2X-C's vehicle LiDAR (Hesai Pandar40-like)
DAIR_VEHICLE_LIDAR = LidarConfig(
    elevations_deg=PANDAR40_ELEVATIONS,
    horizontal_steps=1800,
    max_range=200.0,
    min_range=1.0,
    dropout=0.05,
    attenuation=0.0,
    mount_height=1.96,
    intensity_gain=0.65,
    intensity_gamma=0.55,
)

#: DAIR-V2X-C's roadside LiDAR, its points in the level "virtual LiDAR" frame 1.7 m up
DAIR_RSU_LIDAR = LidarConfig(
    elevations_deg=lines_from_density(DAIR_RSU_DENSITY, 200),
    horizontal_steps=400,
    azimuth_fov_deg=(-50.0, 50.0),
    pattern="non_repetitive",
    max_range=300.0,
    min_range=1.0,
    dropout=0.05,
    attenuation=0.02,
    mount_height=7.0,
    frame_height=1.7,
    intensity_gain=3.75,
    intensity_gamma=1.2,
)


@dataclass(frozen=True)
class SensorSet:
    """The LiDARs of one kind of data set."""

    vehicle: LidarConfig
    rsu: LidarConfig
    #: roadside LiDAR heights above the ground are drawn from this range (metres)
    rsu_height: tuple[float, float]


SENSORS: dict[str, SensorSet] = {
    "opv2v": SensorSet(LidarConfig(), RSU_LIDAR, SceneConfig.rsu_height),
    "dair": SensorSet(DAIR_VEHICLE_LIDAR, DAIR_RSU_LIDAR, (6.5, 7.5)),
}
