"""Late fusion's merge: NMS whose kept boxes absorb the close duplicates they suppress; and the
hybrid's ego, whose fused reading only adds the objects no box has."""

from dataclasses import replace

import numpy as np
import pytest

from v2x.core.boxes import Boxes
from v2x.core.geometry import inverse
from v2x.core.iou import bev_iou_matrix
from v2x.perception.box_merge import NEW_OBJECT_IOU, agents_disagreement, merge_duplicates, not_overlapping
from v2x.perception.cooperative import SAME_CAR_SPREADS, Perception, SharedBoxes, SharedFeatures
from v2x.perception.head import rotated_nms

CAR = [4.0, 2.0, 1.5]


def _boxes(rows):
    return np.array([[x, y, 0.0, *CAR, yaw] for x, y, yaw in rows], dtype=float)


def test_two_agents_boxes_of_one_car_average_by_score():
    b = _boxes([(10.0, 0.0, 0.1), (10.6, 0.2, 0.3)])
    assert bev_iou_matrix(b[:1], b[1:])[0, 0] > 0.4
    keep, placed = merge_duplicates(b, np.array([0.6, 0.2]), nms_iou=0.1, fusion_iou=0.4)
    assert keep.tolist() == [0]
    assert placed[0, 0] == pytest.approx(10.15) and placed[0, 1] == pytest.approx(0.05)
    assert placed[0, 6] == pytest.approx(0.15)  # headings average by score too


def test_a_box_pointing_backwards_averages_its_footprint_not_its_direction():
    """Two boxes of one car, one turned by about pi (same footprint): the merged heading stays
    near the kept box's direction, not half way round (which would turn the car sideways)."""
    b = _boxes([(10.0, 0.0, 3.1), (10.0, 0.0, -3.1 + 0.05)])  # 3.1 and about 3.23 mod 2 pi
    assert bev_iou_matrix(b[:1], b[1:])[0, 0] > 0.8
    keep, placed = merge_duplicates(b, np.array([0.5, 0.5]), nms_iou=0.1, fusion_iou=0.4)
    assert keep.tolist() == [0]
    want = (3.1 + (-3.1 + 0.05 + 2 * np.pi)) / 2 - 2 * np.pi  # 3.165, wrapped into [-pi, pi)
    assert placed[0, 6] == pytest.approx(want)
    backwards = _boxes([(10.0, 0.0, 0.2), (10.0, 0.0, 0.4 + np.pi)])
    _, placed = merge_duplicates(backwards, np.array([0.9, 0.3]), nms_iou=0.1, fusion_iou=0.4)
    assert placed[0, 6] == pytest.approx(0.25)  # (0.9 * 0.2 + 0.3 * 0.4) / 1.2: its own direction kept


def test_a_weak_overlap_is_suppressed_but_not_averaged():
    b = _boxes([(0.0, 0.0, 0.0), (2.5, 0.0, 0.0), (30.0, 0.0, 0.0)])
    iou = bev_iou_matrix(b[:1], b[1:2])[0, 0]
    assert 0.1 < iou < 0.4
    keep, placed = merge_duplicates(b, np.array([0.9, 0.8, 0.5]), nms_iou=0.1, fusion_iou=0.4)
    assert keep.tolist() == [0, 2]
    assert np.array_equal(placed, b[[0, 2]])


def test_keeps_what_greedy_nms_keeps():
    rng = np.random.default_rng(3)
    b = _boxes([(x, y, yaw) for x, y, yaw in rng.uniform([-20, -20, -3], [20, 20, 3], (60, 3))])
    s = rng.uniform(0.1, 1.0, 60)
    keep, placed = merge_duplicates(b, s, nms_iou=0.1, fusion_iou=0.4)
    order = np.argsort(-s, kind="stable")
    iou = bev_iou_matrix(b[order], b[order])
    suppressed, greedy = np.zeros(60, bool), []
    for i in range(60):  # textbook greedy NMS
        if not suppressed[i]:
            greedy.append(order[i])
            suppressed |= iou[i] > 0.1
    assert keep.tolist() == greedy == rotated_nms(b, s, 0.1).tolist()
    plain_keep, plain = merge_duplicates(b, s, nms_iou=0.1, fusion_iou=None)
    assert plain_keep.tolist() == keep.tolist() and np.array_equal(plain, b[keep])
    assert not np.array_equal(placed, plain)  # some of 60 random cars overlap enough to average


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2])
def test_a_fusion_iou_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="fusion_iou"):
        merge_duplicates(_boxes([(0, 0, 0)]), np.array([0.5]), 0.1, bad)


def test_late_fusion_places_a_car_seen_by_both_agents_between_their_boxes(model):
    own = Boxes(_boxes([(10.0, 0.0, 0.0)]), np.zeros(1, np.int16), scores=np.array([0.5]))
    other = Boxes(_boxes([(10.4, 0.0, 0.0)]), np.zeros(1, np.int16), scores=np.array([0.5]))
    received = [SharedBoxes("1", np.eye(4), other)]
    fused = Perception(model).merge_boxes(np.eye(4), own, received)
    plain = Perception(model, box_fusion_iou=None).merge_boxes(np.eye(4), own, received)
    assert len(fused) == len(plain) == 1
    assert fused.xyzlwhy[0, 0] == pytest.approx(10.2) and plain.xyzlwhy[0, 0] == 10.0


def test_only_boxes_overlapping_no_placed_box_count_as_new():
    placed = _boxes([(0.0, 0.0, 0.0), (20.0, 0.0, 0.0)])
    found = _boxes(
        [(0.3, 0.0, 0.0), (3.7, 0.0, 0.0), (8.0, 0.0, 0.0), (20.0, 0.0, np.pi / 2), (20.0, 1.9, 0.0)]
    )
    iou = bev_iou_matrix(found, placed).max(axis=1)
    assert 0 < iou[1] < NEW_OBJECT_IOU < iou[3]  # a neighbour touching a placed car is new
    assert 0 < iou[4] < NEW_OBJECT_IOU
    assert not_overlapping(found, placed).tolist() == [False, True, True, False, True]
    # where the agents place one car metres apart, a box that close to a placed one is that car
    assert not_overlapping(found, placed, min_apart=2.5).tolist() == [False, True, True, False, False]
    assert not_overlapping(found, placed[:0]).all() and len(not_overlapping(found[:0], placed)) == 0


def test_the_agents_disagreement_is_the_median_distance_of_the_cars_both_place():
    a = _boxes([(0.0, 0.0, 0.0), (10.0, 0.0, 0.0), (20.0, 5.0, 0.0), (60.0, 0.0, 0.0)])
    b = a.copy()
    b[:, 0] += [1.2, 1.0, 1.4, 9.0]  # the last is no pair: too far
    assert agents_disagreement(a, b) == pytest.approx(1.2)
    assert agents_disagreement(a[:1], b[:1]) == 0.0  # one pair says nothing of the frames
    assert agents_disagreement(a, b[:0]) == 0.0


def test_the_hybrids_ego_places_boxed_cars_as_late_fusion_and_adds_only_new_ones(model, synthetic_frame):
    """``boxes_first``: what the ego's own boxes and the received ones say is late fusion's merge,
    to the digit; the fused map's reading only adds boxes that overlap none of them."""
    frame = synthetic_frame(21)
    perception = Perception(model)
    ego, collab = perception.agent_steps([frame.ego, frame.collaborators[0]], detect=True)
    shared = [SharedFeatures(collab.agent_id, collab.world_from_bev, collab.features, collab.occupied)]
    received = [SharedBoxes(collab.agent_id, collab.world_from_bev, collab.boxes[:3])]
    late = perception.merge_boxes(ego.world_from_bev, ego.boxes, received)
    fused = perception.ego_step(ego, shared).boxes
    got = perception.ego_step(ego, shared, received, boxes_first=True).boxes
    assert len(late) > 0 and len(fused) > 0
    assert np.array_equal(got.xyzlwhy[: len(late)], late.xyzlwhy)
    assert np.array_equal(got.scores[: len(late)], late.scores)
    added = got.xyzlwhy[len(late) :]
    moved = received[0].boxes.transformed(inverse(ego.world_from_bev) @ collab.world_from_bev)
    apart = SAME_CAR_SPREADS * agents_disagreement(ego.boxes.xyzlwhy, moved.xyzlwhy)
    assert len(added) == not_overlapping(fused.xyzlwhy, late.xyzlwhy, min_apart=apart).sum() > 0
    assert not_overlapping(added, late.xyzlwhy, min_apart=apart).all()
    # an ego step that had not detected on its own map detects now, with the detector's head
    undetected = replace(ego, boxes=None, head=None, confidence=None)
    again = perception.ego_step(undetected, shared, received, boxes_first=True).boxes
    assert np.allclose(again.xyzlwhy, got.xyzlwhy, atol=1e-5)
    # nothing received: the fused reading as it was
    assert np.array_equal(perception.ego_step(ego, shared, [], boxes_first=True).boxes.xyzlwhy, fused.xyzlwhy)
