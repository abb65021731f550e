"""A learned codebook for BEV cell features: residual stages of product quantisers.

A C-dimensional cell feature is split into ``m`` sub-vectors; each is replaced by the nearest of
``k`` codewords of its sub-codebook; ``r`` residual stages then quantise what the previous
stages left. A cell becomes ``r * m`` integers of ``ceil(log2 k)`` bits, and the ego decodes them
with the same tensors. The codebook's identity (a hash of its tensors and shape) travels in
every message so a mismatch is refused rather than decoded into garbage.

Training, on features of a frozen detector:

* :meth:`Codebook.fit` -- residual product k-means (Lloyd, dead codewords restarted on the
  worst-served samples); the initialisation, and often all that is needed.
* :func:`train_codebook` -- gradient refinement over an iterable of feature batches: the
  codebook loss ``|q - sg(x)|^2`` plus ``beta`` times the commitment loss ``|x - sg(q)|^2`` (it
  only matters when the encoder trains too), plus any task loss on the quantised features (for
  instance the frozen detection head's loss, through :meth:`Codebook.quantize_map`); codewords
  that stop being used are restarted on recent samples.
* :func:`evaluate_codebook` -- relative reconstruction error and codeword usage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from v2x.messages.codebook_file import identity_hex, read_codebook_file, write_codebook_file

__all__ = [
    "Codebook",
    "CodebookConfig",
    "Quantized",
    "cells_from_maps",
    "evaluate_codebook",
    "fit_from_maps",
    "load_codebook",
    "load_feature_maps",
    "sample_cells",
    "train_codebook",
]

#: cells encoded per chunk: bounds the (chunk, m, k) distance tensor
_CHUNK = 8192


@dataclass(frozen=True)
class CodebookConfig:
    channels: int = 64
    m: int = 2  # product sub-codebooks
    r: int = 2  # residual stages
    k: int = 64  # codewords per sub-codebook

    def __post_init__(self) -> None:
        if self.channels % self.m:
            raise ValueError(f"channels ({self.channels}) must be divisible by m ({self.m})")
        if not (1 <= self.r <= 8 and 2 <= self.k <= 65536 and 1 <= self.m <= 64 and self.r * self.m <= 64):
            raise ValueError(f"unsupported codebook shape {self}")

    @property
    def bits(self) -> int:
        """Bits per index on the wire: ceil(log2 k)."""
        return max(1, math.ceil(math.log2(self.k)))

    @property
    def indices_per_cell(self) -> int:
        return self.r * self.m

    @property
    def bits_per_cell(self) -> int:
        return self.indices_per_cell * self.bits

    def label(self) -> str:
        return f"m{self.m}r{self.r}k{self.k}"


@dataclass
class Quantized:
    """Straight-through quantisation of a batch, with the two VQ losses."""

    x_st: torch.Tensor  # quantised values with x's gradient (for an encoder upstream)
    q: torch.Tensor  # quantised values with the codewords' gradient (for a task loss)
    indices: torch.Tensor  # (N, r * m)
    codebook_loss: torch.Tensor  # |q - sg(x)|^2: moves codewords to the data
    commitment_loss: torch.Tensor  # |x - sg(q)|^2: keeps an encoder near its codewords


class Codebook(nn.Module):
    def __init__(self, cfg: CodebookConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.channels // cfg.m
        self.codewords = nn.Parameter(torch.zeros(cfg.r, cfg.m, cfg.k, d))

    # -- encode / decode -------------------------------------------------------------------------
    def _nearest(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """(N, m) index of the nearest codeword of each sub-vector at ``stage``.

        ``argmin |x - c|^2 = argmin (|c|^2 - 2 x.c)``: one BLAS matrix product per sub-codebook in
        numpy, about four times faster on one core than a batched torch einsum + argmin.
        """
        cfg = self.cfg
        d = cfg.channels // cfg.m
        xs = x.detach().numpy() if x.dtype == torch.float32 else x.detach().float().numpy()
        cw = self.codewords.detach()[stage].numpy()  # (m, k, d)
        out = np.empty((len(xs), cfg.m), dtype=np.int64)
        for j in range(cfg.m):
            scores = xs[:, j * d : (j + 1) * d] @ cw[j].T  # (N, k)
            scores *= -2.0
            scores += (cw[j] ** 2).sum(axis=1)
            out[:, j] = scores.argmin(axis=1)
        return torch.from_numpy(out)

    def _lookup(self, idx: torch.Tensor, stage: int) -> torch.Tensor:
        cfg = self.cfg
        parts = self.codewords[stage][torch.arange(cfg.m)[None, :], idx]  # (N, m, d)
        return parts.reshape(len(idx), cfg.channels)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) features -> (N, r * m) int64 indices, stage-major (stage 0's m indices first)."""
        x = torch.as_tensor(x).float()
        if x.ndim != 2 or x.shape[1] != self.cfg.channels:
            raise ValueError(f"expected (N, {self.cfg.channels}) features, got {tuple(x.shape)}")
        chunks = []
        for start in range(0, max(len(x), 1), _CHUNK):
            residual = x[start : start + _CHUNK]
            out = []
            for s in range(self.cfg.r):
                idx = self._nearest(residual, s)
                out.append(idx)
                residual = residual - self._lookup(idx, s)
            chunks.append(torch.cat(out, dim=1))
        return torch.cat(chunks)

    def decode(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, r * m) indices -> (N, C) features (differentiable in the codewords)."""
        idx = torch.as_tensor(np.asarray(indices) if isinstance(indices, np.ndarray) else indices)
        idx = idx.long().reshape(len(idx), self.cfg.r, self.cfg.m)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.cfg.k):
            raise ValueError(f"codebook index outside 0..{self.cfg.k - 1}")
        out = self.codewords.new_zeros(len(idx), self.cfg.channels)
        for s in range(self.cfg.r):
            out = out + self._lookup(idx[:, s], s)
        return out

    def quantize(self, x: torch.Tensor) -> Quantized:
        """Quantise (N, C) features for training (see :class:`Quantized`)."""
        idx = self.encode(x.detach())
        q = self.decode(idx)
        return Quantized(
            x_st=x + (q - x).detach(),
            q=q,
            indices=idx,
            codebook_loss=((q - x.detach()) ** 2).mean(),
            commitment_loss=((x - q.detach()) ** 2).mean(),
        )

    def quantize_map(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """A (C, H, W) or (B, C, H, W) map with its (masked) cells replaced by their codes' values.

        The result carries the codewords' gradient, so a frozen detection head's loss on it
        trains the codebook; cells outside ``mask`` stay as they were.
        """
        single = features.ndim == 3
        f = features[None] if single else features
        b, c, h, w = f.shape
        cells = f.permute(0, 2, 3, 1).reshape(-1, c)
        keep = torch.ones(len(cells), dtype=torch.bool) if mask is None else mask.reshape(-1).bool()
        q = self.decode(self.encode(cells[keep].detach()))
        out = cells.clone()
        out[keep] = q
        out = out.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return out[0] if single else out

    # -- training --------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, features: torch.Tensor, iters: int = 25, seed: int = 0, progress=None) -> dict:
        """Residual product k-means (Lloyd) on (N, C) samples; returns the relative error per stage."""
        g = torch.Generator().manual_seed(seed)
        x = torch.as_tensor(features).float()
        residual = x.clone()
        errors = []
        cfg = self.cfg
        for s in range(cfg.r):
            sub = residual.reshape(len(x), cfg.m, -1)
            for j in range(cfg.m):
                data = sub[:, j].contiguous()
                centres = _init_centres(data, cfg.k, g)
                for _ in range(iters):
                    assign, dist = _assign(data, centres)
                    sums = torch.zeros_like(centres).index_add_(0, assign, data)
                    counts = torch.bincount(assign, minlength=cfg.k).float()
                    empty = counts == 0
                    centres = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
                    if empty.any():  # restart dead codewords on the worst-served samples
                        far = dist.topk(int(empty.sum())).indices
                        centres[empty] = data[far]
                    if progress:
                        progress()
                self.codewords.data[s, j] = centres
            idx = self._nearest(residual, s)
            residual = residual - self._lookup(idx, s)
            errors.append(float((residual**2).sum() / (x**2).sum().clamp(min=1e-12)))
        return {"relative_error_per_stage": errors}

    @torch.no_grad()
    def restart_dead(self, usage: torch.Tensor, samples: torch.Tensor, generator: torch.Generator) -> int:
        """Move codewords with zero ``usage`` (r, m, k) onto residuals of random recent samples."""
        cfg = self.cfg
        residual = samples.float()
        moved = 0
        for s in range(cfg.r):
            sub = residual.reshape(len(residual), cfg.m, -1)
            for j in range(cfg.m):
                dead = torch.nonzero(usage[s, j] == 0).flatten()
                if len(dead) and len(sub):
                    pick = torch.randint(len(sub), (len(dead),), generator=generator)
                    self.codewords.data[s, j, dead] = sub[pick, j]
                    moved += len(dead)
            residual = residual - self._lookup(self._nearest(residual, s), s)
        return moved

    # -- identity and persistence ---------------------------------------------------------------
    def identity_hex(self) -> str:
        """SHA-256 of the shape and the tensors (:func:`v2x.messages.codebook_file.identity_hex`)."""
        return identity_hex(asdict(self.cfg), self.codewords.detach().cpu().numpy())

    def identity(self) -> int:
        """32-bit identity carried in every codebook message (first 4 bytes of the SHA-256)."""
        return int(self.identity_hex()[:8], 16)

    def save(self, path: str | Path, **extra) -> None:
        """A ``.pt`` checkpoint, or with a ``.safetensors`` suffix the language-neutral file
        (:mod:`v2x.messages.codebook_file`; ``extra`` values become metadata strings)."""
        if Path(path).suffix == ".safetensors":
            codewords = self.codewords.detach().cpu().numpy()
            write_codebook_file(path, asdict(self.cfg), codewords, **{k: str(v) for k, v in extra.items()})
            return
        torch.save({"config": asdict(self.cfg), "codewords": self.codewords.detach().cpu(), **extra}, path)


def _assign(
    data: torch.Tensor, centres: torch.Tensor, chunk: int = 16384
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre and squared distance per sample, in chunks (bounded memory for big samples)."""
    x, c = data.numpy(), centres.numpy()
    cn = (c**2).sum(axis=1)
    idx = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        scores = part @ c.T
        scores *= -2.0
        scores += cn
        best = scores.argmin(axis=1)
        idx[start : start + chunk] = best
        dist[start : start + chunk] = scores[np.arange(len(part)), best] + (part**2).sum(axis=1)
    return torch.from_numpy(idx), torch.from_numpy(dist)


def _init_centres(data: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++-lite: distinct random samples, jittered repeats when there are fewer than k."""
    init = data[torch.randperm(len(data), generator=g)[:k]]
    if len(init) < k:
        extra = init[torch.randint(len(init), (k - len(init),), generator=g)]
        init = torch.cat([init, extra + 1e-3 * torch.randn(extra.shape, generator=g)])
    return init.clone()


def load_codebook(path: str | Path) -> Codebook:
    """A codebook from a ``.pt`` checkpoint or a ``.safetensors`` codebook file."""
    if Path(path).suffix == ".safetensors":
        config, codewords, _ = read_codebook_file(path)
        cb = Codebook(CodebookConfig(**config))
        cb.codewords.data.copy_(torch.from_numpy(codewords))
        return cb.eval()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cb = Codebook(CodebookConfig(**ckpt["config"]))
    cb.codewords.data.copy_(ckpt["codewords"])
    return cb.eval()


# -- data -------------------------------------------------------------------------------------
def sample_cells(
    features: torch.Tensor, occupied: torch.Tensor, limit: int, rng: np.random.Generator
) -> torch.Tensor:
    """Occupied cells' feature vectors of a (B, C, H, W) batch, at most ``limit`` of them."""
    vecs = features.permute(0, 2, 3, 1)[occupied]
    if len(vecs) > limit:
        vecs = vecs[torch.from_numpy(rng.choice(len(vecs), limit, replace=False))]
    return vecs


def cells_from_maps(
    maps: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    per_map: int | None = None,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """(N, C) batches of non-empty cells from (C, H, W) maps, or (map, occupied mask) pairs.

    Any source works: a frozen encoder run over a log, saved tensors, synthetic maps. Cells
    whose features are all zero (no data) are skipped unless a mask says otherwise.
    """
    rng = np.random.default_rng(seed)
    for item in maps:
        fmap, mask = item if isinstance(item, tuple) else (item, None)
        fmap = torch.as_tensor(fmap).float()
        if mask is None:
            mask = fmap.abs().sum(0) > 0
        vecs = fmap.permute(1, 2, 0)[mask.bool()]
        if per_map is not None and len(vecs) > per_map:
            vecs = vecs[torch.from_numpy(rng.choice(len(vecs), per_map, replace=False))]
        if len(vecs):
            yield vecs


def load_feature_maps(path: str | Path) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(C, H, W) maps, with occupancy masks when saved, from a ``.pt`` file or a directory of them.

    Each file holds a tensor (C, H, W) or (B, C, H, W), or a dict with ``features`` and optionally
    ``occupied`` ((H, W) or (B, H, W) bool): what an encoder run over a log can save.
    """
    path = Path(path)
    files = sorted(path.glob("*.pt")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .pt feature files in {path}")
    for f in files:
        obj = torch.load(f, map_location="cpu", weights_only=True)
        feats, occ = (obj.get("features"), obj.get("occupied")) if isinstance(obj, dict) else (obj, None)
        if not torch.is_tensor(feats) or feats.ndim not in (3, 4):
            raise ValueError(f"{f}: expected a (C, H, W) or (B, C, H, W) tensor under 'features'")
        feats = feats[None] if feats.ndim == 3 else feats
        if occ is not None:
            occ = occ[None] if occ.ndim == 2 else occ
        for b in range(len(feats)):
            yield feats[b].float(), (None if occ is None else occ[b].bool())


def train_codebook(
    cb: Codebook,
    batches: Iterable[torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    beta: float = 0.25,
    task_loss: Callable[[torch.Tensor, Quantized], torch.Tensor] | None = None,
    restart_every: int = 50,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Gradient refinement of ``cb`` on (N, C) batches (cycled until ``steps``); returns a log.

    ``task_loss(x, quantized)`` may add a loss on ``quantized.q`` (e.g. a frozen head's detection
    loss through :meth:`Codebook.quantize_map`). Codewords unused for ``restart_every`` steps
    are restarted on the last batch's residuals.
    """
    opt = torch.optim.Adam([cb.codewords], lr=lr)
    g = torch.Generator().manual_seed(seed)
    usage = torch.zeros(cb.cfg.r, cb.cfg.m, cb.cfg.k)
    log: list[dict] = []
    cached: list[torch.Tensor] = []
    it = iter(batches)
    for step in range(1, steps + 1):
        try:
            x = next(it)
            if len(cached) < 64:
                cached.append(x)
        except StopIteration:
            if not cached:
                raise ValueError("train_codebook: no feature batches") from None
            x = cached[step % len(cached)]
        x = torch.as_tensor(x).float()
        qz = cb.quantize(x)
        loss = qz.codebook_loss + beta * qz.commitment_loss
        extra = task_loss(x, qz) if task_loss is not None else None
        if extra is not None:
            loss = loss + extra
        opt.zero_grad()
        loss.backward()
        opt.step()
        idx = qz.indices.reshape(len(x), cb.cfg.r, cb.cfg.m)
        for s in range(cb.cfg.r):
            for j in range(cb.cfg.m):
                usage[s, j] += torch.bincount(idx[:, s, j], minlength=cb.cfg.k).float()
        entry = {
            "step": step,
            "loss": float(loss.detach()),
            "relative_error": float(((qz.q.detach() - x) ** 2).sum() / (x**2).sum().clamp(min=1e-12)),
        }
        if restart_every and step % restart_every == 0:
            entry["restarted"] = cb.restart_dead(usage, x, g)
            usage.zero_()
        log.append(entry)
        if progress:
            progress(entry)
    return log


def fit_from_maps(
    cfg: CodebookConfig,
    maps: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]],
    *,
    cells_per_map: int = 1000,
    holdout_every: int = 10,
    iters: int = 25,
    refine_steps: int = 0,
    lr: float = 1e-3,
    beta: float = 0.25,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Codebook, dict]:
    """k-means (then optional gradient refinement) on cells of streamed maps; every
    ``holdout_every``-th map is held out and reported separately."""
    train, held = [], []
    for i, vecs in enumerate(cells_from_maps(maps, per_map=cells_per_map, seed=seed)):
        (held if holdout_every and i % holdout_every == holdout_every - 1 else train).append(vecs)
    if not train:
        raise ValueError("no non-empty cells to fit a codebook on")
    data = torch.cat(train)
    cb = Codebook(cfg)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.r * cfg.m * iters, desc="k-means")
    info = cb.fit(data, iters=iters, seed=seed, progress=bar.update if bar else None)
    if bar:
        bar.close()
    info["kmeans_relative_error_per_stage"] = info.pop("relative_error_per_stage")
    if refine_steps:
        g = torch.Generator().manual_seed(seed)
        batches = data[torch.randperm(len(data), generator=g)].split(4096)
        log = train_codebook(cb, batches, refine_steps, lr=lr, beta=beta, seed=seed)
        info["refine_final_relative_error"] = log[-1]["relative_error"]
    info["train"] = evaluate_codebook(cb, train)
    info["holdout"] = evaluate_codebook(cb, held) if held else None
    info["maps"] = {"train": len(train), "holdout": len(held)}
    return cb, info


@torch.no_grad()
def evaluate_codebook(cb: Codebook, batches: Iterable[torch.Tensor]) -> dict:
    """Relative squared error (total and after each stage) and codeword usage over the batches."""
    cfg = cb.cfg
    err = torch.zeros(cfg.r, dtype=torch.float64)
    energy = 0.0
    counts = torch.zeros(cfg.r, cfg.m, cfg.k)
    cells = 0
    for x in batches:
        x = torch.as_tensor(x).float()
        idx = cb.encode(x).reshape(len(x), cfg.r, cfg.m)
        residual = x.clone()
        for s in range(cfg.r):
            residual = residual - cb._lookup(idx[:, s], s)
            err[s] += float((residual**2).sum())
            for j in range(cfg.m):
                counts[s, j] += torch.bincount(idx[:, s, j], minlength=cfg.k).float()
        energy += float((x**2).sum())
        cells += len(x)
    p = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    entropy = -(p * torch.log2(p.clamp(min=1e-12))).sum(-1)  # bits actually used per index
    rel = (err / max(energy, 1e-12)).tolist()
    return {
        "cells": cells,
        "relative_error": rel[-1] if rel else None,
        "relative_error_per_stage": rel,
        "used_fraction": float((counts > 0).float().mean()),
        "index_entropy_bits": float(entropy.mean()),
        "bits_per_cell": cfg.bits_per_cell,
        "codebook": cfg.label(),
    }
