"""A learned codebook for BEV cell features: residual stages of product quantisers.

A C-dimensional cell feature is split into ``m`` sub-vectors; each is replaced by the nearest of
``k`` codewords of its sub-codebook; ``r`` residual stages then quantise what the previous
stages left. A cell becomes ``r * m`` integers of ``ceil(log2 k)`` bits, and the ego decodes them
with the same tensors. The codebook's identity (a hash of its tensors and shape) travels in
every message so a mismatch is refused rather than decoded into garbage.

Training: residual product k-means on features of a frozen detector (``fit``), optionally
refined through the frozen detector's head with a detection loss.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["Codebook", "CodebookConfig", "load_codebook"]


@dataclass(frozen=True)
class CodebookConfig:
    channels: int = 64
    m: int = 2  # product sub-codebooks
    r: int = 2  # residual stages
    k: int = 64  # codewords per sub-codebook

    def __post_init__(self) -> None:
        if self.channels % self.m:
            raise ValueError(f"channels ({self.channels}) must be divisible by m ({self.m})")
        if not (1 <= self.r <= 8 and 2 <= self.k <= 65536 and 1 <= self.m <= 64):
            raise ValueError(f"unsupported codebook shape {self}")

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(self.k)))

    @property
    def indices_per_cell(self) -> int:
        return self.r * self.m

    @property
    def bits_per_cell(self) -> int:
        return self.indices_per_cell * self.bits

    def label(self) -> str:
        return f"m{self.m}r{self.r}k{self.k}"


class Codebook(nn.Module):
    def __init__(self, cfg: CodebookConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.channels // cfg.m
        self.codewords = nn.Parameter(torch.zeros(cfg.r, cfg.m, cfg.k, d))

    # -- encode / decode -------------------------------------------------------------------------
    def _nearest(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """(N, m) index of the nearest codeword of each sub-vector at ``stage``."""
        cfg = self.cfg
        sub = x.reshape(len(x), cfg.m, cfg.channels // cfg.m)  # (N, m, d)
        cw = self.codewords[stage]  # (m, k, d)
        d2 = (
            (sub**2).sum(-1, keepdim=True) - 2 * torch.einsum("nmd,mkd->nmk", sub, cw) + (cw**2).sum(-1)[None]
        )
        return d2.argmin(dim=-1)

    def _lookup(self, idx: torch.Tensor, stage: int) -> torch.Tensor:
        cfg = self.cfg
        cw = self.codewords[stage]
        parts = cw[torch.arange(cfg.m)[None, :], idx]  # (N, m, d)
        return parts.reshape(len(idx), cfg.channels)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) features -> (N, r * m) int64 indices (stage-major)."""
        residual = x.float()
        out = []
        for s in range(self.cfg.r):
            idx = self._nearest(residual, s)
            out.append(idx)
            residual = residual - self._lookup(idx, s)
        return torch.cat(out, dim=1) if out else torch.zeros(len(x), 0, dtype=torch.long)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(N, r * m) indices -> (N, C) features."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(len(indices), self.cfg.r, self.cfg.m)
        out = torch.zeros(len(idx), self.cfg.channels)
        for s in range(self.cfg.r):
            out = out + self._lookup(idx[:, s], s)
        return out

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Straight-through quantisation for training: (quantised x with x's gradient, codebook loss)."""
        idx = self.encode(x.detach())
        q = self.decode(idx)
        codebook_loss = ((q - x.detach()) ** 2).mean()
        return x + (q - x).detach(), codebook_loss

    # -- training --------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, features: torch.Tensor, iters: int = 25, seed: int = 0, progress=None) -> dict:
        """Residual product k-means (Lloyd) on (N, C) samples; returns the relative error per stage."""
        g = torch.Generator().manual_seed(seed)
        x = features.float()
        residual = x.clone()
        errors = []
        cfg = self.cfg
        for s in range(cfg.r):
            sub = residual.reshape(len(x), cfg.m, -1)
            for j in range(cfg.m):
                data = sub[:, j]
                init = data[torch.randperm(len(data), generator=g)[: cfg.k]]
                if len(init) < cfg.k:  # fewer samples than codewords: repeat with jitter
                    init = init[torch.randint(len(init), (cfg.k,), generator=g)] + 1e-3 * torch.randn(
                        cfg.k, data.shape[1], generator=g
                    )
                centres = init.clone()
                for _ in range(iters):
                    assign = torch.cdist(data, centres).argmin(dim=1)
                    sums = torch.zeros_like(centres).index_add_(0, assign, data)
                    counts = torch.bincount(assign, minlength=cfg.k).float()
                    empty = counts == 0
                    centres = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
                    if empty.any():  # restart dead codewords on the worst-served samples
                        far = torch.cdist(data, centres).min(dim=1).values.topk(int(empty.sum())).indices
                        centres[empty] = data[far]
                    if progress:
                        progress()
                self.codewords.data[s, j] = centres
            idx = self._nearest(residual, s)
            residual = residual - self._lookup(idx, s)
            errors.append(float((residual**2).sum() / (x**2).sum().clamp(min=1e-12)))
        return {"relative_error_per_stage": errors}

    # -- identity and persistence ---------------------------------------------------------------
    def identity_hex(self) -> str:
        h = hashlib.sha256(repr(asdict(self.cfg)).encode())
        h.update(self.codewords.detach().cpu().numpy().astype("<f4").tobytes())
        return h.hexdigest()

    def identity(self) -> int:
        """32-bit identity carried in every codebook message."""
        return int(self.identity_hex()[:8], 16)

    def save(self, path: str | Path, **extra) -> None:
        torch.save({"config": asdict(self.cfg), "codewords": self.codewords.detach().cpu(), **extra}, path)


def load_codebook(path: str | Path) -> Codebook:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cb = Codebook(CodebookConfig(**ckpt["config"]))
    cb.codewords.data.copy_(ckpt["codewords"])
    return cb.eval()


def sample_cells(
    features: torch.Tensor, occupied: torch.Tensor, limit: int, rng: np.random.Generator
) -> torch.Tensor:
    """Occupied cells' feature vectors of a (B, C, H, W) batch, at most ``limit`` of them."""
    vecs = features.permute(0, 2, 3, 1)[occupied]
    if len(vecs) > limit:
        vecs = vecs[torch.from_numpy(rng.choice(len(vecs), limit, replace=False))]
    return vecs
