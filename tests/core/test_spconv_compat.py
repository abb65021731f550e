"""The CPU shims for spconv: fail loudly if they stop working or stop being needed."""

import subprocess
import sys
import textwrap

import pytest
import torch

from v2x.perception.spconv_compat import sparse_conv_kwargs, spconv_module

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the shims are for CPU-only torch")


def _sparse_input(spconv, channels=4):
    coords = torch.tensor([[0, 1, 1], [0, 2, 3], [0, 5, 5]], dtype=torch.int32)
    feats = torch.randn(3, channels, requires_grad=True)
    return spconv.SparseConvTensor(feats, coords, [8, 8], 1), feats


def test_backward_runs_on_cpu_with_the_shim():
    spconv = spconv_module()
    conv = spconv.SubMConv2d(4, 8, 3, padding=1, indice_key="k", **sparse_conv_kwargs())
    x, feats = _sparse_input(spconv)
    conv(x).features.sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    assert conv.weight.grad.abs().sum() > 0


def test_without_the_shim_backward_still_fails():
    """If this starts passing, spconv fixed its CPU backward and the shim can go."""
    code = textwrap.dedent(
        """
        import torch, spconv.pytorch as spconv
        conv = spconv.SubMConv2d(4, 8, 3, padding=1, indice_key="k", bias=False)
        coords = torch.tensor([[0, 1, 1], [0, 2, 3]], dtype=torch.int32)
        feats = torch.randn(2, 4, requires_grad=True)
        conv(spconv.SparseConvTensor(feats, coords, [8, 8], 1)).features.sum().backward()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "cuda" in proc.stderr.lower()


def test_bias_is_still_unsupported_in_cpu_inference():
    """In eval mode spconv fuses the bias into its CPU kernel, which refuses it.

    If this starts passing, sparse_conv_kwargs() no longer needs to force bias=False.
    """
    spconv = spconv_module()
    conv = spconv.SubMConv2d(4, 8, 3, padding=1, indice_key="k", bias=True).eval()
    x, _ = _sparse_input(spconv)
    with torch.no_grad(), pytest.raises(Exception, match=r"(?i)bias"):
        conv(x)


def test_our_sparse_layers_run_in_cpu_inference():
    spconv = spconv_module()
    conv = spconv.SubMConv2d(4, 8, 3, padding=1, indice_key="k", **sparse_conv_kwargs()).eval()
    x, _ = _sparse_input(spconv)
    with torch.no_grad():
        assert conv(x).features.shape == (3, 8)


_ENCODE_AND_BACKWARD = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np, torch
    torch.set_num_threads(2)
    if sys.argv[1] == "unguarded":
        import contextlib, v2x.perception.encoder as encoder
        encoder.one_thread = contextlib.nullcontext
        encoder.one_thread_backward = lambda out, inp: out
    from v2x.perception.config import DetectorConfig
    from v2x.perception.encoder import PillarEncoder, sanitize_points
    torch.manual_seed(0)
    cfg = DetectorConfig()
    enc = PillarEncoder(cfg)
    rng = np.random.default_rng(0)
    n = 60000
    r, a = rng.uniform(2, 70, n), rng.uniform(-np.pi, np.pi, n)
    pts = np.c_[r * np.cos(a), r * np.sin(a), rng.uniform(-0.5, 2.5, n), rng.uniform(0, 1, n)]
    bev = enc([sanitize_points(pts.astype(np.float32), cfg)])
    (bev.features ** 2).sum().backward()
    digest = hashlib.sha1(bev.features.detach().numpy().tobytes())
    for p in enc.parameters():
        digest.update(p.grad.numpy().tobytes())
    print(digest.hexdigest())
    """
)


def _digests(mode: str, runs: int) -> set[str]:
    out = set()
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", _ENCODE_AND_BACKWARD, mode], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out.add(proc.stdout.split()[-1])
    return out


@pytest.mark.slow
def test_the_encoder_is_reproducible_across_processes_with_two_threads():
    """Forward maps and backward gradients agree bit for bit from one process to the next, with
    torch on two threads: spconv's kernels run on one (``one_thread``, ``one_thread_backward``)."""
    assert len(_digests("guarded", 3)) == 1
