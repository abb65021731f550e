"""One collaborator's side of one frame's exchange (demand -> offers -> message), written once.

The simulated clock (:func:`v2x.pipeline.clock.exchange_frame`, every agent at once through the
channel emulator) and the agent node (:mod:`v2x.pipeline.replay.agent_node`, real packets and
waits) both drive :class:`AgentExchange`, so both take the same decisions at the same simulated
moments from the same inputs. It does no I/O and has no clock of its own: the driver tells it what
arrived and when, and asks what to do next. Phases (:class:`Phase`), on the frame's clock ``t``::

    PERCEIVE  encode the scan (AgentStage.perceive)
    DEMAND    demand methods: the ego's demand, if delivered within coord_wait_s of t, is acted
              on (acted_s = its delivery); a later one is held for a later frame, and the newest
              held one that has arrived by t is taken first (AgentStage.refresh_demand)
    OFFER     offer methods: the offer, broadcast at acted_s
    OFFERS    the other collaborators' offers delivered within coord_wait_s of acted_s are heard;
              a peer the driver says missed the round (its node dead, stopped or silent) is not
              waited for (peer_missed), so one absent agent does not hold up the others
    SEND      the message, sized to what is left of the link's per-frame allowance, sent at
              max(acted_s, the heard offers' deliveries)
    DONE

Bytes spent on the link count the demand received (the ego's note of its size where one came),
the offer and the message, as :func:`v2x.messages.codec.exchange` counts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from numpy.typing import ArrayLike

from v2x.pipeline.timing import within

if TYPE_CHECKING:
    from v2x.core.frame import AgentScan
    from v2x.perception.cooperative import AgentPerception
    from v2x.pipeline.stages import AgentStage

__all__ = ["AgentExchange", "ExchangeError", "Outgoing", "Phase"]


class Phase(Enum):
    """Where one agent's frame stands."""

    PERCEIVE = "perceive"
    DEMAND = "demand"
    OFFER = "offer"
    OFFERS = "offers"
    SEND = "send"
    DONE = "done"


@dataclass(frozen=True)
class Outgoing:
    """The frame's message to put on the link to the ego, and its simulated send time."""

    data: bytes
    send_s: float


class ExchangeError(RuntimeError):
    """A step asked of an exchange out of its phase (a driver's bug)."""


class AgentExchange:
    """One collaborator's frame: wraps its :class:`~v2x.pipeline.stages.AgentStage` (which keeps
    what outlives the frame: the demand followed, held late demands, counts) and the frame's
    timing. ``peers``: the frame's collaborators (the agent itself is left out), whose offers it
    hears in this order."""

    def __init__(self, stage: AgentStage, scan: AgentScan, t_s: float, peers: Iterable[str] = ()) -> None:
        self.stage = stage
        self.scan = scan
        self.t_s = t_s
        self.peers = tuple(p for p in peers if p != stage.agent_id)
        spec = stage.cfg.spec
        self._uses_demand, self._uses_offers = spec.uses_demand, spec.uses_offers
        self.coord_wait_s = stage.cfg.coord_wait_s
        self.phase = Phase.PERCEIVE
        #: the agent's own perception of its scan (None where its method sends none)
        self.own: AgentPerception | None = None
        #: when the agent acts on the frame: ``t``, or the delivery of this frame's demand when it
        #: came within ``coord_wait_s``. Its offer goes out then, the others' offers are heard
        #: within ``coord_wait_s`` of it, and its message goes no earlier.
        self.acted_s = t_s
        #: bytes on the agent's link this frame: the demand it received, its offer, its message
        self.spent = 0
        #: the agent's own offer (None: no offer this frame)
        self.offer: bytes | None = None
        #: (delivered_s, offer) heard from the others in time, in ``peers`` order
        self.heard: list[tuple[float, bytes]] = []
        self._demand_note: int | None = None
        self._demand_known = False  # the demand's fate is known: delivered or lost
        self._demand: tuple[float, bytes] | None = None
        self._offer_notes: dict[str, int] = {}
        self._offers: dict[str, tuple[float, bytes] | None] = {}  # None: lost
        #: peers not waited for this frame: they missed the round (see peer_missed)
        self.missed: set[str] = set()

    # -- what the driver tells it -----------------------------------------------------------------
    def demand_noted(self, nbytes: int) -> None:
        """The ego's word of the size of the demand it sent this agent (what the link carried)."""
        self._demand_note = int(nbytes)

    def demand_delivered(self, data: bytes, delivered_s: float) -> None:
        self._demand_known, self._demand = True, (delivered_s, data)

    def demand_lost(self) -> None:
        self._demand_known, self._demand = True, None

    def offer_noted(self, sender: str, nbytes: int) -> None:
        """A peer's word of the size of its offer (0: it offers nothing, so none is waited for)."""
        self._offer_notes[sender] = int(nbytes)

    def offer_delivered(self, sender: str, data: bytes, delivered_s: float) -> None:
        if sender not in self.missed:
            self._offers[sender] = (delivered_s, data)

    def offer_lost(self, sender: str) -> None:
        if sender not in self.missed:
            self._offers[sender] = None

    def peer_missed(self, sender: str) -> None:
        """A peer missed this frame's round (the ego goes on without it): stop waiting for its
        offer. An offer of it told before is still heard (if in time); one told after is not."""
        if sender in self.peers:
            self.missed.add(sender)

    # -- what it answers --------------------------------------------------------------------------
    @property
    def window_end_s(self) -> float | None:
        """When the current phase's wait ends at the latest: ``t + coord_wait_s`` for the demand,
        ``acted_s + coord_wait_s`` for the offers; None in the phases that do not wait."""
        if self.phase is Phase.DEMAND:
            return self.t_s + self.coord_wait_s
        if self.phase is Phase.OFFERS:
            return self.acted_s + self.coord_wait_s
        return None

    def pending_offers(self) -> list[str]:
        """Peers not yet heard from: no note, or a note of an offer whose packet (or the word that
        it was lost) has not come; peers that missed the round are not waited for."""
        return [
            s
            for s in self.peers
            if s not in self.missed
            and ((size := self._offer_notes.get(s)) is None or (size > 0 and s not in self._offers))
        ]

    def waits(self, now_s: float | None = None) -> bool:
        """Whether the current phase still waits for word. On the simulated clock (``now_s``
        None) until everything is in: the demand's fate and the ego's note of its size (the bytes
        are booked from it), or every peer's offer note and announced offer. In real time
        (``now_s``: the wall clock) for the demand's packet or the offers only, and only until
        :attr:`window_end_s`. A driver that gives up on a live peer stops asking."""
        if self.phase is Phase.DEMAND:
            missing = not self._demand_known or (now_s is None and self._demand_note is None)
        elif self.phase is Phase.OFFERS:
            missing = bool(self.pending_offers())
        else:
            return False
        if now_s is None:
            return missing
        end = self.window_end_s
        return missing and end is not None and now_s < end

    # -- the steps --------------------------------------------------------------------------------
    def _expect(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise ExchangeError(
                f"agent {self.stage.agent_id}: {phase.value} asked in phase {self.phase.value}"
            )

    def _after_demand(self) -> Phase:
        return Phase.OFFER if self._uses_offers else Phase.SEND

    def perceive(self, world_from_ego: ArrayLike | None = None) -> None:
        """Encode the scan, in the ego's frame where its pose ``world_from_ego`` is known."""
        self._expect(Phase.PERCEIVE)
        self.own = self.stage.perceive(self.scan, world_from_ego)
        self.phase = Phase.DEMAND if self._uses_demand else self._after_demand()

    def act_on_demand(self) -> None:
        """Done waiting for the demand: book its bytes, act on it if it came in time, else hold it."""
        self._expect(Phase.DEMAND)
        self.stage.refresh_demand(self.t_s)  # the newest late demand of an earlier frame that has arrived
        if self._demand_note is not None:
            self.spent += self._demand_note
        elif self._demand is not None:
            self.spent += len(self._demand[1])
        if self._demand is not None:
            delivered_s, data = self._demand
            if within(delivered_s, self.t_s, self.coord_wait_s):
                self.stage.take_demand(data)
                self.acted_s = delivered_s
            else:
                self.stage.hold_demand(data, delivered_s)
        self.phase = self._after_demand()

    def make_offer(self) -> bytes | None:
        """The offer to broadcast to the peers at :attr:`acted_s` (None: nothing to offer)."""
        self._expect(Phase.OFFER)
        self.offer = self.stage.offer(self.own)
        if self.offer is not None:
            self.spent += len(self.offer)
        self.phase = Phase.OFFERS
        return self.offer

    def hear_offers(self) -> None:
        """Done waiting for offers: keep those delivered within ``coord_wait_s`` of :attr:`acted_s`."""
        self._expect(Phase.OFFERS)
        for sender in self.peers:
            got = self._offers.get(sender)
            if got is not None and within(got[0], self.acted_s, self.coord_wait_s):
                self.heard.append(got)
        self.phase = Phase.SEND

    def send(self) -> Outgoing | None:
        """The frame's message and its send time (None: nothing to send); the frame is done."""
        self._expect(Phase.SEND)
        got = sorted(self.heard, key=lambda x: x[0])
        assigned = self.stage.assigned(self.own, self.offer, [b for _, b in got])
        send_s = max([self.acted_s, *[ts for ts, _ in got]])
        data = self.stage.message(self.own, self.scan, self.spent, assigned)
        self.phase = Phase.DONE
        if data is None:
            return None
        self.spent += len(data)
        return Outgoing(data, send_s)
