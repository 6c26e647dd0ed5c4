"""Shard format: lossless round trip, byte determinism, atomic writes, strict/lenient corruption handling."""

from __future__ import annotations

import json
import tarfile
import warnings

import numpy as np
import pytest

from worldstream.data.actions import poses_from_actions
from worldstream.data.schema import Clip
from worldstream.data.shards import (
    CorruptShardWarning,
    ReadStats,
    ShardConfig,
    ShardError,
    ShardReader,
    iter_shard,
    load_index,
    record_shard,
    shard_name,
    write_shard,
)
from worldstream.geometry.camera import extrinsics_from_poses, intrinsics_90fov


def make_clip(i: int, T: int = 9, H: int = 32, W: int = 48, video: bool = True) -> Clip:
    """A small valid clip: random actions -> MG3 kinematics -> c2w, random uint8 frames."""
    rng = np.random.default_rng([7, i])
    kb = np.zeros((T, 6), np.float32)
    kb[:, 0] = rng.random(T) < 0.7
    kb[:, 3] = rng.random(T) < 0.3
    mouse = (rng.integers(-1, 2, (T, 2)) * 0.1).astype(np.float32)
    poses, _ = poses_from_actions(kb, mouse)
    return Clip(key=f"w{i:06d}_c0000", c2w=extrinsics_from_poses(poses), intrinsics=intrinsics_90fov(H, W),
                keyboard=kb, mouse=mouse, prompt=f"a snowy village number {i} at dusk", source="test",
                video=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8) if video else None, poses=poses,
                world_seed=1000 + i, height=H, width=W, meta={"biome": "snow", "fps": 16.0, "tags": ["a", "b"]})


def assert_same_clip(a: Clip, b: Clip) -> None:
    assert a.key == b.key and a.prompt == b.prompt and a.source == b.source and a.meta == b.meta
    assert (a.world_seed, a.height, a.width) == (b.world_seed, b.height, b.width)
    for name in ("c2w", "intrinsics", "keyboard", "mouse", "poses", "video"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name


def test_round_trip_lossless_and_webdataset_layout(tmp_path):
    clips = [make_clip(i) for i in range(3)] + [make_clip(9, video=False)]
    info = write_shard(tmp_path / shard_name(0), clips, config={"note": "x"})
    assert (info.samples, info.frames) == (4, 36)
    assert info.bytes == (tmp_path / "shard-000000.tar").stat().st_size
    got = list(iter_shard(tmp_path / "shard-000000.tar", strict=True, expected=info.to_json()))
    for a, b in zip(clips, got, strict=True):
        assert_same_clip(a, b)
    # plain tar, "<key>.<ext>" members, consecutive per sample, fixed headers
    with tarfile.open(tmp_path / "shard-000000.tar") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[:3] == ["w000000_c0000.arrays.npz", "w000000_c0000.frames.npz", "w000000_c0000.json"]
    assert names[-2:] == ["w000009_c0000.arrays.npz", "w000009_c0000.json"]  # poses-only clip: no video
    assert all(m.mtime == 0 and m.uid == 0 for m in members)
    with tarfile.open(tmp_path / "shard-000000.tar") as tf:
        header = json.loads(tf.extractfile("w000000_c0000.json").read())
    assert header["schema_version"] == 1 and header["num_frames"] == 9 and header["fps"] == 16.0
    assert header["video_format"] == "npz" and header["world_seed"] == 1000


def test_bytes_deterministic_and_mp4_mode(tmp_path):
    clips = [make_clip(i) for i in range(2)]
    a = write_shard(tmp_path / "a.tar", clips)
    b = write_shard(tmp_path / "b.tar", clips)
    assert a.sha256 == b.sha256 and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    m1 = write_shard(tmp_path / "m1.tar", clips, ShardConfig(video_format="mp4"))
    m2 = write_shard(tmp_path / "m2.tar", clips, ShardConfig(video_format="mp4"))
    assert m1.sha256 == m2.sha256
    got = list(iter_shard(tmp_path / "m1.tar", strict=True))
    assert got[0].video.shape == clips[0].video.shape and got[0].video.dtype == np.uint8
    assert np.array_equal(got[0].c2w, clips[0].c2w)  # only the video is lossy
    with tarfile.open(tmp_path / "m1.tar") as tf:
        assert "w000000_c0000.mp4" in tf.getnames()


def test_write_is_atomic_and_rejects_bad_clips(tmp_path):
    bad = make_clip(1)
    bad.mouse = bad.mouse[:, :1]

    def clips():
        yield make_clip(0)
        yield bad

    with pytest.raises(ValueError, match="mouse has shape"):
        write_shard(tmp_path / "shard-000000.tar", clips())
    assert list(tmp_path.iterdir()) == []  # neither the shard nor its temp file is left behind
    with pytest.raises(ValueError, match="not valid for a shard"):
        write_shard(tmp_path / "x.tar", [Clip(**{**make_clip(0).__dict__, "key": "a.b"})])
    with pytest.raises(ValueError, match="duplicate clip key"):
        write_shard(tmp_path / "x.tar", [make_clip(0), make_clip(0)])


def _corrupt_dir(tmp_path):
    """Three shards indexed in index.json; shard 1 gets truncated, shard 2 a flipped video byte."""
    for s in range(3):
        info = write_shard(tmp_path / shard_name(s), [make_clip(10 * s + i) for i in range(3)])
        record_shard(tmp_path, shard_name(s), info)
    p1 = tmp_path / shard_name(1)
    p1.write_bytes(p1.read_bytes()[: p1.stat().st_size // 2])
    p2 = tmp_path / shard_name(2)
    with tarfile.open(p2) as tf:
        m = tf.getmember("w000021_c0000.frames.npz")
    data = bytearray(p2.read_bytes())
    data[m.offset_data + m.size // 2] ^= 0xFF
    p2.write_bytes(bytes(data))


def test_lenient_reader_skips_and_counts(tmp_path):
    _corrupt_dir(tmp_path)
    reader = ShardReader(tmp_path)
    with pytest.warns(CorruptShardWarning) as record:
        keys = [c.key for c in reader]
    messages = [str(w.message) for w in record]
    assert any("shard-000001.tar" in m and "truncated" in m for m in messages)
    assert any("shard-000002.tar member w000021_c0000.frames.npz" in m for m in messages)
    # shard 0 whole, shard 1 up to the cut, shard 2 without its bad sample
    assert keys[:3] == ["w000000_c0000", "w000001_c0000", "w000002_c0000"]
    assert "w000021_c0000" not in keys and {"w000020_c0000", "w000022_c0000"} <= set(keys)
    s = reader.stats
    assert s.shards_ok == 1 and s.shards_failed == 2  # shard 2 also fails its sha256 check
    assert s.samples_skipped == 1 and s.samples_ok == len(keys)
    assert len(s.errors) == 3


def test_strict_reader_names_shard_and_member(tmp_path):
    _corrupt_dir(tmp_path)
    with pytest.raises(ShardError, match=r"shard-000001\.tar member w0000\d\d_c0000\.\S+: member data unreadable"):
        list(ShardReader([tmp_path / shard_name(1)], strict=True))
    with pytest.raises(ShardError, match=r"shard-000002\.tar member w000021_c0000\.frames\.npz: .*CRC"):
        list(ShardReader([tmp_path / shard_name(2)], strict=True))


def test_index_checks_catch_silent_truncation(tmp_path):
    # cutting a tar exactly at a member boundary leaves a readable tar: only index.json can tell
    info = write_shard(tmp_path / shard_name(0), [make_clip(i) for i in range(3)])
    record_shard(tmp_path, shard_name(0), info, dataset={"seed": 1})
    path = tmp_path / shard_name(0)
    with tarfile.open(path) as tf:
        cut = tf.getmember("w000002_c0000.arrays.npz").offset
    path.write_bytes(path.read_bytes()[:cut])
    stats = ReadStats()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = list(iter_shard(path, expected=load_index(tmp_path)["shards"][shard_name(0)], stats=stats))
    assert len(got) == 2 and stats.shards_failed == 1
    assert "holds 2 samples, index.json says 3" in str(w[0].message)
    assert load_index(tmp_path)["dataset"] == {"seed": 1}


def test_bad_index_and_missing_dir_errors(tmp_path):
    with pytest.raises(NotADirectoryError, match="does not exist"):
        ShardReader(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no shard"):
        ShardReader(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json is not valid JSON"):
        load_index(tmp_path)


def _scripted_clip(key: str, keys: list[str], mouse_yaw: list[float], H: int = 32, W: int = 48) -> Clip:
    T = len(keys)
    kb = np.zeros((T, 6), np.float32)
    for t, k in enumerate(keys):
        if k:
            kb[t, "WSAD".index(k)] = 1.0
    mouse = np.zeros((T, 2), np.float32)
    mouse[:, 1] = mouse_yaw
    poses, _ = poses_from_actions(kb, mouse)
    video = np.full((T, H, W, 3), 90, np.uint8)
    return Clip(key=key, c2w=extrinsics_from_poses(poses), intrinsics=intrinsics_90fov(H, W), keyboard=kb,
                mouse=mouse, prompt=f"clip {key}", source="test", video=video, poses=poses, meta={"biome": "desert"})


def test_inspect_stats_and_pictures(tmp_path):
    from PIL import Image

    from worldstream.data.inspect_cmd import format_stats, inspect_dataset

    straight = _scripted_clip("straight", ["W"] * 20, [0.1] * 20)  # 12.35 units/frame, 1.5 deg/frame
    # out 8 frames, turn 180 deg in 12 frames (15 deg each), back 8, turn 180 again: a revisit
    loop = _scripted_clip("loop", ["W"] * 8 + [""] * 12 + ["W"] * 8 + [""] * 12, [0] * 8 + [1.0] * 12 + [0] * 8 + [1.0] * 12)
    for s, clips in enumerate([[straight], [loop]]):
        record_shard(tmp_path, shard_name(s), write_shard(tmp_path / shard_name(s), clips))
    stats = inspect_dataset(tmp_path, tmp_path / "out")
    assert (stats["shards"], stats["clips"], stats["frames"]) == (2, 2, 60)
    assert stats["speed_units_per_frame"]["max"] == pytest.approx(12.35, rel=1e-3)  # the straight clip
    assert stats["yaw_rate_deg_per_frame"]["min"] == pytest.approx(1.5, rel=1e-3)
    assert stats["revisit_fraction"] == 0.5 and stats["biomes"] == {"desert": 2}
    assert stats["key_usage"]["W"] == pytest.approx(36 / 60) and stats["key_usage"]["S"] == 0.0
    assert stats["mouse_usage"]["yaw"] == pytest.approx(44 / 60)
    sheet = Image.open(tmp_path / "out" / "contact_sheet.png")
    assert sheet.size[1] >= 2 * 72  # two rows, frames upscaled to >= 72 px
    assert Image.open(tmp_path / "out" / "trajectories.png").size[0] > 300
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["clips"] == 2
    assert "2 shards, 2 clips, 60 frames" in format_stats(stats)


def test_clip_validate_names_the_first_bad_row():
    import numpy as np

    from worldstream.data.schema import Clip

    T = 5
    c2w = np.tile(np.eye(4), (T, 1, 1))
    c2w[3, 0, 3] = np.nan  # one NaN among finite values in row 3
    clip = Clip("k", c2w, np.ones(4), np.zeros((T, 6), np.float32), np.zeros((T, 2), np.float32), "p", "t")
    with pytest.raises(ValueError, match=r"c2w has NaN/inf values \(first at row 3\)"):
        clip.validate()
