"""Real V2V4Real per-agent detections for the tracking tests (skipped where the data is absent)."""

from __future__ import annotations

import pytest


def real_frames(realdata, sequence: str = "0004", n: int = 150) -> list:
    """The first ``n`` two-agent frames of a train sequence, as ``v2x track`` reads them."""
    from v2x.experiments.tracking_files import read_agent_sequences, seqmap_lengths

    root = realdata / "v2v4real"
    if not (root / "per_agent_detections_train").is_dir():
        pytest.skip(f"no V2V4Real per-agent detections under {root}")
    lengths = seqmap_lengths(root / "train.seqmap")
    for name, frames in read_agent_sequences(root / "per_agent_detections_train", lengths=lengths):
        if name == sequence:
            return frames[:n]
    pytest.skip(f"sequence {sequence} not found")
