import numpy as np
import pytest
import torch

from v2x.messages.codebook import (
    Codebook,
    CodebookConfig,
    cells_from_maps,
    evaluate_codebook,
    train_codebook,
)


def _clustered(n, channels=16, clusters=24, seed=0):
    """Cell-like features: non-negative, drawn around a few centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(clusters, channels, generator=g) * 2
    pick = torch.randint(clusters, (n,), generator=g)
    return (centres[pick] + 0.05 * torch.randn(n, channels, generator=g)).clamp(min=0)


def test_quantize_gives_straight_through_and_codeword_gradients():
    cb = Codebook(CodebookConfig(channels=16, m=2, r=2, k=8))
    cb.fit(_clustered(500), iters=3)
    x = _clustered(64, seed=1).requires_grad_(True)
    qz = cb.quantize(x)
    assert torch.allclose(qz.x_st.detach(), qz.q.detach(), atol=1e-6) and qz.indices.shape == (64, 4)
    qz.x_st.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight through to the encoder
    qz.codebook_loss.backward()
    assert cb.codewords.grad is not None and cb.codewords.grad.abs().sum() > 0
    assert torch.allclose(qz.commitment_loss, qz.codebook_loss)  # same value, different gradients


def test_training_from_a_collapsed_start_restarts_dead_codes_and_learns():
    data = _clustered(6000)
    cb = Codebook(CodebookConfig(channels=16, m=2, r=1, k=16))
    cb.codewords.data[:] = data[:1].reshape(1, 2, 8)[:, :, None, :]  # every codeword the same point
    before = evaluate_codebook(cb, data.split(1000))
    batches = list(data.split(256))
    log = train_codebook(cb, batches, steps=150, lr=2e-2, restart_every=25)
    after = evaluate_codebook(cb, data.split(1000))
    assert sum(e.get("restarted", 0) for e in log) > 0
    assert after["used_fraction"] > 0.5 > before["used_fraction"]
    assert after["relative_error"] < 0.5 * before["relative_error"]


def test_kmeans_stages_reduce_the_error_and_evaluation_reports_usage():
    data = _clustered(4000)
    cb = Codebook(CodebookConfig(channels=16, m=2, r=3, k=16))
    info = cb.fit(data, iters=8)
    rel = evaluate_codebook(cb, data.split(1000))
    assert np.all(np.diff(rel["relative_error_per_stage"]) < 0)
    assert rel["relative_error_per_stage"] == pytest.approx(info["relative_error_per_stage"], rel=1e-4)
    assert rel["cells"] == 4000 and 0 < rel["index_entropy_bits"] <= 4 and rel["bits_per_cell"] == 24


def test_a_task_loss_reaches_the_codewords_through_quantized_maps():
    cb = Codebook(CodebookConfig(channels=8, m=2, r=1, k=4))
    cb.fit(_clustered(300, channels=8), iters=2)
    fmap = torch.zeros(8, 10, 12)
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2:5, 3:7] = True
    fmap[:, mask] = _clustered(int(mask.sum()), channels=8, seed=3).T
    fmap[:, 0, 0] = 7.0  # an unmasked cell: left as it is
    q = cb.quantize_map(fmap, mask)
    assert torch.equal(q[:, 0, 0], fmap[:, 0, 0])
    assert torch.allclose(q[:, mask].T, cb.decode(cb.encode(fmap[:, mask].T)))
    target = torch.ones(8)

    def head_loss(x, qz):  # stands in for a frozen detection head's loss on the quantised map
        return ((cb.quantize_map(fmap, mask)[:, mask].T - target) ** 2).mean()

    before = head_loss(None, None).item()
    train_codebook(cb, [fmap[:, mask].T], steps=30, lr=5e-2, task_loss=head_loss, restart_every=0)
    assert head_loss(None, None).item() < before


def test_cells_from_maps_skips_empty_cells_and_honours_masks():
    maps = torch.zeros(3, 4, 5, 6)
    maps[0, :, 1, 1] = 1.0
    maps[1, :, 2, :] = 2.0
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[0, 0] = True
    got = list(cells_from_maps([maps[0], maps[1], (maps[2], mask)]))
    assert [len(g) for g in got] == [1, 6, 1] and torch.equal(got[2], torch.zeros(1, 4))
    assert [len(g) for g in cells_from_maps([maps[1]], per_map=2)] == [2]
    with pytest.raises(ValueError, match="no feature batches"):
        train_codebook(Codebook(CodebookConfig(channels=4, m=1, r=1, k=2)), [], steps=2)
