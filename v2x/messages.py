"""Turning an agent's BEV map into wire-format messages under a byte budget, and back.

One code path serves every method of the AP-versus-bytes experiment:

======================  ==========================================================  ==========
method                  what a collaborator sends                                   budget
======================  ==========================================================  ==========
``raw`` / ``raw-fp16``  every occupied cell, float features                         none
``where2comm``          cells with supply >= threshold the ego demands, fp32        threshold
``codebook``            occupied cells the ego demands, best supply first, codes    bytes
``codefilling``         cells of the blocks information filling assigns, codes      bytes
======================  ==========================================================  ==========

Byte counts are ``len()`` of the real messages, headers included; coordination messages (the
ego's demand, each collaborator's offer) are counted on every link they serve.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from v2x.boxes import Boxes
from v2x.codebook import Codebook
from v2x.comm.wire import HEADER, Header, MessageType, decode, encode
from v2x.cooperative import AgentPerception, SharedBoxes, SharedFeatures
from v2x.geometry import pose_from_xyz_yaw, yaw_of
from v2x.grid import BEVGrid
from v2x.selection import (
    SelectionConfig,
    assign_blocks,
    block_max,
    block_shape,
    blocks_to_cells,
    demand_blocks,
    demanded_mask,
    offer_blocks,
    to_ego_blocks,
)

__all__ = ["METHODS", "MessageCodec", "Outgoing", "exchange", "sender_code"]

METHODS = ("raw", "raw-fp16", "where2comm", "codebook", "codefilling")


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


@dataclass
class Outgoing:
    """What one collaborator put on its link this frame."""

    messages: list[bytes] = field(default_factory=list)
    cells_sent: int = 0

    @property
    def bytes(self) -> int:
        return sum(len(m) for m in self.messages)


class MessageCodec:
    """Builds and reads the messages of one grid (and optionally one codebook)."""

    def __init__(
        self, grid: BEVGrid, codebook: Codebook | None = None, selection: SelectionConfig | None = None
    ) -> None:
        self.grid = grid
        self.codebook = codebook
        self.sel = selection or SelectionConfig()
        self.grid_id = grid.fingerprint()
        self.num_cells = grid.num_cells
        self.num_blocks = int(np.prod(block_shape(grid, self.sel.block)))
        self._seq = 0

    def _header(
        self, kind: MessageType, agent: AgentPerception, bits: int = 0, codebook_id: int = 0
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
            code_bits=bits,
        )

    # -- coordination -------------------------------------------------------------------------------
    def demand_message(self, ego: AgentPerception) -> bytes:
        confident = demand_blocks(ego.confidence, self.grid, self.sel)
        return encode(self._header(MessageType.DEMAND, ego), self.num_blocks, confident)

    def read_demand(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(demanded block mask in the ego's frame, the ego's world_from_bev)."""
        msg = decode(data, self.num_blocks, self.grid_id)
        return demanded_mask(msg.cells, self.grid, self.sel.block), _pose_of(msg.header)

    def offer_message(
        self, agent: AgentPerception, demanded: np.ndarray, world_from_ego: np.ndarray
    ) -> bytes:
        blocks, levels = offer_blocks(
            agent.confidence, agent.world_from_bev, world_from_ego, demanded, self.grid, self.sel
        )
        return encode(self._header(MessageType.OFFER, agent), self.num_blocks, blocks, levels=levels)

    def read_offer(self, data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        msg = decode(data, self.num_blocks, self.grid_id)
        return msg.cells, msg.levels, _pose_of(msg.header), msg.header.sender

    # -- features ------------------------------------------------------------------------------------
    def _payload(self, method: str, agent: AgentPerception, cells: np.ndarray) -> np.ndarray:
        """Per-cell values to send: codebook indices (n, r*m) or raw features (n, C)."""
        feats = agent.features.reshape(agent.features.shape[0], -1)[:, torch.from_numpy(cells)].T  # (n, C)
        if method in ("codebook", "codefilling"):
            if self.codebook is None:
                raise ValueError(f"method {method!r} needs a codebook")
            return self.codebook.encode(feats).numpy()
        return feats.numpy()

    def _feature_message(
        self, method: str, agent: AgentPerception, cells: np.ndarray, values: np.ndarray, boxes: Boxes | None
    ) -> bytes:
        det = (boxes.xyzlwhy, boxes.scores, boxes.labels, None) if boxes is not None and len(boxes) else None
        if method in ("codebook", "codefilling"):
            h = self._header(MessageType.CODEBOOK, agent, self.codebook.cfg.bits, self.codebook.identity())
            return encode(h, self.num_cells, cells, codes=values, detections=det)
        kind = MessageType.RAW_FP16 if method == "raw-fp16" else MessageType.RAW_FP32
        return encode(self._header(kind, agent), self.num_cells, cells, features=values, detections=det)

    def _bytes_per_cell(self, method: str, channels: int) -> float:
        """A cell's approximate cost: its features plus about a byte of index coding."""
        if method in ("codebook", "codefilling"):
            return self.codebook.cfg.bits_per_cell / 8 + 1.2
        return (2 if method == "raw-fp16" else 4) * channels + 1.2

    def fit_to_budget(
        self,
        method: str,
        agent: AgentPerception,
        ranked_cells: np.ndarray,
        budget: int | None,
        boxes: Boxes | None = None,
    ) -> tuple[bytes | None, int]:
        """The message with the longest prefix of ``ranked_cells`` that fits ``budget`` bytes.

        The size is checked on real encodings (index coding makes it depend on which cells),
        starting from an estimate and narrowing by bisection; ``len()`` of the result is <= budget.
        """
        n = len(ranked_cells)
        values = self._payload(method, agent, ranked_cells)  # quantise once, cut prefixes below

        def build(k: int) -> bytes:
            return self._feature_message(method, agent, ranked_cells[:k], values[:k], boxes)

        if budget is None:
            return build(n), n
        empty = build(0)
        if len(empty) > budget:
            return None, 0
        best: tuple[bytes, int] = (empty, 0)
        lo, hi = 0, n
        guess = int(
            np.clip((budget - len(empty)) / self._bytes_per_cell(method, agent.features.shape[0]), 0, n)
        )
        probe = build(guess)
        if len(probe) <= budget:
            best, lo = (probe, guess), guess
            hi = min(n, int(guess * 1.25) + 8)
            top = build(hi)
            if len(top) <= budget:
                return top, hi
        else:
            hi = guess - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            msg = build(mid)
            if len(msg) <= budget:
                best, lo = (msg, mid), mid
            else:
                hi = mid - 1
        return best

    def read_features(self, data: bytes, channels: int) -> tuple[SharedFeatures, SharedBoxes | None]:
        """Decode a feature message into a dense map (zeros elsewhere) in the sender's frame."""
        cb = self.codebook
        msg = decode(
            data,
            self.num_cells,
            self.grid_id,
            cb.identity() if cb is not None else None,
            cb.cfg.k if cb is not None else None,
        )
        h, w = self.grid.shape
        dense = torch.zeros(channels, h * w)
        valid = torch.zeros(h * w, dtype=torch.bool)
        if msg.codes is not None:
            if cb is None:
                raise ValueError("codebook message but no codebook loaded")
            values = torch.relu(cb.decode(torch.from_numpy(msg.codes)))
        else:
            values = torch.from_numpy(msg.features) if msg.features is not None else torch.zeros(0, channels)
        if len(msg.cells):
            idx = torch.from_numpy(msg.cells)
            dense[:, idx] = values.T.to(dense.dtype)
            valid[idx] = True
        pose = _pose_of(msg.header)
        shared = SharedFeatures(
            str(msg.header.sender),
            pose,
            dense.reshape(channels, h, w),
            valid.reshape(h, w),
            msg.header.stamp_ns,
        )
        boxes = None
        if msg.detections is not None:
            boxes = SharedBoxes(
                str(msg.header.sender), pose, Boxes(msg.detections, labels=msg.labels, scores=msg.scores)
            )
        return shared, boxes

    # -- one collaborator's side of a frame ----------------------------------------------------------
    def candidate_cells(
        self,
        method: str,
        agent: AgentPerception,
        demanded: np.ndarray | None,
        world_from_ego: np.ndarray | None,
        assigned_blocks: np.ndarray | None = None,
        threshold: float = 0.3,
    ) -> np.ndarray:
        """Cells the method would send, most valuable first."""
        occ = agent.occupied.numpy().ravel()
        conf = agent.confidence.ravel()
        if method in ("raw", "raw-fp16"):
            cells = np.flatnonzero(occ)
            return cells[np.argsort(-conf[cells], kind="stable")]
        block_demand = self._cell_demand(agent, demanded, world_from_ego)
        if method == "where2comm":
            cells = np.flatnonzero(occ & (conf >= threshold) & block_demand)
        elif method == "codebook":
            cells = np.flatnonzero(occ & block_demand)
        elif method == "codefilling":
            cells = blocks_to_cells(
                assigned_blocks if assigned_blocks is not None else np.zeros(0, np.int64),
                self.grid,
                self.sel.block,
            )
            cells = cells[occ[cells]]
        else:
            raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        # value of a cell: the supply of its block, then its own confidence
        bsup = np.repeat(
            np.repeat(block_max(agent.confidence, self.sel.block), self.sel.block, 0), self.sel.block, 1
        )
        bsup = bsup[: self.grid.shape[0], : self.grid.shape[1]].ravel()
        order = np.lexsort((-conf[cells], -bsup[cells]))
        return cells[order]

    def _cell_demand(
        self, agent: AgentPerception, demanded: np.ndarray | None, world_from_ego: np.ndarray | None
    ) -> np.ndarray:
        if demanded is None:
            return np.ones(self.num_cells, dtype=bool)
        ego_block, inside = to_ego_blocks(agent.world_from_bev, world_from_ego, self.grid, self.sel.block)
        block_ok = inside & demanded[np.where(inside, ego_block, 0)]
        hb, wb = block_shape(self.grid, self.sel.block)
        per_cell = np.repeat(np.repeat(block_ok.reshape(hb, wb), self.sel.block, 0), self.sel.block, 1)
        return per_cell[: self.grid.shape[0], : self.grid.shape[1]].ravel()


def _pose_of(h: Header) -> np.ndarray:
    x, y, z, yaw = h.pose
    return pose_from_xyz_yaw(x, y, z, yaw)


def exchange(
    codec: MessageCodec,
    method: str,
    ego: AgentPerception,
    collaborators: list[AgentPerception],
    budget: int | None = None,
    threshold: float = 0.3,
    hybrid: bool = False,
) -> tuple[list[SharedFeatures], list[SharedBoxes], dict[str, Outgoing]]:
    """One frame of communication, in process: every message really encoded and decoded.

    Returns what the ego received and, per collaborator, the messages on its link.
    """
    out: dict[str, Outgoing] = {a.agent_id: Outgoing() for a in collaborators}
    demanded = world_from_ego = None
    if method in ("where2comm", "codebook", "codefilling"):
        demand = codec.demand_message(ego)
        if budget is not None and len(demand) + HEADER.size > budget:
            return [], [], out  # the budget cannot even carry the request: nothing is exchanged
        demanded, world_from_ego = codec.read_demand(demand)
        for o in out.values():
            o.messages.append(demand)
    assigned: dict[str, np.ndarray] = {}
    if method == "codefilling":
        offers, poses = {}, {}
        for a in collaborators:
            data = codec.offer_message(a, demanded, world_from_ego)
            if budget is not None and out[a.agent_id].bytes + len(data) + HEADER.size > budget:
                continue  # no room to offer and then send: this agent stays silent
            out[a.agent_id].messages.append(data)
            blocks, levels, pose, _ = codec.read_offer(data)
            offers[a.agent_id], poses[a.agent_id] = (blocks, levels), pose
        assigned = assign_blocks(offers, poses, world_from_ego, codec.grid, codec.sel)
    shared, shared_boxes = [], []
    channels = ego.features.shape[0]
    for a in collaborators:
        if method == "codefilling" and a.agent_id not in assigned:
            continue
        ranked = codec.candidate_cells(
            method, a, demanded, world_from_ego, assigned.get(a.agent_id), threshold
        )
        allowance = None if budget is None else budget - out[a.agent_id].bytes
        boxes = _hybrid_boxes(codec, a, demanded, world_from_ego) if hybrid else None
        msg, n = codec.fit_to_budget(method, a, ranked, allowance, boxes)
        if msg is None:
            continue
        out[a.agent_id].messages.append(msg)
        out[a.agent_id].cells_sent = n
        feats, bxs = codec.read_features(msg, channels)
        feats.agent_id = a.agent_id
        shared.append(feats)
        if bxs is not None:
            bxs.agent_id = a.agent_id
            shared_boxes.append(bxs)
    return shared, shared_boxes, out


def _hybrid_boxes(codec: MessageCodec, agent: AgentPerception, demanded, world_from_ego) -> Boxes | None:
    """The sender's own confident boxes in blocks the ego demands (a few tens of bytes each)."""
    if agent.boxes is None or len(agent.boxes) == 0:
        return None
    boxes = agent.boxes[agent.boxes.scores >= 0.3]
    if demanded is None or len(boxes) == 0:
        return boxes
    row, col, ok = codec.grid.cell_of(boxes.xyzlwhy[:, :2])
    cell_demand = codec._cell_demand(agent, demanded, world_from_ego)
    h, w = codec.grid.shape
    keep = ok & cell_demand[np.clip(row, 0, h - 1) * w + np.clip(col, 0, w - 1)]
    return boxes[keep]
