"""Turning an agent's BEV map into wire-format messages under a byte budget, and back.

One code path serves every method of the AP-versus-bytes experiment; the codec knows a method
only by its :class:`~v2x.messages.scheme.FeatureScheme` (encoding and selection of cells):

======================  ==========================================================  ==========
method                  what a collaborator sends                                   budget
======================  ==========================================================  ==========
``raw`` / ``raw-fp16``  every occupied cell, float features                         optional
``where2comm``          occupied cells with supply >= threshold the ego demands,    threshold
                        fp32 features
``codebook``            occupied cells the ego demands, most demand x supply first,  bytes
                        codebook indices
``codefilling``         occupied cells of the blocks information filling assigns,   bytes
                        then the fill (``filling.py``), codebook indices
======================  ==========================================================  ==========

Byte counts are ``len()`` of the real messages, headers included; coordination messages (the
ego's demand on every link, each collaborator's offer on its own link) are counted too.
Budgets are exact: :meth:`MessageCodec.feature_message` sizes candidate cell sets with
:func:`v2x.comm.wire.encoded_size` and encodes once, so ``len(message) <= budget`` always.

Agent side (per frame)::

    demand = codec.read_demand(demand_bytes)                      # from the ego
    offer_bytes = codec.offer_message(me, demand)                 # codefilling: broadcast (None: silent)
    plan = codec.assign([codec.read_offer(b) for b in offers], demand)   # same answer everywhere
    filling = FeatureScheme(FeatureEncoding.CODES, Selection.FILLING)   # codefilling's scheme
    out = codec.feature_message(filling, me, budget, demand, plan.get(codec.sender_of(me)))

Ego side::

    demand_bytes = codec.demand_message(ego)
    got = codec.read_sparse(out.data)                             # cells, decoded values, pose
    ego_cells, rows = warp_cells(got.cells, relative_pose(ego.world_from_bev, got.world_from_bev), grid)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from v2x.comm.wire import (
    CodebookMismatchError,
    GridMismatchError,
    Header,
    MalformedError,
    MessageType,
    UnexpectedTypeError,
    decode,
    encode,
    encoded_size,
)
from v2x.core.boxes import Boxes
from v2x.core.geometry import inverse, pose_from_xyz_yaw, yaw_of
from v2x.core.grid import BEVGrid
from v2x.messages.codebook import Codebook
from v2x.messages.filling import Assignment, fill_ranking, fill_residuals
from v2x.messages.scheme import FeatureEncoding, FeatureScheme, Selection
from v2x.messages.selection import (
    SelectionConfig,
    assign_blocks,
    block_max,
    block_shape,
    blocks_to_cells,
    cells_outside_boxes,
    cells_to_ego_blocks,
    demand_levels,
    offer_blocks,
    upsample_blocks,
    where2comm_cells,
)
from v2x.perception.cooperative import AgentPerception, SharedBoxes, SharedFeatures

__all__ = [
    "Demand",
    "Encoded",
    "MessageCodec",
    "Offer",
    "Outgoing",
    "Received",
    "exchange",
    "hybrid_boxes",
    "sender_code",
    "warp_cells",
]


def sender_code(agent_id: str) -> int:
    """The int32 a message carries for an agent id: the number itself when the id is one."""
    try:
        v = int(agent_id)
        if -(2**31) <= v < 2**31:
            return v
    except ValueError:
        pass
    return zlib.crc32(agent_id.encode()) & 0x7FFFFFFF


def _pose_tuple(world_from_bev: np.ndarray) -> tuple[float, float, float, float]:
    t = world_from_bev[:3, 3]
    return float(t[0]), float(t[1]), float(t[2]), float(yaw_of(world_from_bev))


def _pose_of(h: Header) -> np.ndarray:
    x, y, z, yaw = h.pose
    return pose_from_xyz_yaw(x, y, z, yaw)


@dataclass
class Demand:
    """The ego's request as a collaborator reads it."""

    levels: np.ndarray  # (Hb * Wb,) uint8 0..3 per ego block
    world_from_ego: np.ndarray
    sender: int
    stamp_ns: int


@dataclass
class Offer:
    """One collaborator's offer: blocks of its own grid with supply levels 1..3."""

    sender: int
    blocks: np.ndarray
    levels: np.ndarray
    world_from_bev: np.ndarray


@dataclass
class Encoded:
    """A feature message and what went into it."""

    data: bytes | None  # None: not even an empty message fits the budget
    cells: np.ndarray  # flat cells sent (in the sender's grid)
    boxes: int = 0

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)


@dataclass
class Received:
    """A feature message as the ego decoded it: sparse, in the sender's BEV frame."""

    sender: int
    world_from_bev: np.ndarray
    stamp_ns: int
    cells: np.ndarray  # (n,) flat cell indices
    values: torch.Tensor  # (n, C) features (decoded codes or raw floats)
    boxes: Boxes | None = None


@dataclass
class Outgoing:
    """What one collaborator put on its link this frame (in-process accounting)."""

    messages: list[bytes] = field(default_factory=list)
    cells_sent: int = 0

    @property
    def bytes(self) -> int:
        return sum(len(m) for m in self.messages)


def warp_cells(
    cells: np.ndarray, ego_from_sender: np.ndarray, grid: BEVGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse nearest-cell warp of a sender's cells into the ego grid.

    For every ego cell, the sender cell under its centre (inverse mapping, so a rotation leaves
    no holes); returns the ego cells that land on a sent cell and, for each, the row of
    ``cells`` it takes its value from.
    """
    h, w = grid.shape
    lookup = np.full(h * w, -1, dtype=np.int64)
    lookup[np.asarray(cells, dtype=np.int64)] = np.arange(len(cells))
    centres = grid.cell_centers().reshape(-1, 2)
    T = inverse(ego_from_sender)  # sender_from_ego
    xy = centres @ T[:2, :2].T + T[:2, 3]
    row, col, ok = grid.cell_of(xy)
    src = np.full(h * w, -1, dtype=np.int64)
    src[ok] = lookup[row[ok] * w + col[ok]]
    ego_cells = np.flatnonzero(src >= 0)
    return ego_cells, src[ego_cells]


class MessageCodec:
    """Builds and reads the messages of one grid (and optionally one codebook)."""

    def __init__(
        self,
        grid: BEVGrid,
        codebook: Codebook | None = None,
        selection: SelectionConfig | None = None,
        nonnegative: bool = True,
        codebook_id: int | None = None,
    ) -> None:
        self.grid = grid
        self.codebook = codebook
        #: the identity code messages carry and receivers check: the codebook's own, or that of
        #: the message weights it belongs to (v2x.messages.message_weights), so that messages of
        #: other message weights with the same codewords are refused too
        self._codebook_id = codebook_id
        self.sel = selection or SelectionConfig()
        self.grid_id = grid.fingerprint()
        self.shape = grid.shape
        self.num_cells = grid.num_cells
        self.num_blocks = int(np.prod(block_shape(grid, self.sel.block)))
        #: decoded codes are clamped at 0: the encoder's features are post-ReLU
        self.nonnegative = nonnegative
        self._seq = 0

    def codebook_id(self) -> int:
        """The identity code messages carry (see ``codebook_id`` of the constructor)."""
        return self._codebook_id if self._codebook_id is not None else self.codebook.identity()

    @staticmethod
    def sender_of(agent: AgentPerception) -> int:
        return sender_code(agent.agent_id)

    def _header(
        self, kind: MessageType, agent: AgentPerception, unit: int = 0, codebook_id: int = 0
    ) -> Header:
        self._seq += 1
        return Header(
            kind,
            sender_code(agent.agent_id),
            self._seq,
            agent.timestamp_ns,
            _pose_tuple(agent.world_from_bev),
            self.grid_id,
            codebook_id,
            unit=unit,
        )

    # -- coordination -------------------------------------------------------------------------------
    def demand_message(self, ego: AgentPerception) -> bytes:
        """The ego's request: the smaller of its undemanded blocks (complement) or levels per block."""
        levels = demand_levels(ego.confidence, self.sel)
        h = self._header(MessageType.DEMAND, ego, unit=self.sel.block)
        demanded = np.flatnonzero(levels)
        candidates = []
        if np.all(levels[demanded] == 3):
            candidates.append(encode(h, self.shape, np.flatnonzero(levels == 0), complement=True))
        candidates.append(encode(h, self.shape, demanded, levels=levels[demanded]))
        return min(candidates, key=len)

    def read_demand(self, data: bytes) -> Demand:
        msg = decode(data, self.shape, self.grid_id)
        _expect(msg.header, MessageType.DEMAND, self.sel.block)
        levels = np.zeros(self.num_blocks, dtype=np.uint8)
        if msg.header.complement:
            levels[:] = 3
            levels[msg.cells] = 0
        elif msg.levels is not None:
            levels[msg.cells] = msg.levels
        else:
            levels[msg.cells] = 3
        return Demand(levels, _pose_of(msg.header), msg.header.sender, msg.header.stamp_ns)

    def offer_message(self, agent: AgentPerception, demand: Demand) -> bytes | None:
        """The agent's offer, or None when it has nothing to offer: it then stays silent (every
        agent computes the same plan from the offers it did receive)."""
        blocks, levels = offer_blocks(
            agent.confidence, agent.world_from_bev, demand.world_from_ego, demand.levels, self.grid, self.sel
        )
        if len(blocks) == 0:
            return None
        h = self._header(MessageType.OFFER, agent, unit=self.sel.block)
        return encode(h, self.shape, blocks, levels=levels)

    def read_offer(self, data: bytes) -> Offer:
        msg = decode(data, self.shape, self.grid_id)
        _expect(msg.header, MessageType.OFFER, self.sel.block)
        return Offer(msg.header.sender, msg.cells, msg.levels, _pose_of(msg.header))

    def assign(
        self, offers: list[Offer], demand: Demand, silent: tuple[int, ...] = ()
    ) -> dict[int, Assignment]:
        """Information filling from the offers every collaborator received: sender code -> blocks,
        each with the residual its fill is discounted by (``filling.fill_residuals``).

        ``silent``: senders that offered nothing but will fill what is left of their budget (they
        get no blocks, and every offer counts as ahead of them).
        """
        given = {str(o.sender): (o.blocks, o.levels) for o in offers}
        poses = {str(o.sender): o.world_from_bev for o in offers}
        for s in silent:
            given.setdefault(str(s), (np.zeros(0, np.int64), np.zeros(0, np.uint8)))
            poses.setdefault(str(s), demand.world_from_ego)
        plan = assign_blocks(given, poses, demand.world_from_ego, self.grid, self.sel, demand.levels)
        residual = fill_residuals(given, poses, demand.world_from_ego, self.grid, self.sel)
        return {int(k): Assignment(v, residual[k]) for k, v in plan.items()}

    # -- what to send ---------------------------------------------------------------------------------
    def cell_demand(self, agent: AgentPerception, demand: Demand | None) -> np.ndarray:
        """(H * W,) demand level 0..3 of the ego block under each of the agent's cells (3 without a demand)."""
        return self._cell_demand(agent, demand)[0]

    def _cell_demand(self, agent: AgentPerception, demand: Demand | None) -> tuple[np.ndarray, np.ndarray]:
        """``cell_demand`` and the ego block under each cell (0 outside the ego grid)."""
        if demand is None:
            return np.full(self.num_cells, 3, dtype=np.uint8), np.zeros(self.num_cells, np.int64)
        ego_block, inside = cells_to_ego_blocks(
            agent.world_from_bev, demand.world_from_ego, self.grid, self.sel.block
        )
        return np.where(inside, demand.levels[ego_block], 0).astype(np.uint8), ego_block

    def candidate_cells(
        self,
        scheme: FeatureScheme,
        agent: AgentPerception,
        demand: Demand | None = None,
        assigned_blocks: np.ndarray | None = None,
        threshold: float = 0.3,
    ) -> np.ndarray:
        """Cells ``scheme`` would send, most demand filled per byte first.

        Every cell of one message costs the same payload bytes, so the order is by value: the
        ego's demand there times the agent's supply (its block maximum, then the cell's own
        confidence). The index coding's share is settled exactly when the budget is applied.
        """
        selection = scheme.selection
        if not isinstance(selection, Selection):
            raise ValueError(f"unknown selection {selection!r}: a scheme selects by a Selection")
        occ = agent.occupied.numpy().ravel()
        conf = np.asarray(agent.confidence, dtype=np.float32).ravel()
        if selection in (Selection.ALL, Selection.UNSURE):  # UNSURE: fit_to_budget drops box cells
            cells = np.flatnonzero(occ)
            return cells[np.argsort(-conf[cells], kind="stable")]
        wanted, ego_block = self._cell_demand(agent, demand)
        if selection is Selection.THRESHOLD:
            cells = where2comm_cells(agent.confidence, occ, threshold)
        elif selection is Selection.CONFIDENT:
            cells = np.flatnonzero(occ)
        else:  # Selection.FILLING
            blocks = assigned_blocks if assigned_blocks is not None else np.zeros(0, np.int64)
            cells = blocks_to_cells(blocks, self.grid, self.sel.block)
            cells = cells[occ[cells]]
        cells = cells[wanted[cells] > 0]
        supply = upsample_blocks(block_max(agent.confidence, self.sel.block), self.grid, self.sel.block)
        value = wanted[cells] * supply[cells]
        ranked = cells[np.lexsort((cells, -conf[cells], -value))]
        if selection is Selection.FILLING and demand is not None:
            # the budget the assigned blocks leave goes to the next most valuable cells (filling.py)
            rest = occ.copy()
            rest[ranked] = False
            rest = np.flatnonzero(rest)
            residual = getattr(assigned_blocks, "residual", None)
            fill = fill_ranking(rest, ego_block, wanted, supply, conf, residual, self.sel)
            ranked = np.concatenate([ranked, fill])
        return ranked

    def _kind(self, encoding: FeatureEncoding) -> MessageType:
        if encoding.needs_codebook:
            if self.codebook is None:
                raise ValueError(f"{encoding.value} encoding needs a codebook")
            return MessageType.CODEBOOK
        return MessageType.RAW_FP16 if encoding is FeatureEncoding.FP16 else MessageType.RAW_FP32

    def _size(self, kind: MessageType, cells: np.ndarray, channels: int, n_boxes: int | None) -> int:
        cb = self.codebook
        return encoded_size(
            kind,
            self.shape,
            np.sort(cells),
            unit=cb.cfg.bits if kind == MessageType.CODEBOOK else 0,
            per_cell=cb.cfg.indices_per_cell if kind == MessageType.CODEBOOK else 0,
            channels=channels,
            detections=n_boxes,
        )

    def _payload_bits(self, kind: MessageType, channels: int) -> int:
        """Bits one cell adds to the payload, index coding aside."""
        if kind == MessageType.CODEBOOK:
            return self.codebook.cfg.bits_per_cell
        return channels * (32 if kind == MessageType.RAW_FP32 else 16)

    def feature_message(
        self,
        scheme: FeatureScheme,
        agent: AgentPerception,
        budget: int | None = None,
        demand: Demand | None = None,
        assigned_blocks: np.ndarray | None = None,
        threshold: float = 0.3,
        boxes: Boxes | None = None,
    ) -> Encoded:
        """The agent's feature message by ``scheme``, at most ``budget`` bytes long.

        With ``boxes`` (the hybrid), the most confident boxes go first (a box is 16 bytes and
        worth more than the cells under it when bytes are tight), then the most valuable cells.
        """
        ranked = self.candidate_cells(scheme, agent, demand, assigned_blocks, threshold)
        return self.fit_to_budget(scheme, agent, ranked, budget, boxes)

    def fit_to_budget(
        self,
        scheme: FeatureScheme,
        agent: AgentPerception,
        ranked_cells: np.ndarray,
        budget: int | None,
        boxes: Boxes | None = None,
    ) -> Encoded:
        """The message with the longest prefix of ``ranked_cells`` whose exact size fits ``budget``
        (in ``scheme``'s encoding)."""
        kind = self._kind(scheme.encoding)
        channels = agent.features.shape[0]
        if boxes is not None and len(boxes) and boxes.scores is not None:
            boxes = boxes[np.argsort(-boxes.scores, kind="stable")]
        n_boxes = len(boxes) if boxes is not None and len(boxes) else 0
        n = len(ranked_cells)
        if budget is not None:
            empty = np.zeros(0, np.int64)
            if self._size(kind, empty, channels, None) > budget:
                return Encoded(None, empty)
            if n_boxes:  # as many boxes as fit alone
                per_box = self._size(kind, empty, channels, 1) - self._size(kind, empty, channels, 0)
                room = budget - self._size(kind, empty, channels, 0)
                n_boxes = int(np.clip(room // per_box, 0, n_boxes))
            det_arg = n_boxes if n_boxes else None
            if n_boxes and scheme.selection is Selection.UNSURE:  # codes only where no box is sent
                ranked_cells = cells_outside_boxes(ranked_cells, boxes.xyzlwhy[:n_boxes], self.grid)
                n = len(ranked_cells)
            # every cell costs at least its payload bits: an upper bound that keeps the search short
            base = self._size(kind, empty, channels, det_arg)
            lo, hi = 0, min(n, (budget - base) * 8 // self._payload_bits(kind, channels))
            # largest prefix k with size(k) <= budget (bisection; sizes are near-monotone)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._size(kind, ranked_cells[:mid], channels, det_arg) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            n = lo
        if budget is None and n_boxes and scheme.selection is Selection.UNSURE:
            ranked_cells = cells_outside_boxes(ranked_cells, boxes.xyzlwhy, self.grid)
            n = len(ranked_cells)
        cells = ranked_cells[:n]
        data = self._encode_features(kind, agent, cells, boxes[:n_boxes] if n_boxes else None)
        if budget is not None and len(data) > budget:  # cannot happen: encoded_size is exact
            raise AssertionError(f"message of {len(data)} bytes over its budget of {budget}")
        return Encoded(data, np.sort(cells), n_boxes)

    def _encode_features(
        self, kind: MessageType, agent: AgentPerception, cells: np.ndarray, boxes: Boxes | None
    ) -> bytes:
        flat = agent.features.detach().reshape(agent.features.shape[0], -1).numpy()
        feats = np.ascontiguousarray(np.take(flat, cells, axis=1).T)  # (n, C)
        det = None
        if boxes is not None and len(boxes):
            det = (boxes.xyzlwhy, boxes.scores, boxes.labels, None)
        if kind == MessageType.CODEBOOK:
            cb = self.codebook
            h = self._header(kind, agent, cb.cfg.bits, self.codebook_id())
            codes = cb.encode(torch.from_numpy(feats)).numpy()
            return encode(h, self.shape, cells, codes=codes, detections=det)
        return encode(self._header(kind, agent), self.shape, cells, features=feats, detections=det)

    # -- ego side -------------------------------------------------------------------------------------
    # -- late fusion: boxes only -------------------------------------------------------------------
    def detections_message(
        self, agent: AgentPerception, budget: int | None = None, variances: np.ndarray | None = None
    ) -> bytes:
        """The agent's boxes (its BEV frame, 16 bytes each, 30 with their predicted (N, 7) variances),
        most confident first, cut to ``budget``."""
        boxes = agent.boxes if agent.boxes is not None else Boxes.empty(with_scores=True)
        order = np.argsort(-boxes.scores, kind="stable") if len(boxes) else np.zeros(0, np.int64)
        n = len(order)
        with_var = variances is not None
        if budget is not None:
            none = np.zeros(0, np.int64)
            per_box = encoded_size(MessageType.DETECTIONS, self.shape, none, detections=1, variances=with_var)
            empty = encoded_size(MessageType.DETECTIONS, self.shape, none, detections=0, variances=with_var)
            n = max(0, min(n, (budget - empty) // max(per_box - empty, 1)))
        keep = order[:n]
        sent = boxes[keep]
        var = np.asarray(variances, dtype=np.float64)[keep] if with_var else None
        h = self._header(MessageType.DETECTIONS, agent)
        return encode(h, self.shape, detections=(sent.xyzlwhy, sent.scores, sent.labels, var))

    def read_detections(self, data: bytes) -> SharedBoxes:
        """A detections message as the boxes the ego merges (sender's BEV frame and pose)."""
        msg = decode(data, self.shape, self.grid_id)
        h = msg.header
        if h.type != MessageType.DETECTIONS or msg.detections is None:
            raise UnexpectedTypeError(f"expected a DETECTIONS message, got {h.type.name}", stage="codec")
        boxes = Boxes(msg.detections, labels=msg.labels, scores=msg.scores)
        return SharedBoxes(str(h.sender), _pose_of(h), boxes, msg.variances)

    def read_sparse(self, data: bytes) -> Received:
        """Decode a feature message: its cells and their features (codes looked up), sender frame."""
        cb = self.codebook
        msg = decode(
            data,
            self.shape,
            self.grid_id,
            self.codebook_id() if cb is not None else None,
            cb.cfg.k if cb is not None else None,
        )
        h = msg.header
        if h.type not in (MessageType.CODEBOOK, MessageType.RAW_FP32, MessageType.RAW_FP16):
            raise UnexpectedTypeError(f"expected a feature message, got {h.type.name}", stage="codec")
        if msg.codes is not None:
            if cb is None:
                raise CodebookMismatchError(
                    "a codebook message, but this receiver has no codebook loaded", stage="codec"
                )
            if msg.codes.shape[1] != cb.cfg.indices_per_cell:
                raise CodebookMismatchError(
                    f"{msg.codes.shape[1]} indices per cell, the codebook uses {cb.cfg.indices_per_cell}",
                    stage="codec",
                )
            with torch.no_grad():
                values = cb.decode(torch.from_numpy(msg.codes))
            if self.nonnegative:
                values = values.clamp_(min=0)
        else:
            values = torch.from_numpy(msg.features)
        boxes = None
        if msg.detections is not None:
            boxes = Boxes(msg.detections, labels=msg.labels, scores=msg.scores)
        return Received(h.sender, _pose_of(h), h.stamp_ns, msg.cells, values, boxes)

    def read_features(self, data: bytes, channels: int) -> tuple[SharedFeatures, SharedBoxes | None]:
        """Decode into the dense form the fusion takes (zeros and invalid where nothing was sent)."""
        got = self.read_sparse(data)
        h, w = self.shape
        if len(got.cells) and got.values.shape[1] != channels:  # 0 channels too: no values to place
            raise MalformedError(
                f"message carries {got.values.shape[1]} channels, expected {channels}", stage="codec"
            )
        dense = torch.zeros(channels, h * w)
        valid = torch.zeros(h * w, dtype=torch.bool)
        if len(got.cells):
            idx = torch.from_numpy(got.cells)
            dense[:, idx] = got.values.T.to(dense.dtype)
            valid[idx] = True
        shared = SharedFeatures(
            str(got.sender),
            got.world_from_bev,
            dense.reshape(channels, h, w),
            valid.reshape(h, w),
            got.stamp_ns,
        )
        boxes = SharedBoxes(str(got.sender), got.world_from_bev, got.boxes) if got.boxes is not None else None
        return shared, boxes


def _expect(h: Header, kind: MessageType, block: int) -> None:
    if h.type != kind:
        raise UnexpectedTypeError(f"expected a {kind.name} message, got {h.type.name}", stage="codec")
    if h.unit != block:
        raise GridMismatchError(
            f"{kind.name} on {h.unit}-cell blocks, this agent coordinates on {block}", stage="codec"
        )


def exchange(
    codec: MessageCodec,
    scheme: FeatureScheme,
    ego: AgentPerception,
    collaborators: list[AgentPerception],
    budget: int | None = None,
    threshold: float = 0.3,
    hybrid: bool = False,
    box_min_score: float | None = None,
) -> tuple[list[SharedFeatures], list[SharedBoxes], dict[str, Outgoing]]:
    """One frame of communication, in process: every message really encoded and decoded.

    ``budget`` is bytes per collaborator link per frame, coordination included. With ``hybrid``,
    boxes scoring at least ``box_min_score`` (default :data:`HYBRID_BOX_MIN_SCORE`) go as boxes.
    Returns what the ego received and, per collaborator, the messages on its link.
    """
    out: dict[str, Outgoing] = {a.agent_id: Outgoing() for a in collaborators}
    smallest = codec._size(codec._kind(scheme.encoding), np.zeros(0, np.int64), ego.features.shape[0], None)
    demand = None
    if scheme.uses_demand:
        data = codec.demand_message(ego)
        if budget is not None and len(data) + smallest > budget:
            return [], [], out  # the budget cannot carry the request and a reply: nothing is exchanged
        demand = codec.read_demand(data)
        for o in out.values():
            o.messages.append(data)
    plan: dict[int, np.ndarray] = {}
    if scheme.uses_offers:
        offers, silent = [], []
        for a in collaborators:
            data = codec.offer_message(a, demand)
            if data is None or (budget is not None and out[a.agent_id].bytes + len(data) + smallest > budget):
                # nothing to offer, or no room to offer and then send: no offer, and no blocks
                # assigned, but what is left of its budget still goes to its most valuable cells
                silent.append(codec.sender_of(a))
                continue
            out[a.agent_id].messages.append(data)
            offers.append(codec.read_offer(data))
        plan = codec.assign(offers, demand, tuple(silent))
    shared, shared_boxes = [], []
    channels = ego.features.shape[0]
    for a in collaborators:
        allowance = None if budget is None else budget - out[a.agent_id].bytes
        boxes = hybrid_boxes(a, box_min_score) if hybrid else None
        enc = codec.feature_message(
            scheme, a, allowance, demand, plan.get(codec.sender_of(a)), threshold, boxes
        )
        if enc.data is None or (len(enc.cells) == 0 and enc.boxes == 0):
            continue  # nothing fits, or nothing to say: no message
        out[a.agent_id].messages.append(enc.data)
        out[a.agent_id].cells_sent = len(enc.cells)
        feats, bxs = codec.read_features(enc.data, channels)
        feats.agent_id = a.agent_id
        shared.append(feats)
        if bxs is not None:
            bxs.agent_id = a.agent_id
            shared_boxes.append(bxs)
    return shared, shared_boxes, out


#: the hybrid's split: boxes scoring at least this go as boxes, the rest as codes (docs/messages.md)
HYBRID_BOX_MIN_SCORE: float = 0.0


def hybrid_boxes(agent: AgentPerception, min_score: float | None = None) -> Boxes | None:
    """The boxes a hybrid message carries: the sender's boxes scoring at least ``min_score``
    (default :data:`HYBRID_BOX_MIN_SCORE`), in the frame it sends in (``fit_to_budget`` keeps the
    most confident that fit). A box below it is left to the codes: its cells are not under a sent
    box, so they compete for the budget with every other cell. Detected in the sender's own frame
    where it can be (:func:`v2x.perception.cooperative.with_own_boxes`): on the ego's grid they are
    less precise. Public: the pipeline's agents attach the same boxes as ``exchange`` does."""
    if agent.boxes is None or len(agent.boxes) == 0:
        return None
    cut = HYBRID_BOX_MIN_SCORE if min_score is None else min_score
    boxes = agent.boxes
    if cut > 0 and boxes.scores is not None:
        boxes = boxes[boxes.scores >= cut]
    return boxes if len(boxes) else None
