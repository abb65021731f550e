"""The one BEV grid every agent shares: pillar (voxel) grid for the encoder and the coarser
feature grid its output lives on. Messages carry :meth:`BEVGrid.fingerprint` so the ego can
refuse features computed on a different grid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["BEVGrid"]


@dataclass(frozen=True)
class BEVGrid:
    x_min: float = -70.4
    x_max: float = 70.4
    y_min: float = -40.0
    y_max: float = 40.0
    z_min: float = -3.0
    z_max: float = 1.0
    voxel: float = 0.4
    stride: int = 2

    def __post_init__(self) -> None:
        if self.voxel <= 0 or self.stride < 1:
            raise ValueError(f"grid voxel must be > 0 and stride >= 1, got {self.voxel}, {self.stride}")
        if self.x_max <= self.x_min or self.y_max <= self.y_min or self.z_max <= self.z_min:
            raise ValueError(f"grid ranges are empty: {self}")
        for span, name in ((self.x_max - self.x_min, "x"), (self.y_max - self.y_min, "y")):
            cells = span / (self.voxel * self.stride)
            if abs(cells - round(cells)) > 1e-6:
                raise ValueError(f"grid {name} span {span} is not a whole number of feature cells")

    # -- pillar grid -------------------------------------------------------------------------
    @property
    def voxel_shape(self) -> tuple[int, int]:
        """(ny, nx) of the pillar grid."""
        return (
            round((self.y_max - self.y_min) / self.voxel),
            round((self.x_max - self.x_min) / self.voxel),
        )

    # -- feature grid ------------------------------------------------------------------------
    @property
    def cell(self) -> float:
        """Edge of one feature-map cell in metres."""
        return self.voxel * self.stride

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) = (ny, nx) of the feature map: rows follow y, columns follow x."""
        ny, nx = self.voxel_shape
        return ny // self.stride, nx // self.stride

    @property
    def num_cells(self) -> int:
        h, w = self.shape
        return h * w

    @property
    def xy_range(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)

    def cell_centers(self) -> np.ndarray:
        """(H, W, 2) x, y of every feature cell centre."""
        h, w = self.shape
        xs = self.x_min + (np.arange(w) + 0.5) * self.cell
        ys = self.y_min + (np.arange(h) + 0.5) * self.cell
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx, gy], axis=-1)

    def cell_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and in-grid mask of the feature cell holding each xy point."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        col = np.floor((xy[:, 0] - self.x_min) / self.cell).astype(np.int64)
        row = np.floor((xy[:, 1] - self.y_min) / self.cell).astype(np.int64)
        h, w = self.shape
        ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        return row, col, ok

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BEVGrid:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown grid keys: {sorted(unknown)}")
        return cls(**known)

    def fingerprint(self) -> int:
        """32-bit identity of the grid geometry, carried in every feature message."""
        blob = json.dumps({k: round(float(v), 6) for k, v in asdict(self).items()}, sort_keys=True)
        return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:4], "little")


#: the shipped grid's x, y extent (x_min, y_min, x_max, y_max): OPV2V's evaluation range
DEFAULT_XY_RANGE = BEVGrid().xy_range
