"""Async VAE decode (infer/decode.py) with real worker processes on tiny models.

Pinned: frames equal the synchronous decode bit for bit (step and pipelined submit/next_frames), a clean
close leaves no child process, a SIGKILLed or failing worker is reported and restarted with the kept
latents (frames still exact), the queues are bounded, and the cache-rebuild window is the decoder's
temporal receptive field.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_world import PROMPT, TINY_SESSION, TINY_VAE, H, W, tiny_bundle

from worldstream.infer.config import SessionConfig
from worldstream.infer.decode import (
    AsyncDecoder,
    DecodeWorkerConfig,
    DecodeWorkerWarning,
    decoder_history_latents,
    split_threads,
    worker_device,
)
from worldstream.infer.session import WorldSession, frames_to_uint8
from worldstream.model.vae import VAE

SYNC = TINY_SESSION  # synchronous decode
ASYNC = SYNC.replace(async_decode=True, decode_threads=1, dit_threads=1)
WORKER = DecodeWorkerConfig(threads=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here, as the worker: two OpenMP threads on a shared 2-core machine stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bundle():
    """Tiny DiT + LightVAE (the worker must decode with the pruned student, as the session does)."""
    return tiny_bundle(light=True)


@pytest.fixture(scope="module")
def tiny_vae():
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return VAE(TINY_VAE).init_weights().to(torch.bfloat16).eval().to_channels_last()


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)


def actions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((n, 6)) < 0.3).astype(np.float32), rng.choice([-0.1, 0.0, 0.1], (n, 2)).astype(np.float32)


def sync_frames(bundle, clips: int) -> list[np.ndarray]:
    s = WorldSession(bundle, SYNC)
    out = [s.reset(image(), PROMPT)]
    out += [s.step(*actions(s.next_step_frames, k)) for k in range(clips)]
    return out


def latent_stream(n_clips: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 8, 1 if i == 0 else 4, 2, 4, generator=g).to(torch.bfloat16) for i in range(n_clips)]


def reference_decode(vae: VAE, zs: list[torch.Tensor]) -> list[np.ndarray]:
    cache = vae.new_decode_cache()
    with torch.inference_mode():
        return [frames_to_uint8(vae.stream_decode(z, cache, i == 0)) for i, z in enumerate(zs)]


def children() -> set[int]:
    """Live child processes of this process, minus multiprocessing's resource tracker."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            kids.add(int(stat.parent.name))
    return kids - {tracker}


# ---------------------------------------------------------------------------------------------------
# no process


def test_history_latents_is_the_receptive_field(tiny_vae):
    """Replaying the last `decoder_history_latents` latents from an empty cache rebuilds the state
    exactly; 4 latents fewer do not (so the window is needed, not generous by accident)."""
    r = decoder_history_latents(tiny_vae)
    assert r == 36  # 2 + 8 + 12 + 2 + 6 + 1 + 3 + 0.5 (same structure as nano) -> 35, + 1 margin
    zs = latent_stream(13)  # 1 + 12 * 4 = 49 latents
    ref = reference_decode(tiny_vae, zs)

    def replayed(window: int) -> np.ndarray:
        cache = tiny_vae.new_decode_cache()
        past = torch.cat(zs[1:-1], 2)[:, :, -window:]
        with torch.inference_mode():
            tiny_vae.stream_decode(past, cache, first_chunk=False)
            return frames_to_uint8(tiny_vae.stream_decode(zs[-1], cache, first_chunk=False))

    assert np.array_equal(replayed(r), ref[-1])
    assert not np.array_equal(replayed(r - 4), ref[-1])


def test_thread_split_and_device_rule():
    assert split_threads(2) == (1, 1) and split_threads(8) == (4, 4) and split_threads(1) == (1, 1)
    assert split_threads(4, dit=3) == (3, 1) and split_threads(4, decode=1) == (3, 1)
    assert worker_device("cpu") == torch.device("cpu")
    # MG3 test.sh: 7 DiT ranks, the VAE on GPU 7; a single GPU is shared
    assert worker_device("cuda:0", dit_world_size=7, device_count=8) == torch.device("cuda", 7)
    assert worker_device("cuda:0", dit_world_size=1, device_count=1) == torch.device("cuda:0")
    assert worker_device("cpu", "cuda:3") == torch.device("cuda:3")


def test_config_errors():
    with pytest.raises(ValueError, match="decode_queue_size"):
        SessionConfig(decode_queue_size=0)
    with pytest.raises(ValueError, match="decode_threads"):
        SessionConfig(decode_threads=0)
    with pytest.raises(ValueError, match="queue_size"):
        DecodeWorkerConfig(queue_size=0)


# ---------------------------------------------------------------------------------------------------
# worker processes


def test_async_session_equals_sync_and_closes_cleanly(bundle):
    before = children()
    clips = 3
    ref = sync_frames(bundle, clips)
    torch.set_num_threads(2)  # the session splits the cores: 1 for the DiT, 1 for the worker
    with WorldSession(bundle, ASYNC) as s:
        # 1. step(): the frames of the requested actions, bit for bit
        out = [s.reset(image(), PROMPT)]
        out += [s.step(*actions(s.next_step_frames, k)) for k in range(clips)]
        assert all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True))
        assert torch.get_num_threads() == 1  # dit_threads while the worker runs
        assert "decode_wait" in s.info.timings and s.info.decode_restarts == ()
        pid = s._decoder.pid
        assert pid in children() - before
        # 2. pipelined: a consumer thread takes frames while this thread submits (same worker, new video)
        got: list[np.ndarray] = [s.reset(image(), PROMPT)]
        room, submitted = threading.Semaphore(ASYNC.decode_queue_size), threading.Semaphore(0)

        def consume():
            for _ in range(clips):
                assert submitted.acquire(timeout=60)
                got.append(s.next_frames(timeout=60))
                room.release()

        consumer = threading.Thread(target=consume)
        consumer.start()
        for k in range(clips):
            assert room.acquire(timeout=60)
            s.submit(*actions(s.next_step_frames, k))
            submitted.release()
        consumer.join(60)
        assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
        with pytest.raises(RuntimeError, match="no clip submitted"):
            s.next_frames()
    # 3. close(): the worker is joined (no child left, no zombie) and the thread count restored
    assert children() - before == set()
    assert not Path(f"/proc/{pid}").exists()
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    s.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        s.step(*actions(s.next_step_frames, 0))


def test_killed_worker_is_restarted_and_the_session_survives(bundle):
    """SIGKILL with a clip in flight, once early (history replayed from the video start) and once after
    the history window was trimmed (replay from an empty cache): both re-decode the exact frames."""
    clips = 10  # 6 + 9 * 4 = 42 latents > the 36-latent window
    ref = sync_frames(bundle, clips)
    with WorldSession(bundle, ASYNC) as s:
        out = [s.reset(image(), PROMPT)]
        for k in range(clips):
            s.submit(*actions(s.next_step_frames, k))
            if k in (2, clips - 1):
                os.kill(s._decoder.pid, signal.SIGKILL)
                with pytest.warns(DecodeWorkerWarning, match="killed by signal 9"):
                    out.append(s.next_frames(timeout=60))
            else:
                out.append(s.next_frames(timeout=60))
        assert len(s.info.decode_restarts) == 2 and "signal 9" in s.info.decode_restarts[0]
        assert all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True))
        s.step(*actions(s.next_step_frames, 99))  # and it keeps going


def test_worker_exception_is_reported_then_gives_up(tiny_vae):
    """An exception in the worker (here: it cannot build its decoder) comes back with its traceback,
    triggers restarts, and after max_restarts consecutive failures surfaces as an error."""
    dec = AsyncDecoder(tiny_vae, (16, H, W), dataclasses.replace(WORKER, max_restarts=1))
    try:
        zs = latent_stream(2)
        dec.submit(zs[0], first_chunk=True)
        dec.get(timeout=60)
        state = dict(dec._spec.state)
        state.pop(next(iter(state)))  # the next worker gets an incomplete state dict
        dec._spec = dataclasses.replace(dec._spec, state=state)
        os.kill(dec.pid, signal.SIGKILL)
        dec.submit(zs[1], first_chunk=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError, match="2 times without decoding"):
                dec.get(timeout=60)
        reasons = [str(w.message) for w in caught if issubclass(w.category, DecodeWorkerWarning)]
        assert "signal 9" in reasons[0] and "state dict keys differ" in reasons[1]
        with pytest.raises(RuntimeError, match="gave up"):
            dec.submit(zs[1], first_chunk=False)
    finally:
        dec.close()
    assert dec.closed


def test_queues_are_bounded(tiny_vae):
    zs = latent_stream(8)
    ref = reference_decode(tiny_vae, zs)
    with AsyncDecoder(tiny_vae, (16, H, W), dataclasses.replace(WORKER, queue_size=1)) as dec:
        dec.submit(zs[0], first_chunk=True)
        out = [dec.get(timeout=60)]  # the worker is up
        accepted = 0
        with pytest.raises(queue.Full, match="take frames with get"):
            for z in zs[1:]:
                dec.submit(z, first_chunk=False, timeout=0.5)
                accepted += 1
        # in-queue 1 + the worker's request + out-queue 1: the rest waits for get()
        assert 1 <= accepted <= 3 and dec.pending == accepted
        out += [dec.get(timeout=60) for _ in range(accepted)]
        assert all(np.array_equal(a, b) for a, b in zip(out, ref))
        with pytest.raises(ValueError, match="sized for"):
            dec.submit(torch.zeros(1, 8, 5, 2, 4), first_chunk=False)  # 20 frames > 16


def test_session_runs_at_most_queue_size_clips_ahead(bundle):
    s = WorldSession(bundle, SYNC)  # the guard is the same in both modes
    s.reset(image(), PROMPT)
    for k in range(SYNC.decode_queue_size):
        s.submit(*actions(s.next_step_frames, k))
    with pytest.raises(RuntimeError, match="wait for next_frames"):
        s.submit(*actions(s.next_step_frames, 9))
    with pytest.raises(RuntimeError, match="wait for next_frames"):
        s.step(*actions(s.next_step_frames, 9))
    assert s.pending == 2 and len(s.next_frames()) == SYNC.first_step_frames and s.pending == 1
