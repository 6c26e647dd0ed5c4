"""Async VAE decoding: `AsyncDecoder`, a worker process that owns the decoder and its `DecodeCache`.

MG3 (facts 5.7, `--use_async_vae`): a `spawn` process on the GPU after the DiT ranks loads its own VAE from
the same config, keeps its own 32-slot cache and takes latents from a bounded queue (maxsize 2), so the DiT
samples clip k+1 while clip k decodes. Ours keeps that shape and adds:

* The decoder is built in the worker from the parent's decoding VAE (config + state dict, sent once per
  worker start; the encoder never leaves the parent), on `worker_device` (CPU sessions: the CPU; CUDA: the
  GPU index after the DiT ranks, as MG3's test.sh).
* Frames come back as uint8 through shared-memory slots (`queue_size + 2` of them, reused round-robin):
  the out-queue only carries a small message (slot, frame count, seconds), which a pipe writes atomically,
  so a worker killed at any moment never leaves a half-written message behind. Latents go in as numpy.
* Crash recovery (MG3 has none): a dead worker (poll while waiting) or an exception it reports is
  surfaced as a `DecodeWorkerWarning` (and in `restarts`), and a fresh worker is started with a backlog:
  first the already returned latents that the decoder's causal history still depends on, decoded with
  their output discarded (`decoder_history_latents`: the temporal receptive field, 36 latents for the
  nano decoder), then every clip that was submitted but not returned. The decoder is causal with a finite
  receptive field, so the rebuilt cache is the lost one and the re-decoded frames are the frames the old
  worker would have made (bit for bit in the tests): no visible glitch. `max_restarts` consecutive
  crashes without a decoded clip raise (a deterministic failure must not loop forever).
* Threads: on a CPU the two processes split the cores (`split_threads`: 1 + 1 on 2 cores). Measured here:
  two 2-thread processes on 2 cores run slower than one (OpenMP threads wait for each other).
* Shutdown: `close()` sets a stop event and sends a sentinel, joins with a timeout, then terminates (and
  kills); the worker also exits when its parent dies. A finaliser closes forgotten decoders.

One producer thread may `submit` while one consumer thread `get`s (the session's pipelined mode).
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as _mp
import queue
import threading
import time
import traceback
import warnings
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as tmp

from worldstream.model.vae import VAE, CausalConv3d, LightVAE, Resample, VAEConfig

__all__ = ["DecodeWorkerConfig", "DecodeWorkerWarning", "AsyncDecoder", "decoder_history_latents",
           "split_threads", "worker_device"]


class DecodeWorkerWarning(UserWarning):
    """The decode worker crashed (or raised) and was restarted."""


@dataclass(frozen=True)
class DecodeWorkerConfig:
    queue_size: int = 2  # bound of the latents-in and the frames-out queue (official latent queue: 2)
    threads: int | None = None  # worker intra-op threads (None: torch's default in the worker)
    device: str = "cpu"  # worker device, e.g. "cpu", "cuda:7" (see `worker_device`)
    segment_size: int = 4  # latents per decoder call (official WAN_VAE_SEGMENT_SIZE)
    max_restarts: int = 3  # consecutive crashes without a decoded clip before giving up
    poll_s: float = 0.05  # liveness check interval while waiting on a queue (worker and parent)
    join_timeout_s: float = 5.0  # close(): wait this long for a clean exit before terminate()
    start_method: str = "spawn"  # NOTE fork would copy the parent's OpenMP/CUDA state (MG3: spawn)

    def __post_init__(self):
        if self.queue_size < 1:
            raise ValueError(f"DecodeWorkerConfig: queue_size must be >= 1, got {self.queue_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"DecodeWorkerConfig: threads must be >= 1 or None, got {self.threads}")
        if self.segment_size < 1 or self.max_restarts < 0 or not self.poll_s > 0:
            raise ValueError(f"DecodeWorkerConfig: need segment_size >= 1, max_restarts >= 0, poll_s > 0; "
                             f"got {self.segment_size}, {self.max_restarts}, {self.poll_s}")

    @property
    def frame_slots(self) -> int:
        """Shared frame buffers: the out-queue's messages + the one being copied + the one being written."""
        return self.queue_size + 2


########################################################################################################
# Helpers


def decoder_history_latents(vae: VAE) -> int:
    """Latents of past input the decoder's streaming state depends on (its temporal receptive field).

    Walks the causal convs in forward order (registration order, as the cache slots): a conv with
    `time_pad` frames of history at `rate` frames per latent reaches back time_pad / rate latents; an
    upsample3d time conv doubles the rate after it. The chain through every conv is the longest path
    (shortcuts only skip convs). Nano decoder: 2 + 8 + 12 + 2 + 6 + 1 + 3 + 0.5 -> 36 with the margin.
    """
    doubling = {id(m.time_conv) for m in vae.decoder.modules()
                if isinstance(m, Resample) and m.mode == "upsample3d"}
    rate, reach = 1, 0.0
    for m in vae.decoder.modules():
        if isinstance(m, CausalConv3d) and m.time_pad > 0:
            reach += m.time_pad / rate
            if id(m) in doubling:
                rate *= 2
    return math.ceil(reach) + 1  # + 1: the cached frames sit inside the last latent


def split_threads(total: int, dit: int | None = None, decode: int | None = None) -> tuple[int, int]:
    """(DiT threads, decoder threads) on `total` cores: unset ones share the cores (decoder half, >= 1)."""
    if decode is None:
        decode = max(1, total // 2) if dit is None else max(1, total - dit)
    if dit is None:
        dit = max(1, total - decode)
    return dit, decode


def worker_device(main: torch.device | str, setting: str = "auto", dit_world_size: int | None = None,
                  device_count: int | None = None) -> torch.device:
    """Where the decoder runs. "auto": the CPU for CPU sessions; on CUDA the GPU after the DiT ranks
    (index = DiT world size, MG3's test.sh: 7 DiT GPUs + the VAE on GPU 7) when it exists, else the DiT's."""
    main = torch.device(main)
    if setting != "auto":
        return torch.device(setting)
    if main.type != "cuda":
        return main
    if dit_world_size is None:
        dist = torch.distributed
        dit_world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if device_count is None:
        device_count = torch.cuda.device_count()
    return torch.device("cuda", dit_world_size) if dit_world_size < device_count else main


def _pack(latents: torch.Tensor) -> tuple[np.ndarray, str]:
    """Latents -> (numpy array, torch dtype name); bf16 travels as its int16 bit pattern."""
    x = latents.detach().to("cpu").contiguous()
    name = str(x.dtype).removeprefix("torch.")
    return (x.view(torch.int16) if x.dtype == torch.bfloat16 else x).numpy().copy(), name


def _unpack(arr: np.ndarray, name: str) -> torch.Tensor:
    x = torch.from_numpy(arr)
    return x.view(torch.bfloat16) if name == "bfloat16" else x


@dataclass(frozen=True)
class _Item:
    """One decode request, kept by the parent until its frames are returned (and then as history)."""

    seq: int
    clip: int
    latents: np.ndarray
    dtype: str
    first_chunk: bool
    num_latents: int
    num_frames: int

    def message(self, emit: bool) -> tuple:
        return ("decode", self.seq, self.latents, self.dtype, self.first_chunk, emit)


@dataclass(frozen=True)
class _WorkerSpec:
    """What a worker needs to build its decoder (pickled once per worker start)."""

    vae_cfg: VAEConfig
    state: dict[str, torch.Tensor]  # conv2.* and decoder.* of the decoding VAE, on the CPU
    dtype: str
    channels_last: bool
    device: str
    threads: int | None
    segment_size: int
    poll_s: float


########################################################################################################
# Worker process


def _parent_alive() -> bool:
    parent = _mp.parent_process()
    return parent is None or parent.is_alive()


def _build_decoder(spec: _WorkerSpec) -> VAE:
    """The decoding VAE from the parent's state dict (the encoder is never materialised)."""
    with torch.device("meta"):
        vae = VAE(spec.vae_cfg)
    need = {k for k in vae.state_dict() if k.startswith(("conv2.", "decoder."))}
    if set(spec.state) != need:
        missing, unexpected = sorted(need - set(spec.state)), sorted(set(spec.state) - need)
        raise ValueError(f"decode worker: state dict keys differ from the decoder's: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    vae.load_state_dict(spec.state, strict=False, assign=True)
    vae.encoder, vae.conv1 = None, None  # NOTE unused by stream_decode; still on the meta device
    vae = vae.to(device=spec.device, dtype=getattr(torch, spec.dtype)).eval().requires_grad_(False)
    return vae.to_channels_last() if spec.channels_last else vae


def _messages(in_q, stop, poll_s: float):
    """Messages from the parent until the sentinel, the stop event or the parent's death."""
    while not stop.is_set() and _parent_alive():
        try:
            msg = in_q.get(timeout=poll_s)
        except queue.Empty:
            continue
        if msg is None:
            return
        yield msg


def _send(out_q, msg, stop, poll_s: float) -> bool:
    while not stop.is_set() and _parent_alive():
        try:
            out_q.put(msg, timeout=poll_s)
            return True
        except queue.Full:
            continue
    return False


def _worker_main(spec: _WorkerSpec, slots: torch.Tensor, in_q, out_q, stop, backlog: list[tuple]) -> None:
    """Decode loop: build the decoder, replay the backlog, then serve the in-queue (see module docstring)."""
    from worldstream.infer.session import frames_to_uint8  # lazy: the session imports this module

    try:
        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        vae = _build_decoder(spec)
        cache = vae.new_decode_cache()
    except Exception:
        _send(out_q, ("error", -1, traceback.format_exc()), stop, spec.poll_s)
        return
    emitted = 0
    for _, seq, arr, dtype, first_chunk, emit in itertools.chain(backlog, _messages(in_q, stop, spec.poll_s)):
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                if first_chunk:
                    cache.reset()
                z = _unpack(arr, dtype).to(spec.device)
                video = vae.stream_decode(z, cache, first_chunk, spec.segment_size)  # [1, 3, F, H, W]
                frames = torch.from_numpy(frames_to_uint8(video.cpu())) if emit else None  # [F, H, W, 3]
            seconds = time.perf_counter() - t0
        except Exception:
            _send(out_q, ("error", seq, traceback.format_exc()), stop, spec.poll_s)
            return
        if frames is not None:
            slot = emitted % len(slots)
            slots[slot, : len(frames)].copy_(frames)
            emitted += 1
            if not _send(out_q, ("frames", seq, slot, len(frames), seconds), stop, spec.poll_s):
                return


########################################################################################################
# Parent side


@dataclass
class _Runtime:
    proc: Any
    in_q: Any
    out_q: Any
    stop: Any


def _shutdown(rt: _Runtime, join_timeout_s: float) -> None:
    """Stop a worker: stop event + sentinel, join with a timeout, then terminate, then kill."""
    rt.stop.set()
    try:
        rt.in_q.put_nowait(None)
    except (queue.Full, ValueError, OSError):
        pass
    rt.proc.join(join_timeout_s)
    if rt.proc.is_alive():
        rt.proc.terminate()
        rt.proc.join(1.0)
    if rt.proc.is_alive():
        rt.proc.kill()
        rt.proc.join()
    for q in (rt.in_q, rt.out_q):
        q.cancel_join_thread()  # NOTE never block the parent on flushing to a pipe nobody reads
        q.close()


def _shutdown_box(box: list, join_timeout_s: float) -> None:
    if box and box[0] is not None:
        rt, box[0] = box[0], None
        _shutdown(rt, join_timeout_s)


class AsyncDecoder:
    """Streaming VAE decode in a worker process. See the module docstring.

    vae: the parent's decoding model (`VAE` or `LightVAE`, whose pruned student decodes).
    frame_shape: (max frames per request, H, W) of the decoded video (sizes the shared frame slots).
    """

    def __init__(self, vae: VAE | LightVAE, frame_shape: tuple[int, int, int],
                 cfg: DecodeWorkerConfig = DecodeWorkerConfig()):
        dec = vae.student if isinstance(vae, LightVAE) else vae
        self.cfg = cfg
        self.vae_cfg = dec.cfg
        # decoder weights, copied once to the CPU (the copy is shared with every worker we start)
        state = {k: v.detach().to("cpu", copy=True) for k, v in dec.state_dict().items()
                 if k.startswith(("conv2.", "decoder."))}
        convs = [m for m in dec.decoder.modules() if isinstance(m, torch.nn.Conv3d) and m.weight.shape[2] > 1]
        channels_last = bool(convs) and convs[0].weight.is_contiguous(memory_format=torch.channels_last_3d) \
            and not convs[0].weight.is_contiguous()
        self._spec = _WorkerSpec(dec.cfg, state, str(dec.dtype).removeprefix("torch."), channels_last,
                                 str(torch.device(cfg.device)), cfg.threads, cfg.segment_size, cfg.poll_s)
        self.frame_shape = tuple(int(v) for v in frame_shape)
        if len(self.frame_shape) != 3 or min(self.frame_shape) < 1:
            raise ValueError(f"frame_shape must be (max_frames, H, W), got {frame_shape}")
        self._slots = torch.zeros(cfg.frame_slots, *self.frame_shape, 3, dtype=torch.uint8).share_memory_()
        self.history_latents = decoder_history_latents(dec)
        self.restarts: list[str] = []  # reason of every restart, oldest first
        self.last_decode_s = 0.0  # worker seconds of the last returned request
        self._lock = threading.Lock()
        self._inflight: deque[_Item] = deque()  # submitted, frames not returned yet (decode order)
        self._history: deque[_Item] = deque()  # returned, still inside the decoder's receptive field
        self._history_latents = 0
        self._seq = itertools.count()
        self._gen = 0  # worker generation: bumped by every restart
        self._failures = 0  # consecutive restarts without a returned request
        self._broken: str | None = None
        self._box: list[_Runtime | None] = [self._start([])]
        self._finalizer = weakref.finalize(self, _shutdown_box, self._box, cfg.join_timeout_s)

    # ---- state --------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        rt = self._box[0]
        return None if rt is None else rt.proc.pid

    @property
    def pending(self) -> int:
        """Requests submitted whose frames have not been returned by `get`."""
        return len(self._inflight)

    @property
    def closed(self) -> bool:
        return self._box[0] is None

    def _runtime(self) -> _Runtime:
        if self._broken is not None:
            raise RuntimeError(f"decode worker gave up after {len(self.restarts)} restarts: {self._broken}")
        rt = self._box[0]
        if rt is None:
            raise RuntimeError("AsyncDecoder is closed")
        return rt

    # ---- worker lifecycle ---------------------------------------------------------------------------
    def _start(self, backlog: list[tuple]) -> _Runtime:
        ctx = tmp.get_context(self.cfg.start_method)
        in_q, out_q, stop = ctx.Queue(self.cfg.queue_size), ctx.Queue(self.cfg.queue_size), ctx.Event()
        proc = ctx.Process(target=_worker_main, args=(self._spec, self._slots, in_q, out_q, stop, backlog),
                           name="worldstream-vae-decode", daemon=True)
        proc.start()
        return _Runtime(proc, in_q, out_q, stop)

    def _restart_locked(self, reason: str) -> None:
        """Replace the worker (caller holds the lock): replay the history, resubmit what is in flight."""
        self._failures += 1
        self.restarts.append(reason)
        warnings.warn(f"decode worker restarted ({self._failures} in a row): {reason}", DecodeWorkerWarning,
                      stacklevel=4)
        old, self._box[0] = self._box[0], None
        if old is not None:
            _shutdown(old, self.cfg.join_timeout_s)
        if self._failures > self.cfg.max_restarts:
            self._broken = reason
            raise RuntimeError(f"decode worker failed {self._failures} times without decoding a clip: "
                               f"{reason}")
        backlog = [it.message(emit=False) for it in self._history] + [it.message(emit=True)
                                                                       for it in self._inflight]
        self._gen += 1
        self._box[0] = self._start(backlog)

    def _remember(self, item: _Item) -> None:
        """Keep returned requests while the decoder state can still depend on them."""
        if item.first_chunk:
            self._history.clear()
            self._history_latents = 0
        self._history.append(item)
        self._history_latents += item.num_latents
        while len(self._history) > 1 and self._history_latents - self._history[0].num_latents \
                >= self.history_latents:
            self._history_latents -= self._history.popleft().num_latents

    # ---- API ----------------------------------------------------------------------------------------
    def submit(self, latents: torch.Tensor, first_chunk: bool, clip_idx: int = -1,
               timeout: float | None = None) -> int:
        """Queue latents [1, z_dim, n, h, w] for decoding -> request id.

        first_chunk: start of a video (the worker resets its cache). Blocks while the in-queue is full;
        raises queue.Full after `timeout` seconds.
        """
        c, s, t = self.vae_cfg.z_dim, self.vae_cfg.spatial_stride, self.vae_cfg.temporal_stride
        if latents.ndim != 5 or latents.shape[0] != 1 or latents.shape[1] != c or latents.shape[2] < 1:
            raise ValueError(f"latents must be [1, {c}, n, h, w] with n >= 1, got {list(latents.shape)}")
        n, h, w = latents.shape[2:]
        frames = t * n - (t - 1 if first_chunk else 0)
        if frames > self.frame_shape[0] or (h * s, w * s) != self.frame_shape[1:]:
            raise ValueError(f"latents {list(latents.shape)} decode to {frames} frames of {h * s}x{w * s}; "
                             f"this decoder was sized for <= {self.frame_shape[0]} frames of "
                             f"{self.frame_shape[1]}x{self.frame_shape[2]}")
        arr, dtype = _pack(latents)
        with self._lock:
            rt, gen = self._runtime(), self._gen
            item = _Item(next(self._seq), int(clip_idx), arr, dtype, bool(first_chunk), n, frames)
            self._inflight.append(item)  # first: a restart from now on resubmits it
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                rt.in_q.put(item.message(emit=True), timeout=self.cfg.poll_s)
                return item.seq  # NOTE if a restart raced us, it already resubmitted the item
            except (queue.Full, ValueError, OSError):
                pass
            with self._lock:
                if gen != self._gen:  # restarted meanwhile: the backlog holds the item
                    return item.seq
                if not rt.proc.is_alive():
                    self._restart_locked(_death_reason(rt))
                    return item.seq
                if deadline is not None and time.monotonic() > deadline:
                    self._inflight.remove(item)
                    raise queue.Full(f"decode queue full for {timeout} s ({self.cfg.queue_size} requests "
                                     "waiting): take frames with get()")

    def get(self, timeout: float | None = None) -> np.ndarray:
        """Frames of the oldest pending request, uint8 [F, H, W, 3]; restarts a crashed worker on the way.
        Raises TimeoutError after `timeout` seconds (None: wait as long as the worker lives)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                rt, gen = self._runtime(), self._gen
                if not self._inflight:
                    raise RuntimeError("AsyncDecoder.get: nothing submitted")
            try:
                msg = rt.out_q.get(timeout=self.cfg.poll_s)
            except queue.Empty:
                with self._lock:
                    if gen == self._gen and not rt.proc.is_alive():
                        self._restart_locked(_death_reason(rt))
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"no decoded frames within {timeout} s") from None
                continue
            except (EOFError, OSError, ValueError) as e:  # a queue broken by a dying worker
                with self._lock:
                    if gen == self._gen:
                        self._restart_locked(f"decode queue broken: {e!r}")
                continue
            with self._lock:
                if gen != self._gen:
                    continue  # from a replaced worker (its requests were resubmitted)
                if msg[0] == "error":
                    self._restart_locked(f"decode worker (pid {rt.proc.pid}) raised:\n{msg[2]}")
                    continue
                _, seq, slot, n, seconds = msg
                item = self._inflight.popleft()
                if item.seq != seq or item.num_frames != n:
                    raise RuntimeError(f"decode worker out of step: expected request {item.seq} "
                                       f"({item.num_frames} frames), got {seq} ({n} frames)")
                frames = self._slots[slot, :n].numpy().copy()
                self._failures, self.last_decode_s = 0, float(seconds)
                self._remember(item)
                return frames

    def reset(self) -> None:
        """New video: drop (decode and discard) pending requests and the replay history."""
        while self._inflight:
            self.get()
        with self._lock:
            self._history.clear()
            self._history_latents = 0

    def close(self) -> None:
        """Stop the worker: sentinel, join with a timeout, then terminate. Idempotent."""
        self._finalizer()

    def __enter__(self) -> AsyncDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _death_reason(rt: _Runtime) -> str:
    code = rt.proc.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return f"decode worker (pid {rt.proc.pid}) died ({how})"

