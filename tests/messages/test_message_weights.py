"""Message weights (v2x.messages.message_weights): their identity on the wire, refusals at load
and by receivers, and which file a run picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2x.comm.wire import CodebookMismatchError
from v2x.core.frame import AgentKind
from v2x.core.grid import BEVGrid
from v2x.messages.codec import MessageCodec
from v2x.messages.message_weights import (
    DEFAULT_MESSAGE_WEIGHTS,
    MessageWeights,
    MessageWeightsMismatchError,
    clone_detector,
    load_message_weights,
    message_weights_path,
    save_message_weights,
)
from v2x.perception.config import DetectorConfig
from v2x.perception.cooperative import AgentPerception
from v2x.perception.detector import DAIR_WEIGHTS, DEFAULT_WEIGHTS, CooperativeDetector
from v2x.pipeline.methods import get_method

GRID = BEVGrid()


@pytest.fixture(scope="module")
def detector() -> CooperativeDetector:
    torch.manual_seed(0)
    return CooperativeDetector(DetectorConfig(bev_channels=16)).eval()


def _agent() -> AgentPerception:
    h, w = GRID.shape
    feats = torch.zeros(16, h, w)
    occ = torch.zeros(h, w, dtype=torch.bool)
    occ[50:60, 100:110] = True
    feats[:, occ] = torch.rand(16, int(occ.sum()))
    conf = np.where(occ.numpy(), 0.9, 0.0).astype(np.float32)
    return AgentPerception("7", AgentKind.VEHICLE, 1, np.eye(4), feats, occ, conf, None)


def test_round_trip_and_identity_follows_the_decoder(codebook, detector, tmp_path):
    path = tmp_path / "m.pt"
    ident = save_message_weights(path, codebook, detector, detector.identity())
    mw = load_message_weights(path, detector)
    assert mw.identity_hex() == ident and torch.equal(mw.codebook.codewords, codebook.codewords)
    # same codebook, another decoder: another identity
    other = clone_detector(detector)
    with torch.no_grad():
        next(other.head.parameters()).add_(0.5)
    assert MessageWeights(codebook, other).identity() != mw.identity()
    assert mw.identity() != codebook.identity()


def test_a_message_of_other_message_weights_is_refused_by_identity(codebook, detector):
    other = clone_detector(detector)
    with torch.no_grad():
        next(other.head.parameters()).add_(0.5)
    a, b = MessageWeights(codebook, detector), MessageWeights(codebook, other)
    send = MessageCodec(GRID, a.codebook, codebook_id=a.identity())
    scheme = get_method("codebook").features
    data = send.feature_message(scheme, _agent(), 1024).data
    # the same message weights decode it ...
    assert len(MessageCodec(GRID, a.codebook, codebook_id=a.identity()).read_sparse(data).cells) > 0
    # ... others with the very same codewords refuse it, and so does the bare codebook
    for codec in (MessageCodec(GRID, b.codebook, codebook_id=b.identity()), MessageCodec(GRID, codebook)):
        with pytest.raises(CodebookMismatchError) as err:
            codec.read_sparse(data)
        assert err.value.reason == "codebook_mismatch"


def test_load_refuses_another_detector_and_files_that_are_not_message_weights(codebook, detector, tmp_path):
    path = tmp_path / "m.pt"
    save_message_weights(path, codebook, detector, "0123456789abcdef")
    with pytest.raises(MessageWeightsMismatchError, match="0123456789abcdef") as err:
        load_message_weights(path, detector)
    assert detector.identity() in str(err.value) and str(path) in str(err.value)
    bad = tmp_path / "codebook.pt"
    codebook.save(bad)
    with pytest.raises(ValueError, match=r"codebook\.pt: field 'kind'"):
        load_message_weights(bad, detector)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        load_message_weights(junk, detector)
    with pytest.raises(FileNotFoundError, match="v2x train messages"):
        load_message_weights(tmp_path / "absent.pt", detector)


def test_which_message_weights_a_run_picks(tmp_path):
    given = tmp_path / "mine.pt"
    given.write_bytes(b"x")
    assert message_weights_path(str(given), None, DEFAULT_WEIGHTS) == given
    assert message_weights_path("none", None, DEFAULT_WEIGHTS) is None
    # a named codebook means that codebook with the detector's own head
    assert message_weights_path(None, "cb.pt", DEFAULT_WEIGHTS) is None
    with pytest.raises(ValueError, match="not both"):
        message_weights_path(str(given), "cb.pt", DEFAULT_WEIGHTS)
    with pytest.raises(FileNotFoundError):
        message_weights_path(str(tmp_path / "absent.pt"), None, DEFAULT_WEIGHTS)
    # not given: the detector's shipped file, where it exists
    shipped = message_weights_path(None, None, DEFAULT_WEIGHTS)
    assert shipped == (DEFAULT_MESSAGE_WEIGHTS if DEFAULT_MESSAGE_WEIGHTS.is_file() else None)
    dair = message_weights_path(None, None, DAIR_WEIGHTS)
    assert dair is not None and dair.name == "messages_dair.pt"


def test_the_dair_detector_s_shipped_message_weights_pair_with_it():
    """messages_dair.pt trains the codewords alone (v2x/configs/train_messages_dair.yaml): it must
    load with the shipped DAIR detector, its decoder that detector's own, its codebook trained
    away from the k-means one it started from."""
    from v2x.messages.codebook import load_codebook
    from v2x.messages.pairing import DAIR_CODEBOOK
    from v2x.perception.detector import load_detector

    detector = load_detector(DAIR_WEIGHTS)
    weights = load_message_weights(message_weights_path(None, None, DAIR_WEIGHTS), detector)
    own = detector.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in weights.decoder.state_dict().items())
    start = load_codebook(DAIR_CODEBOOK).codewords
    assert weights.codebook.codewords.shape == start.shape
    assert not torch.equal(weights.codebook.codewords, start)
    assert weights.identity() != load_codebook(DAIR_CODEBOOK).identity()
