"""Procedural worlds: biome, layout, geometry, textures, lighting, collision grid, descriptors.

Notable:
* `World.generate(seed, cfg)` is a pure function of (seed, cfg) through one numpy Generator:
  same seed -> byte-identical vertices and textures (no GL here; the renderer uploads them).
* Frame: metres, MG3/Unreal-style X forward, Y right, Z up; ground at z = 0; the playable arena is
  the square [-arena/2, arena/2]^2 closed by a biome-specific boundary (fence, cliffs, hedge,
  towers, stone wall). Distant scenery (mountains, mesas, hills, skyline) fills the horizon.
* Five biomes, each with its own time of day and lighting: snowy village at dusk, desert with red
  rock at midday, green park in the morning, neon city at night, autumn town in the golden afternoon.
* Landmarks (towers, arches, obelisks, spheres, pyramids, signs with patterns, rings, stacked
  cubes) get colours unique within a world, so a revisit is recognisable; their names feed
  `prompts.py` ("a blue tower", "a pink sign with stripes").
* Collision: every solid footprint (circle or rotated rectangle) is rasterised into a 2D grid;
  `free_distance` (metres to the nearest obstacle or boundary, via an exact EDT) drives agent
  start sampling, look-ahead and avoidance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import distance_transform_edt

from worldstream.data.engine import textures as tx
from worldstream.data.engine.mesh import MeshBuilder

BIOMES = ("snowy_village", "desert_canyon", "green_park", "neon_city", "autumn_town")

# Landmark colours: names are what prompts say; values are albedo RGB.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "orange": (0.96, 0.50, 0.08),
    "yellow": (0.97, 0.86, 0.12),
    "lime": (0.60, 0.88, 0.15),
    "green": (0.10, 0.62, 0.22),
    "teal": (0.05, 0.58, 0.55),
    "cyan": (0.20, 0.82, 0.95),
    "blue": (0.12, 0.26, 0.88),
    "purple": (0.52, 0.22, 0.78),
    "magenta": (0.92, 0.15, 0.72),
    "pink": (0.98, 0.56, 0.72),
    "white": (0.96, 0.96, 0.96),
    "black": (0.07, 0.07, 0.08),
}
LANDMARK_KINDS = ("tower", "arch", "obelisk", "sphere", "pyramid", "sign", "ring", "cube stack")


@dataclass(frozen=True)
class WorldConfig:
    arena_size: float = 60.0  # metres; square playable area centred on the origin
    ground_half_extent: float = 400.0  # ground plane half size, so the horizon is ground, not void
    grid_cell: float = 0.2  # collision grid resolution (metres)
    texture_size: int = 64  # texels per texture layer (tileable; mipmapped)
    num_landmarks: tuple[int, int] = (5, 7)  # inclusive range
    landmark_spacing: float = 11.0  # minimum distance between landmark centres (m)
    num_buildings: tuple[int, int] = (9, 14)  # scatter biomes; the city uses its block grid
    num_props: tuple[int, int] = (16, 26)  # trees, cacti, lamps, boulders inside the arena
    building_gap: float = 3.0  # free corridor kept between solid footprints (m)
    prop_gap: float = 1.6
    wall_margin: float = 3.0  # nothing solid this close to the boundary (an inner ring path)
    distant_count: int = 28  # mountains / skyline pieces on the horizon ring
    distant_radius: tuple[float, float] = (110.0, 190.0)
    spawn_clear_radius: float = 4.0  # kept free around the arena centre (a plaza)
    max_place_tries: int = 400


@dataclass(frozen=True)
class Lighting:
    sky_zenith: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    sun_dir: tuple[float, float, float]  # unit vector towards the sun/moon (world X, Y, Z)
    sun_color: tuple[float, float, float]
    sun_disc: float  # visible disc brightness (0 = none)
    ambient_sky: tuple[float, float, float]
    ambient_ground: tuple[float, float, float]
    fog_color: tuple[float, float, float]
    fog_density: float  # per metre, exponential
    stars: float  # star field brightness (0 = none)


@dataclass(frozen=True)
class Landmark:
    name: str  # "blue tower", "pink sign with stripes"
    kind: str
    colour: str
    x: float
    y: float
    height: float  # metres, top of the landmark
    radius: float  # rough horizontal extent (m), for visibility tests


@dataclass(frozen=True)
class Footprint:
    """A solid obstacle's ground footprint: circle (sx = radius) or rectangle (sx, sy, yaw)."""

    shape: str  # "circle" | "rect"
    x: float
    y: float
    sx: float
    sy: float = 0.0
    yaw: float = 0.0  # radians
    height: float = 3.0
    label: str = "building"


# ---- biome themes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Theme:
    place: str
    time_of_day: str
    sky_zenith: tuple
    sky_horizon: tuple
    sun_elevation: float  # degrees
    sun_color: tuple
    sun_disc: float
    ambient_sky: tuple
    ambient_ground: tuple
    fog_density: float
    stars: float
    excluded_colours: tuple
    roof_colours: dict = field(default_factory=dict)  # name -> RGB
    wall_colours: tuple = ()
    props: str = "pine trees"


THEMES: dict[str, _Theme] = {
    "snowy_village": _Theme(
        place="a snowy village", time_of_day="at dusk",
        sky_zenith=(0.16, 0.18, 0.42), sky_horizon=(0.98, 0.62, 0.46),
        sun_elevation=5.0, sun_color=(1.0, 0.62, 0.42), sun_disc=1.2,
        ambient_sky=(0.36, 0.40, 0.58), ambient_ground=(0.34, 0.30, 0.34), fog_density=0.011, stars=0.0,
        excluded_colours=("white",),
        roof_colours={"red": (0.72, 0.14, 0.12), "dark green": (0.12, 0.35, 0.22),
                      "brown": (0.40, 0.24, 0.14)},
        wall_colours=((0.62, 0.40, 0.24), (0.78, 0.62, 0.38), (0.55, 0.22, 0.16), (0.82, 0.80, 0.72)),
        props="snowy pine trees"),
    "desert_canyon": _Theme(
        place="a desert town", time_of_day="under a bright midday sun",
        sky_zenith=(0.18, 0.42, 0.85), sky_horizon=(0.82, 0.86, 0.92),
        sun_elevation=62.0, sun_color=(1.05, 0.98, 0.86), sun_disc=2.0,
        ambient_sky=(0.44, 0.50, 0.62), ambient_ground=(0.52, 0.38, 0.26), fog_density=0.0055, stars=0.0,
        excluded_colours=("orange",),
        roof_colours={"flat": (0.80, 0.66, 0.48)},
        wall_colours=((0.88, 0.72, 0.52), (0.84, 0.62, 0.46), (0.92, 0.82, 0.64)),
        props="cacti, boulders and red rock mesas"),
    "green_park": _Theme(
        place="a green park", time_of_day="on a sunny morning",
        sky_zenith=(0.28, 0.52, 0.92), sky_horizon=(0.80, 0.88, 0.96),
        sun_elevation=32.0, sun_color=(1.0, 0.96, 0.86), sun_disc=1.6,
        ambient_sky=(0.40, 0.46, 0.58), ambient_ground=(0.24, 0.34, 0.18), fog_density=0.0075, stars=0.0,
        excluded_colours=("green", "lime"),
        roof_colours={"blue": (0.20, 0.32, 0.62), "red": (0.70, 0.18, 0.14), "grey": (0.42, 0.42, 0.46)},
        wall_colours=((0.94, 0.92, 0.86), (0.96, 0.88, 0.72), (0.86, 0.90, 0.94)),
        props="leafy trees and hedges"),
    "neon_city": _Theme(
        place="a neon-lit city", time_of_day="at night",
        sky_zenith=(0.01, 0.01, 0.05), sky_horizon=(0.12, 0.06, 0.20),
        sun_elevation=45.0, sun_color=(0.32, 0.38, 0.60), sun_disc=0.6,  # the moon
        ambient_sky=(0.10, 0.10, 0.17), ambient_ground=(0.08, 0.06, 0.10), fog_density=0.014, stars=1.0,
        excluded_colours=("black",),
        roof_colours={"flat": (0.25, 0.25, 0.28)},
        wall_colours=((0.30, 0.30, 0.34), (0.24, 0.26, 0.32), (0.34, 0.30, 0.30)),
        props="street lamps"),
    "autumn_town": _Theme(
        place="an autumn town", time_of_day="in golden afternoon light",
        sky_zenith=(0.34, 0.50, 0.82), sky_horizon=(0.98, 0.80, 0.56),
        sun_elevation=16.0, sun_color=(1.05, 0.82, 0.56), sun_disc=1.6,
        ambient_sky=(0.42, 0.42, 0.50), ambient_ground=(0.36, 0.28, 0.18), fog_density=0.009, stars=0.0,
        excluded_colours=("orange",),
        roof_colours={"slate grey": (0.30, 0.32, 0.36), "dark red": (0.50, 0.14, 0.10),
                      "brown": (0.42, 0.28, 0.18)},
        wall_colours=((0.72, 0.34, 0.24), (0.62, 0.30, 0.22), (0.80, 0.46, 0.32)),
        props="orange and red autumn trees"),
}  # fmt: skip


def _lighting(theme: _Theme, rng: np.random.Generator) -> Lighting:
    elev = np.deg2rad(theme.sun_elevation + rng.uniform(-2.0, 2.0))
    azim = rng.uniform(-np.pi, np.pi)
    sun = (float(np.cos(elev) * np.cos(azim)), float(np.cos(elev) * np.sin(azim)), float(np.sin(elev)))
    fog = tuple(float(0.75 * h + 0.25 * z) for h, z in zip(theme.sky_horizon, theme.sky_zenith))
    return Lighting(
        theme.sky_zenith,
        theme.sky_horizon,
        sun,
        theme.sun_color,
        theme.sun_disc,
        theme.ambient_sky,
        theme.ambient_ground,
        fog,
        theme.fog_density,
        theme.stars,
    )


# ---- builder ----------------------------------------------------------------------------------


class _Builder:
    """Mutable state while generating one world (mesh, texture layers, footprints, landmarks)."""

    def __init__(self, seed: int, cfg: WorldConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.mesh = MeshBuilder()
        self.layers: list[np.ndarray] = []
        self.layer_index: dict[str, int] = {}
        self.footprints: list[Footprint] = []
        self.landmarks: list[Landmark] = []
        self.half = cfg.arena_size / 2
        n = int(round(cfg.arena_size / cfg.grid_cell))
        self.grid = np.zeros((n, n), dtype=bool)  # raw solid footprints, [x index, y index]
        c = -self.half + (np.arange(n) + 0.5) * cfg.grid_cell
        self.gx, self.gy = np.meshgrid(c, c, indexing="ij")  # cell centres [n,n]

    # textures
    def tex(self, name: str, make) -> int:
        if name not in self.layer_index:
            img = make(self.cfg.texture_size, self.rng)
            self.layer_index[name] = len(self.layers)
            self.layers.append(img)
        return self.layer_index[name]

    # footprints
    def _window(self, fp: Footprint, grow: float) -> tuple[slice, slice]:
        """Grid index window covering the footprint's bounding circle grown by `grow`."""
        ext = (fp.sx if fp.shape == "circle" else 0.5 * float(np.hypot(fp.sx, fp.sy))) + grow
        n, cell = self.grid.shape[0], self.cfg.grid_cell
        lo = np.floor((np.array([fp.x, fp.y]) - ext + self.half) / cell).astype(int) - 1
        hi = np.ceil((np.array([fp.x, fp.y]) + ext + self.half) / cell).astype(int) + 1
        lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
        return slice(lo[0], hi[0]), slice(lo[1], hi[1])

    def _mask(self, fp: Footprint, grow: float) -> tuple[tuple[slice, slice], np.ndarray]:
        """(window, mask in that window) of grid cells within `grow` of the footprint."""
        win = self._window(fp, grow)
        dx, dy = self.gx[win] - fp.x, self.gy[win] - fp.y
        if fp.shape == "circle":
            return win, dx * dx + dy * dy <= (fp.sx + grow) ** 2
        c, s = np.cos(fp.yaw), np.sin(fp.yaw)
        lx, ly = c * dx + s * dy, -s * dx + c * dy  # into the rectangle's frame
        return win, (np.abs(lx) <= fp.sx / 2 + grow) & (np.abs(ly) <= fp.sy / 2 + grow)

    def stamp(self, fp: Footprint) -> None:
        """Mark the footprint solid in the grid (without recording it)."""
        win, mask = self._mask(fp, 0.0)
        self.grid[win] |= mask

    def fits(self, fp: Footprint, gap: float) -> bool:
        """Inside the arena (minus the wall margin) and `gap` away from every solid footprint."""
        ext = fp.sx if fp.shape == "circle" else 0.5 * float(np.hypot(fp.sx, fp.sy))
        lim = self.half - self.cfg.wall_margin - ext
        if abs(fp.x) > lim or abs(fp.y) > lim:
            return False
        if np.hypot(fp.x, fp.y) < self.cfg.spawn_clear_radius + ext:
            return False
        win, mask = self._mask(fp, gap)
        return not bool((mask & self.grid[win]).any())

    def add_footprint(self, fp: Footprint) -> None:
        self.footprints.append(fp)
        self.stamp(fp)

    def place(self, make_fp, gap: float, tries: int | None = None) -> Footprint | None:
        """Rejection-sample a footprint from `make_fp(rng)` that fits; registers it."""
        for _ in range(tries or self.cfg.max_place_tries):
            fp = make_fp(self.rng)
            if self.fits(fp, gap):
                self.add_footprint(fp)
                return fp
        return None


# ---- shared geometry pieces ---------------------------------------------------------------


def _plain_layer(b: _Builder) -> int:
    return b.tex("plain", lambda s, r: tx.noisy(s, r, (0.86, 0.86, 0.86), (1.0, 1.0, 1.0), alpha=1.0))


def _landmark(b: _Builder, kind: str, colour: str, x: float, y: float, emit: float) -> Landmark:
    """Build one landmark's geometry + footprint(s) at (x, y); returns its descriptor."""
    rng, m = b.rng, b.mesh
    col = COLOURS[colour]
    plain = _plain_layer(b)
    trim = (0.95, 0.95, 0.92) if colour != "white" else (0.25, 0.25, 0.28)
    yaw = float(rng.uniform(0, np.pi))
    name = f"{colour} {kind}"
    if kind == "tower":
        h = float(rng.uniform(7.0, 10.0))
        m.cylinder((x, y), 1.3, 0.0, h, 12, col, plain, emit=emit)
        m.cylinder((x, y), 1.55, h - 1.2, 0.5, 12, trim, plain, emit=emit)
        m.cone((x, y), 1.75, h, 2.6, 12, col, plain, emit=emit)
        b.add_footprint(Footprint("circle", x, y, 1.55, height=h + 2.6, label=name))
        return Landmark(name, kind, colour, x, y, h + 2.6, 1.6)
    if kind == "arch":
        w, ph = 3.8, float(rng.uniform(4.2, 5.2))
        d = np.array([np.cos(yaw), np.sin(yaw)]) * w / 2
        for sgn in (-1, 1):
            px, py = x + sgn * d[0], y + sgn * d[1]
            m.box((px, py), (0.8, 0.8, ph), 0.0, yaw, col, plain, emit=emit)
            b.add_footprint(Footprint("rect", px, py, 0.8, 0.8, yaw, ph, name))
        m.box((x, y), (w + 0.8, 0.9, 0.8), ph, yaw, col, plain, emit=emit)
        m.box((x, y), (1.2, 1.0, 0.6), ph + 0.8, yaw, trim, plain, emit=emit)
        return Landmark(name, kind, colour, x, y, ph + 1.4, 2.4)
    if kind == "obelisk":
        h = float(rng.uniform(5.5, 7.5))
        m.box((x, y), (2.0, 2.0, 0.5), 0.0, yaw, trim, plain, emit=emit)
        m.box((x, y), (1.1, 1.1, h), 0.5, yaw, col, plain, emit=emit)
        m.cone((x, y), 0.78, h + 0.5, 1.2, 4, col, plain, emit=emit, phase=yaw + np.pi / 4)
        b.add_footprint(Footprint("rect", x, y, 2.0, 2.0, yaw, h + 1.7, name))
        return Landmark(name, kind, colour, x, y, h + 1.7, 1.2)
    if kind == "sphere":
        r = float(rng.uniform(1.4, 1.8))
        m.cylinder((x, y), 1.0, 0.0, 1.0, 10, trim, plain, emit=emit)
        m.sphere((x, y, 1.0 + r * 0.92), r, 8, 14, col, plain, emit=emit)
        b.add_footprint(Footprint("circle", x, y, r, height=1 + 2 * r, label=name))
        return Landmark(name, kind, colour, x, y, 1 + 2 * r, r)
    if kind == "pyramid":
        r, h = float(rng.uniform(2.8, 3.4)), float(rng.uniform(3.5, 4.8))
        m.cone((x, y), r, 0.0, h, 4, col, plain, emit=emit, phase=yaw)
        side = r * np.sqrt(2)
        b.add_footprint(Footprint("rect", x, y, side, side, yaw + np.pi / 4, h, name))
        return Landmark(name, kind, colour, x, y, h, r * 0.8)
    if kind == "sign":
        pattern = tx.SIGN_PATTERNS[int(rng.integers(len(tx.SIGN_PATTERNS)))]
        layer = b.tex(f"sign_{colour}_{pattern}", lambda s, r: tx.sign_pattern(s, r, pattern, col))
        name = f"{colour} sign with {pattern}"
        d = np.array([np.cos(yaw), np.sin(yaw)]) * 1.7
        for sgn in (-1, 1):
            px, py = x + sgn * d[0] * 0.85, y + sgn * d[1] * 0.85
            m.cylinder((px, py), 0.1, 0.0, 3.5, 6, (0.3, 0.3, 0.32), plain)
            b.add_footprint(Footprint("circle", px, py, 0.25, height=3.5, label=name))
        m.vertical_quad((x - d[0], y - d[1]), (x + d[0], y + d[1]), 1.4, 3.6, (1, 1, 1), layer, emit=emit)
        return Landmark(name, kind, colour, x, y, 3.6, 1.7)
    if kind == "ring":
        m.box((x, y), (1.2, 1.4, 0.6), 0.0, yaw, trim, plain, emit=emit)
        m.torus_vertical((x, y, 2.7), 2.0, 0.35, yaw, 20, 6, col, plain, emit=emit)
        b.add_footprint(Footprint("rect", x, y, 1.2, 1.4, yaw, 5.1, name))
        d = np.array([-np.sin(yaw), np.cos(yaw)]) * 2.0  # the ring's feet
        for sgn in (-1, 1):
            b.add_footprint(Footprint("circle", x + sgn * d[0], y + sgn * d[1], 0.4, height=1.0, label=name))
        return Landmark(name, kind, colour, x, y, 5.1, 2.3)
    if kind == "cube stack":
        z = 0.0
        for size in (2.4, 1.8, 1.2):
            m.box((x, y), (size, size, size), z, float(rng.uniform(0, np.pi / 2)), col, plain, emit=emit)
            z += size
        b.add_footprint(Footprint("circle", x, y, 1.7, height=z, label=name))
        return Landmark("stack of " + colour + " cubes", kind, colour, x, y, z, 1.7)
    raise ValueError(f"unknown landmark kind {kind!r}")


def _landmark_extent(kind: str) -> float:
    return {"arch": 2.8, "pyramid": 3.4, "ring": 2.4, "sign": 1.9}.get(kind, 1.9)


def _choose_landmarks(b: _Builder, theme: _Theme, count: int) -> list[tuple[str, str]]:
    colours = [c for c in COLOURS if c not in theme.excluded_colours]
    cols = b.rng.permutation(colours)[:count]
    kinds = list(b.rng.permutation(LANDMARK_KINDS))
    while len(kinds) < count:
        kinds += list(b.rng.permutation(LANDMARK_KINDS))
    return [(kinds[i], str(cols[i])) for i in range(count)]


def _place_landmarks(
    b: _Builder, theme: _Theme, emit: float, spots: list | None = None, kinds: list | None = None
) -> None:
    """Place landmarks at random spread-out spots, or at `spots` (with optional allowed kinds per spot)."""
    cfg, rng = b.cfg, b.rng
    count = int(rng.integers(cfg.num_landmarks[0], cfg.num_landmarks[1] + 1))
    chosen = _choose_landmarks(b, theme, count)
    if kinds is not None:
        chosen = [
            (
                k
                if i >= len(kinds) or kinds[i] is None or k in kinds[i]
                else kinds[i][int(rng.integers(len(kinds[i])))],
                c,
            )
            for i, (k, c) in enumerate(chosen)
        ]
    lim = b.half - cfg.wall_margin - 3.0
    for i, (kind, colour) in enumerate(chosen):
        ext = _landmark_extent(kind)
        if spots is not None:
            if i >= len(spots):
                break
            x, y = spots[i]
        else:
            for _ in range(cfg.max_place_tries):
                x, y = rng.uniform(-lim, lim, 2)
                far = all(np.hypot(x - lm.x, y - lm.y) >= cfg.landmark_spacing for lm in b.landmarks)
                probe = Footprint("circle", float(x), float(y), ext)
                if far and b.fits(probe, 1.0):
                    break
            else:
                continue
        b.landmarks.append(_landmark(b, kind, colour, float(x), float(y), emit))


def _tree(
    b: _Builder,
    x: float,
    y: float,
    style: str,
    foliage_layer: int,
    bark_layer: int,
    colour,
    scale: float = 1.0,
    solid: bool = True,
) -> None:
    m = b.mesh
    trunk = (0.36, 0.25, 0.16)
    if style == "pine":
        h = 5.0 * scale
        m.cylinder((x, y), 0.22 * scale, 0.0, 1.2 * scale, 6, trunk, bark_layer, cap=False)
        m.cone((x, y), 1.7 * scale, 1.0 * scale, h * 0.6, 8, colour, foliage_layer)
        m.cone((x, y), 1.25 * scale, 2.4 * scale, h * 0.55, 8, colour, foliage_layer)
        height = 2.4 * scale + h * 0.55
    elif style == "round":
        m.cylinder((x, y), 0.25 * scale, 0.0, 2.2 * scale, 6, trunk, bark_layer, cap=False)
        m.sphere((x, y, 3.2 * scale), 1.7 * scale, 5, 8, colour, foliage_layer, squash=0.85)
        height = 4.7 * scale
    elif style == "cactus":
        g = colour
        m.cylinder((x, y), 0.3 * scale, 0.0, 3.0 * scale, 8, g, foliage_layer)
        for sgn in (-1, 1):
            ax = x + sgn * 0.55 * scale
            m.cylinder((ax, y), 0.18 * scale, 1.2 * scale, 1.3 * scale, 6, g, foliage_layer)
            m.box(
                (x + sgn * 0.3 * scale, y),
                (0.5 * scale, 0.3 * scale, 0.3 * scale),
                1.1 * scale,
                0.0,
                g,
                foliage_layer,
            )
        height = 3.0 * scale
    elif style == "lamp":
        m.cylinder((x, y), 0.09, 0.0, 3.6, 6, (0.22, 0.22, 0.25), bark_layer, cap=False)
        m.sphere((x, y, 3.8), 0.32, 4, 6, colour, _plain_layer(b), emit=1.0)
        height = 4.1
    elif style == "boulder":
        m.sphere((x, y, 0.3 * scale), 1.0 * scale, 3, 6, colour, foliage_layer, squash=0.8)
        height = 1.1 * scale
    else:
        raise ValueError(f"unknown prop style {style!r}")
    if solid:
        r = {"pine": 0.5, "round": 0.5, "cactus": 0.75, "lamp": 0.25, "boulder": 1.0}[style] * (
            1.0 if style == "lamp" else scale
        )
        b.add_footprint(Footprint("circle", x, y, r, height=height, label=style))


def _house(
    b: _Builder, fp: Footprint, wall_layer: int, wall_col, roof: str, roof_layer: int, roof_col, wall_h: float
) -> None:
    m = b.mesh
    m.box(
        (fp.x, fp.y),
        (fp.sx, fp.sy, wall_h),
        0.0,
        fp.yaw,
        wall_col,
        wall_layer,
        tile=(3.0, 3.0),
        top_color=roof_col,
        top_layer=roof_layer,
    )
    total = wall_h
    if roof == "gable":
        long_x = fp.sx >= fp.sy
        size = (fp.sx, fp.sy) if long_x else (fp.sy, fp.sx)
        yaw = fp.yaw if long_x else fp.yaw + np.pi / 2
        roof_h = float(b.rng.uniform(1.4, 2.4))
        m.gable_roof(
            (fp.x, fp.y), size, wall_h, roof_h, yaw, 0.35, roof_col, roof_layer, wall_col, wall_layer
        )
        total += roof_h
        # chimney
        if b.rng.random() < 0.5:
            m.box(
                (fp.x + 0.25 * fp.sx * np.cos(fp.yaw), fp.y + 0.25 * fp.sx * np.sin(fp.yaw)),
                (0.6, 0.6, 2.4),
                wall_h,
                fp.yaw,
                (0.45, 0.30, 0.25),
                roof_layer,
            )
    elif roof == "parapet":
        m.box(
            (fp.x, fp.y),
            (fp.sx * 0.45, fp.sy * 0.45, 1.6),
            wall_h,
            fp.yaw,
            wall_col,
            wall_layer,
            tile=(3.0, 3.0),
            top_color=roof_col,
            top_layer=roof_layer,
        )
        total += 1.6
    # record the real height (used by line-of-sight tests)
    b.footprints = [replace(f, height=total) if f is fp else f for f in b.footprints]


def _distant_ring(b: _Builder, style: str, colour, layer: int, alt_colour=None, emit: float = 0.0) -> None:
    cfg, rng, m = b.cfg, b.rng, b.mesh
    n = cfg.distant_count
    for i in range(n):
        ang = 2 * np.pi * (i + rng.uniform(-0.3, 0.3)) / n
        rad = rng.uniform(*cfg.distant_radius)
        x, y = rad * np.cos(ang), rad * np.sin(ang)
        if style == "mountains":
            r, h = rng.uniform(30, 55), rng.uniform(18, 48)
            m.cone((x, y), r, -2.0, h, 5, colour, layer, phase=rng.uniform(0, 6.3))
            if alt_colour is not None:  # snow cap
                m.cone(
                    (x, y), r * 0.3, h * 0.7 - 2.0, h * 0.3, 5, alt_colour, layer, phase=rng.uniform(0, 6.3)
                )
        elif style == "mesas":
            w, h = rng.uniform(20, 45), rng.uniform(12, 35)
            m.cylinder((x, y), w, -1.0, h, 7, colour, layer, radius_top=w * 0.75, tile=12.0)
        elif style == "hills":
            r = rng.uniform(35, 60)
            m.sphere((x, y, -8.0), r, 4, 8, colour, layer, squash=rng.uniform(0.35, 0.6))
        elif style == "skyline":
            w, h = rng.uniform(12, 24), rng.uniform(25, 80)
            m.box((x, y), (w, w, h), 0.0, float(ang), colour, layer, tile=(4.0, 6.0), emit=emit)
        else:
            raise ValueError(style)


def _scatter_buildings(b: _Builder, size_range, yaw_mode: str) -> list[Footprint]:
    cfg, rng = b.cfg, b.rng
    n = int(rng.integers(cfg.num_buildings[0], cfg.num_buildings[1] + 1))
    lim = b.half - cfg.wall_margin

    def make(r):
        sx, sy = r.uniform(*size_range, 2)
        yaw = r.uniform(0, np.pi) if yaw_mode == "free" else r.integers(4) * np.pi / 2 + r.uniform(-0.1, 0.1)
        x, y = r.uniform(-lim, lim, 2)
        return Footprint("rect", float(x), float(y), float(sx), float(sy), float(yaw))

    out = []
    for _ in range(n):
        fp = b.place(make, cfg.building_gap)
        if fp is not None:
            out.append(fp)
    return out


def _scatter_props(b: _Builder, radius: float, count: int | None = None) -> list[tuple[float, float]]:
    cfg, rng = b.cfg, b.rng
    n = int(rng.integers(cfg.num_props[0], cfg.num_props[1] + 1)) if count is None else count
    lim = b.half - cfg.wall_margin
    out = []
    for _ in range(n):
        for _ in range(60):
            x, y = (float(v) for v in rng.uniform(-lim, lim, 2))
            if b.fits(Footprint("circle", x, y, radius), cfg.prop_gap):
                out.append((x, y))
                b.stamp(Footprint("circle", x, y, radius))  # reserve now; the footprint is added by _tree
                break
    return out


def _outer_ring_positions(b: _Builder, count: int, r0: float, r1: float) -> list[tuple[float, float]]:
    """Positions in the square ring just outside the arena (decor beyond the boundary)."""
    out = []
    while len(out) < count:
        x, y = b.rng.uniform(-b.half - r1, b.half + r1, 2)
        d = max(abs(x), abs(y)) - b.half
        if r0 <= d <= r1:
            out.append((float(x), float(y)))
    return out


def _paths(b: _Builder, layer: int, colour, width: float = 2.2) -> None:
    for i, lm in enumerate(b.landmarks):
        b.mesh.strip((0.0, 0.0), (lm.x, lm.y), width, 0.02 + 0.002 * i, 2.0, colour, layer)
    b.mesh.cone((0.0, 0.0), b.cfg.spawn_clear_radius + 0.5, 0.03, 0.0, 16, colour, layer)


def _perimeter(
    b: _Builder,
    height: float,
    thickness: float,
    colour,
    layer: int,
    tile=(2.0, 2.0),
    segments: int = 1,
    jitter: float = 0.0,
) -> None:
    """Boundary wall made of `segments` boxes per side (heights jittered for cliffs)."""
    h = b.half
    for side in range(4):
        for k in range(segments):
            t0, t1 = (
                -h - thickness + (2 * h + 2 * thickness) * k / segments,
                -h - thickness + (2 * h + 2 * thickness) * (k + 1) / segments,
            )
            mid, length = (t0 + t1) / 2, t1 - t0
            hh = height * (1 + b.rng.uniform(-jitter, jitter))
            off = h + thickness / 2 + (b.rng.uniform(0, jitter * 3) if jitter else 0.0)
            if side == 0:
                c, size = (off, mid), (thickness, length + 0.01)
            elif side == 1:
                c, size = (-off, mid), (thickness, length + 0.01)
            elif side == 2:
                c, size = (mid, off), (length + 0.01, thickness)
            else:
                c, size = (mid, -off), (length + 0.01, thickness)
            b.mesh.box(c, (size[0], size[1], hh), 0.0, 0.0, colour, layer, tile=tile)


# ---- biomes -------------------------------------------------------------------------------


def _ground(b: _Builder, layer: int, colour=(1, 1, 1), tile: float = 2.0) -> None:
    b.mesh.ground(b.cfg.ground_half_extent, 0.0, tile, colour, layer)


def _build_snowy_village(b: _Builder, theme: _Theme) -> dict:
    rng = b.rng
    _ground(
        b,
        b.tex(
            "snow",
            lambda s, r: tx.speckled(s, r, (0.84, 0.87, 0.93), (0.97, 0.98, 1.0), (1.0, 1.0, 1.0), 0.03),
        ),
    )
    path = b.tex("snow_path", lambda s, r: tx.noisy(s, r, (0.62, 0.60, 0.60), (0.82, 0.82, 0.86)))
    wood = b.tex(
        "planks_windows", lambda s, r: _with_windows(tx.planks(s, r, (0.75, 0.75, 0.75), (1, 1, 1)), r)
    )
    roof_l = b.tex("roof_tiles", tx.roof_tiles)
    fol = b.tex("foliage", tx.foliage)
    bark = b.tex("bark", lambda s, r: tx.planks(s, r, (0.5, 0.5, 0.5), (0.8, 0.8, 0.8), 8))
    rock = b.tex("rock", lambda s, r: tx.strata(s, r, (0.55, 0.56, 0.62), (0.80, 0.82, 0.88)))
    _place_landmarks(b, theme, emit=0.0)
    _paths(b, path, (1, 1, 1))
    roof_name = list(theme.roof_colours)[int(rng.integers(len(theme.roof_colours)))]
    for fp in _scatter_buildings(b, (4.5, 7.5), "free"):
        rc = (
            theme.roof_colours[roof_name]
            if rng.random() < 0.75
            else list(theme.roof_colours.values())[int(rng.integers(len(theme.roof_colours)))]
        )
        wc = theme.wall_colours[int(rng.integers(len(theme.wall_colours)))]
        _house(b, fp, wood, wc, "gable", roof_l, rc, float(rng.uniform(2.8, 3.6)))
    for x, y in _scatter_props(b, 0.6):
        _tree(b, x, y, "pine", fol, bark, (0.16, 0.34, 0.24), float(rng.uniform(0.8, 1.3)))
    _perimeter(b, 1.3, 0.25, (0.50, 0.34, 0.22), bark, tile=(1.0, 1.0))
    for x, y in _outer_ring_positions(b, 36, 2.0, 14.0):
        _tree(b, x, y, "pine", fol, bark, (0.14, 0.30, 0.22), float(rng.uniform(1.0, 1.6)), solid=False)
    _distant_ring(b, "mountains", (0.55, 0.56, 0.66), rock, alt_colour=(0.95, 0.95, 1.0))
    return {
        "buildings": f"{roof_name}-roofed wooden houses",
        "ground": "snow-covered ground",
        "roof": roof_name,
    }


def _with_windows(base: np.ndarray, rng, window=(0.18, 0.22, 0.30), frame=(0.92, 0.90, 0.85)) -> np.ndarray:
    """Overlay one framed window per texture tile (tile = 3 m of wall) on a material."""
    s = base.shape[0]
    out = base.copy()
    x0, x1, y0, y1 = int(s * 0.34), int(s * 0.66), int(s * 0.38), int(s * 0.72)
    out[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2, :3] = (np.asarray(frame) * 255).astype(np.uint8)
    pane = np.asarray(window) * (0.85 + 0.3 * tx.value_noise(s, rng, (4, 8))[y0:y1, x0:x1, None])
    out[y0:y1, x0:x1, :3] = (np.clip(pane, 0, 1) * 255).astype(np.uint8)
    out[(y0 + y1) // 2, x0:x1, :3] = out[y0 - 1, x0, :3]
    return out


def _build_desert_canyon(b: _Builder, theme: _Theme) -> dict:
    rng = b.rng
    _ground(b, b.tex("sand", lambda s, r: tx.ripples(s, r, (0.80, 0.66, 0.46), (0.92, 0.80, 0.60))))
    path = b.tex("packed_dirt", lambda s, r: tx.noisy(s, r, (0.62, 0.46, 0.34), (0.76, 0.60, 0.44)))
    adobe = b.tex(
        "adobe_windows",
        lambda s, r: _with_windows(
            tx.noisy(s, r, (0.86, 0.86, 0.86), (1.0, 1.0, 1.0), octaves=(8, 16, 32)),
            r,
            (0.20, 0.14, 0.10),
            (0.55, 0.40, 0.28),
        ),
    )
    roof = b.tex("adobe_roof", lambda s, r: tx.noisy(s, r, (0.80, 0.80, 0.80), (0.95, 0.95, 0.95)))
    redrock = b.tex("red_rock", lambda s, r: tx.strata(s, r, (0.55, 0.22, 0.14), (0.85, 0.45, 0.28)))
    cactus = b.tex("cactus", lambda s, r: tx.planks(s, r, (0.75, 0.75, 0.75), (1, 1, 1), 8))
    _place_landmarks(b, theme, emit=0.0)
    _paths(b, path, (1, 1, 1))
    # red rock pillars inside the arena
    for _ in range(int(rng.integers(2, 5))):

        def make(r):
            x, y = r.uniform(-b.half + 6, b.half - 6, 2)
            return Footprint(
                "rect",
                float(x),
                float(y),
                float(r.uniform(3, 6)),
                float(r.uniform(3, 6)),
                float(r.uniform(0, np.pi)),
                label="red rock",
            )

        fp = b.place(make, b.cfg.building_gap)
        if fp is not None:
            h = float(rng.uniform(4.0, 9.0))
            b.mesh.box((fp.x, fp.y), (fp.sx, fp.sy, h), 0.0, fp.yaw, (1, 1, 1), redrock, tile=(4.0, 4.0))
            b.mesh.box(
                (fp.x, fp.y),
                (fp.sx * 1.15, fp.sy * 1.15, 0.8),
                h,
                fp.yaw,
                (0.9, 0.9, 0.9),
                redrock,
                tile=(4.0, 4.0),
            )
    for fp in _scatter_buildings(b, (4.0, 7.0), "axis"):
        wc = theme.wall_colours[int(rng.integers(len(theme.wall_colours)))]
        _house(
            b,
            fp,
            adobe,
            wc,
            "parapet" if rng.random() < 0.4 else "flat",
            roof,
            theme.roof_colours["flat"],
            float(rng.uniform(2.6, 3.6)),
        )
    for x, y in _scatter_props(b, 0.9):
        if rng.random() < 0.65:
            _tree(b, x, y, "cactus", cactus, cactus, (0.28, 0.52, 0.26), float(rng.uniform(0.8, 1.3)))
        else:
            _tree(b, x, y, "boulder", redrock, redrock, (0.85, 0.55, 0.42), float(rng.uniform(0.7, 1.2)))
    _perimeter(b, 9.0, 4.0, (1, 1, 1), redrock, tile=(6.0, 6.0), segments=5, jitter=0.4)
    _distant_ring(b, "mesas", (0.78, 0.42, 0.30), redrock)
    return {"buildings": "flat-roofed adobe houses", "ground": "sandy ground", "roof": "flat"}


def _build_green_park(b: _Builder, theme: _Theme) -> dict:
    rng = b.rng
    _ground(
        b,
        b.tex(
            "grass",
            lambda s, r: tx.speckled(s, r, (0.26, 0.48, 0.18), (0.40, 0.62, 0.24), (0.55, 0.75, 0.30), 0.06),
        ),
    )
    path = b.tex(
        "gravel",
        lambda s, r: tx.speckled(s, r, (0.70, 0.66, 0.58), (0.84, 0.80, 0.72), (0.5, 0.48, 0.44), 0.08),
    )
    plaster = b.tex(
        "plaster_windows",
        lambda s, r: _with_windows(tx.noisy(s, r, (0.88, 0.88, 0.88), (1, 1, 1), octaves=(8, 16, 32)), r),
    )
    roof_l = b.tex("roof_tiles", tx.roof_tiles)
    fol = b.tex("foliage", tx.foliage)
    bark = b.tex("bark", lambda s, r: tx.planks(s, r, (0.5, 0.5, 0.5), (0.8, 0.8, 0.8), 8))
    hedge = b.tex("hedge", tx.foliage)
    _place_landmarks(b, theme, emit=0.0)
    _paths(b, path, (1, 1, 1))
    roof_name = list(theme.roof_colours)[int(rng.integers(len(theme.roof_colours)))]
    cfg_n = (max(3, b.cfg.num_buildings[0] // 2), max(4, b.cfg.num_buildings[1] // 2))
    n_b = int(rng.integers(cfg_n[0], cfg_n[1] + 1))
    for fp in _scatter_buildings(b, (4.0, 6.5), "free")[:n_b]:
        wc = theme.wall_colours[int(rng.integers(len(theme.wall_colours)))]
        _house(
            b, fp, plaster, wc, "gable", roof_l, theme.roof_colours[roof_name], float(rng.uniform(2.6, 3.2))
        )
    for x, y in _scatter_props(b, 0.7, count=int(rng.integers(22, 34))):
        tone = rng.uniform(0.8, 1.1)
        _tree(
            b, x, y, "round", fol, bark, (0.20 * tone, 0.45 * tone, 0.16 * tone), float(rng.uniform(0.8, 1.3))
        )
    _perimeter(b, 2.0, 1.2, (0.20, 0.40, 0.16), hedge, tile=(1.5, 1.5))
    for x, y in _outer_ring_positions(b, 30, 2.0, 14.0):
        _tree(b, x, y, "round", fol, bark, (0.18, 0.40, 0.15), float(rng.uniform(1.0, 1.6)), solid=False)
    _distant_ring(b, "hills", (0.30, 0.48, 0.26), fol)
    return {
        "buildings": f"white cottages with {roof_name} roofs",
        "ground": "grassy lawns",
        "roof": roof_name,
    }


def _build_neon_city(b: _Builder, theme: _Theme) -> dict:
    rng, m = b.rng, b.mesh
    _ground(
        b,
        b.tex(
            "asphalt",
            lambda s, r: tx.speckled(s, r, (0.16, 0.16, 0.18), (0.24, 0.24, 0.26), (0.45, 0.45, 0.45), 0.03),
        ),
    )
    walk = b.tex(
        "sidewalk", lambda s, r: tx.tiles(s, r, (0.40, 0.40, 0.42), (0.52, 0.52, 0.54), (0.25, 0.25, 0.27))
    )
    lit = ((1.0, 0.85, 0.55), (0.70, 0.90, 1.0), (1.0, 0.60, 0.85))
    facades = [
        b.tex(
            f"facade_night_{i}",
            lambda s, r, i=i: tx.facade(
                s, r, theme.wall_colours[i], (0.05, 0.06, 0.09), (0.12, 0.12, 0.14), 4, 4, 0.45, lit
            ),
        )
        for i in range(len(theme.wall_colours))
    ]
    roof = b.tex("roof_concrete", lambda s, r: tx.noisy(s, r, (0.20, 0.20, 0.22), (0.30, 0.30, 0.32)))
    bark = b.tex("metal", lambda s, r: tx.noisy(s, r, (0.4, 0.4, 0.42), (0.6, 0.6, 0.62)))
    # 3 x 3 blocks of `block` metres separated by streets; some blocks are plazas with landmarks
    block = (b.cfg.arena_size - 4 * 6.0) / 3
    centres = [(-block - 6.0, 0.0, block + 6.0)]
    cs = [(float(x), float(y)) for x in centres[0] for y in centres[0]]
    order = rng.permutation(len(cs))
    n_plaza = int(rng.integers(3, 5))
    plazas = [cs[i] for i in order[:n_plaza]]
    for cx, cy in cs:
        m.box((cx, cy), (block + 1.0, block + 1.0, 0.12), 0.0, 0.0, (1, 1, 1), walk, tile=(2.0, 2.0))
    # landmarks: one per plaza, then slim ones (signs, obelisks) in the middle of street crossings
    spots = [(x + rng.uniform(-1.5, 1.5), y + rng.uniform(-1.5, 1.5)) for x, y in plazas]
    crossing = block / 2 + 3.0
    crossings = [(sx * crossing, sy * crossing) for sx in (-1, 1) for sy in (-1, 1)]
    spots += [crossings[i] for i in rng.permutation(len(crossings))]
    slim = [None] * len(plazas) + [("sign", "obelisk")] * len(crossings)
    _place_landmarks(b, theme, emit=0.85, spots=spots, kinds=slim)
    for x, y in plazas:
        for dx, dy in ((-1, -1), (1, 1)):
            px, py = x + dx * (block / 2 - 0.8), y + dy * (block / 2 - 0.8)
            _tree(b, px, py, "lamp", bark, bark, (1.0, 0.9, 0.7))
    for cx, cy in cs:
        if (cx, cy) in plazas:
            continue
        lots = (
            [(cx, cy, block)]
            if rng.random() < 0.35
            else [(cx + dx * block / 4, cy + dy * block / 4, block / 2) for dx in (-1, 1) for dy in (-1, 1)]
        )
        for lx, ly, size in lots:
            s = size - float(rng.uniform(0.6, 1.6))
            h = float(rng.uniform(9.0, 30.0))
            f = facades[int(rng.integers(len(facades)))]
            m.box(
                (lx, ly),
                (s, s, h),
                0.0,
                0.0,
                (1, 1, 1),
                f,
                tile=(4.0, 6.0),
                top_layer=roof,
                top_emit=0.0,
                emit=1.0,
            )
            b.add_footprint(Footprint("rect", lx, ly, s, s, 0.0, h, "tower block"))
    # a kerb along the boundary, then a ring of towers just outside it closes the streets
    _perimeter(b, 1.0, 0.3, (0.3, 0.3, 0.32), bark)
    h = b.half
    for side in range(4):
        for k in range(5):
            t = -h + (2 * h) * (k + 0.5) / 5
            hh = float(rng.uniform(14, 40))
            d = float(rng.uniform(7, 10))
            c = [(h + d / 2 + 0.5, t), (-h - d / 2 - 0.5, t), (t, h + d / 2 + 0.5), (t, -h - d / 2 - 0.5)][
                side
            ]
            m.box(
                c,
                (d if side < 2 else 2 * h / 5, 2 * h / 5 if side < 2 else d, hh),
                0.0,
                0.0,
                (1, 1, 1),
                facades[int(rng.integers(len(facades)))],
                tile=(4.0, 6.0),
                emit=1.0,
                top_layer=roof,
                top_emit=0.0,
            )
    _distant_ring(b, "skyline", (1, 1, 1), facades[0], emit=1.0)
    return {"buildings": "tall towers with glowing windows", "ground": "dark streets", "roof": "flat"}


def _build_autumn_town(b: _Builder, theme: _Theme) -> dict:
    rng = b.rng
    _ground(
        b,
        b.tex(
            "leafy_grass",
            lambda s, r: tx.speckled(s, r, (0.34, 0.38, 0.16), (0.46, 0.44, 0.20), (0.85, 0.45, 0.10), 0.12),
        ),
    )
    path = b.tex(
        "cobbles",
        lambda s, r: tx.tiles(s, r, (0.50, 0.46, 0.42), (0.68, 0.64, 0.58), (0.32, 0.30, 0.28), 6, 0.4),
    )
    brick = b.tex(
        "brick_windows",
        lambda s, r: _with_windows(
            tx.bricks(s, r, (0.85, 0.82, 0.78), (0.80, 0.80, 0.80), (1, 1, 1), 10, 4), r
        ),
    )
    roof_l = b.tex("roof_tiles", tx.roof_tiles)
    fol = b.tex("foliage", tx.foliage)
    bark = b.tex("bark", lambda s, r: tx.planks(s, r, (0.5, 0.5, 0.5), (0.8, 0.8, 0.8), 8))
    stone = b.tex(
        "stone_wall",
        lambda s, r: tx.tiles(s, r, (0.52, 0.50, 0.46), (0.70, 0.68, 0.62), (0.36, 0.34, 0.30), 4, 0.5),
    )
    _place_landmarks(b, theme, emit=0.0)
    _paths(b, path, (1, 1, 1))
    roof_name = list(theme.roof_colours)[int(rng.integers(len(theme.roof_colours)))]
    for fp in _scatter_buildings(b, (4.5, 7.5), "axis"):
        wc = theme.wall_colours[int(rng.integers(len(theme.wall_colours)))]
        _house(b, fp, brick, wc, "gable", roof_l, theme.roof_colours[roof_name], float(rng.uniform(3.0, 4.2)))
    tree_cols = ((0.90, 0.42, 0.08), (0.78, 0.18, 0.08), (0.95, 0.70, 0.12), (0.62, 0.30, 0.10))
    for x, y in _scatter_props(b, 0.7):
        _tree(
            b,
            x,
            y,
            "round",
            fol,
            bark,
            tree_cols[int(rng.integers(len(tree_cols)))],
            float(rng.uniform(0.8, 1.3)),
        )
    _perimeter(b, 2.2, 0.6, (1, 1, 1), stone, tile=(2.0, 2.0))
    for x, y in _outer_ring_positions(b, 30, 2.0, 14.0):
        _tree(
            b,
            x,
            y,
            "round",
            fol,
            bark,
            tree_cols[int(rng.integers(len(tree_cols)))],
            float(rng.uniform(1.0, 1.6)),
            solid=False,
        )
    _distant_ring(b, "hills", (0.62, 0.42, 0.22), fol)
    return {
        "buildings": f"brick houses with {roof_name} roofs",
        "ground": "leaf-strewn grass",
        "roof": roof_name,
    }


_BUILDERS = {
    "snowy_village": _build_snowy_village,
    "desert_canyon": _build_desert_canyon,
    "green_park": _build_green_park,
    "neon_city": _build_neon_city,
    "autumn_town": _build_autumn_town,
}


# ---- the world --------------------------------------------------------------------------------


def check_seed(seed, name: str = "seed") -> int:
    """Seeds are non-negative Python/numpy integers (bool rejected)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"{name} must be a non-negative int, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed}")
    return int(seed)


def biome_for_seed(seed: int) -> str:
    """The biome World.generate(seed) picks (its generator's first draw), without building the world."""
    return BIOMES[int(np.random.default_rng(check_seed(seed)).integers(len(BIOMES)))]


@dataclass
class World:
    """A generated world: CPU-side geometry, textures, lighting, collision and descriptors."""

    seed: int
    biome: str
    vertices: np.ndarray  # [N, 13] float32 triangle soup (see mesh.VERTEX_FORMAT)
    textures: np.ndarray  # [L, S, S, 4] uint8 texture-array layers
    layer_names: list[str]
    lighting: Lighting
    landmarks: list[Landmark]
    footprints: list[Footprint]
    solid: np.ndarray  # [G, G] bool raw obstacle grid (x index, y index)
    free_distance: np.ndarray  # [G, G] float32 metres from the cell centre to the nearest obstacle/boundary
    descriptor: dict
    cfg: WorldConfig

    @property
    def num_triangles(self) -> int:
        return int(self.vertices.shape[0] // 3)

    @classmethod
    def generate(cls, seed: int, cfg: WorldConfig | None = None, biome: str | None = None) -> World:
        """Deterministic world from `seed`; `biome` overrides the seed's choice (tests, previews)."""
        seed = check_seed(seed)
        cfg = cfg or WorldConfig()
        b = _Builder(seed, cfg)
        chosen = BIOMES[int(b.rng.integers(len(BIOMES)))]
        if biome is not None:
            if biome not in THEMES:
                raise ValueError(f"unknown biome {biome!r}; expected one of {BIOMES}")
            chosen = biome
        theme = THEMES[chosen]
        lighting = _lighting(theme, b.rng)
        extra = _BUILDERS[chosen](b, theme)
        # free distance: boundary counts as an obstacle (pad the grid with a solid ring)
        padded = np.pad(b.grid, 1, constant_values=True)
        free = distance_transform_edt(~padded)[1:-1, 1:-1] * cfg.grid_cell
        free = np.where(b.grid, 0.0, free - 0.5 * cfg.grid_cell).astype(np.float32)
        descriptor = {
            "biome": chosen,
            "place": theme.place,
            "time_of_day": theme.time_of_day,
            "buildings": extra["buildings"],
            "ground": extra["ground"],
            "props": theme.props,
            "roof_colour": extra["roof"],
            "landmarks": [lm.name for lm in b.landmarks],
        }
        return cls(
            seed=seed,
            biome=chosen,
            vertices=b.mesh.build(),
            textures=np.stack(b.layers),
            layer_names=list(b.layer_index),
            lighting=lighting,
            landmarks=list(b.landmarks),
            footprints=list(b.footprints),
            solid=b.grid,
            free_distance=free,
            descriptor=descriptor,
            cfg=cfg,
        )

    # ---- collision queries (positions in metres) ----------------------------------------------
    def _cell(self, x, y):
        n = self.solid.shape[0]
        i = np.floor((np.asarray(x) + self.cfg.arena_size / 2) / self.cfg.grid_cell).astype(int)
        j = np.floor((np.asarray(y) + self.cfg.arena_size / 2) / self.cfg.grid_cell).astype(int)
        inside = (i >= 0) & (i < n) & (j >= 0) & (j < n)
        return np.clip(i, 0, n - 1), np.clip(j, 0, n - 1), inside

    def clearance(self, x, y) -> np.ndarray:
        """Metres from (x, y) to the nearest obstacle or boundary (0 outside the arena / inside solids)."""
        i, j, inside = self._cell(x, y)
        return np.where(inside, self.free_distance[i, j], 0.0)

    def is_solid(self, x, y) -> np.ndarray:
        """True inside an obstacle footprint or outside the arena."""
        i, j, inside = self._cell(x, y)
        return np.where(inside, self.solid[i, j], True)
