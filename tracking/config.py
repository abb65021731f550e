"""Tracker settings shared by the filterpy baseline and the torch multi-sensor filter.

The state is 10-D, ``x, y, z, yaw, l, w, h, vx, vy, vz`` (AB3DMOT's order), in SI units with
velocities in m/s. The measurement is a box. Users (records, wire format, configs) give
measurement variances in *box* order ``x, y, z, l, w, h, yaw``; the filters reorder them.

The default settings are AB3DMOT's own (``R = I``, ``Q = I`` with velocity noise 0.01 per
frame squared, ``P0 = 10 I`` with velocity 1e4 per frame squared), converted from per-frame to
per-second units at the nominal 10 Hz, so at 0.1 s steps our baseline is AB3DMOT's filter.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = [
    "ASSOCIATIONS",
    "BOX_FROM_STATE",
    "STATE_FROM_BOX",
    "TrackerConfig",
]

#: box (x y z l w h yaw) -> state order (x y z yaw l w h): ``state[:7] = box[STATE_FROM_BOX]``
STATE_FROM_BOX = [0, 1, 2, 6, 3, 4, 5]
#: state (x y z yaw l w h) -> box order: ``box = state[BOX_FROM_STATE]``
BOX_FROM_STATE = [0, 1, 2, 4, 5, 6, 3]

_DT = 0.1

#: the association costs :class:`TrackerConfig` knows (``association``)
ASSOCIATIONS = ("affinity", "mahalanobis", "mahalanobis+affinity")


def _ab3dmot_process() -> tuple[float, ...]:
    return (1.0,) * 7 + (0.01 / _DT**2,) * 3


def _ab3dmot_initial() -> tuple[float, ...]:
    return (10.0,) * 7 + (1e4 / _DT**2,) * 3


@dataclass(frozen=True)
class TrackerConfig:
    """Everything that decides what a tracker does; JSON round-trips with the noise model."""

    #: nominal frame period (s); with ``timing="frames"`` dt = frame-number step x this
    dt: float = _DT
    #: "frames": dt from frame numbers; "timestamps": dt from ``timestamp_ns``
    timing: str = "frames"
    #: affinity used to associate: "giou" (3D GIoU, AB3DMOT's and DMSTrack's), "giou_bev" (the
    #: footprints' GIoU: agents that disagree on heights still agree on which car) or "iou" (3D IoU)
    affinity: str = "giou"
    #: a pair is kept when its affinity is at least this (DMSTrack: GIoU -0.2)
    threshold: float = -0.2
    #: False: Hungarian on all pairs, then drop pairs under the threshold (AB3DMOT);
    #: True: pairs under the threshold are forbidden before the Hungarian step
    gate_first: bool = False
    #: skip affinities that provably cannot reach the threshold (they read -1). Much faster;
    #: set False for AB3DMOT's assignment bit for bit (it scores every pair before matching)
    prune: bool = True
    #: squared Mahalanobis distance above which a pair is forbidden (None: no gate).
    #: chi-square with 7 degrees of freedom: 14.07 (95 %), 18.48 (99 %)
    mahalanobis_gate: float | None = None
    #: multi-sensor filter: what the Hungarian step minimises. "affinity": the negated
    #: ``affinity`` (above); "mahalanobis": each pair's squared Mahalanobis distance between the
    #: track's predicted box and the detection, S = H P H^T + R with R that detection's own (sent,
    #: learned or prior) covariance, pairs over ``mahalanobis_gate`` forbidden (a chi-square gate,
    #: required); "mahalanobis+affinity": the same cost, pairs also needing ``affinity`` >= ``threshold``
    association: str = "affinity"
    #: the components that association's distance compares: "box" (all 7; chi-square with 7
    #: degrees of freedom), "xy" (the centre on the ground: 2) or "xyyaw" (and the heading: 3).
    #: Agents that disagree on a car's height or size by more than their variances say still
    #: agree on where it is. The ``mahalanobis_gate`` of the affinity association always uses 7
    mahalanobis_dims: str = "box"
    #: a track is reported once it has been updated in this many frames ...
    min_hits: int = 3
    #: ... and is dropped after this many frames in a row without an update
    max_age: int = 2
    #: multi-sensor filter: every agent's update counts as a hit (DMSTrack's rule: a car two
    #: agents see is confirmed in two frames); False: one hit per frame however many see it
    hits_per_agent: bool = False
    #: multi-sensor filter: an unmatched detection whose footprint overlaps a live track by this
    #: BEV IoU or more starts no track (another agent's view of that car); None: every one does
    birth_overlap: float | None = None
    #: measurement variances, box order (x y z l w h yaw), in the measuring agent's frame
    measurement_var: tuple[float, ...] = (1.0,) * 7
    #: the fixed prior per agent slot (0 the ego, 1 the first collaborator; later slots take the
    #: last entry), box order: agents differ (a collaborator's boxes reach the ego through its
    #: pose). Empty: every agent uses ``measurement_var``. Only the fixed-noise filter reads it;
    #: variances an agent sends or the network learns replace it
    measurement_var_by_slot: tuple[tuple[float, ...], ...] = ()
    #: process noise per nominal step, state order (x y z yaw l w h vx vy vz)
    process_var: tuple[float, ...] = field(default_factory=_ab3dmot_process)
    #: covariance of a new track, state order
    initial_var: tuple[float, ...] = field(default_factory=_ab3dmot_initial)
    #: every measurement variance (sent, learned or the prior) is multiplied by this: a setting
    #: the validation search tunes alike for the fixed and the learned noise
    noise_scale: float = 1.0
    #: variances are kept within [floor, ceiling] whatever the source
    var_floor: float = 1e-4
    var_ceiling: float = 1e4

    def __post_init__(self) -> None:
        if self.timing not in ("frames", "timestamps"):
            raise ValueError(f"timing must be 'frames' or 'timestamps', got {self.timing!r}")
        if self.affinity not in ("giou", "giou_bev", "iou"):
            raise ValueError(f"affinity must be 'giou', 'giou_bev' or 'iou', got {self.affinity!r}")
        if self.association not in ASSOCIATIONS:
            raise ValueError(f"association must be one of {ASSOCIATIONS}, got {self.association!r}")
        if self.mahalanobis_dims not in ("box", "xy", "xyyaw"):
            raise ValueError(
                f"mahalanobis_dims must be 'box', 'xy' or 'xyyaw', got {self.mahalanobis_dims!r}"
            )
        if self.association != "affinity" and self.mahalanobis_gate is None:
            raise ValueError(f"association {self.association!r} needs mahalanobis_gate (a chi-square gate)")
        if self.mahalanobis_gate is not None and not self.mahalanobis_gate > 0:
            raise ValueError(f"mahalanobis_gate must be positive, got {self.mahalanobis_gate!r}")
        for name, n in (("measurement_var", 7), ("process_var", 10), ("initial_var", 10)):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.shape != (n,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f"{name} needs {n} positive finite values, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        rows = []
        for k, row in enumerate(self.measurement_var_by_slot):
            v = np.asarray(row, dtype=np.float64)
            if v.shape != (7,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(f"measurement_var_by_slot[{k}] needs 7 positive finite values, got {row!r}")
            rows.append(tuple(float(x) for x in v))
        object.__setattr__(self, "measurement_var_by_slot", tuple(rows))
        if not (np.isfinite(self.noise_scale) and self.noise_scale > 0):
            raise ValueError(f"noise_scale must be positive and finite, got {self.noise_scale!r}")
        if self.min_hits < 1 or self.max_age < 1 or self.dt <= 0:
            raise ValueError("min_hits and max_age must be at least 1 and dt positive")

    # -- matrices ---------------------------------------------------------------------------------
    def R_state(self) -> np.ndarray:
        """(7,) measurement variances in state order."""
        return np.asarray(self.measurement_var)[STATE_FROM_BOX]

    def prior_for_slot(self, slot: int) -> np.ndarray:
        """(7,) the fixed prior of the agent in ``slot`` (box order)."""
        if not self.measurement_var_by_slot:
            return np.asarray(self.measurement_var, dtype=np.float64)
        return np.asarray(self.measurement_var_by_slot[min(slot, len(self.measurement_var_by_slot) - 1)])

    def Q(self, dt: float) -> np.ndarray:
        """(10, 10) process noise for a step of ``dt`` seconds (grows linearly with time)."""
        return np.diag(np.asarray(self.process_var) * (dt / self.dt))

    def P0(self) -> np.ndarray:
        return np.diag(np.asarray(self.initial_var))

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrackerConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("measurement_var", "process_var", "initial_var"):
            if k in known:
                known[k] = tuple(known[k])
        if "measurement_var_by_slot" in known:
            known["measurement_var_by_slot"] = tuple(tuple(r) for r in known["measurement_var_by_slot"])
        return cls(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrackerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_(self, **changes) -> TrackerConfig:
        return replace(self, **changes)
