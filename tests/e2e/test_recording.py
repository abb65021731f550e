import json

import numpy as np
import pytest
from mcap.reader import make_reader

from v2x.core.boxes import Boxes
from v2x.core.geometry import pose_from_xyz_yaw
from v2x.output.recording import McapRecorder, RecordingError


def test_mcap_has_foxglove_schemas_and_every_message(tmp_path):
    path = tmp_path / "run.mcap"
    with McapRecorder(path) as rec:
        for k in range(3):
            t = 1_000_000_000 + k * 100_000_000
            rec.log_transforms(
                t, {"1": pose_from_xyz_yaw(k, 0, 1.8, 0.1), "-1": pose_from_xyz_yaw(20, 5, 6, 1.0)}
            )
            rec.log_points(t, "1", np.random.default_rng(k).uniform(-5, 5, (100, 4)).astype(np.float32))
            tracks = Boxes([[k, 0, 0.8, 4.5, 1.9, 1.5, 0.0]], labels=0, track_ids=[7], scores=[0.9])
            rec.log_boxes(t, "/ego/1/tracks", tracks, label="track")
            rec.log_json(t, "/links", {"link": "2->1", "bytes": 512 + k, "delivered": True})
    with open(path, "rb") as fh:
        reader = make_reader(fh)
        summary = reader.get_summary()
        schemas = {s.name for s in summary.schemas.values()}
        assert {"foxglove.PointCloud", "foxglove.SceneUpdate", "foxglove.FrameTransforms"} <= schemas
        topics = {c.topic for c in summary.channels.values()}
        assert topics == {"/tf", "/agents/1/points", "/ego/1/tracks", "/links"}
        assert summary.statistics.message_count == 12
        links = [json.loads(m.data) for _, c, m in reader.iter_messages(topics=["/links"])]
        assert [x["bytes"] for x in links] == [512, 513, 514]


def test_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecordingError, match="file"):
        McapRecorder(blocker / "sub" / "run.mcap")
