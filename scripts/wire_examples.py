"""The generated parts of ``docs/wire-format.md``: the shipped configuration (grid fingerprint,
codebook identity, messages per method) and example messages of wire format v1, as hex dumps
with field annotations and the values a decoder must read from them.

Both sections are this module's output for the shipped grid and codebook; a test checks the
document agrees, so neither the format nor retrained weights can leave it stale. Regenerate
after a change to either with::

    .venv/bin/python scripts/wire_examples.py --update docs/wire-format.md
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from v2x.comm.envelope import Packet, encode_frames
from v2x.comm.wire import HEADER, DecodedMessage, Header, MessageType, decode, encode
from v2x.core.grid import BEVGrid
from v2x.pipeline.methods import DEFAULT_METHOD, METHODS
from v2x.pipeline.wire_profile import SHIPPED_CODEBOOK_FILE, WireProfile, load_profile, message_kinds

__all__ = ["BEGIN", "CONFIG_BEGIN", "CONFIG_END", "END", "Example", "examples", "hexdump", "render"]

BEGIN = "<!-- BEGIN GENERATED EXAMPLES (python scripts/wire_examples.py --update docs/wire-format.md) -->"
END = "<!-- END GENERATED EXAMPLES -->"
CONFIG_BEGIN = (
    "<!-- BEGIN GENERATED CONFIGURATION (python scripts/wire_examples.py --update docs/wire-format.md) -->"
)
CONFIG_END = "<!-- END GENERATED CONFIGURATION -->"
REPO = Path(__file__).resolve().parents[1]
#: channels of each cell's decoded features the document lists (a decoder checks all of them)
SHOWN_CHANNELS = 8


@cache
def profile() -> WireProfile:
    """The shipped configuration: the detector's grid and the codebook file beside the weights."""
    return load_profile(codebook=SHIPPED_CODEBOOK_FILE)


def _grid() -> BEVGrid:
    return profile().grid


def _codebook_id() -> int:
    return profile().codebook.identity


@dataclass
class Example:
    name: str
    title: str
    what: str
    data: bytes
    fields: list[tuple[int, int, str, str]]  # offset, length, field, value as decoded
    #: the values a decoder must read (:func:`decoded_values`)
    decoded: dict = field(default_factory=dict)


def _header(kind: MessageType, unit: int = 0, sender: int = 2, seq: int = 17) -> Header:
    return Header(
        kind,
        sender=sender,
        seq=seq,
        stamp_ns=1_700_000_000_123_456_789,
        pose=(5123.25, -2210.5, 0.5, 0.25),
        grid_id=_grid().fingerprint(),
        codebook_id=_codebook_id() if kind == MessageType.CODEBOOK else 0,
        unit=unit,
    )


def _round(values: np.ndarray) -> list:
    """Floats at 6 significant digits (as the document lists them)."""
    return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(np.asarray(values, np.float64)).tolist()


def cell_features(data: bytes) -> np.ndarray:
    """(n, C) features of a codebook message, decoded by the receiver's codec with the shipped
    codebook file (codewords summed, clamped at 0)."""
    from v2x.messages.codebook import load_codebook
    from v2x.messages.codec import MessageCodec

    codec = MessageCodec(_grid(), load_codebook(SHIPPED_CODEBOOK_FILE))
    return codec.read_sparse(data).values.numpy()


def _index_list(values: np.ndarray, longest: int = 32) -> list | dict:
    """Indices as a list, or for a long one its count, first entries and sum."""
    if len(values) <= longest:
        return values.tolist()
    return {"count": len(values), "first": values[:8].tolist(), "sum": int(values.sum())}


def decoded_values(msg: DecodedMessage, data: bytes) -> dict:
    """What the reference decoder must read from ``data``, in JSON types. The time stamp is a
    string (it does not fit a double); ``features`` lists the first channels of each cell; a long
    list of indices is summarised (:func:`_index_list`)."""
    h = msg.header
    out = {
        "type": int(h.type),
        "flags": data[6],
        "unit": h.unit,
        "sender": h.sender,
        "seq": h.seq,
        "stamp_ns": str(h.stamp_ns),
        "pose": [float(v) for v in h.pose],
        "grid_fingerprint": f"{h.grid_id:#010x}",
        "codebook_id": f"{h.codebook_id:#010x}",
        "payload_length": len(data) - HEADER.size,
    }
    if h.type in (MessageType.CODEBOOK, MessageType.RAW_FP32, MessageType.RAW_FP16):
        out["cells"] = _index_list(msg.cells)
    elif h.type in (MessageType.DEMAND, MessageType.OFFER):
        out["blocks"] = _index_list(msg.cells)
        out["complement"] = h.complement
    if msg.codes is not None:
        out["codes"] = msg.codes.tolist()
        out["features"] = _round(cell_features(data)[:, :SHOWN_CHANNELS])
    if msg.features is not None:
        out["features"] = _round(msg.features)
    if msg.levels is not None:
        out["levels"] = msg.levels.tolist()
    if msg.detections is not None:
        out["boxes"] = _round(msg.detections)
        out["scores"] = _round(msg.scores)
        out["classes"] = msg.labels.tolist()
    if msg.variances is not None:
        out["variances"] = _round(msg.variances)
    return out


def _header_fields(data: bytes) -> list[tuple[int, int, str, str]]:
    magic, ver, kind, flags, unit, sender, seq, stamp, x, y, z, yaw, grid, cb, length, crc = (
        HEADER.unpack_from(data)
    )
    return [
        (0, 4, "magic", repr(bytes(magic))),
        (4, 1, "version", str(ver)),
        (5, 1, "message type", f"{kind} ({MessageType(kind).name})"),
        (6, 1, "flags", f"{flags:#04x}"),
        (7, 1, "unit", str(unit)),
        (8, 4, "sender id", str(sender)),
        (12, 4, "sequence", str(seq)),
        (16, 8, "stamp ns", str(stamp)),
        (24, 8, "pose x", repr(x)),
        (32, 8, "pose y", repr(y)),
        (40, 4, "pose z", repr(z)),
        (44, 4, "pose yaw", repr(yaw)),
        (48, 4, "grid fingerprint", f"{grid:#010x}"),
        (52, 4, "codebook id", f"{cb:#010x}"),
        (56, 4, "payload length", str(length)),
        (60, 4, "CRC-32", f"{crc:#010x}"),
    ]


def _codes(n: int) -> np.ndarray:
    """(n, P) example codebook indices that fit the shipped codebook (all below k)."""
    cb = profile().codebook
    return (np.arange(n * cb.indices_per_cell).reshape(n, -1) * 37 + 5) % cb.k


def _codes_text(codes: np.ndarray) -> str:
    return " / ".join(" ".join(str(int(v)) for v in row) for row in codes)


def _sizes_text(cells: np.ndarray) -> dict[str, int]:
    """Bytes of each cell-set coding for ``cells`` (count varint included), by name."""
    from v2x.comm.wire import CellCoding, cell_set_sizes

    sizes = cell_set_sizes(np.sort(cells), _grid().num_cells)
    names = {
        CellCoding.RICE: "Golomb-Rice",
        CellCoding.BITMAP: "bitmap",
        CellCoding.DELTA_VARINT: "delta + varint",
        CellCoding.RUN_LENGTH: "run-length",
    }
    return {names[c]: n for c, n in sizes.items()}


def _codebook_example(name, title, what, cells, seq, fields_after_cells) -> Example:
    """A codebook message over ``cells`` with :func:`_codes` indices; ``fields_after_cells``
    annotates the cell set, the indices-per-cell byte and the codes follow."""
    cb = profile().codebook
    codes = _codes(len(cells))
    data = encode(_header(MessageType.CODEBOOK, unit=cb.bits, seq=seq), _grid().shape, cells, codes=codes)
    at = fields_after_cells[-1][0] + fields_after_cells[-1][1]
    order = np.argsort(cells, kind="stable")
    nbits = len(cells) * cb.indices_per_cell * cb.bits
    pad = -nbits % 8
    f = fields_after_cells + [
        (at, 1, "indices per cell", str(cb.indices_per_cell)),
        (
            at + 1,
            (nbits + 7) // 8,
            f"codes, {cb.bits} bits each, MSB first, cells ascending",
            _codes_text(codes[order]) + (f" + {pad} zero bits" if pad else ""),
        ),
    ]
    return Example(name, title, what, data, f)


def examples() -> list[Example]:
    shape = _grid().shape
    cb = profile().codebook
    book = (
        f"the shipped codebook ({cb.indices_per_cell} indices per cell: r = {cb.r} stages x m = {cb.m} "
        f"sub-codebooks; k = {cb.k}, so B = {cb.bits} bits per index)"
    )
    out = []

    # 1. codebook features: 4 cells in delta + varint coding
    cells = np.array([1236, 1234, 9000, 1235])
    sizes = _sizes_text(cells)
    ex = _codebook_example(
        "codebook",
        "Codebook features (delta + varint cells)",
        f"Sender 2 sends 4 cells (flat indices 1234, 1235, 1236, 9000) with the indices of {book}. "
        "The encoder sorts the cells; the rows of codes follow them. "
        + ", ".join(f"{k}: {v:,} bytes" for k, v in sizes.items())
        + ", so delta + varint wins and flags = 0x02.",
        cells,
        17,
        [
            (64, 1, "cell count (varint)", "4"),
            (65, 2, "delta 0 (varint)", "1234 -> cell 1234"),
            (67, 1, "delta 1", "0 -> cell 1235"),
            (68, 1, "delta 2", "0 -> cell 1236"),
            (69, 2, "delta 3", "7763 -> cell 9000"),
        ],
    )
    ex.fields = _header_fields(ex.data) + ex.fields
    out.append(ex)

    # 2. the same kind of message with a run: run-length coding
    cells = np.arange(3000, 3006)
    sizes = _sizes_text(cells)
    ex = _codebook_example(
        "run-length",
        "Codebook features (run-length cells)",
        f"Six consecutive cells 3000..3005 with the indices of {book}. Run-length: "
        f"{sizes['run-length']} bytes; delta + varint would take {sizes['delta + varint']} and "
        f"Golomb-Rice {sizes['Golomb-Rice']}.",
        cells,
        18,
        [
            (64, 1, "cell count", "6"),
            (65, 1, "run count", "1"),
            (66, 2, "run 0: gap (varint)", "3000 -> starts at cell 3000"),
            (68, 1, "run 0: length - 1", "5 -> cells 3000..3005"),
        ],
    )
    ex.fields = _header_fields(ex.data)[2:5] + ex.fields
    out.append(ex)

    # 2b. scattered cells: Golomb-Rice
    cells = np.array([40, 45, 61, 100, 130, 131, 190, 250])
    sizes = _sizes_text(cells)
    ex = _codebook_example(
        "rice",
        "Codebook features (Golomb-Rice cells)",
        "Eight scattered cells 40, 45, 61, 100, 130, 131, 190, 250. "
        "Gaps d = 40, 4, 15, 38, 29, 0, 58, 59. With k = 4: quotients d >> 4 in unary "
        "(110 0 0 110 10 0 1110 1110, 19 bits), then the remainders d & 15 in 4 bits each (32 bits): "
        f"51 bits, padded to 7 bytes. With the count and the k byte the set takes {sizes['Golomb-Rice']} "
        f"bytes; delta + varint also takes {sizes['delta + varint']} and the tie goes to the lower coding "
        f"number (0, Rice); run-length takes {sizes['run-length']}. The codes are those of {book}.",
        cells,
        21,
        [
            (64, 1, "cell count", "8"),
            (65, 1, "Rice parameter k", "4"),
            (
                66,
                7,
                "bit stream",
                "unary quotients 2,0,0,2,1,0,3,3 then 4-bit remainders 8,4,15,6,13,0,10,11",
            ),
        ],
    )
    ex.fields = _header_fields(ex.data)[3:5] + ex.fields
    out.append(ex)

    # 2c. the hybrid: codebook features with a detections block
    cells = np.array([5000, 5002])
    codes = _codes(2)
    box = (np.array([[-3.5, 20.25, 0.9, 4.2, 1.8, 1.6, -1.0]]), np.array([0.5]), np.array([2]), None)
    data = encode(
        _header(MessageType.CODEBOOK, unit=cb.bits, seq=22), shape, cells, codes=codes, detections=box
    )
    sizes = _sizes_text(cells)
    set_bytes = min(sizes.values())
    at = 64 + set_bytes + 1
    code_bytes = (2 * cb.indices_per_cell * cb.bits + 7) // 8
    f = _header_fields(data)[2:4] + [
        (64, set_bytes, "cell set", "2 cells: 5000, 5002"),
        (64 + set_bytes, 1, "indices per cell", str(cb.indices_per_cell)),
        (at, code_bytes, f"codes, {cb.bits} bits each", _codes_text(codes)),
        (at + code_bytes, 2, "detection count (u16)", "1"),
        (
            at + code_bytes + 2,
            16,
            "record",
            f"x, y, z -350, 2025, 90 cm; l, w, h 420, 180, 160 cm; yaw {round(-1.0 / np.pi * 32767)} "
            "(-1.0000 rad); score 128 (0.5020); class 2 (truck)",
        ),
    ]
    out.append(
        Example(
            "hybrid",
            "Codebook features with a detections block (hybrid)",
            "The `hybrid` method's message: codebook features as above, then, with flag 0x04, a "
            "detections block of the sender's own boxes, in the frame of the header's pose like the "
            f"cells (no variances). Flags = {data[6]:#04x}.",
            data,
            f,
        )
    )

    # 3. demand (complement form)
    b = profile().block
    hb, wb = -(-shape[0] // b), -(-shape[1] // b)
    data = encode(
        _header(MessageType.DEMAND, unit=b, sender=1, seq=5), shape, [100, 101, 145], complement=True
    )
    f = _header_fields(data)[2:5] + [
        (64, 1, "block count", "3"),
        (65, 1, "delta 0", "100 -> block 100"),
        (66, 1, "delta 1", "0 -> block 101"),
        (67, 1, "delta 2", "43 -> block 145"),
    ]
    out.append(
        Example(
            "demand",
            "Demand (complement form)",
            f"The ego (sender 1) is confident in blocks 100, 101 and 145 of its {hb} x {wb} grid of "
            f"{b} x {b}-cell blocks (unit = {b}) and demands every other block at level 3. Flags = 0x22: "
            "delta coding (2) and complement (0x20).",
            data,
            f,
        )
    )

    # 3b. demand as a bitmap: every other block
    blocks = np.arange(0, hb * wb, 2)
    data = encode(_header(MessageType.DEMAND, unit=b, sender=1, seq=6), shape, blocks)
    nbytes = (hb * wb + 7) // 8
    count_bytes = (max(1, len(blocks).bit_length()) + 6) // 7
    f = _header_fields(data)[2:5] + [
        (64, count_bytes, "block count (varint)", str(len(blocks))),
        (
            64 + count_bytes,
            nbytes,
            f"bitmap of {hb * wb} blocks, MSB first",
            "10101010 ... (blocks 0, 2, 4, ...)",
        ),
    ]
    out.append(
        Example(
            "demand-bitmap",
            "Demand (bitmap)",
            f"The ego demands every even-numbered block ({len(blocks)} of {hb * wb}) at level 3. A set this "
            f"dense is smallest as a bitmap of ceil({hb * wb} / 8) = {nbytes} bytes, so flags = 0x01; the "
            f"bits from {hb * wb} to {8 * nbytes - 1} of the last byte are 0.",
            data,
            f,
        )
    )

    # 4. offer with levels
    data = encode(
        _header(MessageType.OFFER, unit=4, sender=3, seq=9), shape, [300, 7, 8], levels=np.array([2, 3, 1])
    )
    f = _header_fields(data)[2:5] + [
        (64, 1, "block count", "3"),
        (65, 4, "deltas (varints)", "7, 0, 291 -> blocks 7, 8, 300"),
        (69, 1, "levels, 2 bits each", "0b11_01_10_00: 3 (block 7), 1 (block 8), 2 (block 300)"),
    ]
    out.append(
        Example(
            "offer",
            "Offer (blocks with supply levels)",
            "Collaborator 3 offers blocks 7, 8 and 300 with levels 3, 1 and 2. The blocks are those of "
            "the block grid of the frame the header's pose gives: with `share_frame: ego` (the default) "
            "the ego's, as the ego's pose beacon placed it; with `own`, the collaborator's own. "
            "Flags = 0x12: delta coding and levels (0x10).",
            data,
            f,
        )
    )

    # 5. raw fp16 features
    feats = np.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.125, 65504.0]], dtype=np.float32)
    data = encode(_header(MessageType.RAW_FP16, seq=19), shape, [17599, 0], features=feats)
    f = _header_fields(data)[2:5] + [
        (64, 1, "cell count", "2"),
        (65, 1, "delta 0", "0 -> cell 0"),
        (66, 3, "delta 1", "17598 -> cell 17599"),
        (69, 2, "channels (u16)", "4"),
        (71, 8, "cell 0: 4 x float16", "1.5 0.25 -0.125 65504"),
        (79, 8, "cell 17599: 4 x float16", "0.5 -1 2 0"),
    ]
    out.append(
        Example(
            "raw-fp16",
            "Raw fp16 features",
            "Two cells with 4 channels as float16 (a real message has C = 32..64). Rows follow the "
            "sorted cells, so cell 0's features come first.",
            data,
            f,
        )
    )

    # 6. detections with variances
    boxes = np.array([[12.34, -5.67, 0.8, 4.5, 1.9, 1.5, 3.0]])
    var = np.array([[0.04, 0.04, 0.01, 0.09, 0.01, 0.01, 0.0025]])
    data = encode(
        _header(MessageType.DETECTIONS, seq=20), detections=(boxes, np.array([0.875]), np.array([0]), var)
    )
    f = _header_fields(data)[2:5] + [
        (64, 2, "detection count (u16)", "1"),
        (66, 6, "x, y, z (int16 cm)", "1234, -567, 80"),
        (72, 6, "l, w, h (uint16 cm)", "450, 190, 150"),
        (78, 2, "yaw (int16, pi/32767)", f"{round(3.0 / np.pi * 32767)} -> 3.0000 rad"),
        (80, 1, "score (u8 / 255)", f"{round(0.875 * 255)} -> 0.8745"),
        (81, 1, "class (u8)", "0 (car)"),
        (82, 14, "variances (7 x float16)", "0.04 0.04 0.01 0.09 0.01 0.01 0.0025"),
    ]
    out.append(
        Example(
            "detections",
            "Detections with variances",
            "One car box in the sender's BEV frame with its score and the diagonal of its covariance. "
            "Flags = 0x0C: detections (0x04) with variances (0x08). 16 bytes per box, 14 more with "
            "variances.",
            data,
            f,
        )
    )
    for ex in out:  # every example is a valid message of the shipped configuration
        msg = decode(ex.data, shape, _grid().fingerprint(), _codebook_id(), cb.k)
        ex.decoded = decoded_values(msg, ex.data)
    return out


def envelope_example() -> tuple[str, list[bytes], dict]:
    """The offer example as the replay's nodes put it on ZeroMQ: (topic, frames, header)."""
    import msgpack

    offer = next(ex for ex in examples() if ex.name == "offer")
    topic = "/agents/3/offer"
    pkt = Packet.of(
        offer.data,
        sender="3",
        receiver="",
        kind="offer",
        frame=42,
        stamp_ns=1_700_000_000_123_456_789,
        sent_ns=1_700_000_000_130_000_000,
        sender_position=[5130.5, -2208.25, 1.75],
    )
    frames = [
        bytes(f)
        for f in encode_frames(
            topic, pkt, source="agent3", seq=9, sent_ns=1_700_000_000_131_000_000, incarnation=123456789
        )
    ]
    return topic, frames, msgpack.unpackb(frames[1], raw=False)


def hexdump(data: bytes) -> str:
    """``xxd``-style lines: 4-digit hex offset, 16 bytes in hex."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        lines.append(f"{off:04x}: " + " ".join(f"{b:02x}" for b in chunk))
    return "\n".join(lines)


def parse_hexdump(text: str) -> bytes:
    out = bytearray()
    for line in text.strip().splitlines():
        _, _, rest = line.partition(":")
        out += bytes(int(b, 16) for b in rest.split())
    return bytes(out)


def _json_lines(d: dict) -> str:
    """One key per line, values compact: readable, and plain JSON for any parser."""
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items()) + "\n}"


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def config_values() -> dict:
    """The shipped configuration in JSON types (``v2x wire info --json``'s keys, paths relative)."""
    d = profile().to_dict()
    d["grid"]["source"] = _rel(d["grid"]["source"])
    d["codebook"]["path"] = _rel(d["codebook"]["path"])
    d["codebook"]["file_bytes"] = SHIPPED_CODEBOOK_FILE.stat().st_size
    del d["method"], d["messages"]
    return d


def render_config() -> str:
    """The shipped-configuration section of ``docs/wire-format.md``."""
    import hashlib

    p, d = profile(), config_values()
    g, fg, bg, cb = p.grid, d["feature_grid"], d["block_grid"], d["codebook"]
    digest = hashlib.sha256(p.grid_text.encode()).digest()
    rows = [
        (
            f"grid (the detector's, `{d['grid']['source']}`)",
            f"x in [{g.x_min}, {g.x_max}), y in [{g.y_min}, {g.y_max}), z in [{g.z_min}, {g.z_max}), "
            f"voxel (pillar) {g.voxel} m, stride {g.stride}",
        ),
        ("feature grid", f"{fg['cell_m']} m cells, `H x W = {fg['H']} x {fg['W']}` ({fg['cells']:,} cells)"),
        (f"block grid (`b = {bg['b']}`)", f"`Hb x Wb = {bg['Hb']} x {bg['Wb']}` ({bg['blocks']:,} blocks)"),
        ("grid fingerprint text", f"`{p.grid_text}`"),
        ("its SHA-256, first 4 bytes", "`" + " ".join(f"{x:02x}" for x in digest[:4]) + "`"),
        ("grid fingerprint (header bytes 48..51)", f"`{d['grid_fingerprint']}`"),
        ("codebook file", f"`{_rel(SHIPPED_CODEBOOK_FILE)}` ({cb['file_bytes']:,} bytes)"),
        (
            "codebook identity (header bytes 52..55)",
            f"`{cb['identity']}` (SHA-256 `{cb['identity_sha256']}`)",
        ),
        (
            "codebook shape",
            f"C = {cb['channels']} channels, r = {cb['r']} stages, m = {cb['m']} sub-codebooks of "
            f"C/m = {cb['channels'] // cb['m']} dimensions, k = {cb['k']} codewords each: "
            f"B = {cb['bits']} bits per index, P = r * m = {cb['indices_per_cell']} indices per cell",
        ),
    ]
    parts = [CONFIG_BEGIN, "", "| | shipped |", "| --- | --- |"]
    parts += [f"| {k} | {v} |" for k, v in rows]
    parts += [
        "",
        "The messages of each method (`v2x wire info --method NAME`). Early fusion's points travel in a "
        "format of their own, `V2XP`, specified in `comm/wire_points.py`; every other message is wire "
        "format v1.",
        "",
    ]
    parts += ["| method | messages: name (v1 type) from sender on topic |", "| --- | --- |"]
    for name, method in METHODS.items():
        kinds = message_kinds(method)
        text = "; ".join(
            f"{k.name} ({k.wire_type if k.wire_type is not None else k.format}) from the {k.sender} "
            f"on `{k.topic}`"
            for k in kinds
        )
        parts.append(f"| `{name}`{' (default)' if name == DEFAULT_METHOD else ''} | {text or 'nothing'} |")
    parts += [
        "",
        "The same values as JSON (what `v2x wire info --json` prints, with its `method` and `messages`):",
        "",
        "```json",
        _json_lines(d),
        "```",
        "",
        CONFIG_END,
    ]
    return "\n".join(parts)


def render_envelope() -> list[str]:
    """The example of one complete ZeroMQ message: topic, envelope and wire message."""
    topic, frames, header = envelope_example()
    parts = [
        f"### Example {len(examples()) + 1}: one ZeroMQ message",
        "",
        f"The offer of the example above as the replay's collaborator `agent3` publishes it on `{topic}`: "
        f"a {len(frames)}-part ZeroMQ message. Part 1 is the topic, part 2 the msgpack envelope, "
        "part 3 the wire message.",
        "",
    ]
    for i, (name, frame) in enumerate(
        zip(("topic (UTF-8)", "envelope (msgpack)", "wire message"), frames, strict=False), 1
    ):
        parts += [
            f"Part {i}, {name}, {len(frame)} bytes (`part-{i}`):",
            "",
            "```text",
            hexdump(frame),
            "```",
            "",
        ]
    parts += ["The envelope decoded (`envelope`):", "", "```json", _json_lines(header), "```", ""]
    return parts


def render() -> str:
    """The examples section of ``docs/wire-format.md``."""
    parts = [BEGIN, ""]
    for i, ex in enumerate(examples(), 1):
        parts += [
            f"### Example {i}: {ex.title}",
            "",
            ex.what,
            "",
            f"{len(ex.data)} bytes (`{ex.name}`):",
            "",
            "```text",
            hexdump(ex.data),
            "```",
            "",
            "| offset | bytes | field | value |",
            "| ---: | ---: | --- | --- |",
        ]
        parts += [f"| {o} | {n} | {name} | {value} |" for o, n, name, value in ex.fields]
        parts += ["", f"Decoded (`{ex.name}`):", "", "```json", _json_lines(ex.decoded), "```", ""]
    parts += render_envelope()
    parts.append(END)
    return "\n".join(parts)


def update(path: Path) -> bool:
    """Replace the generated sections of ``path``; returns whether anything changed."""
    text = path.read_text()
    new = text
    for begin, end, body in ((CONFIG_BEGIN, CONFIG_END, render_config()), (BEGIN, END, render())):
        start, stop = new.index(begin), new.index(end) + len(end)
        new = new[:start] + body + new[stop:]
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", type=Path, help="rewrite the generated sections of this markdown file")
    args = ap.parse_args(argv)
    if args.update:
        print(f"{args.update}: {'updated' if update(args.update) else 'already current'}")
    else:
        print(render_config() + "\n\n" + render())


if __name__ == "__main__":
    main()
