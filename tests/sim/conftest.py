"""One busy simulated scene shared by the world, realism and viz tests (built once per session)."""

from __future__ import annotations

import pytest

from v2x.sim.generate import VEHICLE_MIXES
from v2x.sim.town import TownConfig
from v2x.sim.world import SceneConfig, World


def busy_scene(**overrides) -> SceneConfig:
    """Dense, truck-heavy traffic in a 3x3 town at 10 Hz: 4 CAVs and an RSU."""
    cfg = dict(
        name="busy",
        seed=11,
        frames=15,
        cavs=4,
        rsus=1,
        traffic_density=36.0,
        parked_density=0.55,
        vehicle_mix=dict(VEHICLE_MIXES["heavy"]),
        town=TownConfig(blocks_x=3, blocks_y=3),
        warmup_steps=20,
    )
    cfg.update(overrides)
    return SceneConfig(**cfg)


@pytest.fixture(scope="session")
def busy_world_frames():
    """(world, [SimFrame]) of the busy scene."""
    world = World(busy_scene())
    return world, list(world.frames())
