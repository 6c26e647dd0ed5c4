"""Terminal play (`worldstream play --terminal`): MG3's stdin keys per clip -> mp4 files (headless machines).

Notable:
* The keys are MG3's interactive pipeline's (facts 5.4): one movement key W/S/A/D (Q: none) and one
  mouse key I/J/K/L (U: none) per clip, case-insensitive, held for the whole clip. The values are
  MG3's: I = pitch +0.1, K = pitch -0.1, J = yaw -0.1, L = yaw +0.1. NOTE MG3 names I "up", but in
  its camera convention a positive pitch tilts the view down (worldstream/data/actions.py).
* One line per clip: any order and separators ("wl", "W L", "l,w"); an empty line repeats the last
  action; `quit` / `exit` / end of input stops. A bad line is explained and asked again.
* stdin is read here, never in worldstream/infer (STYLE: infer/ never prints or reads stdin).
* Every clip is written to `clip_<k>.mp4` and the newest frame to `latest.png`, both atomically.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from worldstream.data.actions import KEYS
from worldstream.utils.video import write_mp4

QUIT_WORDS = ("quit", "exit", "q!")
SEPARATORS = " ,;+\t"


@dataclass(frozen=True)
class TerminalConfig:
    mouse_step: float = 0.1  # MG3's I/J/K/L magnitude (1.5 deg per frame)
    mp4_quality: int = 8  # imageio/ffmpeg quality (0-10)


def move_keys() -> dict[str, np.ndarray]:
    """Movement key -> keyboard multi-hot [6] (MG3: W, S, A, D one-hot; Q none)."""
    out = {}
    for k in ("W", "S", "A", "D"):
        kb = np.zeros(len(KEYS), np.float32)
        kb[KEYS.index(k)] = 1.0
        out[k] = kb
    out["Q"] = np.zeros(len(KEYS), np.float32)
    return out


def look_keys(step: float) -> dict[str, np.ndarray]:
    """Mouse key -> [pitch, yaw] (MG3 values: I +pitch, K -pitch, J -yaw, L +yaw, U none)."""
    return {
        "I": np.array([step, 0.0], np.float32),
        "K": np.array([-step, 0.0], np.float32),
        "J": np.array([0.0, -step], np.float32),
        "L": np.array([0.0, step], np.float32),
        "U": np.zeros(2, np.float32),
    }


def parse_line(line: str, cfg: TerminalConfig = TerminalConfig()) -> tuple[str, str] | None:
    """'wl' -> ('W', 'L'); '' -> ('', '') (repeat); 'quit' -> None. ValueError names a bad line."""
    text = line.strip()
    if text.lower() in QUIT_WORDS:
        return None
    moves, looks = move_keys(), look_keys(cfg.mouse_step)
    move = look = ""
    for ch in text.upper():
        if ch in SEPARATORS:
            continue
        if ch in moves:
            if move:
                raise ValueError(f"two movement keys ({move} and {ch}): give at most one of W/S/A/D/Q")
            move = ch
        elif ch in looks:
            if look:
                raise ValueError(f"two mouse keys ({look} and {ch}): give at most one of I/J/K/L/U")
            look = ch
        else:
            raise ValueError(f"unknown key {ch!r}: movement W/S/A/D (Q none), mouse I/J/K/L (U none), "
                             "or 'quit'")
    return move, look


def action_arrays(move: str, look: str,
                  cfg: TerminalConfig = TerminalConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Key letters (empty = none) -> (keyboard [6], mouse [2])."""
    return move_keys()[move or "Q"], look_keys(cfg.mouse_step)[look or "U"]


def write_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    from worldstream.utils.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")


def _pose_text(info) -> str:
    """The newest pose (and the memory frames of the last clip) of a SessionInfo."""
    poses = np.asarray(info.poses)  # [T,5]; empty right after reset: MG3 starts at the origin
    x, y, z, pitch, yaw = (float(v) for v in (poses[-1] if len(poses) else np.zeros(5)))
    text = f"pose x={x:.1f} y={y:.1f} z={z:.1f} pitch={pitch:.1f} yaw={yaw:.1f}"
    mem = info.last.memory if info.last is not None else None
    if mem is not None:
        text += f"; memory frames {list(mem.frames)}"
    return text


def run(session, image, prompt: str, out_dir: Path, fps: int, lines: Iterable[str] | TextIO,
        out: TextIO, cfg: TerminalConfig = TerminalConfig()) -> int:
    """Reset `session`, then one clip per input line until quit / end of input. Returns clips written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # 1. the start clip
    t0 = time.perf_counter()
    frames = np.asarray(session.reset(image, prompt))  # uint8 [T0,H,W,3]
    k = 0
    write_mp4(out_dir / f"clip_{k:04d}.mp4", frames, fps, cfg.mp4_quality)
    write_png(out_dir / "latest.png", frames[-1])
    print(f"clip {k}: {len(frames)} frames in {time.perf_counter() - t0:.2f}s -> "
          f"{out_dir / f'clip_{k:04d}.mp4'}; {_pose_text(session.info)}", file=out, flush=True)
    print("keys per clip: movement W/S/A/D (Q none) + mouse I/J/K/L (U none), e.g. 'wl'; "
          "empty line repeats; 'quit' stops", file=out, flush=True)
    # 2. one clip per line
    last = ("", "")
    print(f"clip {k + 1}> ", end="", file=out, flush=True)
    for line in lines:
        try:
            keys = parse_line(line, cfg)
        except ValueError as e:
            print(f"error: {e}", file=out, flush=True)
            print(f"clip {k + 1}> ", end="", file=out, flush=True)
            continue
        if keys is None:
            break
        if keys != ("", ""):
            last = keys
        kb, mouse = action_arrays(*last, cfg)
        t0 = time.perf_counter()
        frames = np.asarray(session.step(kb, mouse))  # uint8 [N,H,W,3]
        dt = time.perf_counter() - t0
        k += 1
        path = out_dir / f"clip_{k:04d}.mp4"
        write_mp4(path, frames, fps, cfg.mp4_quality)
        write_png(out_dir / "latest.png", frames[-1])
        print(f"clip {k}: {last[0] or 'Q'}{last[1] or 'U'} {len(frames)} frames in {dt:.2f}s "
              f"({len(frames) / dt:.1f} fps) -> {path}; {_pose_text(session.info)}", file=out, flush=True)
        print(f"clip {k + 1}> ", end="", file=out, flush=True)
    print("", file=out, flush=True)
    return k + 1
