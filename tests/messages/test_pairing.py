"""Each detector's own codebook: picked with it, and a codebook fitted on another detector named."""

from __future__ import annotations

import logging

from v2x.messages.codebook import Codebook, CodebookConfig
from v2x.messages.pairing import (
    DAIR_CODEBOOK,
    DEFAULT_CODEBOOK,
    codebook_detector,
    pairing_problem,
    resolve_codebook,
    warn_if_mispaired,
)
from v2x.perception.detector import DAIR_WEIGHTS, DEFAULT_WEIGHTS, load_detector


def test_each_shipped_detector_gets_its_own_codebook_and_an_explicit_one_wins(tmp_path):
    assert resolve_codebook(None, DAIR_WEIGHTS) == DAIR_CODEBOOK
    assert resolve_codebook(None, DEFAULT_WEIGHTS) == DEFAULT_CODEBOOK
    assert resolve_codebook(None, tmp_path / "mine.pt") == DEFAULT_CODEBOOK
    assert resolve_codebook(tmp_path / "cb.pt", DAIR_WEIGHTS) == tmp_path / "cb.pt"


def test_a_codebook_fitted_on_another_detector_is_named_with_both(tmp_path, caplog):
    path = tmp_path / "cb.pt"
    Codebook(CodebookConfig(channels=8, m=2, r=1, k=4)).save(path, detector="aaaa1111")
    assert codebook_detector(path) == "aaaa1111"
    assert pairing_problem(path, "aaaa1111") is None
    problem = pairing_problem(path, "bbbb2222")
    assert problem is not None and "aaaa1111" in problem and "bbbb2222" in problem and str(path) in problem
    with caplog.at_level(logging.WARNING, logger="v2x.messages"):
        warn_if_mispaired(path, "bbbb2222")
    assert "bbbb2222" in caplog.text
    bare = tmp_path / "bare.pt"
    Codebook(CodebookConfig(channels=8, m=2, r=1, k=4)).save(bare)
    assert pairing_problem(bare, "bbbb2222") is None  # says nothing of its detector: nothing to compare


def test_the_shipped_dair_codebook_was_fitted_on_the_shipped_dair_detector():
    assert codebook_detector(DAIR_CODEBOOK) == load_detector(DAIR_WEIGHTS).identity()
