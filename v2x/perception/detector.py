"""The cooperative detector: per-agent encoder, per-cell fusion, and the shared neck and head.

One network serves every fusion mode. An agent runs :meth:`encode` (its BEV map, the thing it
may share) and :meth:`detect` on its own map (its boxes and confidence map). The ego warps
received maps into its frame, :meth:`fuse`\\ s them with its own, and runs :meth:`detect` on the
result. Early fusion encodes the merged point cloud; late fusion merges per-agent boxes.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from v2x import WEIGHTS
from v2x.core.boxes import Boxes
from v2x.perception.alignment import WarpAlignment
from v2x.perception.allocator import keep_freed_memory
from v2x.perception.box_fit import fit_boxes
from v2x.perception.config import DetectorConfig
from v2x.perception.encoder import BEVFeatures, PillarEncoder
from v2x.perception.fusion import MaxFusion, make_fusion, warp_cells_to_ego, warp_to_ego
from v2x.perception.head import CenterHead, HeadOutput, Neck, decode_boxes, fold_batch_norm
from v2x.perception.settings import check_precision

__all__ = [
    "DAIR_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "WEIGHTS_BY_FORMAT",
    "CooperativeDetector",
    "load_detector",
    "native_bf16",
    "resolve_weights",
]

DEFAULT_WEIGHTS = WEIGHTS / "detector.pt"
#: the detector for DAIR-V2X-C's real vehicle and roadside LiDARs (docs/perception.md)
DAIR_WEIGHTS = WEIGHTS / "detector_dair.pt"
#: shipped weights by log format (a log's ``format``); other formats get DEFAULT_WEIGHTS
WEIGHTS_BY_FORMAT = {"dair-v2x-c": DAIR_WEIGHTS}


def resolve_weights(weights: str | Path | None = None, log_format: str | None = None) -> Path:
    """The detector checkpoint a command runs: ``weights`` (``--weights``) when given, else the
    shipped weights for a log of ``log_format`` (the one rule every command goes through)."""
    if weights is not None and str(weights) != "":
        return Path(weights)
    return WEIGHTS_BY_FORMAT.get(log_format or "", DEFAULT_WEIGHTS)


#: inference precisions of the dense neck and head (see :meth:`CooperativeDetector.set_precision`)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16), where bf16 pays off."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume not
        return False


class CooperativeDetector(nn.Module):
    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PillarEncoder(cfg)
        self.fusion = make_fusion(cfg.fusion, cfg.bev_channels)
        # correction of collaborators' warped features (trained after the rest; see alignment.py)
        self.align = WarpAlignment(cfg.bev_channels) if cfg.warp_alignment else None
        self.neck = Neck(cfg)
        self.head = CenterHead(cfg)
        # inference copies of neck and head with batch norm folded in: a plain list, so they
        # stay out of the state dict; rebuilt after any change of mode or weights
        self._folded: list[nn.Module] = []
        self.precision = "fp32"

    def set_precision(self, precision: str) -> CooperativeDetector:
        """Run the dense neck and head of inference in ``"fp32"`` (the default, every published
        figure) or ``"bf16"`` (bfloat16 autocast). Why bf16: the neck and head are most of a
        frame's arithmetic, and on CPUs with AMX or AVX512-BF16 they run two to four times
        faster in it; on other CPUs bf16 may be slower. The sparse encoder (spconv has no CPU
        bf16 kernels), the fusion and training stay in fp32; outputs are fp32 either way."""
        self.precision = check_precision(precision)
        if precision == "bf16" and not native_bf16():
            warnings.warn(
                "precision bf16: this CPU has no native bfloat16 (AMX or AVX512-BF16); "
                "the detector may run slower than in fp32",
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    def train(self, mode: bool = True) -> CooperativeDetector:
        self._folded.clear()
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._folded.clear()
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ...: the copies would not follow
        self._folded.clear()
        return super()._apply(fn, *args, **kwargs)

    def encode(self, clouds: list[torch.Tensor]) -> BEVFeatures:
        """BEV maps of sanitised clouds, each in its own agent's BEV frame."""
        return self.encoder(clouds)

    def detect(self, bev: torch.Tensor) -> HeadOutput:
        """Neck and head over (B, C, H, W) maps."""
        neck, head = self.neck, self.head
        inference = not self.training and not torch.is_grad_enabled()
        if inference:
            if not self._folded:
                self._folded.extend([fold_batch_norm(self.neck), fold_batch_norm(self.head)])
            neck, head = self._folded
        # channels-last runs the dense convolutions about a third faster on CPU; bf16 only at
        # inference, and the outputs back in fp32 (.float() of an fp32 tensor is that tensor)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=inference and self.precision == "bf16"):
            out = head(neck(bev.contiguous(memory_format=torch.channels_last)))
        return HeadOutput(out.heatmap.float().contiguous(), out.regression.float().contiguous())

    def fuse(
        self,
        ego_features: torch.Tensor,
        ego_valid: torch.Tensor,
        others: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    ) -> torch.Tensor:
        """Fuse the ego's (C, H, W) map with collaborators' ``(features, valid, ego_from_sender)``."""
        if not others:
            return self.fusion(ego_features[None], ego_valid[None])
        if isinstance(self.fusion, MaxFusion) and not torch.is_grad_enabled():
            # inference: only the cells each collaborator covers, no dense map per collaborator
            return self.fusion.sparse(
                ego_features, ego_valid, warp_cells_to_ego(others, self.cfg.grid, self.align)
            )
        feats = torch.stack([o[0] for o in others])
        valid = torch.stack([o[1] for o in others])
        warped, wvalid = warp_to_ego(feats, valid, [o[2] for o in others], self.cfg.grid, self.align)
        all_feats = torch.cat([ego_features[None], warped])
        all_valid = torch.cat([ego_valid[None], wvalid])
        return self.fusion(all_feats, all_valid)

    def decode(
        self,
        out: HeadOutput,
        points: list[torch.Tensor | None] | None = None,
        sensors_xy: list[np.ndarray] | None = None,
    ) -> list[Boxes]:
        """The head's boxes per batch item; with ``points`` (each item's cloud in its map's frame,
        or None; ``sensors_xy``: where each cloud's sensor stands in that frame, default its
        origin), fitted to them where the config asks (:meth:`fit_boxes`)."""
        boxes = decode_boxes(out, self.cfg)
        if points is None:
            return boxes
        if len(points) != len(boxes):
            raise ValueError(f"points: {len(points)} clouds for {len(boxes)} maps")
        sensors = sensors_xy if sensors_xy is not None else [None] * len(boxes)
        return [self.fit_boxes(b, c, xy) for b, c, xy in zip(boxes, points, sensors, strict=True)]

    def fit_boxes(
        self, boxes: Boxes, points: torch.Tensor | None, sensor_xy: np.ndarray | None = None
    ) -> Boxes:
        """``boxes`` fitted to ``points`` (same frame, the sensor at ``sensor_xy``): headings and
        centres on the faces seen (:mod:`v2x.perception.box_fit`) if ``cfg.box_fit_min_points``
        is set; else as given."""
        if not self.cfg.box_fit_min_points or points is None or not len(boxes):
            return boxes
        at = (0.0, 0.0) if sensor_xy is None else sensor_xy
        fitted = fit_boxes(boxes.xyzlwhy, points.numpy(), self.cfg.box_fit_min_points, at)
        return replace(boxes, xyzlwhy=fitted)

    # -- persistence ---------------------------------------------------------------------------
    def checkpoint(self, **extra) -> dict:
        return {"config": self.cfg.to_dict(), "state_dict": self.state_dict(), **extra}

    def identity(self) -> str:
        """Short hash of config and weights: which model produced a result."""
        buf = io.BytesIO()
        torch.save({k: v.cpu() for k, v in sorted(self.state_dict().items())}, buf)
        h = hashlib.sha256(buf.getvalue())
        h.update(repr(sorted(self.cfg.to_dict().items())).encode())
        if self.precision != "fp32":  # other outputs: caches keyed by identity must not mix them
            h.update(self.precision.encode())
        return h.hexdigest()[:16]


def load_detector(
    path: str | Path | None = None,
    map_location: str = "cpu",
    precision: str = "fp32",
    log_format: str | None = None,
    box_fit_min_points: int | None = None,
) -> CooperativeDetector:
    """A detector from a checkpoint written by ``v2x train detector`` (by default the shipped
    weights for a log of ``log_format``, :func:`resolve_weights`), in eval mode, its neck and
    head running in ``precision``; ``box_fit_min_points`` replaces the checkpoint's setting
    of that name (None: kept; 0: off)."""
    keep_freed_memory()  # every frame's MB-sized tensors reuse freed heap (v2x.perception.allocator)
    path = resolve_weights(path, log_format)
    if not path.is_file():
        raise FileNotFoundError(
            f"detector weights not found: {path} (train them with `v2x train detector` or pass --weights)"
        )
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    config = DetectorConfig.from_dict(ckpt["config"])
    if box_fit_min_points is not None:
        config = replace(config, box_fit_min_points=box_fit_min_points)
    model = CooperativeDetector(config)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model.set_precision(precision)
