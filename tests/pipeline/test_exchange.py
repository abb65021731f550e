"""The per-frame exchange of one agent (``v2x.pipeline.exchange``) and the one tolerance
(``v2x.pipeline.timing``), with a fake stage and fake deliveries: no models, no sockets."""

from __future__ import annotations

import pytest

from v2x.pipeline.config import RunConfig
from v2x.pipeline.exchange import AgentExchange, ExchangeError, Outgoing, Phase
from v2x.pipeline.timing import TOLERANCE_S, within

T = 0.3  # the frame's start on the simulated clock (frame 3 at 10 Hz)
WAIT = 0.05  # coord_wait_s


class FakeStage:
    """What the exchange asks of an :class:`~v2x.pipeline.stages.AgentStage`, recorded."""

    def __init__(self, method: str = "codefilling", agent_id: str = "a", message: bytes | None = b"m" * 100):
        self.agent_id = agent_id
        self.cfg = RunConfig(method=method, budget_bps=None, tracker="none", coord_wait_s=WAIT)
        self.demand: bytes | None = None
        self.held: list[tuple[bytes, float]] = []
        self.calls: list[tuple] = []
        self._message = message

    def perceive(self, scan, world_from_ego=None):
        self.calls.append(("perceive", scan, world_from_ego))
        return "own perception"

    def refresh_demand(self, now_s: float) -> None:
        self.calls.append(("refresh", now_s))

    def take_demand(self, data: bytes) -> None:
        self.calls.append(("take", data))
        self.demand = data

    def hold_demand(self, data: bytes, delivered_s: float) -> None:
        self.held.append((data, delivered_s))

    def offer(self, own) -> bytes | None:
        return None if self.demand is None else b"o" * 30

    def assigned(self, own, own_offer, offers):
        self.calls.append(("assigned", own, own_offer, list(offers)))
        return "blocks"

    def message(self, own, scan, spent, assigned):
        self.calls.append(("message", own, scan, spent, assigned))
        return self._message


def _exchange(method: str = "codefilling", peers=("a", "b", "c"), **stage) -> tuple[AgentExchange, FakeStage]:
    fake = FakeStage(method, **stage)
    ex = AgentExchange(fake, "scan", T, peers)  # type: ignore[arg-type]
    ex.perceive("pose of the ego")
    return ex, fake


def _acted(ex: AgentExchange, delivered_s: float, note: int | None = 40) -> None:
    if note is not None:
        ex.demand_noted(note)
    ex.demand_delivered(b"d" * 40, delivered_s)
    ex.act_on_demand()


# -- the tolerance ----------------------------------------------------------------------------------
def test_within_counts_the_windows_end_and_a_nanosecond_more_as_in_time():
    end = T + WAIT
    assert within(end, T, WAIT) and within(end + 0.5 * TOLERANCE_S, T, WAIT)
    assert not within(end + 2 * TOLERANCE_S, T, WAIT)
    assert within(0.2, 0.2) and not within(0.2 + 2e-9, 0.2)  # no window: by that moment
    # a delivery time that went through integer nanoseconds (the replay) still counts
    assert within(round(end * 1e9) / 1e9, T, WAIT)


# -- perceive and the phases a method goes through -----------------------------------------------------
@pytest.mark.parametrize(
    ("method", "phase"),
    [("none", Phase.SEND), ("raw", Phase.SEND), ("where2comm", Phase.DEMAND), ("codefilling", Phase.DEMAND)],
)
def test_after_perceiving_a_method_waits_for_a_demand_only_if_it_uses_one(method, phase):
    ex, fake = _exchange(method)
    assert fake.calls == [("perceive", "scan", "pose of the ego")]
    assert ex.own == "own perception" and ex.phase is phase and ex.acted_s == T and ex.spent == 0


def test_the_agent_itself_is_not_its_own_peer():
    ex, _ = _exchange(peers=("b", "a", "c"))
    assert ex.peers == ("b", "c")


def test_a_step_out_of_its_phase_is_refused():
    ex, _ = _exchange("where2comm")
    with pytest.raises(ExchangeError):
        ex.send()
    with pytest.raises(ExchangeError):
        ex.perceive()
    with pytest.raises(ExchangeError):
        ex.make_offer()


# -- the demand ---------------------------------------------------------------------------------------
def test_a_demand_within_the_window_is_acted_on_at_its_delivery():
    ex, fake = _exchange("codefilling")
    _acted(ex, T + 0.03)
    # the newest held demand of an earlier frame is taken first, then this frame's replaces it
    assert fake.calls[1:] == [("refresh", T), ("take", b"d" * 40)]
    assert ex.acted_s == T + 0.03 and ex.spent == 40 and ex.phase is Phase.OFFER and fake.held == []


def test_a_demand_delivered_at_the_windows_very_end_is_still_in_time():
    ex, fake = _exchange("where2comm")
    _acted(ex, T + WAIT)
    assert fake.demand == b"d" * 40 and ex.acted_s == T + WAIT and ex.phase is Phase.SEND


def test_a_demand_after_the_window_is_held_for_a_later_frame():
    ex, fake = _exchange("where2comm")
    _acted(ex, T + 0.07)
    assert fake.demand is None and fake.held == [(b"d" * 40, T + 0.07)]
    assert ex.acted_s == T and ex.spent == 40  # its bytes were on the link all the same


def test_a_lost_demand_costs_the_bytes_the_ego_sent_and_the_agent_acts_at_t():
    ex, fake = _exchange("where2comm")
    ex.demand_noted(40)
    ex.demand_lost()
    ex.act_on_demand()
    assert fake.demand is None and fake.held == [] and ex.acted_s == T and ex.spent == 40


def test_without_the_egos_note_the_delivered_demand_is_counted_and_a_lost_one_is_not():
    ex, _ = _exchange("where2comm")
    _acted(ex, T + 0.01, note=None)
    assert ex.spent == 40
    ex, _ = _exchange("where2comm")
    ex.demand_lost()
    ex.act_on_demand()
    assert ex.spent == 0


def test_the_ego_note_is_what_is_booked_where_both_came():
    ex, _ = _exchange("where2comm")
    _acted(ex, T + 0.01, note=52)  # e.g. the link carried more than the payload
    assert ex.spent == 52


def test_on_the_simulated_clock_the_demand_is_waited_for_with_its_note():
    ex, _ = _exchange("where2comm")
    assert ex.waits() and ex.window_end_s == T + WAIT
    ex.demand_delivered(b"d" * 40, T + 0.2)
    assert ex.waits()  # the bytes are booked from the ego's note: wait for it too
    ex.demand_noted(40)
    assert not ex.waits()


def test_in_real_time_the_demand_is_waited_for_until_the_windows_end_only():
    ex, _ = _exchange("where2comm")
    assert ex.waits(now_s=T + 0.01) and ex.waits(now_s=T + WAIT - 1e-6)
    assert not ex.waits(now_s=T + WAIT)
    ex.demand_lost()  # the channel's word: nothing more to wait for, note or not
    assert not ex.waits(now_s=T + 0.01)


# -- offers -------------------------------------------------------------------------------------------
def _offering(acted_s: float = T + 0.01) -> tuple[AgentExchange, FakeStage]:
    ex, fake = _exchange("codefilling")
    _acted(ex, acted_s)
    return ex, fake


def test_the_offer_goes_out_at_the_act_time_and_its_bytes_count():
    ex, _ = _offering()
    offer = ex.make_offer()
    assert offer == b"o" * 30 and ex.offer == offer and ex.spent == 40 + 30
    assert ex.phase is Phase.OFFERS and ex.window_end_s == ex.acted_s + WAIT


def test_no_demand_no_offer_and_no_offer_bytes():
    ex, _ = _exchange("codefilling")
    ex.demand_noted(40)
    ex.demand_lost()
    ex.act_on_demand()
    assert ex.make_offer() is None and ex.spent == 40 and ex.phase is Phase.OFFERS


def test_offers_are_waited_for_until_every_peer_said_whether_it_offers_and_its_offer_came():
    ex, _ = _offering()
    ex.make_offer()
    assert ex.pending_offers() == ["b", "c"] and ex.waits()
    ex.offer_noted("b", 0)  # b offers nothing: no packet to wait for
    assert ex.pending_offers() == ["c"]
    ex.offer_noted("c", 30)
    assert ex.pending_offers() == ["c"] and ex.waits()
    ex.offer_lost("c")  # the channel's word that it is lost
    assert ex.pending_offers() == [] and not ex.waits()
    assert ex.waits(now_s=ex.acted_s) is False


def test_in_real_time_offers_are_waited_for_until_the_window_after_the_act_time():
    ex, _ = _offering()
    ex.make_offer()
    assert ex.waits(now_s=ex.acted_s + WAIT - 1e-6) and not ex.waits(now_s=ex.acted_s + WAIT)


def test_offers_in_time_are_heard_late_and_lost_ones_are_not():
    ex, _ = _offering(T + 0.01)
    ex.make_offer()
    ex.offer_delivered("c", b"from c", ex.acted_s + 0.02)
    ex.offer_delivered("b", b"from b", ex.acted_s + 0.06)  # after the window
    ex.hear_offers()
    assert ex.heard == [(ex.acted_s + 0.02, b"from c")] and ex.phase is Phase.SEND
    ex, _ = _offering()
    ex.make_offer()
    ex.offer_lost("b")
    ex.offer_delivered("c", b"from c", ex.acted_s + WAIT)
    ex.hear_offers()
    assert ex.heard == [(ex.acted_s + WAIT, b"from c")]


def test_a_peer_that_missed_the_round_is_not_waited_for_and_its_later_offer_not_heard():
    ex, _ = _offering()
    ex.make_offer()
    ex.offer_noted("b", 30)
    ex.offer_delivered("b", b"from b", ex.acted_s + 0.01)  # came before the word: heard
    ex.peer_missed("b")
    assert ex.pending_offers() == ["c"] and ex.waits()
    ex.peer_missed("c")  # e.g. its node died: nothing more to wait for
    ex.peer_missed("z")  # not a peer this frame: ignored
    assert ex.pending_offers() == [] and not ex.waits() and ex.missed == {"b", "c"}
    ex.offer_delivered("c", b"from c", ex.acted_s + 0.01)  # after the word: not heard
    ex.hear_offers()
    assert ex.heard == [(ex.acted_s + 0.01, b"from b")]


def test_offers_are_heard_in_the_peers_order_whatever_order_they_were_told_in():
    ex, _ = _offering()
    ex.make_offer()
    ex.offer_delivered("c", b"c", ex.acted_s + 0.01)
    ex.offer_delivered("b", b"b", ex.acted_s + 0.02)
    ex.hear_offers()
    assert [data for _, data in ex.heard] == [b"b", b"c"]


# -- the message --------------------------------------------------------------------------------------
def test_the_message_goes_at_the_latest_of_the_act_time_and_the_heard_offers():
    ex, fake = _offering(T + 0.01)
    ex.make_offer()
    ex.offer_delivered("b", b"b", ex.acted_s + 0.04)
    ex.offer_delivered("c", b"c", ex.acted_s + 0.02)
    ex.hear_offers()
    out = ex.send()
    assert out == Outgoing(b"m" * 100, ex.acted_s + 0.04) and ex.phase is Phase.DONE
    # blocks are assigned from the own offer and the heard ones in order of arrival
    assert ("assigned", "own perception", b"o" * 30, [b"c", b"b"]) in fake.calls
    # the message is sized to what the demand and the offer left; then its bytes count too
    assert fake.calls[-1] == ("message", "own perception", "scan", 40 + 30, "blocks")
    assert ex.spent == 40 + 30 + 100


def test_without_offers_the_message_goes_at_the_act_time():
    ex, _ = _exchange("where2comm")
    _acted(ex, T + 0.02)
    out = ex.send()
    assert out is not None and out.send_s == T + 0.02


def test_without_a_demand_phase_the_message_goes_at_t():
    ex, fake = _exchange("raw", message=b"r" * 10)
    out = ex.send()
    assert out == Outgoing(b"r" * 10, T) and ex.spent == 10
    assert ("assigned", "own perception", None, []) in fake.calls


def test_nothing_to_send_is_no_message_and_no_bytes():
    ex, _ = _exchange("where2comm", message=None)
    _acted(ex, T + 0.02)
    assert ex.send() is None and ex.spent == 40 and ex.phase is Phase.DONE
