"""Training-side data: `ClipDataset` over a shard directory, training windows, memory-frame sampling.

Notable:
* Sharding like WebDataset: each epoch the shard list is shuffled with (seed, epoch) - the same
  order on every rank - then split by global worker id = rank * num_workers + worker_id, so each
  shard is read by exactly one DataLoader worker of one rank per epoch. Use at least
  world_size * num_workers shards (a warning says when some workers get none).
* Reading is lenient by default (training): a corrupt shard or sample is skipped with a
  `CorruptShardWarning` and counted in `dataset.stats` (per process: DataLoader workers count
  their own and warn themselves).
* Memory frames are pluggable: a `MemorySampler` picks frame indices from the clip's own past for
  each window (the memory stage uses camera-geometry retrieval, worldstream/geometry/retrieval.py;
  `UniformPastSampler` is the geometry-free baseline). `collate_samples` pads to the batch's largest
  memory with a mask.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from worldstream.data.schema import Clip
from worldstream.data.shards import ReadStats, ShardReader

PER_FRAME_FIELDS = ("c2w", "keyboard", "mouse", "poses", "video")  # arrays indexed by frame on axis 0


# -------------------------------------------------------------------------------------------------
# windows and frame selection


def take_frames(clip: Clip, index: np.ndarray | slice, key: str | None = None, **meta: Any) -> Clip:
    """A new Clip holding frames `index` of `clip` (arrays are views for slices, copies for index arrays)."""
    parts = {name: None if getattr(clip, name) is None else getattr(clip, name)[index]
             for name in PER_FRAME_FIELDS}
    return Clip(key=key or clip.key, intrinsics=clip.intrinsics, prompt=clip.prompt, source=clip.source,
                world_seed=clip.world_seed, height=clip.height, width=clip.width, meta={**clip.meta, **meta},
                **parts)


def windows(clip: Clip, length: int, stride: int, drop_last: bool = True) -> list[Clip]:
    """Cut [start, start+length) windows every `stride` frames. A clip shorter than `length` gives none
    (or, with drop_last=False, one short window); meta gains parent_key and window_start."""
    if length < 1 or stride < 1:
        raise ValueError(f"window length and stride must be >= 1, got length={length} stride={stride}")
    T = clip.num_frames
    starts = list(range(0, T - length + 1, stride))
    if not drop_last and (not starts or starts[-1] + length < T):
        tail = starts[-1] + stride if starts else 0
        if tail < T:
            starts.append(tail)
    return [take_frames(clip, slice(s, s + length), key=f"{clip.key}_t{s:05d}", parent_key=clip.key,
                        window_start=s) for s in starts]


class MemorySampler(Protocol):
    """Pick memory frames for the window clip[start : start + length] from the clip's own frames.

    Returns frame indices [K] int64 into `clip` (K may be 0; by convention all < start, i.e. the
    past, as in MG3 where memory comes from already generated frames).
    """

    def __call__(self, clip: Clip, start: int, length: int, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class UniformPastSampler:
    """Geometry-free baseline: `num_frames` distinct past frames, uniformly at random, in time order."""

    num_frames: int = 5  # MG3 retrieves up to 5 memory latents (facts 3.1)

    def __call__(self, clip: Clip, start: int, length: int, rng: np.random.Generator) -> np.ndarray:
        k = min(self.num_frames, start)
        if k == 0:
            return np.zeros(0, np.int64)
        return np.sort(rng.choice(start, size=k, replace=False)).astype(np.int64)


@dataclass
class Sample:
    """One training window and the memory frames chosen for it."""

    clip: Clip  # the window, T = window length
    start: int  # its first frame in the parent clip
    memory_index: np.ndarray  # [K] int64 frame indices into the parent clip
    memory: Clip | None  # those frames (video, c2w, ...), None without a sampler


@dataclass(frozen=True)
class WindowConfig:
    length: int  # frames per window
    stride: int  # frames between window starts (== length: no overlap)
    drop_last: bool = True  # drop a final window shorter than `length`


# -------------------------------------------------------------------------------------------------
# the dataset


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit, else torch.distributed, else RANK/WORLD_SIZE (torchrun), else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class ClipDataset(IterableDataset):
    """Clips (or windows with memory) from a shard directory; see the module docstring for the split.

    Yields `Clip` when `window` is None, else `Sample` per window.
    """

    root: str | Path
    window: WindowConfig | None = None
    memory_sampler: MemorySampler | None = None
    shuffle: bool = True  # shuffle shard order per epoch (and items within the shuffle buffer)
    seed: int = 0
    shuffle_buffer: int = 0  # items held for shuffling across clips/shards; 0 = off
    strict: bool = False  # raise on a corrupt shard/sample instead of skipping it
    with_video: bool = True  # False: poses/actions only (skips video decoding)
    verify: bool = True  # check sha256 + sample counts from index.json
    rank: int | None = None  # default: torch.distributed / RANK env
    world_size: int | None = None
    transform: Callable[[Any], Any] | None = None  # applied to each yielded item
    epoch: int = 0
    reader: ShardReader = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()
        if self.memory_sampler is not None and self.window is None:
            raise ValueError("memory_sampler needs a window config (memory is chosen per window)")
        self.reader = ShardReader(self.root, strict=self.strict, with_video=self.with_video,
                                  verify=self.verify)

    @property
    def stats(self) -> ReadStats:
        return self.reader.stats

    @property
    def shards(self) -> list[Path]:
        return list(self.reader.paths)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (like DistributedSampler.set_epoch) to reshuffle shards."""
        self.epoch = epoch

    def shards_for(self, rank: int, world_size: int, worker_id: int, num_workers: int) -> list[Path]:
        """The shards that (rank, worker) reads this epoch."""
        order = list(self.reader.paths)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        total = world_size * num_workers
        if len(order) < total:
            warnings.warn(f"{len(order)} shards for {total} readers ({world_size} ranks x {num_workers} "
                          "workers): some readers get no data; render more shards", stacklevel=2)
        return order[rank * num_workers + worker_id :: total]

    def _items(self, paths: list[Path], rng: np.random.Generator) -> Iterator[Any]:
        for clip in self.reader.iter_paths(paths):
            if self.window is None:
                yield clip
                continue
            for w in windows(clip, self.window.length, self.window.stride, self.window.drop_last):
                start = int(w.meta["window_start"])
                if self.memory_sampler is None:
                    yield Sample(w, start, np.zeros(0, np.int64), None)
                    continue
                idx = np.asarray(self.memory_sampler(clip, start, w.num_frames, rng), dtype=np.int64)
                if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= clip.num_frames)):
                    raise ValueError(f"memory sampler returned indices {idx.tolist()[:8]} for clip "
                                     f"{clip.key} of {clip.num_frames} frames; expected [K] in "
                                     f"[0, {clip.num_frames})")
                yield Sample(w, start, idx, take_frames(clip, idx, key=f"{w.key}_mem"))

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world_size = dist_info(self.rank, self.world_size)
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker_id])
        items = self._items(self.shards_for(rank, world_size, worker_id, num_workers), rng)
        if self.shuffle and self.shuffle_buffer > 1:
            items = _shuffled(items, self.shuffle_buffer, rng)
        for item in items:
            yield self.transform(item) if self.transform is not None else item


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffer shuffle: hold `size` items, emit a random one per incoming item, then drain."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


# -------------------------------------------------------------------------------------------------
# batching


def collate_samples(samples: list[Sample]) -> dict[str, Any]:
    """Stack windows into tensors (a DataLoader `collate_fn`).

    video uint8 [B,T,H,W,3]; c2w float32 [B,T,4,4]; intrinsics [B,4]; keyboard [B,T,6]; mouse [B,T,2];
    prompt/key lists; with memory: memory_index int64 [B,K], memory_video uint8 [B,K,H,W,3],
    memory_c2w [B,K,4,4], memory_mask bool [B,K] (K = the largest memory in the batch; padding is zeros).
    """
    if not samples:
        raise ValueError("collate_samples got an empty batch")
    clips = [s.clip for s in samples]
    shapes = {(c.num_frames, c.height, c.width) for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch windows of different (T, H, W): {sorted(shapes)}")

    def stack(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(c, name) for c in clips])).to(dtype)

    batch: dict[str, Any] = {
        "c2w": stack("c2w", torch.float32), "intrinsics": stack("intrinsics", torch.float32),
        "keyboard": stack("keyboard", torch.float32), "mouse": stack("mouse", torch.float32),
        "prompt": [c.prompt for c in clips], "key": [c.key for c in clips],
        "start": torch.tensor([s.start for s in samples], dtype=torch.int64),
    }
    if all(c.video is not None for c in clips):
        batch["video"] = stack("video", torch.uint8)
    if any(s.memory is not None for s in samples):
        B, K = len(samples), max(s.memory_index.size for s in samples)
        T, H, W = shapes.pop()
        batch["memory_index"] = torch.zeros(B, K, dtype=torch.int64)
        batch["memory_mask"] = torch.zeros(B, K, dtype=torch.bool)
        batch["memory_c2w"] = torch.zeros(B, K, 4, 4, dtype=torch.float32)
        if "video" in batch:
            batch["memory_video"] = torch.zeros(B, K, H, W, 3, dtype=torch.uint8)
        for b, s in enumerate(samples):
            k = s.memory_index.size
            if s.memory is None or k == 0:
                continue
            batch["memory_index"][b, :k] = torch.from_numpy(s.memory_index)
            batch["memory_mask"][b, :k] = True
            batch["memory_c2w"][b, :k] = torch.from_numpy(s.memory.c2w).float()
            if "memory_video" in batch:
                batch["memory_video"][b, :k] = torch.from_numpy(s.memory.video)
    return batch
