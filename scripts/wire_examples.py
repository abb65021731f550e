"""Example messages of wire format v1, as hex dumps with field annotations, for ``docs/wire-format.md``.

The document's examples section is this module's output; a test checks they agree, so the
specification cannot drift from the code. Regenerate after a change to the format with::

    .venv/bin/python scripts/wire_examples.py --update docs/wire-format.md
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v2x.comm.wire import HEADER, Header, MessageType, decode, encode
from v2x.core.grid import BEVGrid

__all__ = ["BEGIN", "END", "Example", "examples", "hexdump", "render"]

BEGIN = "<!-- BEGIN GENERATED EXAMPLES (python scripts/wire_examples.py --update docs/wire-format.md) -->"
END = "<!-- END GENERATED EXAMPLES -->"

#: the default grid, spelled out so the examples do not move if the defaults ever do
GRID = BEVGrid(x_min=-70.4, x_max=70.4, y_min=-40.0, y_max=40.0, z_min=-3.0, z_max=1.0, voxel=0.4, stride=2)
CODEBOOK_ID = 0x1234ABCD


@dataclass
class Example:
    name: str
    title: str
    what: str
    data: bytes
    fields: list[tuple[int, int, str, str]]  # offset, length, field, value as decoded


def _header(kind: MessageType, unit: int = 0, sender: int = 2, seq: int = 17) -> Header:
    return Header(
        kind,
        sender=sender,
        seq=seq,
        stamp_ns=1_700_000_000_123_456_789,
        pose=(5123.25, -2210.5, 0.5, 0.25),
        grid_id=GRID.fingerprint(),
        codebook_id=CODEBOOK_ID if kind == MessageType.CODEBOOK else 0,
        unit=unit,
    )


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


def examples() -> list[Example]:
    shape = GRID.shape
    out = []

    # 1. codebook features: 4 cells, m=2 sub-codebooks x r=2 stages, k=256 (8 bits per index)
    cells = np.array([1236, 1234, 9000, 1235])
    codes = np.array([[3, 250, 17, 0], [1, 2, 3, 4], [255, 128, 64, 32], [9, 8, 7, 6]])
    data = encode(_header(MessageType.CODEBOOK, unit=8), shape, cells, codes=codes)
    f = _header_fields(data)
    f += [
        (64, 1, "cell count (varint)", "4"),
        (65, 2, "delta 0 (varint)", "1234 -> cell 1234"),
        (67, 1, "delta 1", "0 -> cell 1235"),
        (68, 1, "delta 2", "0 -> cell 1236"),
        (69, 2, "delta 3", "7763 -> cell 9000"),
        (71, 1, "indices per cell", "4"),
        (72, 16, "codes, 8 bits each, cells ascending", "1 2 3 4 / 9 8 7 6 / 3 250 17 0 / 255 128 64 32"),
    ]
    out.append(
        Example(
            "codebook",
            "Codebook features (delta + varint cells)",
            "Sender 2 sends 4 cells (flat indices 1234, 1235, 1236, 9000) with 4 codebook indices each "
            "(r = 2 stages x m = 2 sub-codebooks, k = 256, so 8 bits per index). The encoder sorts the "
            "cells; the rows of codes follow them. Delta + varint (7 bytes) beats Golomb-Rice (8), "
            "run-length (8) and the bitmap (2,201), so flags = 0x02.",
            data,
            f,
        )
    )

    # 2. the same kind of message with a run: run-length coding, 5-bit indices
    cells = np.arange(3000, 3006)
    codes = np.array([[31, 0], [1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    data = encode(_header(MessageType.CODEBOOK, unit=5, seq=18), shape, cells, codes=codes)
    f = _header_fields(data)[2:5] + [
        (64, 1, "cell count", "6"),
        (65, 1, "run count", "1"),
        (66, 2, "run 0: gap (varint)", "3000 -> starts at cell 3000"),
        (68, 1, "run 0: length - 1", "5 -> cells 3000..3005"),
        (69, 1, "indices per cell", "2"),
        (70, 8, "codes, 5 bits each, MSB first", "31 0 1 2 3 4 5 6 7 8 9 10 + 4 zero bits"),
    ]
    out.append(
        Example(
            "run-length",
            "Codebook features (run-length cells, 5-bit indices)",
            "Six consecutive cells 3000..3005, two indices each from a k = 32 codebook (5 bits). "
            "Run-length: 4 bytes; delta + varint would take 8. 12 indices x 5 bits = 60 bits = 8 bytes.",
            data,
            f,
        )
    )

    # 2b. scattered cells: Golomb-Rice
    cells = np.array([40, 45, 61, 100, 130, 131, 190, 250])
    codes = np.arange(8)[:, None] % 4
    data = encode(_header(MessageType.CODEBOOK, unit=2, seq=21), shape, cells, codes=codes)
    f = _header_fields(data)[3:5] + [
        (64, 1, "cell count", "8"),
        (65, 1, "Rice parameter k", "4"),
        (66, 7, "bit stream", "unary quotients 2,0,0,2,1,0,3,3 then 4-bit remainders 8,4,15,6,13,0,10,11"),
        (73, 1, "indices per cell", "1"),
        (74, 2, "codes, 2 bits each", "0 1 2 3 0 1 2 3"),
    ]
    out.append(
        Example(
            "rice",
            "Codebook features (Golomb-Rice cells)",
            "Eight scattered cells 40, 45, 61, 100, 130, 131, 190, 250 with one 2-bit index each (k = 4). "
            "Gaps d = 40, 4, 15, 38, 29, 0, 58, 59. With k = 4: quotients d >> 4 in unary "
            "(110 0 0 110 10 0 1110 1110, 19 bits), then the remainders d & 15 in 4 bits each (32 bits): "
            "51 bits, padded to 7 bytes. With the count and the k byte the set takes 9 bytes; delta + varint "
            "also takes 9 and the tie goes to the lower coding number (0, Rice); run-length takes 16.",
            data,
            f,
        )
    )

    # 3. demand (complement form)
    data = encode(
        _header(MessageType.DEMAND, unit=4, sender=1, seq=5), shape, [100, 101, 145], complement=True
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
            "The ego (sender 1) is confident in blocks 100, 101 and 145 of its 25 x 44 grid of 4 x 4-cell "
            "blocks (unit = 4) and demands every other block at level 3. Flags = 0x22: delta coding (2) "
            "and complement (0x20).",
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
            "Collaborator 3 offers blocks 7, 8 and 300 of its own block grid with levels 3, 1 and 2. "
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
    for ex in out:  # every example is a valid message
        decode(ex.data, shape, GRID.fingerprint(), CODEBOOK_ID)
    return out


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
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def update(path: Path) -> bool:
    """Replace the generated section of ``path``; returns whether anything changed."""
    text = path.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + render() + text[end:]
    path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", type=Path, help="rewrite the examples section of this markdown file")
    args = ap.parse_args(argv)
    if args.update:
        print(f"{args.update}: {'updated' if update(args.update) else 'already current'}")
    else:
        print(render())


if __name__ == "__main__":
    main()
