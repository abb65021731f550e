"""Everything needed to run spconv on a CPU-only torch, in one place.

Three quirks of spconv 2.3 on CPU (the first two are in the design card, section 5):

* in inference (eval mode) spconv fuses a convolution's bias into its CPU kernel, which
  refuses it ("cpu don't support act and bias"): our sparse convolutions are built with
  ``bias=False`` (a BatchNorm follows each one anyway); :func:`sparse_conv_kwargs` is what our
  layers pass, so nobody forgets;
* backward calls ``torch.cuda.current_stream()`` through ``spconv.pytorch.ops.get_current_stream``,
  which fails without CUDA; :func:`install` replaces it with a function returning 0 (the
  default-stream handle spconv's CPU kernels ignore) when CUDA is unavailable;
* with more than one torch thread, the first submanifold convolution gives results that differ
  at float rounding from one process to the next (the same input, bit for bit different maps;
  within one process repeated calls agree). Those differences flip borderline detections and
  moved AP by up to 0.4 points between runs of the same evaluation. :func:`one_thread` runs
  the sparse backbone on one thread, which makes every process agree.

``tests/core/test_spconv_compat.py`` fails if the first two stop being needed or any stops working.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_installed = False


def _cpu_stream() -> int:
    return 0


def install() -> None:
    """Patch spconv for CPU-only torch (idempotent). Import :mod:`spconv.pytorch` through this."""
    global _installed
    if _installed:
        return
    from spconv.pytorch import ops

    if not torch.cuda.is_available():
        ops.get_current_stream = _cpu_stream
    _installed = True


def sparse_conv_kwargs() -> dict:
    """Keyword arguments every sparse convolution of ours takes."""
    return {"bias": False}


def spconv_module():
    """``spconv.pytorch`` with the CPU shims installed."""
    install()
    import spconv.pytorch as spconv

    return spconv


@contextmanager
def one_thread() -> Iterator[None]:
    """Run spconv's CPU kernels on one thread (see the module docstring), then restore torch's
    thread count."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_thread_backward(output: torch.Tensor, sparse_input: torch.Tensor) -> torch.Tensor:
    """The same for backward: from when the gradient reaches ``output`` (the sparse backbone's
    result) until it reaches ``sparse_input`` (its features), torch runs on one thread.
    Returns ``output``; a no-op without gradients or with one thread."""
    if not (torch.is_grad_enabled() and output.requires_grad and sparse_input.requires_grad):
        return output
    threads = torch.get_num_threads()
    if threads == 1:
        return output

    def enter(grad: torch.Tensor) -> None:
        torch.set_num_threads(1)

    def leave(grad: torch.Tensor) -> None:
        torch.set_num_threads(threads)

    output.register_hook(enter)
    sparse_input.register_hook(leave)
    return output
