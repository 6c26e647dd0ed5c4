"""ClipDataset: shard split across ranks/workers, per-epoch shuffle, windows, memory sampling, collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_shards import make_clip  # same directory (pytest puts it on sys.path)
from torch.utils.data import DataLoader

from worldstream.data.dataset import (
    ClipDataset,
    Sample,
    UniformPastSampler,
    WindowConfig,
    collate_samples,
    windows,
)
from worldstream.data.shards import record_shard, shard_name, write_shard


@pytest.fixture
def shard_dir(tmp_path):
    for s in range(4):
        info = write_shard(tmp_path / shard_name(s), [make_clip(10 * s + i, T=12) for i in range(2)])
        record_shard(tmp_path, shard_name(s), info)
    return tmp_path


def test_windows_cut_and_keep_alignment():
    clip = make_clip(0, T=10)
    ws = windows(clip, length=4, stride=3)
    assert [w.meta["window_start"] for w in ws] == [0, 3, 6]
    assert all(w.num_frames == 4 and w.video.shape == (4, 32, 48, 3) for w in ws)
    assert np.array_equal(ws[1].c2w, clip.c2w[3:7]) and np.array_equal(ws[2].video, clip.video[6:10])
    assert ws[1].key == "w000000_c0000_t00003" and ws[1].meta["parent_key"] == clip.key
    tail = windows(clip, length=4, stride=4, drop_last=False)
    assert [w.num_frames for w in tail] == [4, 4, 2]
    assert windows(clip, length=11, stride=1) == []
    with pytest.raises(ValueError, match="stride"):
        windows(clip, length=4, stride=0)


def test_split_covers_every_shard_once_per_epoch(shard_dir):
    ds = ClipDataset(shard_dir, shuffle=True, seed=3)
    parts = [ds.shards_for(rank, 2, worker, 2) for rank in range(2) for worker in range(2)]
    assert sorted(p.name for part in parts for p in part) == [shard_name(i) for i in range(4)]
    assert all(len(part) == 1 for part in parts)
    # shuffled per epoch, identically on every rank (same seed, epoch)
    orders = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        orders.append(tuple(p.name for p in ds.shards_for(0, 1, 0, 1)))
    assert len(set(orders)) > 1
    ds2 = ClipDataset(shard_dir, shuffle=True, seed=3)
    ds2.set_epoch(4)
    assert tuple(p.name for p in ds2.shards_for(0, 1, 0, 1)) == orders[4]
    with pytest.warns(UserWarning, match="some readers get no data"):
        assert ds.shards_for(5, 8, 0, 1) == []


def test_dataloader_workers_and_ranks_partition_clips(shard_dir):
    all_keys = sorted(f"w{10 * s + i:06d}_c0000" for s in range(4) for i in range(2))
    seen = []
    for rank in range(2):
        ds = ClipDataset(shard_dir, seed=1, rank=rank, world_size=2, transform=lambda c: c.key)
        loader = DataLoader(ds, batch_size=None, num_workers=0)
        seen += list(loader)
    assert sorted(seen) == all_keys
    ds = ClipDataset(shard_dir, seed=1, rank=0, world_size=1, transform=lambda c: c.key)
    keys = list(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork"))
    assert sorted(keys) == all_keys


def test_windows_with_memory_and_collate(shard_dir):
    ds = ClipDataset(shard_dir, window=WindowConfig(length=4, stride=4), memory_sampler=UniformPastSampler(3),
                     shuffle=True, shuffle_buffer=5, seed=0, rank=0, world_size=1)
    samples = list(ds)
    assert len(samples) == 8 * 3 and all(isinstance(s, Sample) for s in samples)
    assert ds.stats.samples_ok == 8 and ds.stats.shards_ok == 4
    for s in samples:
        assert s.memory_index.size == min(3, s.start) and (s.memory_index < s.start).all()
        if s.memory is not None and s.memory_index.size:
            parent = make_clip(int(s.clip.meta["parent_key"][1:7]), T=12)
            assert np.array_equal(s.memory.video, parent.video[s.memory_index])
            assert np.array_equal(s.clip.c2w, parent.c2w[s.start:s.start + 4])
    batch = collate_samples(samples[:5])
    assert batch["video"].shape == (5, 4, 32, 48, 3) and batch["video"].dtype == torch.uint8
    assert batch["c2w"].shape == (5, 4, 4, 4) and batch["keyboard"].shape == (5, 4, 6)
    K = max(s.memory_index.size for s in samples[:5])
    assert batch["memory_video"].shape == (5, K, 32, 48, 3)
    assert batch["memory_mask"].sum().item() == sum(s.memory_index.size for s in samples[:5])
    with pytest.raises(ValueError, match="memory_sampler needs a window"):
        ClipDataset(shard_dir, memory_sampler=UniformPastSampler(3))


def test_bad_memory_sampler_is_reported(shard_dir):
    ds = ClipDataset(shard_dir, window=WindowConfig(4, 4), memory_sampler=lambda clip, s, n, rng: np.array([99]),
                     rank=0, world_size=1)
    with pytest.raises(ValueError, match="memory sampler returned indices"):
        next(iter(ds))
