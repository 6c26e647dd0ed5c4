"""Triangle-soup mesh builder for the procedural worlds (numpy only, no GL).

Notable:
* One vertex layout for the whole world so that a world is ONE vertex buffer and one draw call:
  position(3) normal(3) colour(3) uv(2) layer(1) emit(1) = 13 float32 (`VERTEX_FORMAT`).
* World coordinates are metres in MG3's Unreal-style frame (X forward, Y right, Z up). Geometry is
  plain coordinate arithmetic; handedness only matters for the camera (see renderer.py).
* Every triangle is wound so that cross(b - a, c - a) points along its outward normal (`_needs_flip`);
  the renderer relies on that single convention for back-face culling.
* Flat normals for boxes/prisms, smooth normals for spheres and tori.
"""

from __future__ import annotations

import numpy as np

VERTEX_FLOATS = 13
VERTEX_FORMAT = "3f 3f 3f 2f 1f 1f"
VERTEX_ATTRIBUTES = ("in_pos", "in_normal", "in_color", "in_uv", "in_layer", "in_emit")


def rotate_xy(points: np.ndarray, yaw_rad: float) -> np.ndarray:
    """Rotate [...,3] points (or normals) about +Z by yaw (x' = x cos - y sin, y' = x sin + y cos)."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    out = np.array(points, dtype=np.float64, copy=True)
    x, y = out[..., 0].copy(), out[..., 1].copy()
    out[..., 0] = c * x - s * y
    out[..., 1] = s * x + c * y
    return out


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product [n,3] x [n,3] (np.cross has a large per-call overhead)."""
    return np.stack(
        [
            a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
            a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0],
        ],
        axis=1,
    )


def _needs_flip(tris: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """tris [n,3,3], normals [n,3,3] -> [n] bool: geometric normal opposes the wanted normal."""
    geo = _cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])  # [n,3]
    return (geo * normals.sum(axis=1)).sum(axis=1) < 0


class MeshBuilder:
    """Accumulates triangles with per-vertex attributes; `build()` -> float32 [N*3, 13]."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self.num_triangles = 0

    # ---- low level -------------------------------------------------------------------------
    def add_triangles(
        self, tris: np.ndarray, normals: np.ndarray, uvs: np.ndarray, color, layer: int, emit: float = 0.0
    ) -> None:
        """tris [n,3,3], normals [n,3,3] (or [n,3] per face), uvs [n,3,2]; colour RGB in [0,1]."""
        tris = np.asarray(tris, dtype=np.float64).reshape(-1, 3, 3)
        normals = np.asarray(normals, dtype=np.float64)
        if normals.ndim == 2:
            normals = np.repeat(normals[:, None, :], 3, axis=1)
        uvs = np.asarray(uvs, dtype=np.float64).reshape(-1, 3, 2)
        flip = _needs_flip(tris, normals)
        for arr in (tris, normals, uvs):
            arr[flip, 1], arr[flip, 2] = arr[flip, 2].copy(), arr[flip, 1].copy()
        n = tris.shape[0]
        v = np.empty((n, 3, VERTEX_FLOATS), dtype=np.float32)
        v[..., 0:3] = tris
        v[..., 3:6] = normals / np.linalg.norm(normals, axis=-1, keepdims=True)
        v[..., 6:9] = np.asarray(color, dtype=np.float32)[:3]
        v[..., 9:11] = uvs
        v[..., 11] = layer
        v[..., 12] = emit
        self._parts.append(v.reshape(-1, VERTEX_FLOATS))
        self.num_triangles += n

    def add_quads(
        self, quads: np.ndarray, normals: np.ndarray, uvs: np.ndarray, color, layer: int, emit: float = 0.0
    ) -> None:
        """quads [n,4,3] corners in order around the quad, normals [n,3], uvs [n,4,2]."""
        quads = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 3)
        uvs = np.asarray(uvs, dtype=np.float64).reshape(-1, 4, 2)
        idx = np.array([[0, 1, 2], [0, 2, 3]])
        tris = quads[:, idx].reshape(-1, 3, 3)
        tuv = uvs[:, idx].reshape(-1, 3, 2)
        nrm = np.repeat(np.asarray(normals, dtype=np.float64).reshape(-1, 3), 2, axis=0)
        self.add_triangles(tris, nrm, tuv, color, layer, emit)

    def build(self) -> np.ndarray:
        if not self._parts:
            return np.zeros((0, VERTEX_FLOATS), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(self._parts, axis=0))

    # ---- primitives --------------------------------------------------------------------------
    def ground(self, half: float, z: float, tile: float, color, layer: int, center=(0.0, 0.0)) -> None:
        """Axis-aligned horizontal square of half-size `half` at height z, uv = world xy / tile."""
        cx, cy = center
        q = np.array(
            [
                [cx - half, cy - half, z],
                [cx + half, cy - half, z],
                [cx + half, cy + half, z],
                [cx - half, cy + half, z],
            ]
        )
        self.add_quads(q[None], np.array([[0, 0, 1.0]]), q[None, :, :2] / tile, color, layer)

    def strip(self, p0, p1, width: float, z: float, tile: float, color, layer: int) -> None:
        """Flat horizontal strip (a path) from xy p0 to xy p1."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        length = float(np.linalg.norm(d))
        if length < 1e-6:
            return
        d /= length
        side = np.array([-d[1], d[0]]) * width / 2
        corners = [p0 - side, p1 - side, p1 + side, p0 + side]
        q = np.array([[c[0], c[1], z] for c in corners])
        uv = np.array([[0, 0], [length, 0], [length, width], [0, width]]) / tile
        self.add_quads(q[None], np.array([[0, 0, 1.0]]), uv[None], color, layer)

    def box(
        self,
        center,
        size,
        z0: float = 0.0,
        yaw: float = 0.0,
        color=(1, 1, 1),
        layer: int = 0,
        tile=(2.0, 2.0),
        top_color=None,
        top_layer: int | None = None,
        emit: float = 0.0,
        top_emit: float | None = None,
        bottom: bool = False,
    ) -> None:
        """Box with footprint size (sx, sy) rotated by yaw (radians) about its centre, z from z0 to z0+sz.

        Side uv = (distance along the face, height) / tile, so textures keep their metric scale.
        """
        sx, sy, sz = size
        hx, hy = sx / 2, sy / 2
        base = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        corners = rotate_xy(np.concatenate([base, np.zeros((4, 1))], 1), yaw)[:, :2] + np.asarray(center)
        z1 = z0 + sz
        quads, normals, uvs = [], [], []
        lengths = [sx, sy, sx, sy]
        for i in range(4):
            a, b = corners[i], corners[(i + 1) % 4]
            quads.append([[a[0], a[1], z0], [b[0], b[1], z0], [b[0], b[1], z1], [a[0], a[1], z1]])
            e = b - a
            normals.append([e[1], -e[0], 0.0])  # outward for counter-clockwise (math) corner order
            L = lengths[i]
            uvs.append(
                [
                    [0, z0 / tile[1]],
                    [L / tile[0], z0 / tile[1]],
                    [L / tile[0], z1 / tile[1]],
                    [0, z1 / tile[1]],
                ]
            )
        self.add_quads(np.array(quads), np.array(normals), np.array(uvs), color, layer, emit)
        top = np.array([[c[0], c[1], z1] for c in corners])
        tl = layer if top_layer is None else top_layer
        self.add_quads(
            top[None],
            np.array([[0, 0, 1.0]]),
            (top[None, :, :2]) / tile[0],
            color if top_color is None else top_color,
            tl,
            emit if top_emit is None else top_emit,
        )
        if bottom:
            bot = np.array([[c[0], c[1], z0] for c in corners])
            self.add_quads(
                bot[None], np.array([[0, 0, -1.0]]), bot[None, :, :2] / tile[0], color, layer, emit
            )

    def gable_roof(
        self,
        center,
        size,
        z0: float,
        height: float,
        yaw: float,
        overhang: float,
        roof_color,
        roof_layer: int,
        wall_color,
        wall_layer: int,
        tile: float = 1.5,
    ) -> None:
        """Gabled roof over a (sx, sy) footprint, ridge along the local x axis, eaves at z0."""
        sx, sy = size
        hx, hy = sx / 2 + overhang, sy / 2 + overhang
        z1 = z0 + height
        c = np.asarray(center, float)
        loc = np.array(
            [
                [-hx, -hy, z0],
                [hx, -hy, z0],
                [hx, 0, z1],
                [-hx, 0, z1],  # slope -y
                [-hx, hy, z0],
                [hx, hy, z0],
                [hx, 0, z1],
                [-hx, 0, z1],
            ]
        )  # slope +y
        pts = rotate_xy(loc, yaw)
        pts[:, :2] += c
        slope_len = float(np.hypot(hy, height))
        uv = np.array([[0, 0], [2 * hx, 0], [2 * hx, slope_len], [0, slope_len]]) / tile
        n_minus = rotate_xy(np.array([0, -height, hy]), yaw)
        n_plus = rotate_xy(np.array([0, height, hy]), yaw)
        self.add_quads(
            np.stack([pts[0:4], pts[4:8]]),
            np.stack([n_minus, n_plus]),
            np.stack([uv, uv]),
            roof_color,
            roof_layer,
        )
        # undersides (seen from below the eaves when standing close): darker, facing down
        under = np.asarray(roof_color, float) * 0.45
        self.add_quads(
            np.stack([pts[0:4], pts[4:8]]),
            -np.stack([n_minus, n_plus]),
            np.stack([uv, uv]),
            under,
            roof_layer,
        )
        # gable triangles (walls), inset to the wall plane
        gx, gy = sx / 2, sy / 2
        zg1 = z0 + height * (gy / hy)
        tris, nrms, uvs = [], [], []
        for sgn in (-1, 1):
            t = np.array([[sgn * gx, -gy, z0], [sgn * gx, gy, z0], [sgn * gx, 0, zg1]])
            tw = rotate_xy(t, yaw)
            tw[:, :2] += c
            tris.append(tw)
            nrms.append(rotate_xy(np.array([sgn, 0.0, 0.0]), yaw))
            uvs.append(np.array([[0, z0], [sy, z0], [sy / 2, zg1]]) / 3.0)
        self.add_triangles(np.array(tris), np.array(nrms), np.array(uvs), wall_color, wall_layer)

    def cylinder(
        self,
        center,
        radius: float,
        z0: float,
        height: float,
        segments: int,
        color,
        layer: int,
        tile: float = 2.0,
        cap: bool = True,
        emit: float = 0.0,
        radius_top: float | None = None,
    ) -> None:
        """Vertical (optionally tapered) cylinder with smooth side normals and a flat top cap."""
        rt = radius if radius_top is None else radius_top
        ang = np.linspace(0, 2 * np.pi, segments + 1)
        cx, cy = center
        z1 = z0 + height
        quads, normals, uvs = [], [], []
        circ = 2 * np.pi * radius
        for i in range(segments):
            a0, a1 = ang[i], ang[i + 1]
            p = [
                [cx + radius * np.cos(a0), cy + radius * np.sin(a0), z0],
                [cx + radius * np.cos(a1), cy + radius * np.sin(a1), z0],
                [cx + rt * np.cos(a1), cy + rt * np.sin(a1), z1],
                [cx + rt * np.cos(a0), cy + rt * np.sin(a0), z1],
            ]
            am = (a0 + a1) / 2
            quads.append(p)
            normals.append([np.cos(am), np.sin(am), (radius - rt) / max(height, 1e-6)])
            u0, u1 = circ * i / segments / tile, circ * (i + 1) / segments / tile
            uvs.append([[u0, z0 / tile], [u1, z0 / tile], [u1, z1 / tile], [u0, z1 / tile]])
        self.add_quads(np.array(quads), np.array(normals), np.array(uvs), color, layer, emit)
        if cap and rt > 0:
            self.cone(center, rt, z1, 0.0, segments, color, layer, emit=emit)

    def cone(
        self,
        center,
        radius: float,
        z0: float,
        height: float,
        segments: int,
        color,
        layer: int,
        tile: float = 2.0,
        emit: float = 0.0,
        phase: float = 0.0,
    ) -> None:
        """Cone / pyramid (segments=4) from a circle of `radius` at z0 to an apex at z0+height.

        height 0 gives a flat disc (used as a cap)."""
        ang = np.linspace(0, 2 * np.pi, segments + 1) + phase
        cx, cy = center
        apex = np.array([cx, cy, z0 + height])
        tris, normals, uvs = [], [], []
        for i in range(segments):
            a0, a1 = ang[i], ang[i + 1]
            p0 = np.array([cx + radius * np.cos(a0), cy + radius * np.sin(a0), z0])
            p1 = np.array([cx + radius * np.cos(a1), cy + radius * np.sin(a1), z0])
            tris.append([p0, p1, apex])
            am = (a0 + a1) / 2
            if height > 0:
                n = np.array([np.cos(am) * height, np.sin(am) * height, radius * np.cos(np.pi / segments)])
            else:
                n = np.array([0.0, 0.0, 1.0])
            normals.append(n)
            uvs.append([p0[:2] / tile, p1[:2] / tile, apex[:2] / tile + [0, height / tile]])
        self.add_triangles(np.array(tris), np.array(normals), np.array(uvs), color, layer, emit)

    def sphere(
        self,
        center3,
        radius: float,
        rings: int,
        segments: int,
        color,
        layer: int,
        emit: float = 0.0,
        squash: float = 1.0,
        tile: float = 2.0,
    ) -> None:
        """Latitude-longitude sphere (smooth normals); `squash` scales z (ellipsoid crowns)."""
        c = np.asarray(center3, float)
        th = np.linspace(0, np.pi, rings + 1)  # polar angle from +Z
        ph = np.linspace(0, 2 * np.pi, segments + 1)
        T, P = np.meshgrid(th, ph, indexing="ij")  # [rings+1, segments+1]
        unit = np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], -1)
        pts = c + unit * radius * np.array([1, 1, squash])
        nrm = unit / np.array([1, 1, squash])
        uv = np.stack(
            [P / (2 * np.pi) * (2 * np.pi * radius / tile), T / np.pi * (np.pi * radius / tile)], -1
        )
        i, j = np.meshgrid(np.arange(rings), np.arange(segments), indexing="ij")
        i, j = i.ravel(), j.ravel()
        a, b, cc, d = (i, j), (i, j + 1), (i + 1, j + 1), (i + 1, j)
        tri_idx = [(a, b, cc), (a, cc, d)]
        tris, nrms, uvs = [], [], []
        for t in tri_idx:
            tris.append(np.stack([pts[v] for v in t], 1))
            nrms.append(np.stack([nrm[v] for v in t], 1))
            uvs.append(np.stack([uv[v] for v in t], 1))
        tris, nrms, uvs = (np.concatenate(x, 0) for x in (tris, nrms, uvs))
        area = np.linalg.norm(_cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=-1)
        keep = area > 1e-9  # drop the degenerate pole triangles
        self.add_triangles(tris[keep], nrms[keep], uvs[keep], color, layer, emit)

    def torus_vertical(
        self,
        center3,
        radius: float,
        tube: float,
        yaw: float,
        segments: int,
        sides: int,
        color,
        layer: int,
        emit: float = 0.0,
    ) -> None:
        """A ring standing upright (axis horizontal, rotated by yaw)."""
        c = np.asarray(center3, float)
        u = np.linspace(0, 2 * np.pi, segments + 1)
        v = np.linspace(0, 2 * np.pi, sides + 1)
        U, V = np.meshgrid(u, v, indexing="ij")
        ring = np.stack([np.zeros_like(U), np.cos(U), np.sin(U)], -1)  # ring circle in local y-z plane
        tube_dir = np.cos(V)[..., None] * ring + np.sin(V)[..., None] * np.array([1.0, 0, 0])
        pts_l = ring * radius + tube_dir * tube
        pts = rotate_xy(pts_l, yaw) + c
        nrm = rotate_xy(tube_dir, yaw)
        uv = np.stack([U * radius, V * tube], -1) / 2.0
        i, j = np.meshgrid(np.arange(segments), np.arange(sides), indexing="ij")
        i, j = i.ravel(), j.ravel()
        a, b, cc, d = (i, j), (i, j + 1), (i + 1, j + 1), (i + 1, j)
        tris, nrms, uvs = [], [], []
        for t in ((a, b, cc), (a, cc, d)):
            tris.append(np.stack([pts[q] for q in t], 1))
            nrms.append(np.stack([nrm[q] for q in t], 1))
            uvs.append(np.stack([uv[q] for q in t], 1))
        self.add_triangles(
            np.concatenate(tris), np.concatenate(nrms), np.concatenate(uvs), color, layer, emit
        )

    def vertical_quad(
        self,
        p0,
        p1,
        z0: float,
        z1: float,
        color,
        layer: int,
        emit: float = 0.0,
        two_sided: bool = True,
        uv_full: bool = True,
        tile: float = 2.0,
    ) -> None:
        """Upright rectangle from xy p0 to xy p1 (a sign board); uv spans [0,1] if uv_full."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        e = p1 - p0
        q = np.array([[p0[0], p0[1], z0], [p1[0], p1[1], z0], [p1[0], p1[1], z1], [p0[0], p0[1], z1]])
        if uv_full:
            uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1.0]])
        else:
            L = float(np.linalg.norm(e))
            uv = np.array([[0, z0], [L, z0], [L, z1], [0, z1]]) / tile
        n = np.array([e[1], -e[0], 0.0])
        self.add_quads(q[None], n[None], uv[None], color, layer, emit)
        if two_sided:
            # mirrored uv so the pattern reads the same way from behind
            uvb = uv[[1, 0, 3, 2]]
            self.add_quads(q[None, [1, 0, 3, 2]], -n[None], uvb[None], color, layer, emit)
