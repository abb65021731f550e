import numpy as np
import pytest
import torch

from v2x.core.boxes import Boxes, ObjectClass
from v2x.core.frame import AgentScan, Frame
from v2x.core.geometry import inverse, pose_from_xyz_yaw, transform_points
from v2x.perception.config import load_config
from v2x.perception.detector import CooperativeDetector


def synthetic_frame(seed: int = 0, n_agents: int = 3, n_boxes: int = 12) -> Frame:
    """A flat ground with box-shaped point clusters, seen by a few agents (no occlusion)."""
    r = np.random.default_rng(seed)
    gt = np.c_[
        r.uniform(-40, 40, n_boxes),
        r.uniform(-25, 25, n_boxes),
        np.full(n_boxes, 0.75),
        np.full(n_boxes, 4.5),
        np.full(n_boxes, 1.9),
        np.full(n_boxes, 1.5),
        r.uniform(-3, 3, n_boxes),
    ]
    ground = np.c_[r.uniform(-80, 80, 20000), r.uniform(-50, 50, 20000), np.zeros(20000)]
    objs = []
    for b in gt:
        u = r.uniform(-0.5, 0.5, (200, 3)) * b[3:6]
        c, s = np.cos(b[6]), np.sin(b[6])
        objs.append(np.c_[b[0] + c * u[:, 0] - s * u[:, 1], b[1] + s * u[:, 0] + c * u[:, 1], b[2] + u[:, 2]])
    world = np.vstack([ground, *objs])
    agents = {}
    for i in range(n_agents):
        T = pose_from_xyz_yaw(i * 10.0 - 10, i * 5.0 - 5, 1.8, i * 0.5)
        p = transform_points(inverse(T), world).astype(np.float32)
        agents[str(i)] = AgentScan(
            str(i), "vehicle", np.c_[p, np.full(len(p), 0.3, np.float32)], T, mount_height=1.8
        )
    return Frame("synthetic", seed, seed * 100_000_000, agents, "0", Boxes(gt, labels=int(ObjectClass.CAR)))


@pytest.fixture(name="synthetic_frame", scope="session")
def synthetic_frame_factory():
    return synthetic_frame


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return CooperativeDetector(cfg).eval()
