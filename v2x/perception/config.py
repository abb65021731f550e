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
#: choices of DetectorConfig.point_xy
#: how the ego combines maps at a cell (v2x.perception.fusion.make_fusion)
FUSIONS = ("max", "fill", "attention")
POINT_XY = ("absolute", "local")


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
    #: fusion of warped feature maps on the ego (FUSIONS): "max", "fill" (the ego's own cells
    #: kept, the others' maximum where it saw nothing) or "attention"
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
    #: what a point tells the pillar network of where it is: "absolute" (its x, y in the grid's
    #: frame, and its offsets within the pillar: PointPillars' choice) or "local" (offsets only,
    #: x and y given as 0). With "absolute" the network learns where in its own grid a sensor's
    #: points lie; a collaborator's points moved onto the ego's grid lie elsewhere and turned,
    #: and it finds little there (docs/perception.md, DAIR-V2X-C). "local" makes the encoder
    #: the same everywhere on the grid, whichever sensor the points came from.
    point_xy: str = "absolute"
    #: fit each decoded box to the points on it, heading and the faces seen
    #: (v2x.perception.box_fit), where at least this many stand on it; 0: the boxes as decoded
    box_fit_min_points: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.grid, dict):
            self.grid = BEVGrid.from_dict(self.grid)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.point_xy not in POINT_XY:
            raise ValueError(f"point_xy must be one of {POINT_XY}, got {self.point_xy!r}")
        if self.box_fit_min_points < 0:
            raise ValueError(f"box_fit_min_points must be 0 (off) or more, got {self.box_fit_min_points}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = self.grid.to_dict()
        if d["point_xy"] == "absolute":  # the default is left out: models made before keep their identity
            del d["point_xy"]
        if d["box_fit_min_points"] == 0:  # likewise
            del d["box_fit_min_points"]
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
