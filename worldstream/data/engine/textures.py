"""Procedural, tileable RGBA textures for the worlds (numpy only; uploaded as one GL texture array).

Notable:
* Every texture is a function of (kind, parameters, numpy Generator): a world's textures are
  deterministic from its seed.
* All textures tile seamlessly (value noise on a wrapped lattice; patterns with integer periods).
* RGB is the albedo; alpha is the *emission mask* (255 = this texel may glow when the vertex is
  emissive: lit windows, neon). Plain materials have alpha 0, landmark/neon materials alpha 255.
* Most materials are light greyscale detail that the vertex colour tints; sign patterns and
  facades carry their own colours.
"""

from __future__ import annotations

import numpy as np


def value_noise(
    size: int, rng: np.random.Generator, octaves=(4, 8, 16, 32), gains=(0.5, 0.25, 0.15, 0.1)
) -> np.ndarray:
    """Tileable fractal value noise in [0,1], [size,size] float32."""
    out = np.zeros((size, size), dtype=np.float64)
    coords = np.arange(size) / size
    for cells, gain in zip(octaves, gains):
        cells = min(cells, size)
        lattice = rng.random((cells, cells))
        f = coords * cells
        i0 = np.floor(f).astype(int) % cells
        i1 = (i0 + 1) % cells
        t = f - np.floor(f)
        t = t * t * (3 - 2 * t)  # smoothstep
        rows0 = lattice[i0][:, i0] * (1 - t)[None, :] + lattice[i0][:, i1] * t[None, :]
        rows1 = lattice[i1][:, i0] * (1 - t)[None, :] + lattice[i1][:, i1] * t[None, :]
        out += gain * (rows0 * (1 - t)[:, None] + rows1 * t[:, None])
    out -= out.min()
    return (out / max(out.max(), 1e-9)).astype(np.float32)


def _rgba(rgb: np.ndarray, alpha: np.ndarray | float = 0.0) -> np.ndarray:
    size = rgb.shape[0]
    a = np.broadcast_to(np.asarray(alpha, dtype=np.float32), (size, size))
    out = np.concatenate([np.clip(rgb, 0, 1), a[..., None]], -1)
    return (out * 255 + 0.5).astype(np.uint8)


def _grey(v: np.ndarray) -> np.ndarray:
    return np.repeat(v[..., None], 3, axis=-1)


def _mix(c0, c1, t: np.ndarray) -> np.ndarray:
    c0, c1 = np.asarray(c0, np.float32), np.asarray(c1, np.float32)
    return c0 + (c1 - c0) * t[..., None]


# ---- materials ---------------------------------------------------------------------------------


def noisy(size, rng, c0, c1, contrast: float = 1.0, alpha: float = 0.0, octaves=(4, 8, 16, 32)):
    """Two-colour fractal noise (grass, snow, sand, asphalt, plaster, plain)."""
    n = value_noise(size, rng, octaves)
    n = np.clip(0.5 + (n - 0.5) * contrast, 0, 1)
    return _rgba(_mix(c0, c1, n), alpha)


def speckled(size, rng, c0, c1, speck, density: float):
    """Noise plus sparse single-texel specks (grass blades, snow sparkle, gravel)."""
    rgb = _mix(c0, c1, value_noise(size, rng))
    mask = rng.random((size, size)) < density
    rgb[mask] = np.asarray(speck, np.float32) * (0.85 + 0.3 * rng.random((int(mask.sum()), 1)))
    return _rgba(rgb)


def ripples(size, rng, c0, c1, waves: int = 6):
    """Sand ripples: sinusoidal bands warped by noise."""
    n = value_noise(size, rng)
    y = np.arange(size)[:, None] / size
    band = 0.5 + 0.5 * np.sin(2 * np.pi * (waves * y + 0.6 * n))
    return _rgba(_mix(c0, c1, 0.6 * band + 0.4 * n))


def bricks(size, rng, mortar, c0, c1, rows: int = 8, cols: int = 4):
    """Running-bond bricks with per-brick colour variation and mortar lines."""
    yy, xx = np.mgrid[0:size, 0:size]
    bh, bw = size // rows, size // cols
    row = yy // bh
    shift = (row % 2) * (bw // 2)
    col = ((xx + shift) // bw) % cols
    tone = rng.random((rows, cols))[row % rows, col]
    n = value_noise(size, rng, (8, 16, 32))
    rgb = _mix(c0, c1, np.clip(0.7 * tone + 0.3 * n, 0, 1))
    line = ((yy % bh) < max(1, bh // 6)) | (((xx + shift) % bw) < max(1, bw // 12))
    rgb[line] = np.asarray(mortar, np.float32)
    return _rgba(rgb)


def planks(size, rng, c0, c1, count: int = 6):
    """Vertical wooden planks with grain."""
    yy, xx = np.mgrid[0:size, 0:size]
    pw = size // count
    plank = xx // pw
    tone = rng.random(count)[plank % count]
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (xx / pw * 3 + value_noise(size, rng) * 2))
    rgb = _mix(c0, c1, np.clip(0.6 * tone + 0.4 * grain, 0, 1))
    rgb[(xx % pw) == 0] *= 0.55
    return _rgba(rgb)


def tiles(size, rng, c0, c1, grout, n: int = 4, jitter: float = 0.25):
    """Square paving / cobbles: n x n cells with random tone and grout lines."""
    yy, xx = np.mgrid[0:size, 0:size]
    cell = size // n
    tone = rng.random((n, n))[(yy // cell) % n, (xx // cell) % n]
    rgb = _mix(c0, c1, np.clip(tone * (1 - jitter) + jitter * value_noise(size, rng, (8, 16, 32)), 0, 1))
    line = ((yy % cell) == 0) | ((xx % cell) == 0)
    rgb[line] = np.asarray(grout, np.float32)
    return _rgba(rgb)


def roof_tiles(size, rng, rows: int = 8):
    """Greyscale overlapping roof tiles (tinted by the roof colour)."""
    yy, xx = np.mgrid[0:size, 0:size]
    rh = size // rows
    shade = 1.0 - 0.35 * ((yy % rh) / rh)
    seams = ((xx + (yy // rh % 2) * (size // 16)) % (size // 8)) == 0
    v = shade * (0.85 + 0.15 * value_noise(size, rng, (8, 16, 32)))
    v[seams] *= 0.7
    return _rgba(_grey(v))


def strata(size, rng, c0, c1, bands: int = 7):
    """Layered rock (red cliffs, grey stone): horizontal bands warped by noise."""
    n = value_noise(size, rng)
    y = np.arange(size)[:, None] / size
    layers = rng.random(bands)
    band = layers[((y + 0.08 * n) * bands).astype(int) % bands]
    return _rgba(_mix(c0, c1, np.clip(0.65 * band + 0.35 * n, 0, 1)))


def foliage(size, rng):
    """Blotchy greyscale leaves (tinted per tree)."""
    n = value_noise(size, rng, (8, 16, 32), (0.5, 0.3, 0.2))
    v = 0.55 + 0.45 * n
    v[rng.random((size, size)) < 0.04] *= 0.6
    return _rgba(_grey(v))


def facade(
    size,
    rng,
    wall,
    window,
    frame,
    windows_x: int = 1,
    windows_y: int = 1,
    lit_prob: float = 0.0,
    lit_colors=((1.0, 0.85, 0.5),),
    wall_noise: float = 0.15,
    window_frac=(0.5, 0.55),
):
    """Wall with a grid of windows. Lit windows (prob `lit_prob`) get a bright colour and alpha 255."""
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = _mix(np.asarray(wall) * (1 - wall_noise), wall, value_noise(size, rng, (8, 16, 32)))
    alpha = np.zeros((size, size), np.float32)
    cw, ch = size // windows_x, size // windows_y
    ww, wh = int(cw * window_frac[0]), int(ch * window_frac[1])
    x0, y0 = (cw - ww) // 2, (ch - wh) // 2
    for i in range(windows_y):
        for j in range(windows_x):
            ys, xs = i * ch + y0, j * cw + x0
            rgb[ys - 1 : ys + wh + 1, xs - 1 : xs + ww + 1] = frame
            lit = rng.random() < lit_prob
            col = (
                np.asarray(lit_colors[rng.integers(len(lit_colors))], np.float32)
                if lit
                else np.asarray(window)
            )
            pane = col * (0.8 + 0.2 * value_noise(size, rng, (4,))[ys : ys + wh, xs : xs + ww, None])
            rgb[ys : ys + wh, xs : xs + ww] = pane
            if lit:
                alpha[ys : ys + wh, xs : xs + ww] = 1.0
    return _rgba(rgb, alpha)


def sign_pattern(size, rng, kind: str, color, background=(0.97, 0.97, 0.95)):
    """Bold two-colour pattern for landmark signs; alpha 255 (neon-capable)."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    if kind == "stripes":
        m = (np.floor(xx * 6) % 2) == 0
    elif kind == "checks":
        m = ((np.floor(xx * 4) + np.floor(yy * 4)) % 2) == 0
    elif kind == "dots":
        m = ((xx * 3 % 1 - 0.5) ** 2 + (yy * 3 % 1 - 0.5) ** 2) < 0.09
    elif kind == "a cross":
        m = (np.abs(xx - 0.5) < 0.14) | (np.abs(yy - 0.5) < 0.14)
    elif kind == "a diamond":
        m = (np.abs(xx - 0.5) + np.abs(yy - 0.5)) < 0.36
    elif kind == "zigzags":
        m = ((yy * 4 + np.abs((xx * 6) % 2 - 1)) % 1) < 0.45
    elif kind == "a ring":
        r = np.hypot(xx - 0.5, yy - 0.5)
        m = (r > 0.22) & (r < 0.38)
    else:
        raise ValueError(f"unknown sign pattern {kind!r}")
    border = (xx < 0.05) | (xx > 0.95) | (yy < 0.05) | (yy > 0.95)
    rgb = np.where((m | border)[..., None], np.asarray(color, np.float32), np.asarray(background, np.float32))
    return _rgba(rgb, 1.0)


SIGN_PATTERNS = ("stripes", "checks", "dots", "a cross", "a diamond", "zigzags", "a ring")
