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

Async decode (`SessionConfig.async_decode`, MG3's `--use_async_vae`; infer/decode.py): the decoder and its
cache live in a worker process. `step(actions)` still returns the frames of *those* actions (DiT, then
decode: no clip of added latency, and no overlap since the next actions are not known yet). Overlap comes
from the split form: `submit(actions)` runs the DiT and hands the latents to the worker, `next_frames()`
returns the oldest submitted clip's frames once decoded. A producer thread that submits clip k+1 as soon
as `submit(k)` returns, with a consumer thread that takes each clip's frames when ready, decodes clip k
while the DiT samples k+1: frames of clip k arrive DiT + decode after its actions (as with `step`) and a
clip is produced every max(DiT, decode) instead of DiT + decode. At most `decode_queue_size` clips may wait
for `next_frames`. A crashed worker is restarted and the clip re-decoded (`info.decode_restarts`).
Threads: with a CPU worker the cores are split (`dit_threads`, `decode_threads`; 1 + 1 on 2 cores) by
`torch.set_num_threads` in this process, restored by `close()`.

Image input: PIL image or uint8 array [H, W], [H, W, 1|3|4] of any size; grayscale is replicated, alpha is
dropped, then `crop` (centre-crop to the target aspect, bicubic resize: the official `get_data`) or
`stretch` (plain resize: the interactive pipeline). Prompts: a string (encoded by the bundle's text
encoder; longer than text_len -> truncated with a warning) or an embedding tensor [L, text_dim].
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from einops import rearrange

from worldstream.infer.config import SessionConfig, preset
from worldstream.infer.decode import AsyncDecoder, DecodeWorkerConfig, split_threads, worker_device
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
    decode_restarts: tuple[str, ...] = ()  # async decode: the reason of every decode worker restart


@dataclass(frozen=True)
class _Submitted:
    """A clip whose frames `next_frames` has not returned yet."""

    info: ClipInfo
    frames: np.ndarray | None  # decoded already (sync) or None (in the decode worker)
    decode_s: float  # sync: decode seconds; async: seconds to hand the latents over


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
        self._decoder: AsyncDecoder | None = None  # async_decode: started by the first reset
        self._submitted: deque[_Submitted] = deque()  # clips whose frames next_frames has not returned
        self._threads_before: int | None = None  # intra-op threads to restore on close()
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
    def pending(self) -> int:
        """Clips submitted whose frames `next_frames` has not returned yet."""
        return len(self._submitted)

    @property
    def info(self) -> SessionInfo:
        st = self._require()
        t = st.trajectory
        restarts = () if self._decoder is None else tuple(self._decoder.restarts)
        return SessionInfo(st.clip, self._frames, st.latents.num_latents, len(st.latents), _readonly(t.poses),
                           _readonly(t.c2ws), _readonly(t.keyboard), _readonly(t.mouse), self._last,
                           dict(self._timings), decode_restarts=restarts)

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

    def _async_decoder(self) -> AsyncDecoder:
        """The decode worker: started on first use (threads split), else reset for a new video."""
        if self._decoder is not None:
            self._decoder.reset()
            return self._decoder
        cfg, device = self.cfg, self.bundle.device
        dit_threads, decode_threads = split_threads(torch.get_num_threads(), cfg.dit_threads,
                                                    cfg.decode_threads)
        where = worker_device(device, cfg.decode_device)
        if where.type == "cpu" and device.type == "cpu":  # both on the CPU: split the cores
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(dit_threads)
        frames = max(cfg.first_step_frames, cfg.step_frames)
        self._decoder = AsyncDecoder(self.bundle.vae, (frames, cfg.height, cfg.width), DecodeWorkerConfig(
            queue_size=cfg.decode_queue_size, threads=decode_threads, device=str(where),
            segment_size=cfg.decode_segment_size, max_restarts=cfg.decode_max_restarts))
        return self._decoder

    def close(self) -> None:
        """Stop the decode worker (async decode) and restore the thread count. Idempotent."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def __enter__(self) -> WorldSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        self._submitted.clear()
        if cfg.async_decode:
            decoder = self._async_decoder()
            decoder.submit(z0, first_chunk=True, clip_idx=-1)
            frames = decoder.get()
        else:
            self._cache = b.vae.new_decode_cache()
            frames = frames_to_uint8(b.vae.stream_decode(z0, self._cache, first_chunk=True,
                                                         segment_size=cfg.decode_segment_size))
        self._frames, self._last = len(frames), None
        self._timings = {"prepare": t1 - t0, "encode": t2 - t1, "decode": time.perf_counter() - t2}
        return frames

    def step(self, keyboard, mouse=None) -> np.ndarray:
        """Next clip: keyboard [N, 6], mouse [N, 2] (or single rows, held) -> uint8 [N, H, W, 3]."""
        if self._submitted:
            raise RuntimeError(f"step(): {len(self._submitted)} submitted clip(s) wait for next_frames()")
        self.submit(keyboard, mouse)
        return self.next_frames()

    @torch.inference_mode()
    def submit(self, keyboard, mouse=None) -> int:
        """Sample the next clip (same actions as `step`) and queue its decoding -> the clip index.

        Sync decode: the frames are decoded here; async: the worker decodes while the caller continues.
        Take the frames with `next_frames()`, in submission order.
        """
        self._require()
        if self.cfg.async_decode and self._decoder is None:
            raise RuntimeError("the session was closed (decode worker stopped): call reset() to start again")
        if len(self._submitted) >= self.cfg.decode_queue_size:
            raise RuntimeError(f"submit(): {len(self._submitted)} clips wait for next_frames() "
                               f"(decode_queue_size={self.cfg.decode_queue_size}); take frames first")
        kb, ms = self._rows(keyboard, mouse)
        latents, info = rollout_clip(self.bundle, self.state, (kb, ms), self.cfg)
        t0 = time.perf_counter()
        if self._decoder is None:
            frames = frames_to_uint8(self.bundle.vae.stream_decode(latents, self._cache, first_chunk=False,
                                                                   segment_size=self.cfg.decode_segment_size))
            self._submitted.append(_Submitted(info, frames, time.perf_counter() - t0))
            return info.clip
        # registered first: a consumer thread may take the frames before decoder.submit returns
        entry = _Submitted(info, None, 0.0)
        self._submitted.append(entry)
        try:
            self._decoder.submit(latents, first_chunk=False, clip_idx=info.clip)
        except BaseException:
            self._submitted.remove(entry)
            raise
        return info.clip

    def next_frames(self, timeout: float | None = None) -> np.ndarray:
        """Frames of the oldest submitted clip, uint8 [N, H, W, 3], once decoded (async: may wait; a
        crashed decode worker is restarted on the way). May run in another thread than `submit`."""
        if not self._submitted:
            raise RuntimeError("next_frames(): no clip submitted (call submit or step)")
        entry = self._submitted[0]
        t0 = time.perf_counter()
        if entry.frames is None:
            frames = self._decoder.get(timeout)
            extra = {"decode": self._decoder.last_decode_s, "decode_wait": time.perf_counter() - t0}
        else:
            frames, extra = entry.frames, {"decode": entry.decode_s}
        self._submitted.popleft()
        info = entry.info
        timings = {**info.timings, **extra}
        self._frames += len(frames)
        self._last = ClipInfo(info.clip, info.window, info.new_frames, info.new_latents, info.memory, timings)
        self._timings = timings
        return frames
