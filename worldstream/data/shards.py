"""Clip shards on disk: WebDataset-compatible tar files, written atomically, read with clear errors.

Layout of a dataset directory (documented for users in docs/data.md):
```
DIR/shard-000000.tar      plain (uncompressed) tar, members grouped by sample key:
    <key>.arrays.npz   c2w [T,4,4] f64, intrinsics [4] f64, keyboard [T,6] f32, mouse [T,2] f32, (poses [T,5])
    <key>.frames.npz   video [T,H,W,3] uint8, lossless (deflate)        } at most one of the two;
    <key>.mp4          H.264 yuv420p video (lossy mode, imageio-ffmpeg) } none for poses-only clips
    <key>.json         prompt, source, world_seed, height, width, num_frames, fps, video_format, meta, schema
DIR/index.json            per shard: samples, frames, bytes, sha256, config (+ the dataset config)
```
Notable:
* Byte-deterministic: tar headers carry no time/owner, npz members a fixed zip timestamp (numpy's own
  `savez_compressed` stamps the current time), JSON has sorted keys; equal clips -> equal shard bytes
  (for mp4 with ffmpeg's bitexact flags).
* Atomic: a shard is written to `shard-XXXXXX.tar.tmp-<pid>` and `os.replace`d, so a visible `*.tar`
  is always complete; `index.json` is replaced the same way.
* Reader: streams a tar once (O(sample) memory), hashes it on the way and checks the sha256 and the
  sample count recorded in index.json. A bad shard or sample raises `ShardError` naming shard and
  member (strict), or is skipped with a `CorruptShardWarning` and counted in `ReadStats` (lenient).
* One tar core for every shard kind: `write_shard_samples` / `iter_shard_samples` take the per-sample
  encode / decode functions; clip shards (here) and latent shards (cache_latents.py) both use them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TypeVar

import numpy as np

from worldstream.data.schema import Clip
from worldstream.utils.io import atomic_path, atomic_write_json, json_default

SCHEMA_VERSION = 1  # bump on any incompatible change of the member layout or JSON fields
SHARD_TEMPLATE = "shard-{index:06d}.tar"
SHARD_RE = re.compile(r"^shard-(\d{6,})\.tar$")
INDEX_NAME = "index.json"
KEY_RE = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")  # no dots: WebDataset splits "<key>.<ext>" at the first dot
ARRAY_FIELDS = ("c2w", "intrinsics", "keyboard", "mouse", "poses")
EXT_ARRAYS, EXT_FRAMES, EXT_MP4, EXT_JSON = "arrays.npz", "frames.npz", "mp4", "json"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # earliest zip timestamp; fixed so npz bytes are deterministic
HASH_CHUNK = 1 << 20  # bytes per read when hashing a shard
MAX_RECORDED_ERRORS = 100  # ReadStats keeps the first messages only

VideoFormat = Literal["npz", "mp4"]


class ShardSample(Protocol):
    """What the shard writer needs of a sample (Clip, cache_latents.LatentSample)."""

    key: str

    @property
    def num_frames(self) -> int: ...


SampleT = TypeVar("SampleT")  # what a reader's decode returns
WrittenT = TypeVar("WrittenT", bound=ShardSample)


@dataclass(frozen=True)
class ShardConfig:
    video_format: VideoFormat = "npz"  # "npz": lossless uint8 frames; "mp4": lossy H.264 (~15x smaller)
    npz_level: int = 1  # zlib level of npz members; on rendered frames 2.3x faster than 6 for ~11% more bytes
    mp4_crf: int = 18  # x264 constant rate factor; 18 is near visually lossless
    mp4_preset: str = "veryfast"  # x264 speed/size preset
    default_fps: float = 16.0  # written when a clip's meta has no "fps" (MG3 plays back at 16 fps)


# -------------------------------------------------------------------------------------------------
# errors and statistics


class ShardError(Exception):
    """A shard (or one of its members) is unreadable, truncated or inconsistent."""

    def __init__(self, shard: str | Path, reason: str, member: str | None = None):
        self.shard, self.member, self.reason = str(shard), member, reason
        where = f"{self.shard}" + (f" member {member}" if member else "")
        super().__init__(f"{where}: {reason}")


class CorruptShardWarning(UserWarning):
    """Lenient reading skipped a bad shard or sample."""


@dataclass
class ReadStats:
    shards_ok: int = 0  # shards read to the end with matching checksum/count (when index.json had them)
    shards_failed: int = 0  # unreadable, truncated or checksum mismatch (samples before the fault were kept)
    samples_ok: int = 0
    samples_skipped: int = 0  # samples dropped because they failed to decode or validate
    errors: list[str] = field(default_factory=list)  # first MAX_RECORDED_ERRORS messages

    def record(self, err: ShardError) -> None:
        if len(self.errors) < MAX_RECORDED_ERRORS:
            self.errors.append(str(err))

    def as_dict(self) -> dict[str, Any]:
        return {"shards_ok": self.shards_ok, "shards_failed": self.shards_failed,
                "samples_ok": self.samples_ok, "samples_skipped": self.samples_skipped}


@dataclass(frozen=True)
class ShardInfo:
    """What index.json records per shard."""

    samples: int
    frames: int
    bytes: int
    sha256: str
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "frames": self.frames, "bytes": self.bytes, "sha256": self.sha256,
                "config": self.config}


# -------------------------------------------------------------------------------------------------
# names and index


def shard_name(index: int) -> str:
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return SHARD_TEMPLATE.format(index=index)


def shard_index(path: str | Path) -> int:
    m = SHARD_RE.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a shard name (expected {SHARD_TEMPLATE.format(index=0)} style)")
    return int(m.group(1))


def list_shards(root: str | Path) -> list[Path]:
    """Complete shards in `root`, sorted by index (temp files `*.tar.tmp-<pid>` are never listed)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"dataset directory {root} does not exist")
    return sorted((p for p in root.iterdir() if SHARD_RE.match(p.name)), key=shard_index)


def load_index(root: str | Path) -> dict[str, Any]:
    """index.json of `root`, or an empty index when there is none."""
    path = Path(root) / INDEX_NAME
    if not path.exists():
        return {"schema_version": SCHEMA_VERSION, "dataset": {}, "shards": {}}
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to rebuild it from the shards") from e
    if not isinstance(index, dict) or not isinstance(index.get("shards"), dict):
        raise ValueError(f"{path} has no 'shards' mapping; delete it to rebuild it from the shards")
    if index.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise ValueError(f"{path} has schema_version {index['schema_version']}, this build reads "
                         f"<= {SCHEMA_VERSION}; upgrade worldstream")
    index.setdefault("dataset", {})
    return index


def write_index(root: str | Path, index: dict[str, Any]) -> None:
    index = dict(index, schema_version=SCHEMA_VERSION)
    index["shards"] = dict(sorted(index["shards"].items()))
    atomic_write_json(Path(root) / INDEX_NAME, index)


def record_shard(root: str | Path, name: str, info: ShardInfo, dataset: dict[str, Any] | None = None) -> None:
    """Read-modify-write index.json with one shard's entry (atomic replace; single writer assumed)."""
    index = load_index(root)
    if dataset is not None:
        index["dataset"] = dataset
    index["shards"][name] = info.to_json()
    write_index(root, index)


# -------------------------------------------------------------------------------------------------
# encoding one clip


def npz_bytes(arrays: dict[str, np.ndarray], level: int) -> bytes:
    """`np.savez_compressed` equivalent with a fixed member timestamp (byte-deterministic)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=level)
    return buf.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    """npz bytes -> arrays. NOTE reads each member whole so zipfile checks its CRC-32; `np.load` reads
    just the array bytes and so never reaches the CRC check (a flipped byte would pass silently)."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            if not name.endswith(".npy"):
                raise ValueError(f"npz member {name!r} is not a .npy array")
            arr = np.lib.format.read_array(io.BytesIO(zf.read(name)), allow_pickle=False)
            out[name[: -len(".npy")]] = arr
    return out


def encode_mp4(video: np.ndarray, fps: float, cfg: ShardConfig) -> bytes:
    """video [T,H,W,3] uint8 -> H.264 mp4 bytes (bitexact flags: no encoder version/time in the file)."""
    import imageio_ffmpeg

    T, H, W, _ = video.shape
    if H % 2 or W % 2:
        raise ValueError(f"mp4 (yuv420p) needs even frame sizes, got {H}x{W}; use --video-format npz")
    with tempfile.TemporaryDirectory(prefix="ws-mp4-") as tmp:
        path = str(Path(tmp) / "clip.mp4")
        writer = imageio_ffmpeg.write_frames(
            path, (W, H), fps=fps, codec="libx264", quality=None, macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", str(cfg.mp4_crf), "-preset", cfg.mp4_preset, "-threads", "1",
                           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1"])
        writer.send(None)  # start the generator
        for frame in video:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return Path(path).read_bytes()


def decode_mp4(data: bytes) -> np.ndarray:
    """mp4 bytes -> video [T,H,W,3] uint8."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="ws-mp4-") as tmp:
        path = Path(tmp) / "clip.mp4"
        path.write_bytes(data)
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
        W, H = meta["size"]
        frames = [np.frombuffer(f, dtype=np.uint8).reshape(H, W, 3) for f in gen]
    if not frames:
        raise ValueError("mp4 holds no frames")
    return np.stack(frames)


def clip_to_members(clip: Clip, cfg: ShardConfig = ShardConfig()) -> list[tuple[str, bytes]]:
    """One clip -> [(member name, bytes)] in WebDataset order (all members share the key prefix)."""
    if not KEY_RE.match(clip.key):
        raise ValueError(f"clip key {clip.key!r} is not valid for a shard: use 1-80 characters of "
                         "[A-Za-z0-9_-] (no dots)")
    clip.validate()
    arrays = {name: getattr(clip, name) for name in ARRAY_FIELDS if getattr(clip, name) is not None}
    fps = float(clip.meta.get("fps", cfg.default_fps))
    video_format = None if clip.video is None else cfg.video_format
    header = {
        "schema_version": SCHEMA_VERSION,
        "prompt": clip.prompt,
        "source": clip.source,
        "world_seed": clip.world_seed,
        "height": clip.height,
        "width": clip.width,
        "num_frames": clip.num_frames,
        "fps": fps,
        "video_format": video_format,
        "meta": clip.meta,
    }
    members = [(f"{clip.key}.{EXT_ARRAYS}", npz_bytes(arrays, cfg.npz_level))]
    if video_format == "npz":
        members.append((f"{clip.key}.{EXT_FRAMES}", npz_bytes({"video": clip.video}, cfg.npz_level)))
    elif video_format == "mp4":
        members.append((f"{clip.key}.{EXT_MP4}", encode_mp4(clip.video, fps, cfg)))
    elif video_format is not None:
        raise ValueError(f"video_format must be 'npz' or 'mp4', got {video_format!r}")
    text = json.dumps(header, sort_keys=True, ensure_ascii=False, default=json_default)
    members.append((f"{clip.key}.{EXT_JSON}", text.encode("utf-8")))
    return members


def clip_from_members(key: str, members: dict[str, bytes], with_video: bool = True,
                      shard: str | Path = "<memory>") -> Clip:
    """Inverse of `clip_to_members`; raises ShardError naming the bad member."""

    def member(ext: str) -> str:
        return f"{key}.{ext}"

    for ext in (EXT_JSON, EXT_ARRAYS):
        if ext not in members:
            raise ShardError(shard, f"sample {key!r} has no .{ext} member (has: {sorted(members)})",
                             member(ext))
    try:
        header = json.loads(members[EXT_JSON].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ShardError(shard, f"invalid JSON ({e})", member(EXT_JSON)) from e
    version = header.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ShardError(shard, f"schema_version {version!r} not readable by this build "
                                f"(<= {SCHEMA_VERSION})", member(EXT_JSON))
    for name in ("prompt", "source", "num_frames"):
        if name not in header:
            raise ShardError(shard, f"JSON lacks field {name!r}", member(EXT_JSON))
    try:
        arrays = load_npz(members[EXT_ARRAYS])
    except Exception as e:  # zipfile.BadZipFile, zlib.error, ValueError: all mean a corrupt member
        raise ShardError(shard, f"unreadable npz ({type(e).__name__}: {e})", member(EXT_ARRAYS)) from e
    for name in ("c2w", "intrinsics", "keyboard", "mouse"):
        if name not in arrays:
            raise ShardError(shard, f"npz lacks array {name!r} (has {sorted(arrays)})", member(EXT_ARRAYS))

    video = None
    video_format = header.get("video_format")
    if with_video and video_format is not None:
        ext = {"npz": EXT_FRAMES, "mp4": EXT_MP4}.get(video_format)
        if ext is None:
            raise ShardError(shard, f"unknown video_format {video_format!r}", member(EXT_JSON))
        if ext not in members:
            raise ShardError(shard, f"JSON says video_format={video_format!r} but the member is missing",
                             member(ext))
        try:
            video = load_npz(members[ext])["video"] if ext == EXT_FRAMES else decode_mp4(members[ext])
        except Exception as e:
            raise ShardError(shard, f"unreadable video ({type(e).__name__}: {e})", member(ext)) from e
        if video.shape[0] != header["num_frames"]:
            raise ShardError(shard, f"video has {video.shape[0]} frames, JSON says {header['num_frames']}",
                             member(ext))

    meta = header.get("meta") or {}  # as written: the JSON "fps" field is derived from meta["fps"]
    clip = Clip(key=key, c2w=arrays["c2w"], intrinsics=arrays["intrinsics"], keyboard=arrays["keyboard"],
                mouse=arrays["mouse"], prompt=header["prompt"], source=header["source"], video=video,
                poses=arrays.get("poses"), world_seed=header.get("world_seed"), height=header.get("height"),
                width=header.get("width"), meta=meta)
    try:
        clip.validate()
    except ValueError as e:
        raise ShardError(shard, str(e), member(EXT_ARRAYS)) from e
    if clip.num_frames != header["num_frames"]:
        raise ShardError(shard, f"arrays have {clip.num_frames} frames, JSON says {header['num_frames']}",
                         member(EXT_ARRAYS))
    if video is not None and (video.shape[1], video.shape[2]) != (clip.height, clip.width):
        raise ShardError(shard, f"video is {video.shape[1]}x{video.shape[2]}, JSON says "
                         f"{clip.height}x{clip.width}", member(f"{key}.{video_format}"))
    return clip


# -------------------------------------------------------------------------------------------------
# writing


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    # fixed owner/time/mode: shard bytes depend on content only
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_shard_samples(path: str | Path, samples: Iterable[WrittenT],
                        encode: Callable[[WrittenT], list[tuple[str, bytes]]], *,
                        config: dict[str, Any] | None = None, kind: str = "sample") -> ShardInfo:
    """Write samples to one tar shard atomically (temp `*.tar.tmp-<pid>` + os.replace) -> its index entry.

    The writer of every shard kind (clips here, latents in cache_latents.py): `encode(sample)` gives the
    sample's [(member name, bytes)]; `samples` may be a generator (each sample is written as it arrives).
    """
    path = Path(path)
    n = frames = 0
    keys: set[str] = set()
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for sample in samples:
                if sample.key in keys:
                    raise ValueError(f"{path}: duplicate {kind} key {sample.key!r}")
                keys.add(sample.key)
                for name, data in encode(sample):
                    tf.addfile(_tar_member(name, len(data)), io.BytesIO(data))
                n += 1
                frames += sample.num_frames
        info = ShardInfo(samples=n, frames=frames, bytes=tmp.stat().st_size, sha256=sha256_file(tmp),
                         config=dict(config or {}))
    return info


def write_shard(path: str | Path, clips: Iterable[Clip], cfg: ShardConfig = ShardConfig(),
                config: dict[str, Any] | None = None) -> ShardInfo:
    """Write clips to one tar shard atomically (temp `*.tar.tmp-<pid>` + os.replace); returns its index entry.

    `clips` may be a generator: each clip is encoded and written as it arrives.
    """
    return write_shard_samples(path, clips, lambda clip: clip_to_members(clip, cfg), config=config,
                               kind="clip")


# -------------------------------------------------------------------------------------------------
# reading


class _HashingReader:
    """File wrapper that hashes every byte handed to tarfile (so a streamed read verifies sha256)."""

    def __init__(self, f: BinaryIO):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        return data

    def finish(self) -> str:
        while self.read(HASH_CHUNK):
            pass
        return self.h.hexdigest()


def _iter_members(path: Path, tf: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive tar members into (key, {ext: bytes}); tar-level faults raise ShardError."""
    key: str | None = None
    group: dict[str, bytes] = {}
    last = None
    while True:
        try:
            info = tf.next()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            where = f"after member {last}" if last else "at the first member"
            raise ShardError(path, f"tar header unreadable {where} ({type(e).__name__}: {e})") from e
        if info is None:
            break
        last = info.name
        if not info.isfile():
            raise ShardError(path, f"member is a {info.type!r} entry, not a regular file", info.name)
        try:
            data = tf.extractfile(info).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise ShardError(path, f"member data unreadable, shard truncated? ({type(e).__name__}: {e})",
                             info.name) from e
        if len(data) != info.size:
            raise ShardError(path, f"member truncated ({len(data)} of {info.size} bytes)", info.name)
        name = Path(info.name).name
        if "." not in name:
            raise ShardError(path, "member name has no '.<ext>' suffix", info.name)
        k, ext = name.split(".", 1)
        if k != key:
            if key is not None:
                yield key, group
            key, group = k, {}
        if ext in group:
            raise ShardError(path, f"duplicate member for sample {k!r}", info.name)
        group[ext] = data
    if key is not None:
        yield key, group


def iter_shard_samples(path: str | Path, decode: Callable[[str, dict[str, bytes], Path], SampleT], *,
                       strict: bool = False, expected: dict[str, Any] | None = None,
                       stats: ReadStats | None = None) -> Iterator[SampleT]:
    """Yield `decode(key, {ext: bytes}, path)` for each sample of one shard: the reader of every shard kind
    (clips here, latents in cache_latents.py). `decode` raises ShardError for a bad sample.

    expected: the shard's index.json entry; its `sha256` and `samples` are checked after the last member.
    strict: raise ShardError on the first problem; else warn (CorruptShardWarning), count in `stats`,
    skip the bad sample (or the rest of the shard when the tar itself is broken) and go on.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()

    def fail(err: ShardError, sample: bool) -> None:
        if strict:
            raise err
        stats.record(err)
        if sample:
            stats.samples_skipped += 1
        else:
            stats.shards_failed += 1
        warnings.warn(f"skipping {'sample' if sample else 'shard'}: {err}", CorruptShardWarning, stacklevel=3)

    try:
        f = open(path, "rb")
    except OSError as e:
        fail(ShardError(path, f"cannot open ({e})"), sample=False)
        return
    with f:
        reader = _HashingReader(f)
        seen = 0
        try:
            tf = tarfile.open(fileobj=reader, mode="r|")
            for key, group in _iter_members(path, tf):
                seen += 1
                try:
                    sample = decode(key, group, path)
                except ShardError as err:
                    fail(err, sample=True)
                    continue
                stats.samples_ok += 1
                yield sample
        except ShardError as err:
            fail(err, sample=False)
            return
        except (tarfile.TarError, EOFError, OSError) as e:  # header of the first member unreadable
            fail(ShardError(path, f"not a readable tar ({type(e).__name__}: {e})"), sample=False)
            return
        digest = reader.finish()
        if expected:
            if expected.get("samples") is not None and seen != expected["samples"]:
                fail(ShardError(path, f"holds {seen} samples, index.json says {expected['samples']} "
                                      "(truncated or replaced shard)"), sample=False)
                return
            if expected.get("sha256") and digest != expected["sha256"]:
                fail(ShardError(path, f"sha256 {digest[:12]}... differs from index.json "
                                      f"{expected['sha256'][:12]}... (corrupt shard)"), sample=False)
                return
        stats.shards_ok += 1


def iter_shard(path: str | Path, *, strict: bool = False, with_video: bool = True,
               expected: dict[str, Any] | None = None, stats: ReadStats | None = None) -> Iterator[Clip]:
    """Yield the clips of one shard (`iter_shard_samples` with `clip_from_members`; same arguments)."""

    def decode(key: str, members: dict[str, bytes], shard: Path) -> Clip:
        return clip_from_members(key, members, with_video=with_video, shard=shard)

    return iter_shard_samples(path, decode, strict=strict, expected=expected, stats=stats)


def verify_shard(path: str | Path, expected_keys: list[str] | None = None,
                 expected: dict[str, Any] | None = None) -> ShardInfo:
    """Decode every sample of a shard (strict); check its keys. Returns the ShardInfo to index it."""
    path = Path(path)
    keys, frames = [], 0
    for clip in iter_shard(path, strict=True, expected=expected):
        keys.append(clip.key)
        frames += clip.num_frames
    if expected_keys is not None and keys != list(expected_keys):
        raise ShardError(path, f"holds samples {keys[:3]}... ({len(keys)}), "
                               f"expected {list(expected_keys)[:3]}... ({len(expected_keys)})")
    return ShardInfo(samples=len(keys), frames=frames, bytes=path.stat().st_size, sha256=sha256_file(path))


class ShardReader:
    """Iterate the clips of a dataset directory (or an explicit list of shard paths).

    Uses index.json (when present) to verify sample counts and sha256 of each shard. `stats`
    accumulates across iterations: samples/shards read, skipped and failed.
    """

    def __init__(self, source: str | Path | list[str | Path], *, strict: bool = False,
                 with_video: bool = True, verify: bool = True):
        if isinstance(source, (str, Path)):
            self.root: Path | None = Path(source)
            self.paths = list_shards(self.root)
            if not self.paths:
                raise FileNotFoundError(f"no shard-*.tar files in {self.root}")
        else:
            self.paths = [Path(p) for p in source]
            self.root = self.paths[0].parent if self.paths else None
        self.strict, self.with_video, self.verify = strict, with_video, verify
        self.index = load_index(self.root) if self.root is not None else {"shards": {}}
        self.stats = ReadStats()

    def __len__(self) -> int:
        """Number of shards."""
        return len(self.paths)

    def expected(self, path: Path) -> dict[str, Any] | None:
        if not self.verify or self.root is None or path.parent != self.root:
            return None
        return self.index["shards"].get(path.name)

    def iter_paths(self, paths: list[Path]) -> Iterator[Clip]:
        for path in paths:
            yield from iter_shard(path, strict=self.strict, with_video=self.with_video,
                                  expected=self.expected(path), stats=self.stats)

    def __iter__(self) -> Iterator[Clip]:
        return self.iter_paths(self.paths)
