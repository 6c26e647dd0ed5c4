"""Text prompts for rendered clips, written from a world's descriptors and what the clip shows.

Notable:
* A prompt names the place, its buildings, props and time of day (all from `World.descriptor`)
  and up to `MAX_LANDMARKS` landmarks *visible in the clip*, most-seen first
  ("A snowy village of red-roofed wooden houses and snowy pine trees at dusk, with a blue tower.").
* Landmark visibility is a geometric test per frame: the landmark's centre (at half its height)
  projects inside the image, lies within `max_distance`, and the 2D line of sight from the camera
  is not blocked by a building footprint taller than the line (`landmark_visibility`).
* Templates vary with the clip's rng, so the text encoder sees some phrasing diversity.
"""

from __future__ import annotations

import numpy as np

from worldstream.data.engine.world import World

MAX_LANDMARKS = 3
MAX_DISTANCE = 45.0  # metres: farther landmarks are lost in fog at these resolutions
LOS_STEP = 0.25  # metres between line-of-sight samples
MIN_FRAMES_VISIBLE = 3  # a landmark must be visible in this many frames to be named

_TEMPLATES = (
    "{Place} of {buildings} and {props} {time}{landmarks}.",
    "{Place} {time}: {buildings}, {ground} and {props}{landmarks}.",
    "A walk through {place} {time}, past {buildings}{landmarks}.",
    "First-person view in {place} {time}, {ground} and {buildings}{landmarks}.",
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def join_names(names: list[str]) -> str:
    items = [_article(n) for n in names]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def world_prompt(descriptor: dict) -> str:
    """One-line description of a world without clip-specific landmarks."""
    d = descriptor
    return f"{_capitalise(d['place'])} of {d['buildings']} and {d['props']} {d['time_of_day']}."


def clip_prompt(descriptor: dict, visible: list[str], rng: np.random.Generator | None = None) -> str:
    """Prompt for one clip. `visible`: landmark names, most visible first."""
    d = descriptor
    template = _TEMPLATES[0] if rng is None else _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    shown = visible[:MAX_LANDMARKS]
    landmarks = f", with {join_names(shown)}" if shown else ""
    place = d["place"]
    return template.format(
        Place=_capitalise(place),
        place=place,
        buildings=d["buildings"],
        props=d["props"],
        time=d["time_of_day"],
        ground=d["ground"],
        landmarks=landmarks,
    )


def landmark_visibility(
    world: World,
    c2w: np.ndarray,
    intrinsics: np.ndarray,
    height: int,
    width: int,
    max_distance: float = MAX_DISTANCE,
) -> dict[str, int]:
    """{landmark name: number of frames in which it is visible} for c2w [T,4,4] (metres)."""
    c2w = np.asarray(c2w, np.float64)
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    w2c = np.linalg.inv(c2w)  # [T,4,4]
    tall = [f for f in world.footprints if f.label in ("building", "tower block", "red rock")]
    counts: dict[str, int] = {}
    for lm in world.landmarks:
        p = np.array([lm.x, lm.y, lm.height / 2, 1.0])
        pc = np.einsum("tij,j->ti", w2c, p)[:, :3]  # [T,3] camera coords
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = fx * pc[:, 0] / z + cx
            v = fy * pc[:, 1] / z + cy
        dist = np.linalg.norm(c2w[:, :3, 3] - p[:3], axis=1)
        margin = lm.radius * fx / np.maximum(z, 1e-3) * 0.5  # partly visible counts
        vis = (
            (z > 0.3)
            & (u > -margin)
            & (u < width + margin)
            & (v > -margin)
            & (v < height + margin)
            & (dist < max_distance)
        )
        for t in np.flatnonzero(vis):
            if _occluded(world, tall, c2w[t, :3, 3], lm):
                vis[t] = False
        counts[lm.name] = int(vis.sum())
    return counts


def _occluded(world: World, tall: list, cam: np.ndarray, lm) -> bool:
    """Is the 2D line of sight from the camera to the landmark centre blocked by a taller footprint?"""
    d = np.array([lm.x - cam[0], lm.y - cam[1]])
    length = float(np.linalg.norm(d))
    stop = length - lm.radius
    if stop <= 0:
        return False
    ts = np.arange(LOS_STEP, stop, LOS_STEP) / length
    if len(ts) == 0:
        return False
    px, py = cam[0] + ts * d[0], cam[1] + ts * d[1]
    ray_z = cam[2] + ts * (lm.height / 2 - cam[2])  # height of the sight line at each sample
    for fp in tall:
        dx, dy = px - fp.x, py - fp.y
        c, s = np.cos(fp.yaw), np.sin(fp.yaw)
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        inside = (np.abs(lx) <= fp.sx / 2) & (np.abs(ly) <= fp.sy / 2)
        if (inside & (ray_z < fp.height)).any():
            return True
    return False


def visible_landmarks(counts: dict[str, int], min_frames: int = MIN_FRAMES_VISIBLE) -> list[str]:
    """Names seen in >= min_frames frames, most-seen first (ties: name order)."""
    return [n for n, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_frames]
