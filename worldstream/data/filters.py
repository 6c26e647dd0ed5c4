"""Clip filters: drop clips a world model should not learn from, with a report of what was removed and why.

MG3 filters its training clips (it reports removing ~20% of the data, SPEC "Filtering"). Each filter
here is a small function `(clip, cfg) -> reason | None` whose threshold is a field of `FilterConfig`:

| filter | removes a clip when |
|---|---|
| static | path length < static_min_path and total rotation < static_min_rotation_deg |
| pose_jump | one step > jump_max_step (pose units) or one rotation > jump_max_rotation_deg (teleport) |
| speed | the speed_percentile-th step > speed_max, or of the rotations > turn_max_deg (sustained) |
| frozen | >= frozen_max_run consecutive identical frames while the camera moves (video only) |
| black | more than black_max_frames frames with mean < black_mean_max and std < black_std_max (video) |
| confidence | mean action-inference confidence < min_confidence (`worldstream.data.inference`) |

Units: positions in MG3 pose units (c2w translation / 0.01; one W step = 12.35 per frame; ingested
footage is rescaled to that), angles in degrees per frame. Motion is read from c2w, so rendered and
ingested clips are judged alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from worldstream.data.actions import MG3_KINEMATICS
from worldstream.data.inference import InferenceConfig, infer_actions
from worldstream.data.schema import Clip
from worldstream.geometry.camera import TRANSLATION_SCALE

STEP = MG3_KINEMATICS.move_speed  # 12.35 pose units per frame


@dataclass(frozen=True)
class FilterConfig:
    # static: the camera barely moves over the whole clip
    static_min_path: float = 2 * STEP  # pose units summed over the clip (two W frames)
    static_min_rotation_deg: float = 5.0  # degrees summed over the clip (~3 frames of mouse 0.1)
    # pose jumps / teleports: a single step far above anything MG3 kinematics produce (max 12.35/frame)
    jump_max_step: float = 4 * STEP  # pose units in one frame
    jump_max_rotation_deg: float = 30.0  # degrees in one frame (mouse 2.0; MG3 usually 1.5)
    # implausible sustained speed
    speed_percentile: float = 90.0  # judge the typical fast frames, not one outlier (that is pose_jump)
    speed_max: float = 2 * STEP  # pose units per frame
    turn_max_deg: float = 15.0  # degrees per frame (mouse 1.0)
    # frozen frames (video): identical consecutive frames while the camera moves
    frozen_tol: float = 0.5  # mean |frame difference| in 0..255 below which two frames count as identical
    frozen_min_step: float = 0.05 * STEP  # camera "moves": a step above this (pose units) ...
    frozen_min_rotation_deg: float = 0.1  # ... or a rotation above this
    frozen_max_run: int = 2  # this many identical-while-moving frame pairs in a row removes the clip
    # black frames (video)
    black_mean_max: float = 8.0  # mean intensity 0..255
    black_std_max: float = 4.0  # and nearly uniform (a dark but textured night scene is kept)
    black_max_frames: int = 0  # black frames tolerated per clip
    # action-inference confidence
    min_confidence: float = 0.5  # mean over observed steps, in [0, 1]
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(yaw_average="circular"))
    translation_scale: float = TRANSLATION_SCALE  # c2w translation -> pose units


# ------------------------------------------------------------------------------------------------
# motion


def clip_motion(clip: Clip, cfg: FilterConfig) -> tuple[np.ndarray, np.ndarray]:
    """(step length [T-1] in pose units, rotation angle [T-1] in degrees) between consecutive frames."""
    c2w = np.asarray(clip.c2w, dtype=np.float64)
    steps = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1) / cfg.translation_scale
    R = c2w[:, :3, :3]
    rel = np.swapaxes(R[:-1], 1, 2) @ R[1:]  # proper rotation even for MG3's reflected c2w
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return steps, np.rad2deg(np.arccos(cos))


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


# ------------------------------------------------------------------------------------------------
# filters: (clip, cfg) -> reason or None


def static(clip: Clip, cfg: FilterConfig) -> str | None:
    steps, rot = clip_motion(clip, cfg)
    path, turn = float(steps.sum()), float(rot.sum())
    if path < cfg.static_min_path and turn < cfg.static_min_rotation_deg:
        return f"path {path:.1f} < {cfg.static_min_path:.1f} and rotation {turn:.1f} < " \
               f"{cfg.static_min_rotation_deg:.1f} deg"
    return None


def pose_jump(clip: Clip, cfg: FilterConfig) -> str | None:
    steps, rot = clip_motion(clip, cfg)
    if (steps > cfg.jump_max_step).any():
        i = _first(steps > cfg.jump_max_step)
        return f"step {steps[i]:.1f} > {cfg.jump_max_step:.1f} at frame {i}->{i + 1}"
    if (rot > cfg.jump_max_rotation_deg).any():
        i = _first(rot > cfg.jump_max_rotation_deg)
        return f"rotation {rot[i]:.1f} > {cfg.jump_max_rotation_deg:.1f} deg at frame {i}->{i + 1}"
    return None


def speed(clip: Clip, cfg: FilterConfig) -> str | None:
    steps, rot = clip_motion(clip, cfg)
    v = float(np.percentile(steps, cfg.speed_percentile))
    w = float(np.percentile(rot, cfg.speed_percentile))
    if v > cfg.speed_max:
        return f"p{cfg.speed_percentile:g} speed {v:.1f} > {cfg.speed_max:.1f} per frame"
    if w > cfg.turn_max_deg:
        return f"p{cfg.speed_percentile:g} turn {w:.1f} > {cfg.turn_max_deg:.1f} deg per frame"
    return None


def frozen(clip: Clip, cfg: FilterConfig) -> str | None:
    video = clip.video
    diff = np.array([np.abs(video[i + 1].astype(np.int16) - video[i]).mean() for i in range(len(video) - 1)])
    steps, rot = clip_motion(clip, cfg)
    bad = (diff < cfg.frozen_tol) & ((steps > cfg.frozen_min_step) | (rot > cfg.frozen_min_rotation_deg))
    run = best = 0
    end = -1
    for i, b in enumerate(bad):
        run = run + 1 if b else 0
        if run > best:
            best, end = run, i
    if best >= cfg.frozen_max_run:
        return f"{best} identical frame pairs while the camera moves (frames {end - best + 1}..{end + 1})"
    return None


def black(clip: Clip, cfg: FilterConfig) -> str | None:
    frames = clip.video.reshape(clip.video.shape[0], -1).astype(np.float32)
    is_black = (frames.mean(axis=1) < cfg.black_mean_max) & (frames.std(axis=1) < cfg.black_std_max)
    n = int(is_black.sum())
    if n > cfg.black_max_frames:
        return f"{n} black frames (first at frame {_first(is_black)})"
    return None


def confidence(clip: Clip, cfg: FilterConfig) -> str | None:
    c = infer_actions(clip.c2w, cfg.inference).mean_confidence
    if c < cfg.min_confidence:
        return f"mean action confidence {c:.2f} < {cfg.min_confidence:.2f}"
    return None


FilterFn = Callable[[Clip, FilterConfig], str | None]
# name -> (function, needs video, config fields that set it)
FILTERS: dict[str, tuple[FilterFn, bool, tuple[str, ...]]] = {
    "static": (static, False, ("static_min_path", "static_min_rotation_deg")),
    "pose_jump": (pose_jump, False, ("jump_max_step", "jump_max_rotation_deg")),
    "speed": (speed, False, ("speed_percentile", "speed_max", "turn_max_deg")),
    "frozen": (frozen, True, ("frozen_tol", "frozen_max_run")),
    "black": (black, True, ("black_mean_max", "black_std_max", "black_max_frames")),
    "confidence": (confidence, False, ("min_confidence",)),
}


# ------------------------------------------------------------------------------------------------
# report


@dataclass
class FilterReport:
    total: int = 0
    kept: int = 0
    removed: dict[str, list[dict[str, str]]] = field(default_factory=lambda: {n: [] for n in FILTERS})
    not_applicable: dict[str, int] = field(default_factory=lambda: {n: 0 for n in FILTERS})  # no video
    config: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, reasons: dict[str, str], skipped: list[str]) -> None:
        self.total += 1
        self.kept += not reasons
        for name, why in reasons.items():
            self.removed[name].append({"key": key, "why": why})
        for name in skipped:
            self.not_applicable[name] += 1

    def to_json(self) -> dict[str, Any]:
        removed = self.total - self.kept
        return {"total": self.total, "kept": self.kept, "removed": removed,
                "removed_fraction": removed / self.total if self.total else 0.0,
                "filters": {n: {"removed": len(v), "not_applicable": self.not_applicable[n], "clips": v}
                            for n, v in self.removed.items()},
                "config": self.config}

    def table(self, examples: int = 2) -> str:
        """Markdown table: per filter, clips removed and the first reasons (a clip can fail several)."""
        lines = ["| filter | thresholds | removed | n/a | examples |", "|---|---|---|---|---|"]
        for name, items in self.removed.items():
            th = ", ".join(f"{f}={self.config.get(f)}" for f in FILTERS[name][2])
            ex = "; ".join(f"{it['key']}: {it['why']}" for it in items[:examples])
            lines.append(f"| {name} | {th} | {len(items)} | {self.not_applicable[name]} | {ex} |")
        removed = self.total - self.kept
        frac = 100.0 * removed / self.total if self.total else 0.0
        lines.append(f"| **total** | | {removed} of {self.total} ({frac:.1f}%) | | kept {self.kept} |")
        return "\n".join(lines)


def check_clip(clip: Clip, cfg: FilterConfig) -> tuple[dict[str, str], list[str]]:
    """Run every filter on one clip -> ({filter: reason} for the failed ones, [filters not applicable])."""
    reasons, skipped = {}, []
    if clip.num_frames < 2:
        return {"static": "fewer than 2 frames"}, skipped
    for name, (fn, needs_video, _) in FILTERS.items():
        if needs_video and clip.video is None:
            skipped.append(name)
            continue
        why = fn(clip, cfg)
        if why is not None:
            reasons[name] = why
    return reasons, skipped


def _config_dict(cfg: FilterConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["inference"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d["inference"].items()}
    return d


def new_report(cfg: FilterConfig) -> FilterReport:
    return FilterReport(config=_config_dict(cfg))


def filter_clips(clips: Iterable[Clip],
                 cfg: FilterConfig = FilterConfig()) -> tuple[list[Clip], FilterReport]:
    """Keep the clips that pass every filter -> (kept, report)."""
    report = new_report(cfg)
    kept = []
    for clip in clips:
        reasons, skipped = check_clip(clip, cfg)
        report.add(clip.key, reasons, skipped)
        if not reasons:
            kept.append(clip)
    return kept, report
