"""The realism figures the simulator promises: scans like real OPV2V scans, and occlusion that
makes cooperation matter."""

import numpy as np

from v2x.core.frame import AgentKind
from v2x.datasets.pcd import read_pcd
from v2x.sim.realism import Occlusion, occlusion, range_histogram


def test_scan_point_count_and_ranges_resemble_real_opv2v(busy_world_frames, realdata):
    _, frames = busy_world_frames
    real = [read_pcd(p) for p in sorted((realdata / "opv2v").glob("*.pcd"))]
    real_count = np.mean([len(r) for r in real])  # about 56k
    scans = [a.points for sf in frames for a in sf.frame.agents.values() if a.kind == AgentKind.VEHICLE]
    assert 0.85 * real_count < np.mean([len(p) for p in scans]) < 1.15 * real_count
    real_hist = np.mean([range_histogram(r) for r in real], axis=0)
    sim_hist = np.mean([range_histogram(p) for p in scans], axis=0)
    # shares per range bin agree to within 15 points; half the points are in the first 15 m
    assert np.abs(real_hist - sim_hist).max() < 0.15
    assert 0.5 < sim_hist[:3].sum() < 0.85 and 0.5 < real_hist[:3].sum() < 0.85
    assert (np.linalg.norm(np.concatenate(scans)[:, :3], axis=1) <= 120.0 + 0.1).all()


def test_occlusion_many_vehicles_are_seen_only_by_others(busy_world_frames):
    _, frames = busy_world_frames
    total = sum((occlusion(sf.frame) for sf in frames), Occlusion())
    assert total.near > 300
    # the busy test town hides a sizeable share of nearby vehicles from the ego that others see
    assert 0.15 < total.share_seen_only_by_others < 0.6
    assert total.share_hidden >= total.share_seen_only_by_others


def test_occlusion_counts_by_hand():
    """The measure itself, on a frame built by hand."""
    from v2x.core.boxes import Boxes, ObjectClass
    from v2x.core.frame import AgentScan, Frame
    from v2x.core.geometry import pose_from_xyz_yaw

    gt = Boxes(
        np.array(
            [
                [10, 0, 1, 4, 2, 1.5, 0],
                [20, 5, 1, 4, 2, 1.5, 0],
                [30, -5, 1, 4, 2, 1.5, 0],
                [80, 0, 1, 4, 2, 1.5, 0],
            ]
        ),
        labels=[ObjectClass.CAR] * 3 + [ObjectClass.CAR],
        track_ids=[1, 2, 3, 4],
    )
    pts = np.zeros((0, 4), np.float32)
    ego = AgentScan("0", "vehicle", pts, pose_from_xyz_yaw(0, 0, 1.9, 0), hits={1: 30})
    other = AgentScan("5", "vehicle", pts, pose_from_xyz_yaw(40, 0, 1.9, 0), hits={1: 3, 2: 8, 4: 50})
    occ = occlusion(Frame("s", 0, 0, {"0": ego, "5": other}, "0", gt))
    # within 50 m: 1, 2, 3; the ego misses 2 and 3; only 2 is seen by the other agent
    assert (occ.near, occ.hidden, occ.seen_by_others) == (3, 2, 1)
