"""`WorldSession`, the one streaming API: `reset(image, prompt) -> frames`, `step(keyboard, mouse) -> frames`.

The CLI (`worldstream generate`), the server, the benchmarks and the DMD self-rollout all drive the model
through this class or through `infer/rollout.py`, which it wraps with VAE encoding and streaming decoding.
Nothing here prints or reads stdin (STYLE 8).

Frame bookkeeping (MG3's clip schedule, facts 5.2; numbers from `SessionConfig.schedule`):
* `reset` encodes the image as latent 0 and returns frame 0 (the decoded image latent, as frame 0 of an
  MG3 video), shape [1, H, W, 3].
* The first `step` returns the rest of the first clip: `first_step_frames` frames (MG3 56, nano 24; with
  frame 0 that is MG3's 57-frame first clip). Every later step returns `step_frames` (MG3 40, nano 16).
* Actions: one row per returned frame (row i = the action at that frame), or a single row held for the
  whole clip (MG3's interactive pipeline). The first step also accepts first_step_frames + 1 rows, the
  official layout with a row for frame 0; given N rows, frame 0's action is the first row.
* Decoding: one persistent `DecodeCache` across the session; latent 0 is decoded alone as the first chunk,
  then each clip's new latents (n latents -> 4n frames), which equals MG3's decode of the whole timeline.

Image input: PIL image or uint8 array [H, W], [H, W, 1|3|4] of any size; grayscale is replicated, alpha is
dropped, then `crop` (centre-crop to the target aspect, bicubic resize: the official `get_data`) or
`stretch` (plain resize: the interactive pipeline). Prompts: a string (encoded by the bundle's text
encoder; longer than text_len -> truncated with a warning) or an embedding tensor [L, text_dim].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from einops import rearrange

from worldstream.infer.config import SessionConfig, preset
from worldstream.infer.model_bundle import InferenceBundle
from worldstream.infer.rollout import (
    KEYBOARD_DIM,
    MOUSE_DIM,
    ClipGeometry,
    ClipInfo,
    RolloutState,
    new_state,
    rollout_clip,
)
from worldstream.model.vae import DecodeCache

__all__ = ["WorldSession", "SessionInfo", "prepare_image", "frames_to_uint8"]

PIXEL_SCALE = 127.5  # uint8 <-> [-1, 1]: x / 127.5 - 1 and (x + 1) * 127.5 (facts 5.1, 5.5)


def prepare_image(image, height: int, width: int, fit: str = "crop") -> np.ndarray:
    """PIL image or uint8 array (any size; gray, RGB or RGBA) -> uint8 [height, width, 3]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        pil = image
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 (0..255), got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
            raise ValueError(f"image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                             f"got {list(arr.shape)}")
        pil = Image.fromarray(arr)
    pil = pil.convert("RGB")  # L/P/RGBA/... -> RGB (alpha dropped)
    if fit == "crop":  # centre-crop to the target aspect ratio, then resize
        w, h = pil.size
        cw, ch = min(w, round(h * width / height)), min(h, round(w * height / width))
        left, top = (w - cw) // 2, (h - ch) // 2
        pil = pil.crop((left, top, left + cw, top + ch))
    elif fit != "stretch":
        raise ValueError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.BICUBIC)
    return np.array(pil, dtype=np.uint8)  # a writable copy


def frames_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Decoded video [1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    x = video.float().add(1).mul_(PIXEL_SCALE).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(rearrange(x, "1 c f h w -> f h w c").numpy())


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of a session (read-only views of the trajectory; copy to keep)."""

    clips: int  # clips generated so far
    frames: int  # frames returned so far (frame 0 included)
    latents: int  # latent timeline length
    stored_latents: int  # latents kept in memory (retrievable ones + the clean prefix)
    poses: np.ndarray  # [T, 5] (x, y, z, pitch, yaw) per frame, MG3 pose units (cm, degrees)
    c2ws: np.ndarray  # [T, 4, 4] MG3 camera-to-world per frame
    keyboard: np.ndarray  # [T, 6] the action rows used
    mouse: np.ndarray  # [T, 2]
    last: ClipInfo | None  # the last clip: frames, latents, retrieved memory, timings
    timings: dict[str, float] = field(default_factory=dict)  # last reset/step, seconds per phase


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


class WorldSession:
    """Stream frames from a world model. See the module docstring."""

    def __init__(self, bundle: InferenceBundle, cfg: SessionConfig | str = "nano"):
        self.bundle = bundle
        self.cfg = preset(cfg) if isinstance(cfg, str) else cfg
        if self.cfg.torch_dtype != bundle.dtype:
            raise ValueError(f"session dtype {self.cfg.dtype} != model dtype {bundle.dtype} "
                             "(load the bundle with the session's dtype)")
        self.geometry = ClipGeometry.of(bundle, self.cfg)  # validates sizes and strides
        self.state: RolloutState | None = None
        self._cache: DecodeCache | None = None
        self._frames = 0
        self._last: ClipInfo | None = None
        self._timings: dict[str, float] = {}

    # ---- properties --------------------------------------------------------------------------------
    @property
    def clip(self) -> int:
        """Index of the next clip (0 right after reset)."""
        return self._require().clip

    @property
    def next_step_frames(self) -> int:
        """Frames (and action rows) the next `step` takes and returns."""
        return self.cfg.first_step_frames if self._require().clip == 0 else self.cfg.step_frames

    @property
    def info(self) -> SessionInfo:
        st = self._require()
        t = st.trajectory
        return SessionInfo(st.clip, self._frames, st.latents.num_latents, len(st.latents), _readonly(t.poses),
                           _readonly(t.c2ws), _readonly(t.keyboard), _readonly(t.mouse), self._last,
                           dict(self._timings))

    def _require(self) -> RolloutState:
        if self.state is None:
            raise RuntimeError("WorldSession: call reset(image, prompt) first")
        return self.state

    # ---- inputs ------------------------------------------------------------------------------------
    def _context(self, prompt) -> torch.Tensor:
        cfg = self.bundle.dit.cfg
        if isinstance(prompt, str):
            if self.bundle.text is None:
                raise ValueError("this bundle has no text encoder: pass the prompt as an embedding "
                                 f"[L, {cfg.text_dim}]")
            emb, _ = self.bundle.text.encode([prompt])  # warns when truncated
            return emb[0]  # [text_len, text_dim], rows past the prompt zero
        if isinstance(prompt, torch.Tensor):
            L = prompt.shape[0] if prompt.ndim == 2 else 0
            if prompt.ndim != 2 or prompt.shape[1] != cfg.text_dim or not 1 <= L <= cfg.text_len:
                raise ValueError(f"prompt embedding must be [L, {cfg.text_dim}] with 1 <= L <= "
                                 f"{cfg.text_len}, got {list(prompt.shape)}")
            return prompt
        raise TypeError(f"prompt must be a str or a tensor [L, {cfg.text_dim}], got {type(prompt).__name__}")

    def _rows(self, keyboard, mouse) -> tuple[np.ndarray, np.ndarray]:
        """The step's rows -> exactly the rows the rollout needs (first clip: + frame 0's row)."""
        st = self._require()
        n = self.next_step_frames
        kb = np.asarray(keyboard, dtype=np.float32)
        kb = kb[None] if kb.ndim == 1 else kb
        ms = np.zeros((len(kb), MOUSE_DIM), np.float32) if mouse is None else np.asarray(mouse, np.float32)
        ms = ms[None] if ms.ndim == 1 else ms
        if kb.ndim != 2 or kb.shape[1] != KEYBOARD_DIM or ms.ndim != 2 or ms.shape[1] != MOUSE_DIM:
            raise ValueError(f"keyboard must be [N, {KEYBOARD_DIM}] (or one row [{KEYBOARD_DIM}]) and mouse "
                             f"[N, {MOUSE_DIM}] (or [{MOUSE_DIM}]), got {list(kb.shape)} and "
                             f"{list(ms.shape)}")
        if len(kb) != len(ms):
            raise ValueError(f"keyboard has {len(kb)} rows but mouse has {len(ms)}")
        first = st.clip == 0
        if len(kb) == 1:  # one action held for the whole clip (MG3 interactive)
            rows = n + 1 if first else n
            return np.repeat(kb, rows, axis=0), np.repeat(ms, rows, axis=0)
        if first and len(kb) == n + 1:  # official layout: a row for frame 0 too
            return kb, ms
        if len(kb) != n:
            extra = f" (or {n + 1} with a row for frame 0)" if first else ""
            raise ValueError(f"clip {st.clip} takes {n} action rows{extra} or a single held row, "
                             f"got {len(kb)}")
        if first:  # frame 0's action = the first row
            return np.concatenate([kb[:1], kb]), np.concatenate([ms[:1], ms])
        return kb, ms

    # ---- API ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, image, prompt) -> np.ndarray:
        """Start a new video from `image` and `prompt` -> frame 0, uint8 [1, H, W, 3]."""
        t0 = time.perf_counter()
        b, cfg = self.bundle, self.cfg
        pixels = prepare_image(image, cfg.height, cfg.width, cfg.image_fit)  # [H, W, 3]
        video = torch.from_numpy(pixels).float().div_(PIXEL_SCALE).sub_(1)  # [H, W, 3] in [-1, 1]
        video = rearrange(video, "h w c -> 1 c 1 h w").to(b.device)
        context = self._context(prompt)
        t1 = time.perf_counter()
        z0 = b.vae.encode(video).to(cfg.torch_dtype)  # [1, C, 1, h, w], normalised
        t2 = time.perf_counter()
        self.state = new_state(b, cfg, z0, context)
        self._cache = b.vae.new_decode_cache()
        frames = frames_to_uint8(b.vae.stream_decode(z0, self._cache, first_chunk=True,
                                                     segment_size=cfg.decode_segment_size))
        self._frames, self._last = len(frames), None
        self._timings = {"prepare": t1 - t0, "encode": t2 - t1, "decode": time.perf_counter() - t2}
        return frames

    @torch.inference_mode()
    def step(self, keyboard, mouse=None) -> np.ndarray:
        """Next clip: keyboard [N, 6], mouse [N, 2] (or single rows, held) -> uint8 [N, H, W, 3]."""
        kb, ms = self._rows(keyboard, mouse)
        latents, info = rollout_clip(self.bundle, self.state, (kb, ms), self.cfg)
        t0 = time.perf_counter()
        frames = frames_to_uint8(self.bundle.vae.stream_decode(latents, self._cache, first_chunk=False,
                                                               segment_size=self.cfg.decode_segment_size))
        timings = {**info.timings, "decode": time.perf_counter() - t0}
        self._frames += len(frames)
        self._last = ClipInfo(info.clip, info.window, info.new_frames, info.new_latents, info.memory, timings)
        self._timings = timings
        return frames
