import shutil

import numpy as np
import pytest

from v2x.core.boxes import Boxes, ObjectClass
from v2x.core.frame import AgentKind, AgentScan, Frame
from v2x.core.geometry import pose_from_xyz_rpy


@pytest.fixture
def v2xset_log(realdata, tmp_path):
    """The real V2XSet frame (yaml only) paired with the real OPV2V sample point clouds."""
    src = realdata / "v2xset" / "validate"
    dst = tmp_path / "v2xset" / "validate"
    shutil.copytree(src, dst)
    scenario = next(dst.iterdir())
    for cav in ("4279", "4288", "4297"):
        shutil.copy(realdata / "opv2v" / "000070.pcd", scenario / cav / "000069.pcd")
    return tmp_path / "v2xset"


def make_frame(n_agents: int = 3, rsu: bool = True, seed: int = 0, index: int = 7) -> Frame:
    """A synthetic frame with tilted poses, an RSU and boxes of several classes."""
    rng = np.random.default_rng(seed)
    agents = {}
    ids = [str(100 + 10 * i) for i in range(n_agents - (1 if rsu else 0))] + (["-1"] if rsu else [])
    for k, aid in enumerate(ids):
        kind = AgentKind.RSU if aid.startswith("-") else AgentKind.VEHICLE
        pose = pose_from_xyz_rpy(
            10.0 * k - 5, 3.0 * k, 6.0 if kind == AgentKind.RSU else 1.9, 0.01 * k, -0.02, 0.4 * k - 1
        )
        pts = np.c_[rng.uniform(-50, 50, (500, 3)), rng.integers(0, 256, 500) / 255.0].astype(np.float32)
        agents[aid] = AgentScan(
            aid, kind, pts, pose, timestamp_ns=index * 100_000_000, mount_height=pose[2, 3]
        )
    n = 6
    boxes = np.c_[
        rng.uniform(-30, 30, (n, 2)), rng.uniform(0.5, 1, n), rng.uniform(1, 5, (n, 3)), rng.uniform(-3, 3, n)
    ]
    labels = [
        ObjectClass.CAR,
        ObjectClass.TRUCK,
        ObjectClass.VAN,
        ObjectClass.PEDESTRIAN,
        ObjectClass.CYCLIST,
        ObjectClass.BUS,
    ]
    gt = Boxes(boxes, labels=[int(c) for c in labels], track_ids=np.arange(500, 500 + n))
    return Frame("scene_a", index, index * 100_000_000, agents, ids[0], gt)


@pytest.fixture(name="make_frame")
def make_frame_fixture():
    return make_frame
