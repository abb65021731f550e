"""Model and pipeline configuration: one YAML file names the grid, the network widths and the
detection settings, so an agent and the ego built from the same file agree on everything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from v2x import CONFIGS
from v2x.core.grid import BEVGrid

__all__ = ["DEFAULT_CONFIG", "DetectorConfig", "load_config"]

DEFAULT_CONFIG = CONFIGS / "default.yaml"


@dataclass
class DetectorConfig:
    grid: BEVGrid = field(default_factory=BEVGrid)
    #: per-point features -> pillar features
    pillar_channels: int = 32
    #: channels of the BEV feature map an agent shares (the message features)
    bev_channels: int = 64
    #: dense neck widths at the feature stride and at twice it
    neck_channels: int = 48
    neck_channels_down: int = 96
    #: fusion of warped feature maps on the ego: "max" or "attention"
    fusion: str = "max"
    #: correct collaborators' warped features with a small learned per-cell network (v2x.perception.alignment)
    warp_alignment: bool = False
    #: detection decoding
    score_threshold: float = 0.1
    max_detections: int = 100
    nms_iou: float = 0.1
    #: ground truth with fewer LiDAR points (all participating agents together) is not a target
    min_points_per_box: int = 1
    #: heatmap target radius floor, in feature cells
    min_radius_cells: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.grid, dict):
            self.grid = BEVGrid.from_dict(self.grid)
        if self.fusion not in ("max", "attention"):
            raise ValueError(f"fusion must be 'max' or 'attention', got {self.fusion!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = self.grid.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown detector config keys: {sorted(unknown)}")
        return cls(**d)


def load_config(path: str | Path | None = None) -> DetectorConfig:
    """Read the ``detector:`` section of a YAML config (the shipped default when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from exc
    section = raw.get("detector", raw)
    try:
        return DetectorConfig.from_dict(section)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
