"""The node API example in docs/messages.md runs as written."""

import re
from pathlib import Path

import numpy as np
import torch

from v2x.core.frame import AgentKind
from v2x.core.geometry import pose_from_xyz_yaw
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import Codebook, CodebookConfig
from v2x.perception.cooperative import AgentPerception, SharedFeatures

DOC = Path(__file__).resolve().parents[2] / "docs" / "messages.md"
GRID = BEVGrid()


def _agent(agent_id, pose, seed, channels=16):
    rng = np.random.default_rng(seed)
    h, w = GRID.shape
    occ = torch.from_numpy(rng.random((h, w)) < 0.15)
    feats = torch.zeros(channels, h, w)
    feats[:, occ] = torch.from_numpy(rng.random((channels, int(occ.sum()))).astype(np.float32))
    conf = (rng.random((h, w)) ** 8).astype(np.float32)
    return AgentPerception(agent_id, AgentKind.VEHICLE, 42, pose, feats, occ, conf)


def test_the_node_api_example_runs():
    text = DOC.read_text()
    section = text[text.index("## API for the nodes") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cb = Codebook(CodebookConfig(channels=16, m=2, r=2, k=16))
    cb.codewords.data.uniform_(0, 1)
    ns = {
        "grid": GRID,
        "codebook": cb,
        "ego": _agent("1", pose_from_xyz_yaw(100.0, 50.0, 0, 0.2), 1),
        "me": _agent("2", pose_from_xyz_yaw(120.0, 55.0, 0, -0.4), 2),
        "others": [_agent("3", pose_from_xyz_yaw(90.0, 40.0, 0, 2.0), 3)],
        "budget": 1024,
    }
    exec(compile(code, str(DOC), "exec"), ns)
    assert len(ns["out"].data) <= ns["left"] and len(ns["out"].cells) > 0
    assert len(ns["ego_cells"]) > 0 and isinstance(ns["shared"], SharedFeatures)
