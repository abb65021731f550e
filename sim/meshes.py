"""Low-poly triangle meshes of the things a LiDAR sees in our town.

Every shape is a union of convex parts (each the convex hull of a few corner points), which
keeps the meshes small (tens of triangles) while giving cars the silhouette that matters to a
LiDAR: a low body, a cabin with raked windscreens, wheels near the ground.
Meshes are built in the object's frame (x forward, z up, origin on the ground below its
centre) as ``(vertices float32 (V, 3), triangles int32 (T, 3))``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.spatial import ConvexHull

__all__ = [
    "BODY",
    "GLASS",
    "TYRE",
    "Mesh",
    "box_mesh",
    "merge",
    "object_mesh",
    "object_parts",
    "prism_mesh",
    "transform_mesh",
]

Mesh = tuple[np.ndarray, np.ndarray]

#: part codes of an object's triangles (they reflect differently)
BODY, GLASS, TYRE = 0, 1, 2
Parts = list[tuple[Mesh, int]]


def _hull(points: np.ndarray) -> Mesh:
    pts = np.asarray(points, dtype=np.float64)
    hull = ConvexHull(pts)
    tris = hull.simplices.astype(np.int32)
    # orient every triangle outwards (Open3D does not care, but viewers and normals do)
    centre = pts.mean(axis=0)
    a, b, c = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
    flip = np.einsum("ij,ij->i", np.cross(b - a, c - a), a - centre) < 0
    tris[flip] = tris[flip][:, [0, 2, 1]]
    used, inverse = np.unique(tris, return_inverse=True)
    return pts[used].astype(np.float32), inverse.reshape(-1, 3).astype(np.int32)


def merge(parts: list[Mesh]) -> Mesh:
    verts, tris, offset = [], [], 0
    for v, t in parts:
        verts.append(v)
        tris.append(t + offset)
        offset += len(v)
    return np.concatenate(verts).astype(np.float32), np.concatenate(tris).astype(np.int32)


def box_mesh(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> Mesh:
    xs, ys, zs = (x0, x1), (y0, y1), (z0, z1)
    return _hull(np.array([(x, y, z) for x in xs for y in ys for z in zs]))


def _side_profile(profile_xz: list[tuple[float, float]], half_width: float) -> Mesh:
    """A prism from a convex side profile (x, z) extruded across y."""
    pts = [(x, s * half_width, z) for x, z in profile_xz for s in (-1, 1)]
    return _hull(np.array(pts))


def prism_mesh(radius: float, z0: float, z1: float, sides: int = 8) -> Mesh:
    a = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.c_[radius * np.cos(a), radius * np.sin(a)]
    return _hull(np.vstack([np.c_[ring, np.full(sides, z0)], np.c_[ring, np.full(sides, z1)]]))


def _wheels(length: float, width: float, radius: float, inset: float = 0.18) -> Parts:
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx = sx * (length / 2 - inset * length)
            cy = sy * (width / 2 - 0.12)
            out.append((box_mesh(cx - radius, cx + radius, cy - 0.12, cy + 0.12, 0.0, 2 * radius), TYRE))
    return out


def _car(length: float, width: float, height: float) -> Parts:
    hl, hw = length / 2, width / 2
    belt = 0.58 * height
    body = _side_profile([(-hl, 0.3), (hl, 0.3), (hl, 0.5 * height), (0.72 * hl, belt), (-hl, belt)], hw)
    cabin = _side_profile(
        [(-0.78 * hl, belt), (0.45 * hl, belt), (0.05 * hl, height), (-0.55 * hl, height)], 0.9 * hw
    )
    return [(body, BODY), (cabin, GLASS), *_wheels(length, width, 0.33)]


def _van(length: float, width: float, height: float) -> Parts:
    hl, hw = length / 2, width / 2
    body = _side_profile(
        [
            (-hl, 0.35),
            (hl, 0.35),
            (hl, 0.45 * height),
            (0.62 * hl, 0.93 * height),
            (0.5 * hl, height),
            (-hl, height),
        ],
        hw,
    )
    return [(body, BODY), *_wheels(length, width, 0.36)]


def _truck(length: float, width: float, height: float) -> Parts:
    hl, hw = length / 2, width / 2
    cab_len = min(2.4, 0.3 * length)
    cab = _side_profile(
        [
            (hl - cab_len, 0.45),
            (hl, 0.45),
            (hl, 0.8 * height),
            (hl - 0.3, 0.88 * height),
            (hl - cab_len, 0.88 * height),
        ],
        hw,
    )
    cargo = box_mesh(-hl, hl - cab_len - 0.2, -hw, hw, 0.9, height)
    return [(cab, BODY), (cargo, BODY), *_wheels(length, width, 0.5, inset=0.12)]


def _bus(length: float, width: float, height: float) -> Parts:
    hl, hw = length / 2, width / 2
    body = _side_profile([(-hl, 0.35), (hl, 0.35), (hl, 0.9 * height), (hl - 0.4, height), (-hl, height)], hw)
    return [(body, BODY), *_wheels(length, width, 0.5, inset=0.15)]


def _pedestrian(length: float, width: float, height: float) -> Parts:
    legs = prism_mesh(0.16, 0.0, 0.85 * height / 1.75, sides=6)
    torso = prism_mesh(min(length, width) / 2, 0.85 * height / 1.75, 0.87 * height, sides=8)
    head = prism_mesh(0.11, 0.87 * height, height, sides=6)
    return [(legs, BODY), (torso, BODY), (head, BODY)]


def _cyclist(length: float, width: float, height: float) -> Parts:
    hl = length / 2
    bike = box_mesh(-hl, hl, -0.06, 0.06, 0.05, 0.95)
    rider = prism_mesh(0.2, 0.95, height - 0.25, sides=8)
    head = prism_mesh(0.12, height - 0.25, height, sides=6)
    return [(bike, TYRE), (rider, BODY), (head, BODY)]


_BUILDERS = {
    "car": _car,
    "van": _van,
    "truck": _truck,
    "bus": _bus,
    "pedestrian": _pedestrian,
    "cyclist": _cyclist,
}


@lru_cache(maxsize=512)
def _cached(kind: str, length: float, width: float, height: float) -> tuple[Mesh, np.ndarray]:
    parts = _BUILDERS[kind](length, width, height)
    codes = np.concatenate([np.full(len(m[1]), code, np.int8) for m, code in parts])
    return merge([m for m, _ in parts]), codes


def _key(kind: str, length: float, width: float, height: float) -> tuple[str, float, float, float]:
    if kind not in _BUILDERS:
        raise ValueError(f"no mesh for {kind!r}: use one of {', '.join(_BUILDERS)}")
    return kind, round(float(length), 2), round(float(width), 2), round(float(height), 2)


def object_mesh(kind: str, length: float, width: float, height: float) -> Mesh:
    """Mesh of a traffic participant whose box is ``length x width x height`` (origin: ground, centre)."""
    return _cached(*_key(kind, length, width, height))[0]


def object_parts(kind: str, length: float, width: float, height: float) -> np.ndarray:
    """Part code (BODY, GLASS, TYRE) of each triangle of :func:`object_mesh`."""
    return _cached(*_key(kind, length, width, height))[1]


def transform_mesh(mesh: Mesh, x: float, y: float, z: float, yaw: float) -> Mesh:
    v, t = mesh
    c, s = np.cos(yaw), np.sin(yaw)
    out = np.empty_like(v)
    out[:, 0] = c * v[:, 0] - s * v[:, 1] + x
    out[:, 1] = s * v[:, 0] + c * v[:, 1] + y
    out[:, 2] = v[:, 2] + z
    return out, t
