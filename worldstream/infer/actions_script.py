"""The action script language: a line of tokens -> per-frame keyboard [T, 6] and mouse [T, 2] rows.

    w*40 w+d*16 mouse:right*24 look:up*8 idle*8 s*10 a*4 w+mouse:left@0.2*12 bench:42*57

Grammar (whitespace-separated tokens, case-insensitive; one row per frame):
    token  := item ['*' COUNT]            COUNT frames (default 1)
    item   := 'idle' | 'bench:' SEED | part ('+' part)*
    part   := KEY | ('mouse' | 'look') ':' DIR ['@' MAGNITUDE]
    KEY    := w | s | a | d | space | attack      (MG3 keyboard [W, S, A, D, Space, Attack], facts 3.1)
    DIR    := left | right | up | down

Units (MG3 kinematics, facts 4.1; `worldstream/data/actions.py`):
* keys: W/S move 12.35 pose units (cm) per frame forward/back, A/D strafe 12.35; a forward/back key
  together with a strafe key moves 8.73 per axis (diagonal). Space/Attack are in the vocabulary but do not
  move the camera.
* mouse: one unit turns 15 degrees per frame; the default magnitude is MG3's 0.1 (1.5 deg/frame) and
  `@M` sets another (`mouse:right@0.2` = 3 deg/frame); |M| < 0.02 is MG3's dead zone (no turn).
  left/right change yaw (mouse[1] -/+), up/down change pitch (mouse[0] -/+): positive pitch tilts the
  view *down* in MG3's extrinsics (facts 4.2). NOTE the official interactive pipeline labels +pitch
  (key I) "up"; we name directions by what the camera does. `look:` is an alias of `mouse:`.
* `bench:SEED*N`: N frames of MG3's random benchmark actions (`Bench_actions_universal`, facts 5.6) drawn
  with Python `random.Random(SEED)`, identical to the official sequence for that seed (default N: one
  MG3 first clip, 57 frames).
Errors name the token and its column: `parse_script("w*3 w+x*3")` raises `ValueError: action script column 5:
unknown key 'x' in 'w+x*3' (keys: ...)`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from worldstream.data.actions import KEY_INDEX, KEYS

__all__ = ["ScriptConfig", "ActionRows", "parse_script", "DEFAULT_SCRIPT", "describe_row"]


@dataclass(frozen=True)
class ScriptConfig:
    mouse_step: float = 0.1  # default per-frame mouse magnitude (MG3's +-0.1 = 1.5 deg/frame, facts 5.4)
    bench_frames: int = 57  # `bench:SEED` without a count: one MG3 first clip (facts 5.2)
    max_frames: int = 1_000_000  # a script longer than this is an error (18 h at 16 fps)


DEFAULT_SCRIPT = "w*24 mouse:right*24 mouse:left*24 s*16"  # walk, turn away and back (a revisit), retreat
DIRECTIONS = {"left": (1, -1.0), "right": (1, 1.0), "up": (0, -1.0), "down": (0, 1.0)}  # -> (axis, sign)
MOUSE_WORDS = ("mouse", "look")
_TOKEN = re.compile(r"\S+")
_COUNT = re.compile(r"^(?P<item>.*?)(?:\*(?P<count>[^*]*))?$")


@dataclass(frozen=True)
class ActionRows:
    """Per-frame actions: keyboard [T, 6] multi-hot, mouse [T, 2] (pitch, yaw) deltas, float32."""

    keyboard: np.ndarray
    mouse: np.ndarray

    def __len__(self) -> int:
        return len(self.keyboard)

    def pad_to(self, num_frames: int) -> ActionRows:
        """Extend with idle rows (no key, no turn) to `num_frames` frames (no-op if already long enough)."""
        extra = num_frames - len(self)
        if extra <= 0:
            return self
        return ActionRows(np.concatenate([self.keyboard, np.zeros((extra, len(KEYS)), np.float32)]),
                          np.concatenate([self.mouse, np.zeros((extra, 2), np.float32)]))


def _error(column: int, msg: str) -> ValueError:
    return ValueError(f"action script column {column}: {msg}")


def _positive_int(text: str | None, column: int, token: str, what: str) -> int:
    if text is None or not text.isdigit() or int(text) < 1:
        raise _error(column, f"{what} must be a positive integer, got {text!r} in {token!r}")
    return int(text)


def _part(part: str, row_kb: np.ndarray, row_mouse: np.ndarray, cfg: ScriptConfig, column: int,
          token: str) -> None:
    """Apply one '+'-separated part (a key or a mouse direction) to the row being built."""
    if ":" in part:
        word, _, rest = part.partition(":")
        if word not in MOUSE_WORDS:
            raise _error(column, f"unknown action {word!r} in {token!r} (expected mouse:DIR or look:DIR)")
        direction, at, mag_text = rest.partition("@")
        if direction not in DIRECTIONS:
            raise _error(column, f"unknown mouse direction {direction!r} in {token!r} "
                                 f"(expected one of {', '.join(DIRECTIONS)})")
        magnitude = cfg.mouse_step
        if at:
            try:
                magnitude = float(mag_text)
            except ValueError:
                raise _error(column, f"mouse magnitude must be a number, got {mag_text!r} in {token!r}"
                             ) from None
            if not np.isfinite(magnitude) or magnitude <= 0:
                raise _error(column, f"mouse magnitude must be > 0, got {mag_text!r} in {token!r}")
        axis, sign = DIRECTIONS[direction]
        if row_mouse[axis] != 0:
            raise _error(column, f"{token!r} sets the mouse {('pitch', 'yaw')[axis]} twice")
        row_mouse[axis] = sign * magnitude
        return
    keys = {k.lower(): i for k, i in KEY_INDEX.items()}
    if part not in keys:
        raise _error(column, f"unknown key {part!r} in {token!r} (keys: {', '.join(keys)}; or idle, "
                             "mouse:DIR, look:DIR, bench:SEED)")
    row_kb[keys[part]] = 1.0


def parse_script(script: str, cfg: ScriptConfig = ScriptConfig()) -> ActionRows:
    """Parse an action script (see the module docstring) -> ActionRows with one row per frame."""
    if not isinstance(script, str):
        raise TypeError(f"action script must be a string, got {type(script).__name__}")
    kb_parts, mouse_parts, total = [], [], 0
    for match in _TOKEN.finditer(script):
        token, column = match.group(0), match.start() + 1
        m = _COUNT.match(token.lower())
        item, count_text = m.group("item"), m.group("count")
        if not item:
            raise _error(column, f"empty action in {token!r}")
        if item.startswith("bench:"):
            seed_text = item.partition(":")[2]
            if not re.fullmatch(r"-?\d+", seed_text):
                raise _error(column, f"bench seed must be an integer, got {seed_text!r} in {token!r}")
            count = cfg.bench_frames if count_text is None else _positive_int(count_text, column, token,
                                                                                "frame count")
            from worldstream.data.engine.agents import bench_actions

            kb, mouse = bench_actions(count, random.Random(int(seed_text)))
        else:
            count = 1 if count_text is None else _positive_int(count_text, column, token, "frame count")
            row_kb, row_mouse = np.zeros(len(KEYS), np.float32), np.zeros(2, np.float32)
            if item != "idle":
                for part in item.split("+"):
                    if not part:
                        raise _error(column, f"empty part in {token!r} (use '+' between actions)")
                    _part(part, row_kb, row_mouse, cfg, column, token)
            kb, mouse = np.tile(row_kb, (count, 1)), np.tile(row_mouse, (count, 1))
        total += count
        if total > cfg.max_frames:
            raise _error(column, f"the script is longer than {cfg.max_frames} frames")
        kb_parts.append(kb.astype(np.float32))
        mouse_parts.append(mouse.astype(np.float32))
    if not kb_parts:
        raise ValueError("action script is empty (example: 'w*40 mouse:right*24 idle*8')")
    return ActionRows(np.concatenate(kb_parts), np.concatenate(mouse_parts))


def describe_row(keyboard: np.ndarray, mouse: np.ndarray) -> str:
    """One row back in script syntax ('w+d+mouse:right@0.1', 'idle'), for logs and HUD captions."""
    parts = [k.lower() for k, i in KEY_INDEX.items() if keyboard[i] > 0.5]
    for axis, (neg, pos) in enumerate((("up", "down"), ("left", "right"))):
        v = float(mouse[axis])
        if v != 0:
            parts.append(f"mouse:{pos if v > 0 else neg}@{abs(v):g}")
    return "+".join(parts) or "idle"
