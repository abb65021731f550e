"""The ego node's frame collector with plain inputs: when a frame is ready, liveness and giving
up, real time's skipping and deadline, and where late messages go."""

from __future__ import annotations

import logging

import pytest

from v2x.comm.envelope import Packet
from v2x.pipeline.replay.ego_frames import DIED, MISSED, SILENT, STOPPED, FrameCollector, RunCounters

EGO = "ego"


class _Clock:
    """A hand-moved clock, for both the monotonic and the wall one."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _collector(realtime: bool = False, nodes=("agent0", "agent1"), **kw):
    """A collector on a hand-moved clock; what it tells the peers is in ``c.told`` (frame, agents)."""
    clock = _Clock()
    late: list[tuple[Packet, float]] = []
    told: list[tuple[int, list[str]]] = []
    c = FrameCollector(
        list(nodes),
        realtime=realtime,
        deadline_s=kw.pop("deadline_s", 0.1),
        dead_after_s=kw.pop("dead_after_s", 30.0),
        wait_s=kw.pop("wait_s", 120.0),
        late=lambda pkt, received: late.append((pkt, received)),
        round_s=kw.pop("round_s", 10.0),
        absent=lambda k, agents: told.append((k, agents)),
        uses_offers=kw.pop("uses_offers", False),
        clock=clock,
        wall=clock,
    )
    c.told = told
    return c, clock, late


def _feed(c: FrameCollector, k: int, collab=(("a", 0), ("b", 1)), t: float | None = None, track=False):
    t = k * 0.1 if t is None else t
    info = {"k": k, "t": t, "ego_id": EGO, "collaborators": [list(x) for x in collab], "total": 5}
    if track:
        info["has_track_gt"] = True
    c.add_info(info)
    c.add_scan(k, f"scan{k}")
    c.add_gt(k, f"gt{k}")


def _packet(k: int, sender: str, kind: str = "features", delivered_s: float = 0.0) -> Packet:
    return Packet.of(
        bytes([k, 1, 2]),
        sender=sender,
        receiver=EGO,
        kind=kind,
        frame=k,
        stamp_ns=round(k * 0.1 * 1e9),
        delivered_ns=round(delivered_s * 1e9),
    )


def test_a_frame_starts_once_its_info_scan_and_ground_truth_are_in():
    c, clock, _ = _collector()
    assert c.next_frame() is None
    c.add_info({"k": 0, "t": 0.0, "ego_id": EGO, "collaborators": [["a", 0]], "has_track_gt": True})
    c.add_scan(0, "scan")
    c.add_gt(0, "gt")
    assert c.next_frame() is None  # its tracking ground truth is still to come
    c.add_gt_track(0, "gt_track")
    f = c.next_frame()
    assert (f.k, f.t, f.scan, f.gt, f.gt_track) == (0, 0.0, "scan", "gt", "gt_track")
    assert f.collab == [("a", 0)] and f.spent == {"a": 0} and f.since == clock.t
    assert c.next_frame() is None and c.last_started == 0


def test_a_frame_is_collected_when_each_agent_said_what_it_sent_and_it_came():
    c, _, _ = _collector()
    _feed(c, 0)
    f = c.next_frame()
    c.expect(f)
    assert f.expected == {"a", "b"} and not c.collected(f)
    c.add_status({"k": 0, "agent_id": "a", "sent": False})  # nothing to send: nothing to wait for
    assert not c.collected(f)
    c.add_status({"k": 0, "agent_id": "b", "sent": True, "spent": 120})
    assert not c.collected(f)  # b's message is on its way
    assert c.add_packet(_packet(0, "b", delivered_s=0.03), received=5.0)
    assert c.collected(f)
    got = c.take_messages(f)
    assert [(a.sender, a.captured_s, a.delivered_s, a.frame) for a in got.arrivals] == [("b", 0.0, 0.03, 0)]
    assert got.links["a"] == {"bytes": 0, "sent": False, "delivered": False}
    assert got.links["b"] == {"bytes": 120, "sent": True, "delivered": True, "size": 3, "latency_ms": 30.0}
    assert f.spent == {"a": 0, "b": 120} and got.sent_walls == []
    assert c.statuses == {} and c.packets == {}
    c.fused(f)
    assert c.last_fused == 0 and c.counters.frames_fused == 1 and c.counters.delivered_to_ego == 1


def test_a_lost_message_resolves_its_agent_and_is_not_fused():
    c, _, _ = _collector()
    _feed(c, 0, collab=[("a", 0)])
    f = c.next_frame()
    c.expect(f)
    c.add_status({"k": 0, "agent_id": "a", "sent": True})
    c.add_packet(_packet(0, "a", kind="lost:range"), received=5.0)
    assert c.collected(f)
    got = c.take_messages(f)
    assert got.arrivals == [] and got.links["a"]["lost"] == "range" and not got.links["a"]["delivered"]
    assert c.counters.lost_to_ego == 1 and c.counters.delivered_to_ego == 0


def test_messages_may_come_before_their_frame_starts():
    c, _, _ = _collector()
    c.add_status({"k": 0, "agent_id": "a", "sent": True})
    c.add_packet(_packet(0, "a"), received=1.0)
    _feed(c, 0, collab=[("a", 0)])
    f = c.next_frame()
    c.expect(f)
    assert c.collected(f) and len(c.take_messages(f).arrivals) == 1


def _fuse(c: FrameCollector, f) -> dict:
    links = c.take_messages(f).links
    c.fused(f)
    return links


def test_a_dead_node_is_not_waited_for_and_counted_until_it_reports_again(caplog):
    caplog.set_level(logging.INFO)
    c, _, _ = _collector()
    c.mark_dead(["agent1", "not-an-agent"])
    _feed(c, 0)
    f = c.next_frame()
    c.expect(f)
    assert f.expected == {"a"} and c.told == [(0, ["b"])]  # b's peers are told not to wait
    c.add_status({"k": 0, "agent_id": "a", "sent": False}, "agent0")
    assert c.collected(f)
    assert _fuse(c, f)["b"]["absent"] == DIED
    assert c.counters.missing_agent_frames == 1 and c.counters.agent_absences == {"b": 1}
    # restarted: up, but waited for only once it has reported on a frame (it may miss the next)
    c.mark_ready("agent1")
    assert "agent node agent1 is up" in caplog.text
    _feed(c, 1)
    f = c.next_frame()
    c.expect(f)
    assert f.expected == {"a"} and c.told[-1] == (1, ["b"])
    c.add_status({"k": 1, "agent_id": "a", "sent": False}, "agent0")
    c.add_status({"k": 1, "agent_id": "b", "sent": True}, "agent1")  # it did hear frame 1
    c.add_packet(_packet(1, "b"), received=1.0)
    assert c.collected(f)
    links = _fuse(c, f)
    assert links["b"]["delivered"] and "absent" not in links["b"]  # in time: fused, not absent
    assert c.counters.agent_absences == {"b": 1} and c.counters.absence_reasons == {DIED: 1}
    _feed(c, 2)
    f = c.next_frame()
    c.expect(f)
    assert f.expected == {"a", "b"} and "reported on frame 1" in caplog.text


def test_a_silent_agent_misses_the_round_after_dead_after_s_and_a_stuck_one_after_round_s():
    c, clock, _ = _collector(dead_after_s=5.0, round_s=30.0, wait_s=60.0)
    _feed(c, 0)
    f = c.next_frame()
    c.expect(f)
    clock.t += 4.0
    c.heard_from("agent0")  # a's node is alive, b's says nothing
    assert not c.collected(f) and f.given_up == set()
    clock.t += 2.0  # b silent for 6 s
    assert not c.collected(f) and f.given_up == {"b"} and c.told == [(0, ["b"])]
    assert c.counters.agent_timeouts == 1
    for _ in range(6):  # a keeps its heartbeat but never reports: it misses the round at 30 s
        clock.t += 5.0
        c.heard_from("agent0")
        done = c.collected(f)
    assert done and f.given_up == {"a", "b"} and c.counters.agent_timeouts == 2
    assert c.told == [(0, ["b"]), (0, ["a"])]
    links = _fuse(c, f)
    assert links["a"]["given_up"] and links["b"]["given_up"]
    assert (links["a"]["absent"], links["b"]["absent"]) == (MISSED, SILENT)
    # one wait, not one per frame: neither is waited for again until it reports
    _feed(c, 1)
    f = c.next_frame()
    c.expect(f)
    assert f.expected == set() and c.collected(f) and c.told[-1] == (1, ["a", "b"])
    _fuse(c, f)
    assert c.counters.agent_absences == {"a": 2, "b": 2} and c.counters.missing_agent_frames == 4
    assert c.counters.absence_reasons == {SILENT: 2, MISSED: 2} and c.counters.agent_timeouts == 2


def test_only_the_straggler_misses_the_round_not_the_peer_that_waits_for_its_offer():
    c, clock, _ = _collector(round_s=3.0, uses_offers=True)
    _feed(c, 0)
    f = c.next_frame()
    c.expect(f)
    c.add_offer_note(0, "a")  # a has said whether it offers; it now waits for b's offer
    clock.t += 3.5
    c.heard_from("agent0")
    c.heard_from("agent1")
    assert not c.collected(f) and f.given_up == {"b"} and c.told == [(0, ["b"])]
    clock.t += 30.0  # a, told, sends; however long that takes, it is not given up on
    c.heard_from("agent0")
    assert not c.collected(f)
    c.add_status({"k": 0, "agent_id": "a", "sent": True}, "agent0")
    c.add_packet(_packet(0, "a"), received=1.0)
    assert c.collected(f) and f.given_up == {"b"}
    links = _fuse(c, f)
    assert links["a"]["delivered"] and links["b"]["absent"] == MISSED and "agent0" not in c.out


def test_a_node_that_died_or_stopped_mid_frame_is_given_up_on_at_once():
    for mark, why in ((FrameCollector.mark_dead, DIED), (FrameCollector.mark_stopped, STOPPED)):
        c, _, _ = _collector()
        _feed(c, 0)
        f = c.next_frame()
        c.expect(f)
        c.add_status({"k": 0, "agent_id": "a", "sent": False})
        mark(c, ["agent1"])
        assert c.collected(f) and f.given_up == {"b"} and c.told == [(0, ["b"])]
        assert _fuse(c, f)["b"]["absent"] == why and c.out["agent1"][0] == why


def test_a_report_on_a_frame_older_than_its_absence_does_not_bring_a_node_back():
    c, _, _ = _collector()
    _feed(c, 0)
    f = c.next_frame()
    c.expect(f)
    _fuse(c, f)
    _feed(c, 1)
    f = c.next_frame()
    c.mark_stopped(["agent1"])
    c.add_status({"k": 0, "agent_id": "b", "sent": True}, "agent1")  # from before it stopped
    c.expect(f)
    assert f.expected == {"a"} and c.out["agent1"] == (STOPPED, 1)
    c.add_status({"k": 1, "agent_id": "b", "sent": False, "skipped": "behind"}, "agent1")
    assert "agent1" not in c.out


def test_slots_past_the_named_nodes_get_default_names():
    c, _, _ = _collector(nodes=["x"])
    assert c.node_of(0) == "x" and c.node_of(3) == "agent3"


def test_on_the_simulated_clock_frames_go_in_order_and_late_messages_are_counted():
    c, _, late = _collector()
    for k in (1, 0):
        _feed(c, k, collab=[("a", 0)])
    assert c.next_frame().k == 0 and c.counters.frames_skipped == 0
    c.ego_id = EGO
    f = c.next_frame()
    assert f.k == 1
    c.fused(f)
    assert not c.add_packet(_packet(0, "a"), received=1.0)  # its frame is fused already
    assert c.counters.after_give_up == 1 and late == []
    other = _packet(0, "a")
    other.receiver = "someone-else"
    c.add_packet(other, received=1.0)
    assert c.counters.after_give_up == 1


def test_in_real_time_the_newest_frame_is_taken_and_skipped_frames_messages_go_late():
    c, clock, late = _collector(realtime=True)
    c.ego_id = EGO
    for k in (0, 1, 2):
        _feed(c, k, collab=[("a", 0)])
    c.add_status({"k": 0, "agent_id": "a", "sent": True})
    c.add_packet(_packet(1, "a"), received=10.1)
    c.add_packet(_packet(0, "a"), received=10.0)
    c.add_packet(_packet(0, "b", kind="lost:loss"), received=10.0)  # lost: never to the policy
    f = c.next_frame()
    assert f.k == 2 and c.counters.frames_skipped == 2
    assert [(p.frame, p.sender, r) for p, r in late] == [(0, "a", 10.0), (1, "a", 10.1)]  # frame order
    assert c.statuses == {} and c.infos == {} and c.scans == {} and c.packets == {}
    # the deadline: t + deadline_s on the wall clock
    c.expect(f)
    clock.t = f.t + 0.05
    assert not c.collected(f)
    clock.t = f.t + 0.1
    assert c.collected(f)
    c.add_status({"k": 2, "agent_id": "a", "sent": True, "done_wall": f.t + 0.06, "spent": 99})
    got = c.take_messages(f)
    assert got.sent_walls == [f.t + 0.06] and got.links["a"]["bytes"] == 0  # real time: bytes come later
    c.fused(f)
    late.clear()
    assert not c.add_packet(_packet(2, "a"), received=f.t + 0.2)
    assert [(p.frame, r) for p, r in late] == [(2, f.t + 0.2)]
    c.played(5)
    assert c.counters.frames_skipped == 4  # frames 3 and 4 never started


def test_in_real_time_messages_waiting_at_the_end_are_flushed_to_the_late_policy():
    c, _, late = _collector(realtime=True)
    c.add_packet(_packet(4, "a"), received=1.0)
    c.flush_late()
    assert late == [] and c.packets == {}  # no ego yet: nobody to hold them
    c.ego_id = EGO
    c.add_packet(_packet(6, "b"), received=2.0)
    c.add_packet(_packet(5, "a"), received=3.0)
    c.flush_late()
    assert [p.frame for p, _ in late] == [5, 6]


def test_a_skipped_joining_agent_is_counted():
    c, _, _ = _collector()
    _feed(c, 0, collab=[("a", 0)])
    f = c.next_frame()
    c.expect(f)
    c.add_status({"k": 0, "agent_id": "a", "sent": False, "skipped": True})
    assert c.collected(f)
    c.take_messages(f)
    assert c.counters.agents_skipped_joining == 1


def test_the_run_counters_keep_results_jsons_order():
    assert list(RunCounters().as_dict()) == [
        "frames_fused",
        "missing_agent_frames",
        "agent_timeouts",
        "agents_skipped_joining",
        "deadline_misses",
        "frames_skipped",
        "player_late_frames",
        "after_give_up",
        "delivered_to_ego",
        "lost_to_ego",
        "agent_absences",
        "absence_reasons",
    ]


@pytest.mark.parametrize("realtime", [False, True])
def test_the_total_comes_from_the_frames_info(realtime):
    c, _, _ = _collector(realtime=realtime)
    assert c.total is None
    _feed(c, 0)
    assert c.total == 5
