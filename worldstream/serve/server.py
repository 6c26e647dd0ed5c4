"""`worldstream play` server: FastAPI + websockets, one WorldSession per connection.

Notable:
* One websocket = one session = one `WorldSession` (its own caches, memory bank, pose); the model
  bundle (weights) is loaded once and shared read-only by every session.
* Per connection three coroutines: the receiver (validates each message with protocol.py; bad
  input gets an `error` message, the session goes on), the generator (runs `reset` and
  `WorldSession.submit` in the generation thread, so the event loop stays responsive) and the sender
  (the only writer to the socket); plus one collector task per submitted clip, which waits for its
  frames (`next_frames`) and JPEG-encodes them in a collect thread, in submission order.
* Pipelining (MG3's async VAE, infer/decode.py): `submit` returns once the DiT has sampled the clip and
  handed its latents to the decode worker, so the generator takes the next pending action at once and
  the DiT samples clip k+1 while clip k decodes. At most `SessionConfig.decode_queue_size` clips are in
  flight; a reset first waits for them (they belong to the old episode). With sync decode `submit`
  decodes too and the collector only encodes.
* Coalescing: while a clip is being generated, newer actions merge into one pending action
  (protocol.coalesce: union of keys, latest mouse/seq). A reset replaces everything pending.
* Backpressure: finished clips wait in a per-session outbox of at most `send_queue_clips`; when a
  slow client lets it fill up, the oldest clip is dropped whole (framing intact) and counted in
  `dropped_frames`. Memory per session is bounded by (outbox + 1 sending + 1 generating) clips.
* Session limit: a connection beyond `max_sessions` gets an `error` (code "busy") and close code
  1013 (Try Again Later) with a reason. A websocket whose Origin is another site is refused
  (1008): any web page could otherwise drive a localhost server.
* Start images: built-in first frames rendered from procedural worlds (data.engine.render_clip),
  cached in memory and on disk; all GL work stays on one dedicated thread (a GL context belongs
  to the thread that made it current).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from worldstream.serve import protocol
from worldstream.serve.protocol import ActionMsg, PingMsg, ProtocolConfig, ProtocolError, ResetMsg

log = logging.getLogger("worldstream.serve")

WEB_DIR = Path(__file__).with_name("web")
CLOSE_BUSY = 1013  # RFC 6455 "Try Again Later"
CLOSE_POLICY = 1008  # RFC 6455 "Policy Violation" (foreign Origin)
CSP = ("default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; style-src 'self'; "
       "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

# (name, biome, world seed): one built-in start frame per biome of the data engine
BUILTIN_STARTS: tuple[tuple[str, str, int], ...] = (
    ("green_park", "green_park", 1),
    ("snowy_village", "snowy_village", 1),
    ("desert_canyon", "desert_canyon", 2),
    ("neon_city", "neon_city", 3),
    ("autumn_town", "autumn_town", 4),
)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # localhost only unless told otherwise
    port: int = 8765
    max_sessions: int = 4
    send_queue_clips: int = 2  # per-session outbox bound; the oldest clip is dropped when it is full
    control_queue: int = 32  # per-session bound on queued text replies (errors, pongs)
    # kernel send buffer per connection (bytes). NOTE a fixed size turns off Linux's autotuning, which
    # would otherwise let up to 4 MB (tens of clips) pile up in the kernel for a slow client before
    # the outbox starts dropping; ~256 KiB holds one or two clips
    socket_send_buffer: int = 256 * 1024
    jpeg_quality: int = 90
    generation_workers: int = 1  # threads running reset/submit for all sessions (a 2-core CPU: 1)
    dit_threads: int | None = None  # intra-op threads of the generation threads (None: torch's default)
    builtins: tuple[tuple[str, str, int], ...] = BUILTIN_STARTS
    cache_dir: Path | None = None  # built-in start frames on disk (None: memory only)
    prerender_builtins: bool = True  # render every built-in at start-up, in the background
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def __post_init__(self) -> None:
        for name in ("port", "max_sessions", "send_queue_clips", "control_queue", "generation_workers",
                     "socket_send_buffer"):
            v = getattr(self, name)
            lo = 0 if name == "port" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"ServeConfig.{name} must be an int >= {lo}, got {v!r}")
        t = self.dit_threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise ValueError(f"ServeConfig.dit_threads must be None or an int >= 1, got {self.dit_threads!r}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"ServeConfig.jpeg_quality must be in [1, 95], got {self.jpeg_quality!r}")
        names = [b[0] for b in self.builtins]
        if len(set(names)) != len(names) or not all(n.replace("_", "").isalnum() for n in names):
            raise ValueError(f"ServeConfig.builtins needs unique [A-Za-z0-9_] names, got {names}")

    @property
    def ws_max_size(self) -> int:
        """uvicorn's hard limit: above it the connection is closed (1009); below it our own
        limit answers with an `error` message and keeps the session."""
        return 2 * self.protocol.max_message_bytes


# ---- built-in start frames ------------------------------------------------------------------------


class StartImages:
    """Built-in start frames: name -> (uint8 [H,W,3], prompt), rendered once, on one GL thread."""

    def __init__(self, specs: tuple[tuple[str, str, int], ...], height: int, width: int,
                 cache_dir: Path | None = None):
        self.specs = {name: (biome, seed) for name, biome, seed in specs}
        self.height, self.width = height, width
        self.cache_dir = cache_dir
        self._mem: dict[str, tuple[np.ndarray, str]] = {}
        self._lock = threading.Lock()
        self._gl = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ws-render")

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def _paths(self, name: str) -> tuple[Path, Path]:
        from worldstream.data.engine.clips import ENGINE_VERSION

        biome, seed = self.specs[name]
        stem = f"{name}_{biome}_s{seed}_{self.height}x{self.width}_v{ENGINE_VERSION}"
        return self.cache_dir / f"{stem}.png", self.cache_dir / f"{stem}.json"

    def _render(self, name: str) -> tuple[np.ndarray, str]:
        from PIL import Image

        from worldstream.utils.io import atomic_path, atomic_write_json

        with self._lock:
            if name in self._mem:
                return self._mem[name]
        if self.cache_dir is not None:
            png, meta = self._paths(name)
            if png.is_file() and meta.is_file():
                try:
                    frame = np.asarray(Image.open(png).convert("RGB"), dtype=np.uint8)
                    prompt = json.loads(meta.read_text())["prompt"]
                    if frame.shape == (self.height, self.width, 3):
                        with self._lock:
                            self._mem[name] = (frame, prompt)
                        return frame, prompt
                except (OSError, ValueError, KeyError):
                    log.warning("ignoring unreadable start-frame cache %s", png)
        from worldstream.data.engine import EngineConfig, render_clip

        biome, seed = self.specs[name]
        cfg = EngineConfig(height=self.height, width=self.width, num_frames=2, biome=biome,
                           trajectories=("explore",), trajectory_weights=(1.0,))
        clip = render_clip(seed, 0, cfg)
        frame, prompt = np.ascontiguousarray(clip.video[0]), clip.prompt  # [H,W,3] uint8
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            png, meta = self._paths(name)
            with atomic_path(png) as tmp:
                Image.fromarray(frame).save(tmp, format="PNG")
            atomic_write_json(meta, {"name": name, "biome": biome, "world_seed": seed, "prompt": prompt})
        with self._lock:
            self._mem[name] = (frame, prompt)
        return frame, prompt

    def get(self, name: str) -> tuple[np.ndarray, str]:
        """Blocking; call from a worker thread. The GL work runs on the render thread."""
        if name not in self.specs:
            raise KeyError(f"unknown built-in start image {name!r}; available: {self.names}")
        return self._gl.submit(self._render, name).result()

    async def aget(self, name: str) -> tuple[np.ndarray, str]:
        if name not in self.specs:
            raise KeyError(f"unknown built-in start image {name!r}; available: {self.names}")
        return await asyncio.wrap_future(self._gl.submit(self._render, name))

    def prerender(self) -> None:
        for name in self.specs:
            self._gl.submit(self._render, name)

    def close(self) -> None:
        self._gl.shutdown(wait=False, cancel_futures=True)


# ---- one session ---------------------------------------------------------------------------------


def encode_jpegs(frames: np.ndarray, quality: int) -> list[bytes]:
    """uint8 [N,H,W,3] -> N baseline JPEG files."""
    from PIL import Image

    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def _jsonable(v: Any) -> Any:
    """numpy / tensors -> plain JSON values (non-finite floats -> None)."""
    if hasattr(v, "detach"):  # torch tensor
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    return str(v)


@dataclass
class Clip:
    """One generated clip waiting in the outbox: its header and its JPEG frames."""

    header: dict[str, Any]
    jpegs: list[bytes]
    t_ready: float


class PlaySession:
    """State of one connection: its WorldSession, pending work, outbox and counters."""

    def __init__(self, app_state: PlayServer, sid: int):
        self.server = app_state
        self.sid = sid
        self.world = None  # WorldSession, created in a worker thread
        self.pending_reset: ResetMsg | None = None
        self.pending_action: ActionMsg | None = None
        self.coalesced = 0  # actions merged into pending_action
        self.reset_requested = False  # actions are accepted once a reset was asked for
        self.reset_since = 0.0  # perf_counter when the pending reset arrived
        self.action_since = 0.0  # ... and the first of the pending (coalesced) actions
        self.work = asyncio.Event()
        self.outbox: deque[Clip] = deque()
        self.control: deque[str] = deque(maxlen=app_state.cfg.control_queue)
        self.outbox_ready = asyncio.Event()
        self.episode = 0  # reset counter: clips of an older episode are stale
        self.clip_index = 0
        self.frame_start = 0  # global index of the next frame in this episode
        self.clips_generated = 0
        self.dropped_frames = 0
        self.dropped_clips = 0
        self.generating = False  # reset/submit running
        self.decoding = 0  # clips submitted whose frames are not collected yet
        self.overlapped_clips = 0  # clips whose DiT started while an earlier clip was still decoding
        self.collected = asyncio.Event()  # set whenever a clip leaves the pipeline
        self.collector: asyncio.Task | None = None  # the newest clip's collector (each awaits the one before)
        self.collectors: set[asyncio.Task] = set()  # every unfinished collector (cancelled on disconnect)

    # -- outbox --
    def send_control(self, msg: dict[str, Any]) -> None:
        self.control.append(protocol.dumps(msg))  # deque(maxlen): the oldest reply goes first
        self.outbox_ready.set()

    def push_clip(self, clip: Clip) -> None:
        while len(self.outbox) >= self.server.cfg.send_queue_clips:
            old = self.outbox.popleft()
            self.dropped_clips += 1
            self.dropped_frames += len(old.jpegs)
        self.outbox.append(clip)
        self.outbox_ready.set()

    def stats(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "clips_generated": self.clips_generated,
            "queued_clips": len(self.outbox),
            "queued_bytes": sum(len(j) for c in self.outbox for j in c.jpegs),
            "dropped_clips": self.dropped_clips,
            "dropped_frames": self.dropped_frames,
            "generating": self.generating or self.decoding > 0,
            "decoding": self.decoding,
            "overlapped_clips": self.overlapped_clips,
        }

    # -- work, on a worker thread --
    def _ensure_world(self):
        if self.world is None:
            self.world = self.server.new_world_session()
        return self.world

    def _run_reset(self, msg: ResetMsg) -> tuple[np.ndarray, Any, dict]:
        t0 = time.perf_counter()
        image, prompt = msg.image, msg.prompt
        if msg.image_kind != "upload":  # a built-in; no image at all -> the first built-in
            image, builtin_prompt = self.server.starts.get(msg.builtin or self.server.starts.names[0])
            prompt = builtin_prompt if prompt is None else prompt
        t1 = time.perf_counter()
        world = self._ensure_world()
        frames = world.reset(image, prompt or "")
        t2 = time.perf_counter()
        return frames, world.info, {"start_image_s": t1 - t0, "generate_s": t2 - t1}

    def _run_submit(self, msg: ActionMsg) -> dict[str, float]:
        """Sample the clip (DiT) and queue its decoding; returns its timings so far."""
        t0 = time.perf_counter()
        self.world.submit(msg.keyboard(), msg.mouse_array())
        return {"t_start": t0, "dit_s": time.perf_counter() - t0}

    def _run_collect(self, sub: dict[str, float]) -> tuple[list[bytes], Any, dict]:
        """The oldest submitted clip's frames (waits for the decoder), JPEG-encoded."""
        t0 = time.perf_counter()
        frames = self.world.next_frames()
        t1 = time.perf_counter()
        timings = {"generate_s": t1 - sub["t_start"], "dit_s": sub["dit_s"], "decode_wait_s": t1 - t0,
                   "pool_wait_s": sub["pool_wait_s"]}
        return self._finish(frames, self.world.info, timings)

    def _finish(self, frames: np.ndarray, info, timings: dict) -> tuple[list[bytes], Any, dict]:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise RuntimeError(f"WorldSession returned frames {frames.dtype} {list(frames.shape)}; "
                               "expected uint8 [N,H,W,3]")
        t0 = time.perf_counter()
        jpegs = encode_jpegs(frames, self.server.cfg.jpeg_quality)
        timings["encode_s"] = time.perf_counter() - t0
        return jpegs, info, timings

    # -- coroutines --
    def _take_work(self) -> tuple[ResetMsg | None, ActionMsg | None, int, float]:
        """The next job: a pending reset first (actions sent after it stay pending), else the action."""
        if self.pending_reset is not None:
            reset, since = self.pending_reset, self.reset_since
            self.pending_reset = None
            if self.pending_action is not None:
                self.work.set()
            return reset, None, 0, since
        action, coalesced, since = self.pending_action, self.coalesced, self.action_since
        self.pending_action, self.coalesced = None, 0
        return None, action, coalesced, since

    async def _drain(self) -> None:
        """Wait until every submitted clip was collected (the collectors run in order)."""
        if self.collector is not None:
            await asyncio.wait([self.collector])

    async def generator(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.server.session_cfg.decode_queue_size
        while True:
            await self.work.wait()
            while self.pending_reset is None and self.decoding >= limit:  # a free pipeline slot first
                self.collected.clear()
                await self.collected.wait()
            self.work.clear()
            reset, action, coalesced, since = self._take_work()
            if reset is None and action is None:
                continue
            if reset is not None:
                await self._drain()  # the old episode's clips leave first
            elif self.decoding and self.server.session_cfg.async_decode:
                self.overlapped_clips += 1
            self.generating = True
            t_submit = time.perf_counter()

            def job(reset=reset, action=action, t_submit=t_submit):
                t_job = time.perf_counter()
                if reset is not None:
                    frames, info, timings = self._run_reset(reset)
                    timings["pool_wait_s"] = t_job - t_submit  # behind other sessions' clips
                    return self._finish(frames, info, timings)
                sub = self._run_submit(action)
                sub["pool_wait_s"] = t_job - t_submit
                return sub

            try:
                result = await loop.run_in_executor(self.server.pool, job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a failed clip answers with an error; the session goes on
                log.exception("session %d: generation failed", self.sid)
                self.send_control(protocol.error_message(
                    "generation_failed", f"{type(e).__name__}: {e}", ref="reset" if reset else "action"))
                continue
            finally:
                self.generating = False
            if reset is None:  # submitted: a collector takes the frames when decoded
                self.decoding += 1
                self.collector = asyncio.create_task(
                    self._collect(self.collector, result, action, coalesced, since, t_submit))
                self.collectors.add(self.collector)
                self.collector.add_done_callback(self.collectors.discard)
                continue
            jpegs, info, timings = result
            timings["pending_s"] = t_submit - since  # waited for this session's previous clip
            self.episode += 1
            self.clip_index, self.frame_start = 0, 0
            self.outbox.clear()  # clips of the previous episode are stale
            self._deliver(jpegs, info, timings, reset, None, 0)

    async def _collect(self, previous: asyncio.Task | None, sub: dict[str, float], action: ActionMsg,
                       coalesced: int, since: float, t_submit: float) -> None:
        """Take one submitted clip's frames (after the previous clip's), encode and queue them."""
        loop = asyncio.get_running_loop()
        try:
            if previous is not None:
                await asyncio.wait([previous])
            pool = self.server.collect_pool
            jpegs, info, timings = await loop.run_in_executor(pool, self._run_collect, sub)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("session %d: decoding failed", self.sid)
            self.send_control(protocol.error_message("generation_failed", f"{type(e).__name__}: {e}",
                                                     ref="action"))
            return
        finally:
            self.decoding -= 1
            self.collected.set()
        timings["pending_s"] = t_submit - since  # waited for this session's previous clip / a slot
        self._deliver(jpegs, info, timings, None, action, coalesced)

    def _deliver(self, jpegs: list[bytes], info, timings: dict, reset: ResetMsg | None,
                 action: ActionMsg | None, coalesced: int) -> None:
        header = self._header(len(jpegs), info, timings, reset, action, coalesced)
        self.push_clip(Clip(header, jpegs, time.perf_counter()))
        self.clips_generated += 1
        self.clip_index += 1
        self.frame_start += len(jpegs)

    async def close_world(self) -> None:
        """Stop this connection's WorldSession (its decode worker), on the generation thread."""
        world, self.world = self.world, None
        if world is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self.server.pool, world.close)
        except RuntimeError:  # the pool is shut down (server exit): close here
            world.close()

    def _header(self, n: int, info, timings: dict, reset: ResetMsg | None, action: ActionMsg | None,
                coalesced: int) -> dict[str, Any]:
        """The `clip` message for n frames; `info` is the WorldSession's SessionInfo after the clip."""
        # poses of this clip's frames; frame 0 has no pose row until the first step: MG3 starts at the origin
        poses = np.zeros((n, 5), np.float32)
        rows = np.asarray(info.poses, np.float32)[self.frame_start:self.frame_start + n]  # [<=n, 5]
        poses[:len(rows)] = rows
        mem = info.last.memory if info.last is not None else None
        memory = {"frames": [], "latents": [], "confidences": [], "base_frames": [], "anchor": False}
        if mem is not None:
            memory = {"frames": list(mem.frames), "latents": list(mem.latents),
                      "confidences": [round(float(c), 4) for c in mem.confidences],
                      "base_frames": list(mem.base_frames), "anchor": bool(mem.anchor)}
        return {
            "type": "clip",
            "episode": self.episode,
            "clip": self.clip_index,
            "reset": reset is not None,
            "seq": None if action is None else action.seq,
            "t_client": None if action is None else action.t_client,
            "coalesced": coalesced,
            "keys": [] if action is None else list(action.keys),
            "mouse": [0.0, 0.0] if action is None else list(action.mouse),
            "n_frames": n,
            "frame_start": self.frame_start,
            "poses": _jsonable(poses),
            "memory": _jsonable(memory),
            "timings": {**_jsonable(timings), "session": _jsonable(info.timings)},
            "dropped_frames": self.dropped_frames,
        }

    async def sender(self, ws) -> None:
        while True:
            await self.outbox_ready.wait()
            self.outbox_ready.clear()
            while self.control or self.outbox:
                if self.control:
                    await ws.send_text(self.control.popleft())
                    continue
                clip = self.outbox.popleft()
                header = dict(clip.header, dropped_frames=self.dropped_frames)
                header["timings"] = dict(header["timings"], queue_s=time.perf_counter() - clip.t_ready)
                await ws.send_text(protocol.dumps(header))
                for jpeg in clip.jpegs:
                    await ws.send_bytes(jpeg)

    def receive(self, data: str | bytes) -> None:
        """Handle one client message (never raises: bad input becomes an error reply)."""
        try:
            msg = protocol.parse_client_message(data, self.server.cfg.protocol,
                                                frozenset(self.server.starts.names))
        except ProtocolError as e:
            self.send_control(e.to_message())
            return
        if isinstance(msg, PingMsg):
            self.send_control({"type": "pong", "t_client": msg.t_client, "t_server": time.time(),
                               "stats": self.stats()})
        elif isinstance(msg, ResetMsg):
            self.pending_reset, self.pending_action, self.coalesced = msg, None, 0
            self.reset_requested = True
            self.reset_since = time.perf_counter()
            self.work.set()
        elif isinstance(msg, ActionMsg):
            # NOTE not `world is None`: the world is built while the first reset runs
            if not self.reset_requested:
                self.send_control(protocol.error_message(
                    "not_reset", "send a reset message (start image + prompt) before actions", ref="action"))
                return
            if self.pending_action is not None:
                self.coalesced += 1
            else:
                self.action_since = time.perf_counter()
            self.pending_action = protocol.coalesce(self.pending_action, msg)
            self.work.set()


# ---- the app -------------------------------------------------------------------------------------


class PlayServer:
    """Shared state: the model bundle, the session table, the worker pool, start images."""

    def __init__(self, bundle, cfg: ServeConfig, session_cfg):
        self.bundle = bundle  # InferenceBundle: weights shared read-only by every session
        self.cfg = cfg
        self.session_cfg = session_cfg  # infer.config.SessionConfig: clip schedule, frame size, fps
        self.sessions: dict[int, PlaySession] = {}
        self._next_id = 0
        self.pool = ThreadPoolExecutor(max_workers=cfg.generation_workers, thread_name_prefix="ws-gen",
                                       initializer=_set_threads, initargs=(cfg.dit_threads,))
        # next_frames + JPEG encoding: one collector at a time per session, never on the generation thread
        self.collect_pool = ThreadPoolExecutor(max_workers=cfg.max_sessions, thread_name_prefix="ws-collect")
        self.starts = StartImages(cfg.builtins, session_cfg.height, session_cfg.width, cfg.cache_dir)

    def new_world_session(self):
        from worldstream.infer.session import WorldSession

        return WorldSession(self.bundle, self.session_cfg)

    def status(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "max_sessions": self.cfg.max_sessions,
                "per_session": [s.stats() for s in self.sessions.values()]}

    def hello(self, sid: int) -> dict[str, Any]:
        from worldstream.data.actions import KEYS

        sc = self.session_cfg
        return {
            "type": "hello",
            "version": protocol.PROTOCOL_VERSION,
            "session": sid,
            "height": sc.height,
            "width": sc.width,
            "fps": sc.fps,
            "frames_per_clip": sc.step_frames,
            "first_clip_frames": sc.first_step_frames,
            "keys": list(KEYS),
            "mouse_limit": self.cfg.protocol.mouse_limit,
            "builtins": self.starts.names,
            "model": {"source": str(getattr(self.bundle, "source", "")),
                      "random_init": bool(getattr(self.bundle, "random_init", False)),
                      "sampler": sc.sampler, "steps": sc.steps, "memory": sc.use_memory, "int8": sc.int8,
                      "light_vae": sc.light_vae, "async_decode": sc.async_decode},
            "limits": {"max_message_bytes": self.cfg.protocol.max_message_bytes,
                       "max_image_bytes": self.cfg.protocol.max_image_bytes,
                       "max_prompt_chars": self.cfg.protocol.max_prompt_chars},
            "send_queue_clips": self.cfg.send_queue_clips,
            "max_in_flight": sc.decode_queue_size,  # clips the pipeline holds at once (DiT + decoding)
        }

    def close(self) -> None:
        self.starts.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.collect_pool.shutdown(wait=False, cancel_futures=True)
        for sess in list(self.sessions.values()):  # still connected at exit: stop their decode workers
            if sess.world is not None:
                sess.world.close()


def _set_threads(threads: int | None) -> None:
    """Generation-thread initialiser: its intra-op threads (torch's setting is per thread with OpenMP)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _same_origin(headers) -> bool:
    """True when the websocket comes from our own page (or from a non-browser client: no Origin)."""
    origin = headers.get("origin")
    if origin is None:
        return True
    host = headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()


def create_app(bundle, session_cfg, cfg: ServeConfig | None = None):
    """The FastAPI app: GET / (page), /static/*, /builtin/<name>.png|.json, /api/status, WS /ws.

    NOTE FastAPI resolves the endpoints' (string) annotations in this module's globals: WebSocket must be
    imported at module level, or the websocket parameter is taken for a query parameter (HTTP 403).
    """
    cfg = cfg or ServeConfig()
    state = PlayServer(bundle, cfg, session_cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if cfg.prerender_builtins:
            state.starts.prerender()
        yield
        state.close()

    app = FastAPI(title="worldstream play", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.play = state

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/")
    async def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/api/status")
    async def status():
        return JSONResponse(state.status())

    @app.get("/api/builtins")
    async def builtins():
        return JSONResponse({"builtins": state.starts.names})

    @app.get("/builtin/{name}.png")
    async def builtin_png(name: str):
        frame, _ = await _builtin(name)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/builtin/{name}.json")
    async def builtin_json(name: str):
        _, prompt = await _builtin(name)
        return JSONResponse({"name": name, "prompt": prompt})

    async def _builtin(name: str):
        try:
            return await state.starts.aget(name)
        except KeyError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None

    @app.websocket("/ws")
    async def ws_endpoint(websocket: WebSocket):
        if not _same_origin(websocket.headers):
            await websocket.accept()
            await websocket.close(code=CLOSE_POLICY, reason="cross-origin websocket refused")
            return
        # NOTE check and register without an await in between: the slot cannot be taken twice
        if len(state.sessions) >= cfg.max_sessions:
            await websocket.accept()
            reason = f"busy: all {cfg.max_sessions} sessions are in use; try again later"
            await websocket.send_text(protocol.dumps(protocol.error_message("busy", reason)))
            await websocket.close(code=CLOSE_BUSY, reason=reason)
            return
        sid = state._next_id
        state._next_id += 1
        sess = PlaySession(state, sid)
        state.sessions[sid] = sess
        tasks: list[asyncio.Task] = []
        try:
            await websocket.accept()
            sess.send_control(state.hello(sid))
            tasks = [asyncio.create_task(sess.sender(websocket)), asyncio.create_task(sess.generator())]
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                sess.receive(data if data is not None else (message.get("bytes") or b""))
                for t in tasks:  # a crashed sender/generator ends the session loudly
                    if t.done() and t.exception() is not None:
                        raise t.exception()
        except WebSocketDisconnect:
            pass
        finally:
            tasks += list(sess.collectors)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            with contextlib.suppress(Exception):
                await sess.close_world()
            del state.sessions[sid]

    return app


def bind_socket(cfg: ServeConfig) -> socket.socket:
    """The listening socket (host, port; port 0 picks a free one) with the bounded send buffer.

    Accepted connections inherit SO_SNDBUF from the listening socket; pass it to
    `uvicorn.Server.run(sockets=[sock])`.
    """
    infos = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise ValueError(f"cannot resolve host {cfg.host!r}")
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.socket_send_buffer)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app, cfg: ServeConfig, log_level: str = "warning"):
    """The uvicorn settings `worldstream play` and the tests share."""
    import uvicorn

    # NOTE no per-message deflate: JPEG frames do not compress, it would only cost CPU
    return uvicorn.Config(app, host=cfg.host, port=cfg.port, ws_max_size=cfg.ws_max_size,
                          ws_per_message_deflate=False, log_level=log_level, lifespan="on", access_log=False)
