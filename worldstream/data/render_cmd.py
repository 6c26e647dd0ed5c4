"""`worldstream data render`: render worlds into clip shards, deterministically, in parallel, resumably.

Notable:
* Determinism per (seed, shard index): clip g of the dataset (g = world * clips_per_world + clip,
  world-major) gets world_seed = H(seed, "world", world) and clip_seed = H(seed, "clip", world, clip)
  with H a 31-bit blake2b hash; shard i holds the contiguous block g in [i*n//S, (i+1)*n//S). So a
  shard's content depends only on the dataset config, never on worker count, scheduling or which
  shards already exist (consecutive clips of one world land in one shard: the renderer reuses it).
* Parallel: a `spawn` process pool; each worker renders whole shards and keeps its process
  (and with it the engine's GL context) for all the shards it is given. With one worker everything
  runs in this process.
* Resumable: shards are written atomically (`shard-XXXXXX.tar.tmp-<pid>` + os.replace) and indexed
  in index.json; a re-run skips every shard that is in the index with the right size, or that
  verifies (decodes, expected keys), and renders only the rest. A run with a different config into
  the same directory is refused, naming the differing fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import multiprocessing as mp
import os
import queue as queue_mod
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldstream.data.shards import (
    INDEX_NAME,
    ShardConfig,
    ShardError,
    ShardInfo,
    list_shards,
    load_index,
    record_shard,
    shard_index,
    shard_name,
    verify_shard,
    write_index,
    write_shard,
)
from worldstream.utils.io import json_default, remove_stale_temps

SEED_BITS = 31  # derived seeds fit a signed int32 (GL / numpy friendly)
MIN_SIZE, MAX_SIZE = 8, 4096  # accepted frame height/width range in pixels
POLL_SECONDS = 0.2  # how often the parent drains worker progress messages
RENDERER = "worldstream.data.engine:render_clip"  # "module:function" (world_seed, clip_seed, cfg) -> Clip


# -------------------------------------------------------------------------------------------------
# the plan: which clips go into which shard


def derive_seed(*parts: Any) -> int:
    """Stable 31-bit seed from its parts (independent of Python's hash randomisation and numpy)."""
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % (1 << SEED_BITS)


@dataclass(frozen=True)
class ClipSpec:
    key: str
    world_index: int
    clip_index: int
    world_seed: int
    clip_seed: int


@dataclass(frozen=True)
class RenderPlan:
    seed: int = 0
    worlds: int = 4
    clips_per_world: int = 2
    shards: int = 2
    frames: int = 97  # frames per clip (the engine's default: MG3's first clip 57 + one later clip 40)
    height: int = 96  # nano preset resolution (SPEC: ~96x160)
    width: int = 160
    video_format: str = "npz"

    @property
    def total_clips(self) -> int:
        return self.worlds * self.clips_per_world

    def validate(self) -> RenderPlan:
        def positive(name: str, value: int) -> None:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")

        for name in ("worlds", "clips_per_world", "shards", "frames"):
            positive(name, getattr(self, name))
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if not MIN_SIZE <= v <= MAX_SIZE:
                raise ValueError(f"--size: {name} must be in [{MIN_SIZE}, {MAX_SIZE}] px, got {v}")
        if self.shards > self.total_clips:
            raise ValueError(f"--shards {self.shards} exceeds the number of clips {self.total_clips} "
                             f"(= --worlds {self.worlds} x --clips-per-world {self.clips_per_world}): "
                             "every shard must hold at least one clip")
        if self.video_format not in ("npz", "mp4"):
            raise ValueError(f"--video-format must be npz or mp4, got {self.video_format!r}")
        if self.video_format == "mp4" and (self.height % 2 or self.width % 2):
            raise ValueError(f"--video-format mp4 needs an even --size, got {self.height}x{self.width}")
        return self

    def clip_spec(self, g: int) -> ClipSpec:
        world, clip = divmod(g, self.clips_per_world)
        return ClipSpec(key=f"w{world:06d}_c{clip:04d}", world_index=world, clip_index=clip,
                        world_seed=derive_seed(self.seed, "world", world),
                        clip_seed=derive_seed(self.seed, "clip", world, clip))

    def shard_clips(self, index: int) -> list[ClipSpec]:
        if not 0 <= index < self.shards:
            raise ValueError(f"shard index {index} outside [0, {self.shards})")
        n = self.total_clips
        return [self.clip_spec(g) for g in range(index * n // self.shards, (index + 1) * n // self.shards)]


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if m is None:
        raise ValueError(f"--size must look like HxW (e.g. 96x160), got {text!r}")
    return int(m.group(1)), int(m.group(2))


# -------------------------------------------------------------------------------------------------
# rendering shards (runs in worker processes)


def load_renderer(spec: str = RENDERER) -> tuple[Callable, Any]:
    """(render_clip, EngineConfig class) from a "module:function" spec."""
    import importlib

    module_name, func_name = spec.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name), getattr(module, "EngineConfig", None)


def engine_config(plan: RenderPlan, renderer: str = RENDERER) -> Any:
    _, config_cls = load_renderer(renderer)
    if config_cls is None:
        raise ValueError(f"renderer module of {renderer} has no EngineConfig")
    return dataclasses.replace(config_cls(), height=plan.height, width=plan.width, num_frames=plan.frames)


def dataset_config(plan: RenderPlan, cfg: Any) -> dict[str, Any]:
    """What index.json records for the whole dataset; a resume must match it exactly."""
    import json

    engine = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    # normalise through JSON (tuples -> lists) so it compares equal to what was read back
    engine = json.loads(json.dumps(engine, default=json_default, sort_keys=True))
    layout = "world-major, contiguous blocks per shard"
    return {**dataclasses.asdict(plan), "engine": engine, "layout": layout}


def shard_config(plan: RenderPlan, index: int) -> dict[str, Any]:
    """index.json `config` of one shard: its index and (world_seed, clip_seed) pairs."""
    return {"index": index, "pairs": [[s.world_seed, s.clip_seed] for s in plan.shard_clips(index)]}


def render_shard(out: Path, plan: RenderPlan, index: int, cfg: Any, renderer: str = RENDERER,
                 on_clip: Callable[[], None] | None = None) -> ShardInfo:
    """Render and atomically write shard `index`; returns its index.json entry."""
    render_clip, _ = load_renderer(renderer)
    specs = plan.shard_clips(index)

    def clips() -> Iterator:
        for spec in specs:
            clip = render_clip(spec.world_seed, spec.clip_seed, cfg)
            clip.key = spec.key
            clip.world_seed = spec.world_seed
            clip.meta.setdefault("clip_seed", spec.clip_seed)
            yield clip
            if on_clip is not None:
                on_clip()

    fmt = ShardConfig(video_format=plan.video_format)
    return write_shard(out / shard_name(index), clips(), fmt, shard_config(plan, index))


_PROGRESS: Any = None  # worker-side progress queue (set by the pool initializer)


def _worker_init(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def _worker_job(job: tuple[str, RenderPlan, int, Any, str]) -> tuple[int, dict[str, Any]]:
    out, plan, index, cfg, renderer = job
    info = render_shard(Path(out), plan, index, cfg, renderer, on_clip=lambda: _PROGRESS.put(1))
    return index, info.to_json()


# -------------------------------------------------------------------------------------------------
# the whole dataset


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def pending_shards(out: Path, plan: RenderPlan, dataset: dict[str, Any],
                   log: Callable[[str], None]) -> list[int]:
    """Shard indices still to render; adopts complete shards missing from the index, drops bad ones."""
    index = load_index(out)
    if index["dataset"]:
        diffs = _config_diff(index["dataset"], dataset)
        if diffs:
            raise ValueError(f"{out} already holds a dataset rendered with another config "
                             f"({'; '.join(diffs)}); render into a new --out directory")
    else:
        index["dataset"] = dataset
    stray = [p.name for p in list_shards(out) if shard_index(p) >= plan.shards]
    if stray:
        raise ValueError(f"{out} holds shards beyond --shards {plan.shards}: {stray[:3]}; use a new --out")
    todo, changed = [], False
    for i in range(plan.shards):
        path = out / shard_name(i)
        entry = index["shards"].get(path.name)
        if path.exists() and entry is not None and entry.get("bytes") == path.stat().st_size:
            continue
        if path.exists():  # complete (atomic) but not indexed, e.g. killed between write and index update
            try:
                info = verify_shard(path, [s.key for s in plan.shard_clips(i)])
                info = dataclasses.replace(info, config=shard_config(plan, i))
                index["shards"][path.name] = info.to_json()
                changed = True
                log(f"adopted existing {path.name} ({info.samples} clips)")
                continue
            except ShardError as e:
                log(f"re-rendering {path.name}: {e}")
                path.unlink()
        if entry is not None:
            del index["shards"][path.name]
            changed = True
        todo.append(i)
    if changed or not (out / INDEX_NAME).exists():
        write_index(out, index)
    return todo


def render_dataset(out: str | Path, plan: RenderPlan, workers: int = 1, renderer: str = RENDERER,
                   progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Render every missing shard of `plan` into `out`. Returns a summary dict."""
    from tqdm import tqdm

    plan.validate()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {workers!r}")
    cfg = engine_config(plan, renderer)  # validates the engine side (sizes, frames) before touching disk
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --out {out}: {e.strerror or e}") from e
    removed = remove_stale_temps(out)  # shards and index.json of killed runs
    if removed:
        log(f"removed {len(removed)} stale temp file(s) of killed renders")

    dataset = dataset_config(plan, cfg)
    todo = pending_shards(out, plan, dataset, log)
    skipped = plan.shards - len(todo)
    n_clips = sum(len(plan.shard_clips(i)) for i in todo)
    t0 = time.perf_counter()
    bar = tqdm(total=n_clips, unit="clip", desc=f"render {out.name}", disable=not progress or not todo,
               file=sys.stderr, dynamic_ncols=True)
    workers = min(workers, len(todo)) if todo else 1
    try:
        if workers == 1:
            for i in todo:
                info = render_shard(out, plan, i, cfg, renderer, on_clip=lambda: bar.update(1))
                record_shard(out, shard_name(i), info, dataset)
        else:
            _render_pool(out, plan, todo, cfg, renderer, workers, bar, dataset)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    index = load_index(out)
    summary = {"out": str(out), "shards_rendered": len(todo), "shards_skipped": skipped,
               "clips_rendered": n_clips, "seconds": seconds,
               "clips_total": sum(e["samples"] for e in index["shards"].values()),
               "frames_total": sum(e["frames"] for e in index["shards"].values())}
    return summary


def _render_pool(out: Path, plan: RenderPlan, todo: list[int], cfg: Any, renderer: str, workers: int,
                 bar: Any, dataset: dict[str, Any]) -> None:
    # NOTE spawn, not fork: a forked child would inherit the parent's GL/EGL state. A process pool
    # executor (not multiprocessing.Pool) so a crashed worker raises BrokenProcessPool instead of
    # leaving its shard's result pending forever.
    ctx = mp.get_context("spawn")
    progress = ctx.Queue()

    def drain() -> None:
        while True:
            try:
                bar.update(progress.get_nowait())
            except queue_mod.Empty:
                return

    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(progress,)) as ex:
        futures = {ex.submit(_worker_job, (str(out), plan, i, cfg, renderer)): i for i in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                i = futures[future]
                try:
                    _, entry = future.result()
                except BrokenProcessPool as e:
                    raise RuntimeError("a render worker died (killed, or crashed in native code); finished "
                                       "shards are kept, re-run the command to resume") from e
                except Exception as e:
                    ex.shutdown(wait=False, cancel_futures=True)
                    raise RuntimeError(f"rendering {shard_name(i)} failed in a worker: {type(e).__name__}: "
                                       f"{e}; finished shards are kept, re-run to resume") from e
                record_shard(out, shard_name(i), ShardInfo(**entry), dataset)
        drain()


# -------------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = RenderPlan()
    p.add_argument("--out", type=Path, required=True, help="dataset directory (created; re-run to resume)")
    p.add_argument("--worlds", type=int, default=d.worlds, help="number of worlds")
    p.add_argument("--clips-per-world", type=int, default=d.clips_per_world, help="clips rendered per world")
    p.add_argument("--shards", type=int, default=d.shards, help="number of tar shards")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per clip")
    p.add_argument("--size", default=f"{d.height}x{d.width}", help="frame size HxW in pixels")
    p.add_argument("--seed", type=int, default=d.seed, help="dataset seed (worlds and clips derive from it)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                   help="parallel render processes (each renders whole shards)")
    p.add_argument("--video-format", choices=("npz", "mp4"), default=d.video_format,
                   help="npz: lossless frames; mp4: lossy H.264, ~15x smaller than npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    height, width = parse_size(args.size)
    plan = RenderPlan(seed=args.seed, worlds=args.worlds, clips_per_world=args.clips_per_world,
                      shards=args.shards, frames=args.frames, height=height, width=width,
                      video_format=args.video_format)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            s = render_dataset(args.out, plan, workers=args.workers, progress=not args.quiet)
    except RuntimeError as e:  # a worker failed: say so plainly (finished shards stay valid)
        print(f"worldstream data render: {e}", file=sys.stderr)
        return 1
    print(f"{s['out']}: rendered {s['shards_rendered']} shard(s) ({s['clips_rendered']} clips) in "
          f"{s['seconds']:.1f}s, {s['shards_skipped']} already complete; "
          f"dataset holds {s['clips_total']} clips, {s['frames_total']} frames")
    return 0
