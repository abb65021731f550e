"""Everything needed to run spconv on a CPU-only torch, in one place.

Two quirks of spconv 2.3 on CPU (see the design card, section 5):

* in inference (eval mode) spconv fuses a convolution's bias into its CPU kernel, which
  refuses it ("cpu don't support act and bias"): our sparse convolutions are built with
  ``bias=False`` (a BatchNorm follows each one anyway); :func:`sparse_conv_kwargs` is what our
  layers pass, so nobody forgets;
* backward calls ``torch.cuda.current_stream()`` through ``spconv.pytorch.ops.get_current_stream``,
  which fails without CUDA; :func:`install` replaces it with a function returning 0 (the
  default-stream handle spconv's CPU kernels ignore) when CUDA is unavailable.

``tests/core/test_spconv_compat.py`` fails if either workaround stops being needed or stops working.
"""

from __future__ import annotations

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
