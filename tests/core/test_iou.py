import numpy as np
import pytest
from shapely.geometry import Polygon

from v2x.core.boxes import bev_corners
from v2x.core.iou import bev_and_3d_iou, bev_iou_matrix, iou3d_matrix


def _random_boxes(rng, n, spread=4.0):
    return np.c_[
        rng.uniform(-spread, spread, (n, 3)), rng.uniform(0.3, 5, (n, 3)), rng.uniform(-np.pi, np.pi, n)
    ]


def _shapely_bev_iou(a, b):
    pa, pb = Polygon(bev_corners(a)[0]), Polygon(bev_corners(b)[0])
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def test_bev_iou_matches_shapely_on_random_rotated_boxes():
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 60), _random_boxes(rng, 50)
    m = bev_iou_matrix(a, b)
    ref = np.array(
        [[_shapely_bev_iou(a[i : i + 1], b[j : j + 1]) for j in range(len(b))] for i in range(len(a))]
    )
    assert np.abs(m - ref).max() < 1e-9
    assert (ref > 0).sum() > 200  # the sample really exercises overlaps


def test_iou3d_matches_shapely_times_height_overlap():
    rng = np.random.default_rng(2)
    a, b = _random_boxes(rng, 30, 2.0), _random_boxes(rng, 30, 2.0)
    m = iou3d_matrix(a, b)
    for i in range(len(a)):
        for j in range(len(b)):
            pa, pb = Polygon(bev_corners(a[i])[0]), Polygon(bev_corners(b[j])[0])
            dz = max(
                0.0,
                min(a[i, 2] + a[i, 5] / 2, b[j, 2] + b[j, 5] / 2)
                - max(a[i, 2] - a[i, 5] / 2, b[j, 2] - b[j, 5] / 2),
            )
            inter = pa.intersection(pb).area * dz
            ref = inter / (np.prod(a[i, 3:6]) + np.prod(b[j, 3:6]) - inter)
            assert m[i, j] == pytest.approx(ref, abs=1e-9)


def test_both_ious_at_once_are_the_two_functions_bit_for_bit():
    rng = np.random.default_rng(3)
    a, b = _random_boxes(rng, 40, 2.0), _random_boxes(rng, 35, 2.0)
    bev, iou_3d = bev_and_3d_iou(a, b)
    assert np.array_equal(bev, bev_iou_matrix(a, b)) and np.array_equal(iou_3d, iou3d_matrix(a, b))
    assert (bev > 0).sum() > 50
    empty = bev_and_3d_iou(a[:0], b)
    assert empty[0].shape == empty[1].shape == (0, 35)


def test_special_cases():
    box = np.array([[0, 0, 0, 4, 2, 1.5, 0.3]])
    assert bev_iou_matrix(box, box)[0, 0] == pytest.approx(1.0)
    assert bev_iou_matrix(box, box + [10, 0, 0, 0, 0, 0, 0])[0, 0] == 0.0
    turned = box + [0, 0, 0, 0, 0, 0, np.pi]
    assert bev_iou_matrix(box, turned)[0, 0] == pytest.approx(1.0)
    square = np.array([[0, 0, 0, 2, 2, 1, 0.0]])
    rotated = np.array([[0, 0, 0, 2, 2, 1, np.pi / 4]])
    inter = 8 * (np.sqrt(2) - 1)  # regular octagon inside a 2x2 square rotated by 45 degrees
    assert bev_iou_matrix(square, rotated)[0, 0] == pytest.approx(inter / (8 - inter))
    assert bev_iou_matrix(np.zeros((0, 7)), box).shape == (0, 1)
