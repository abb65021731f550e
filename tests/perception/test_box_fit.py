"""Boxes fitted to the points on a car (v2x.perception.box_fit) and the detector's decode that
applies it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2x.perception.box_fit import MAX_SHIFT_M, fit_boxes, quarter_turn_axis
from v2x.perception.config import DetectorConfig
from v2x.perception.detector import CooperativeDetector


def car_outline(
    x: float, y: float, heading: float, sides: str = "rear+left", length=4.5, width=1.8, spacing=0.1, rng=None
) -> np.ndarray:
    """Points a LiDAR returns from the visible sides of a car at (x, y), 0.5 to 1.4 m up."""
    rng = rng or np.random.default_rng(0)
    parts = []
    if "rear" in sides:
        v = np.arange(-width / 2, width / 2, spacing)
        parts.append(np.stack([np.full_like(v, -length / 2), v], axis=1))
    if "left" in sides:
        u = np.arange(-length / 2, length / 2, spacing)
        parts.append(np.stack([u, np.full_like(u, width / 2)], axis=1))
    local = np.concatenate(parts) + rng.normal(0, 0.02, (sum(len(p) for p in parts), 2))
    c, s = np.cos(heading), np.sin(heading)
    xy = local @ np.array([[c, s], [-s, c]]) + (x, y)
    z = rng.uniform(-0.9, 0.0, len(xy))  # the box centre is at z = -0.95 + 0.75 = -0.2
    return np.column_stack([xy, z, np.ones(len(xy))])


def ground(rng=None) -> np.ndarray:
    rng = rng or np.random.default_rng(1)
    xy = rng.uniform(-30, 30, (20000, 2))
    return np.column_stack([xy, np.full(len(xy), -0.95), np.ones(len(xy))])


def test_quarter_turn_axis_finds_the_rectangle():
    pts = car_outline(0, 0, np.radians(30))[:, :2]
    assert np.degrees(quarter_turn_axis(pts)) == pytest.approx(30, abs=2)


@pytest.mark.parametrize("truth_deg,guess_deg", [(30, 70), (30, -5), (120, 160), (-60, -20)])
def test_a_turned_box_gets_the_cars_heading(truth_deg, guess_deg):
    truth = np.radians(truth_deg)
    pts = np.concatenate([car_outline(10, 5, truth), ground()])
    box = np.array([[10, 5, -0.2, 4.5, 1.8, 1.5, np.radians(guess_deg)]])
    fitted = fit_boxes(box, pts, min_points=20, centres=False)
    off = (fitted[0, 6] - truth + np.pi / 2) % np.pi - np.pi / 2
    assert abs(np.degrees(off)) < 2
    # the direction of travel stays the network's: within a quarter turn of the guess
    assert abs((fitted[0, 6] - box[0, 6] + np.pi) % (2 * np.pi) - np.pi) < np.pi / 2
    np.testing.assert_array_equal(fitted[0, :6], box[0, :6])


def test_one_long_side_seen_tells_the_length_even_against_the_guess():
    """Only the car's flank is visible: its spread beyond the width marks it as the length,
    even where the network's guess is nearer the other axis."""
    truth = np.radians(10)
    pts = car_outline(0, 20, truth, sides="left")
    box = np.array([[0, 20, -0.2, 4.5, 1.8, 1.5, np.radians(75)]])
    off = (fit_boxes(box, pts, 20)[0, 6] - truth + np.pi / 2) % np.pi - np.pi / 2
    assert abs(np.degrees(off)) < 2


@pytest.mark.parametrize("heading_deg", [0, 30, 100])
def test_the_centre_moves_onto_the_faces_the_sensor_sees(heading_deg):
    """The sensor at the origin sees the car's back and left flank (it sits behind and to the
    left of a car at (12, -6) heading away): a box 0.3 m off along and 0.25 m across goes back
    onto them; the same from a sensor elsewhere, with its position given."""
    heading = np.radians(heading_deg)
    along = np.array([np.cos(heading), np.sin(heading)])
    across = np.array([-along[1], along[0]])
    centre = np.array([12.0, -6.0])
    # place the sensor behind the car's back and off its left flank
    sensor = centre - 8 * along + 6 * across
    pts = car_outline(*centre, heading)
    box = np.array([[*(centre + 0.3 * along - 0.25 * across), -0.2, 4.5, 1.8, 1.5, heading]])
    fitted = fit_boxes(box, pts, 20, sensor_xy=sensor)
    np.testing.assert_allclose(fitted[0, :2], centre, atol=0.1)
    np.testing.assert_array_equal(fitted[0, 2:6], box[0, 2:6])
    # a sensor level with the car along its length sees no face across that axis: the box
    # moves across only
    beside = fit_boxes(box, pts, 20, sensor_xy=centre + 6 * across)
    assert (beside[0, :2] - centre) @ along == pytest.approx(0.3, abs=0.01)
    assert (beside[0, :2] - centre) @ across == pytest.approx(0.0, abs=0.1)


def test_a_centre_moves_at_most_the_limit():
    """Points of something else (a wall 3 m beyond the box) cannot drag the box further than
    MAX_SHIFT_M."""
    wall = np.column_stack([np.full(60, 13.0), np.linspace(-2, 2, 60), np.full(60, -0.3), np.ones(60)])
    side = np.column_stack([np.linspace(8, 13, 60), np.full(60, 1.4), np.full(60, -0.3), np.ones(60)])
    box = np.array([[10.0, 0.0, -0.2, 4.5, 1.8, 1.5, 0.0]])
    fitted = fit_boxes(box, np.concatenate([wall, side]), 20, sensor_xy=(30.0, 20.0))
    assert abs(fitted[0, 0] - 10.0) <= MAX_SHIFT_M[0] + 1e-9
    assert abs(fitted[0, 1] - 0.0) <= MAX_SHIFT_M[1] + 1e-9


def test_few_points_or_only_ground_leave_the_box_alone():
    box = np.array([[10, 5, -0.2, 4.5, 1.8, 1.5, 0.7]])
    sparse = car_outline(10, 5, 0.1, spacing=0.5)  # 9 + 4 points
    np.testing.assert_array_equal(fit_boxes(box, sparse, min_points=20), box)
    np.testing.assert_array_equal(fit_boxes(box, ground(), min_points=20), box)
    np.testing.assert_array_equal(fit_boxes(box, car_outline(10, 5, 0.1), min_points=0), box)
    assert fit_boxes(np.zeros((0, 7)), ground(), 20).shape == (0, 7)


def test_decode_fits_headings_only_when_configured():
    cfg = DetectorConfig(box_fit_min_points=20)
    assert "box_fit_min_points" not in DetectorConfig().to_dict()  # old identities kept
    assert DetectorConfig.from_dict(cfg.to_dict()).box_fit_min_points == 20
    with pytest.raises(ValueError, match="box_fit_min_points"):
        DetectorConfig(box_fit_min_points=-1)
    torch.manual_seed(0)
    model = CooperativeDetector(cfg).eval()
    with torch.no_grad():
        out = model.detect(torch.zeros(1, cfg.bev_channels, *cfg.grid.shape))
        # a peak at one cell: a box there whatever the untrained regression says
        h, w = cfg.grid.shape
        out.heatmap[0, 0, h // 2, w // 2 + 20] = 10.0
        plain = model.decode(out)[0]
        assert len(plain)
        b = plain.xyzlwhy[int(np.argmax(plain.scores))]
        truth = b[6] + np.radians(35)
        pts = torch.from_numpy(car_outline(b[0], b[1], truth, length=b[3], width=b[4]).astype(np.float32))
        pts[:, 2] = float(b[2]) + torch.linspace(-0.2, 0.4, len(pts))
        fitted = model.decode(out, [pts])[0]
        unchanged = model.decode(out, [None])[0]
    k = int(np.argmax(fitted.scores))
    off = (fitted.xyzlwhy[k, 6] - truth + np.pi / 2) % np.pi - np.pi / 2
    assert abs(np.degrees(off)) < 3
    np.testing.assert_array_equal(unchanged.xyzlwhy, plain.xyzlwhy)
    with pytest.raises(ValueError, match="points: 2 clouds for 1 maps"):
        model.decode(out, [pts, pts])


@pytest.mark.slow
def test_on_real_dair_pairs_fitted_boxes_sit_closer_to_the_labels(dair_example, tmp_path):
    """Four real DAIR-V2X-C pairs through the pipeline with the shipped DAIR weights, boxes fitted
    (the weights' own setting) against the same boxes as decoded (``--box-fit 0``): the fitted
    boxes' headings and centres are nearer the labels', and the ego keeps its scan's points only
    when it fits. Through the command line: the JSON records the setting."""
    import json

    from click.testing import CliRunner
    from scipy.optimize import linear_sum_assignment

    from v2x.cli.main import cli
    from v2x.datasets import open_log
    from v2x.perception.cooperative import Perception, evaluation_ground_truth
    from v2x.perception.detector import load_detector

    log = open_log(dair_example)
    frames = [log[i] for i in (0, 9, 16, 25)]

    def errors(fit: int) -> tuple[np.ndarray, Perception]:
        model = load_detector(None, log_format=log.format, box_fit_min_points=fit)
        perception = Perception(model)
        err = []
        for frame in frames:
            gt = evaluation_ground_truth(frame, 1).xyzlwhy
            res = perception.run_frame(frame, "late", "each")
            det = res.boxes.xyzlwhy[res.boxes.scores >= 0.3]
            d = np.hypot(gt[:, None, 0] - det[None, :, 0], gt[:, None, 1] - det[None, :, 1])
            rows, cols = linear_sum_assignment(np.where(d < 2.5, d, 1e6))
            ok = d[rows, cols] < 2.5
            heading = (det[cols[ok], 6] - gt[rows[ok], 6] + np.pi / 2) % np.pi - np.pi / 2
            err.append(np.column_stack([np.abs(heading), d[rows[ok], cols[ok]]]))
        return np.concatenate(err), perception

    decoded, plain = errors(0)
    fitted, fitting = errors(10)
    assert len(fitted) >= 30 and len(decoded) >= 30
    assert np.mean(fitted[:, 0]) < np.mean(decoded[:, 0])  # headings
    assert np.median(fitted[:, 1]) < np.median(decoded[:, 1])  # centres
    assert plain.agent_step(frames[0].ego).points is None
    assert fitting.agent_step(frames[0].ego).points is not None

    out = tmp_path / "fit.json"
    args = ["eval", "detection", "--data", str(dair_example), "--frames", "1", "--fusion", "none"]
    res = CliRunner().invoke(cli, [*args, "--box-fit", "0", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["box_fit_min_points"] == 0
    res = CliRunner().invoke(cli, [*args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert (
        json.loads(out.read_text())["box_fit_min_points"]
        == load_detector(None, log_format=log.format).cfg.box_fit_min_points
    )
