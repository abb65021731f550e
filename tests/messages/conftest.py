"""Fixtures the message tests share."""

from __future__ import annotations

import pytest
import torch

from v2x.messages.codebook import Codebook, CodebookConfig


@pytest.fixture(scope="module")
def codebook() -> Codebook:
    """A small codebook (16 channels, m2r2k16) fitted on random features: codes to encode with."""
    torch.manual_seed(0)
    cb = Codebook(CodebookConfig(channels=16, m=2, r=2, k=16))
    cb.fit(torch.rand(4000, 16), iters=5)
    return cb
