"""BEV pictures: the right size and type, points where they belong in their agent's colour,
and a ``v2x viz`` command that writes a PNG of a generated log."""

import cv2
import numpy as np
from click.testing import CliRunner

from v2x.core.boxes import Boxes
from v2x.output.bev import AGENT_COLOURS, render_bev


def test_points_by_agent_land_at_their_pixels_in_their_colours():
    pts = {"0": np.array([[10.0, 5.0, 0.0]]), "1": np.array([[-20.0, -10.0, 0.0]])}
    img = render_bev(
        pts, view="world", x_range=(-40, 40), y_range=(-20, 20), pixels_per_metre=4, legend=False
    )
    assert img.dtype == np.uint8 and img.shape == (160, 320, 3)
    # x right, y up: (10, 5) -> column (10 + 40) * 4, row (20 - 5) * 4
    assert tuple(img[60, 200]) == AGENT_COLOURS[0]
    assert tuple(img[120, 80]) == AGENT_COLOURS[1]


def test_frame_picture_has_boxes_detections_tracks_and_cells(busy_world_frames):
    _, frames = busy_world_frames
    frame = frames[0].frame
    plain = render_bev(frame, show_gt=False)
    full = render_bev(
        frame,
        detections=Boxes(np.array([[5.0, 0.0, 1.0, 4.5, 1.9, 1.5, 0.3]])),
        tracks=Boxes(np.array([[-5.0, 3.0, 1.0, 4.5, 1.9, 1.5, 0.0]]), track_ids=[7]),
        sent_cells={frame.collaborators[0].agent_id: np.array([[12.0, -8.0], [12.8, -8.0]])},
    )
    assert plain.shape == full.shape == (640, 1126, 3)
    assert (np.any(full != plain, axis=2)).sum() > 2000  # boxes and overlays were drawn
    world = render_bev(frame, view="world", x_range=(-150, 150), y_range=(-150, 150), pixels_per_metre=2)
    assert world.shape == (600, 600, 3) and (world.sum(axis=2) > 200).sum() > 5000


def test_viz_command_writes_a_png_of_a_generated_log(tmp_path):
    from v2x.cli.viz import viz
    from v2x.sim.generate import GenerateConfig, generate

    generate(
        GenerateConfig(out=str(tmp_path / "log"), scenes=1, frames=2, blocks=(2, 2), split=(1, 0, 0), seed=5),
        progress=False,
    )
    out = tmp_path / "bev.png"
    result = CliRunner().invoke(viz, [str(tmp_path / "log" / "train"), "--frame", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    img = cv2.imread(str(out))
    assert img is not None and img.shape == (640, 1126, 3)
    bad = CliRunner().invoke(viz, [str(tmp_path / "log" / "train"), "--frame", "9", "--out", str(out)])
    assert bad.exit_code != 0 and "outside" in bad.output
