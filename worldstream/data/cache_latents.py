"""`worldstream data cache-latents`: encode clip shards once (VAE + text encoder) into latent shards.

The base/memory stages train on VAE latents; encoding every window on the fly would cost more than the
DiT step on a CPU, so each clip is encoded once, whole, and stored with its cameras, actions and prompt
embedding. The reader yields samples that become `ClipLatents` (worldstream/train/batch.py).

Layout of a latent directory (one output shard per input shard, same name):
```
DIR/shard-000000.tar      plain tar, members grouped by sample key (WebDataset style):
    <key>.latents.npz   latents [C,T,h,w] (uint16 = bf16 bits, or float32; normalised VAE latents),
                        c2w [Nf,4,4] f64, intrinsics [4] f64 (pixels of the H x W video), keyboard [Nf,6] f32,
                        mouse [Nf,2] f32, (poses [Nf,5] f32), text [L,D] f32 (rows >= length zero),
                        text_length [1] int64;  Nf = 4(T-1)+1 pixel frames
    <key>.json          key, prompt, source, world_seed, height, width, num_frames, num_latents,
                        latent_dtype ("bfloat16" | "float32"), latent_shape, schema_version
DIR/index.json            per shard: samples, frames (pixel), bytes, sha256,
                          config {source_sha256, source_skipped, source_errors}
                          + dataset: source dir, VAE (path, weights, config), cache settings (text, storage)
DIR/vae/                  the VAE the latents were normalised with (per-channel latent_mean/latent_std in its
                          config): decode generated latents with exactly this VAE. A checkpoint folder
                          (`VAE.save`: config.json, model.safetensors float32, meta.json); caches written
                          before had a flat config.json (the VAEConfig fields): `VAE.load` reads both
```
Notable:
* Normalisation: latents are stored normalised, z = (mu - mean) / std. When the trained VAE has no
  latent statistics (nano: identity), they are estimated once, before any shard is written, from the raw
  mean latents of `stats_clips` clips spread over the dataset, and saved in DIR/vae/ (resumes reuse them).
* Encoding is streaming in time (`VAE.encode(chunk_latents=k)`: the encoder's causal cache carries across
  chunks of 4k frames), in the VAE's compute dtype (bf16 by default, weights cast, channels-last).
* Atomic and resumable: a shard is written to `shard-XXXXXX.tar.tmp-<pid>` and renamed; index.json is
  replaced atomically; a re-run skips every shard whose index entry names the same source sha256.
  A run with other settings into the same directory is refused, naming the settings.
* Lenient reading (default): a corrupt latent shard or sample is skipped with a `CorruptShardWarning`
  and counted in `reader.stats` (`ReadStats`); `strict=True` raises `ShardError` instead. Reading and
  writing use the tar core of shards.py (`iter_shard_samples`, `write_shard_samples`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from worldstream.data.shards import (
    KEY_RE,
    CorruptShardWarning,
    ReadStats,
    ShardError,
    ShardInfo,
    iter_shard_samples,
    list_shards,
    load_index,
    load_npz,
    npz_bytes,
    record_shard,
    write_shard_samples,
)

if TYPE_CHECKING:
    import torch

    from worldstream.data.schema import Clip
    from worldstream.model.vae import VAE, VAEConfig
    from worldstream.train.batch import ClipLatents

LATENT_SCHEMA_VERSION = 1  # bump on an incompatible change of the members below
EXT_LATENTS, EXT_JSON = "latents.npz", "json"
VAE_DIR = "vae"  # DIR/vae/{config.json, model.safetensors, meta.json}: `VAE.save` / `VAE.load`
LATENT_ARRAYS = ("latents", "c2w", "intrinsics", "keyboard", "mouse", "text", "text_length")
StorageDtype = Literal["bfloat16", "float32"]


@dataclass(frozen=True)
class CacheConfig:
    storage: StorageDtype = "bfloat16"  # latents on disk: bf16 bits in uint16 (half the bytes) or float32
    compute_dtype: StorageDtype = "bfloat16"  # VAE weights/activations while encoding (bf16 is fast on CPU)
    chunk_latents: int = 8  # latents per encoder call after the first frame (4 * 8 = 32 frames)
    stats_clips: int = 16  # clips used to estimate latent mean/std when the VAE has none
    stats_frames: int = 33  # first frames of each of those clips (1 + 4k)
    text_kind: Literal["minilm"] = "minilm"  # nano/small text encoder (worldstream/model/text.py)
    text_len: int = 32  # rows per prompt (DiTConfig.text_len)
    npz_level: int = 1  # zlib level of the npz member (latents compress little; keep it cheap)


# -------------------------------------------------------------------------------------------------
# one sample


def latents_to_storage(latents: torch.Tensor, storage: StorageDtype) -> np.ndarray:
    """float latents -> numpy array to store: uint16 bf16 bits (round to nearest) or float32."""
    import torch

    x = latents.detach().cpu()
    if storage == "float32":
        return x.float().numpy()
    if storage == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    raise ValueError(f"storage must be 'bfloat16' or 'float32', got {storage!r}")


def latents_from_storage(arr: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of `latents_to_storage` -> float32 tensor."""
    import torch

    if dtype == "float32" and arr.dtype == np.float32:
        return torch.from_numpy(arr.copy())
    if dtype == "bfloat16" and arr.dtype == np.uint16:
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16).float()
    raise ValueError(f"latent array of dtype {arr.dtype} does not match latent_dtype {dtype!r} "
                     "(expected uint16 for bfloat16, float32 for float32)")


@dataclass
class LatentSample:
    """One cached clip: normalised latents of the whole clip, per-frame cameras/actions, prompt embedding."""

    key: str
    latents: torch.Tensor  # [C, T, h, w] float32 (latent 0 = frame 0 alone)
    c2w: np.ndarray  # [Nf, 4, 4] float64, Nf = 4(T-1)+1
    intrinsics: np.ndarray  # [4] float64 fx, fy, cx, cy in pixels of the height x width video
    keyboard: np.ndarray  # [Nf, 6] float32
    mouse: np.ndarray  # [Nf, 2] float32
    text: torch.Tensor  # [L, D] float32 prompt embedding, rows >= text_length zero
    text_length: int
    prompt: str
    source: str
    world_seed: int | None
    height: int  # pixel size of the encoded video
    width: int
    poses: np.ndarray | None = None  # [Nf, 5] float32
    stride: int = 4  # VAE temporal stride: Nf = stride * (T - 1) + 1

    @property
    def num_latents(self) -> int:
        return int(self.latents.shape[1])

    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[0])

    def to_clip_latents(self, num_latents: int | None = None) -> ClipLatents:
        """A batch of one for the base/memory objectives; `num_latents` keeps the first n (a prefix, so
        latent 0 stays frame 0 alone) and their 4(n-1)+1 frames."""
        import torch

        from worldstream.train.batch import ClipLatents, frames_for_latents

        n, stride = self.num_latents if num_latents is None else num_latents, self.stride
        if not 1 <= n <= self.num_latents:
            raise ValueError(f"{self.key}: num_latents={n} not in [1, {self.num_latents}]")
        nf = frames_for_latents(n, stride)
        if nf > self.num_frames:
            raise ValueError(f"{self.key}: {n} latents need {nf} frames at stride {stride}, "
                             f"the sample has {self.num_frames}")

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a[:nf])).float()[None]

        k = torch.from_numpy(self.intrinsics.astype(np.float32))[None]
        return ClipLatents(latents=self.latents[None, :, :n].contiguous(), c2w=t(self.c2w),
                           keyboard=t(self.keyboard), mouse=t(self.mouse), text=self.text[None].float(),
                           text_lengths=torch.tensor([self.text_length], dtype=torch.int64),
                           intrinsics=k).validate(stride)


def collate_latents(samples: list[LatentSample], num_latents: int | None = None) -> ClipLatents:
    """Batch samples into one `ClipLatents` (prefixes of `num_latents`, default the shortest clip's)."""
    from worldstream.train.batch import ClipLatents

    if not samples:
        raise ValueError("collate_latents: no samples")
    n = min(s.num_latents for s in samples) if num_latents is None else num_latents
    return ClipLatents.stack([s.to_clip_latents(n) for s in samples])


def sample_to_members(s: LatentSample, storage: StorageDtype, npz_level: int = 1) -> list[tuple[str, bytes]]:
    if not KEY_RE.match(s.key):
        raise ValueError(f"sample key {s.key!r} is not valid for a shard (1-80 of [A-Za-z0-9_-])")
    arrays = {
        "latents": latents_to_storage(s.latents, storage),
        "c2w": np.asarray(s.c2w, np.float64), "intrinsics": np.asarray(s.intrinsics, np.float64),
        "keyboard": np.asarray(s.keyboard, np.float32), "mouse": np.asarray(s.mouse, np.float32),
        "text": s.text.detach().cpu().float().numpy(), "text_length": np.array([s.text_length], np.int64),
    }
    if s.poses is not None:
        arrays["poses"] = np.asarray(s.poses, np.float32)
    header = {"schema_version": LATENT_SCHEMA_VERSION, "key": s.key, "prompt": s.prompt, "source": s.source,
              "world_seed": s.world_seed, "height": s.height, "width": s.width, "num_frames": s.num_frames,
              "num_latents": s.num_latents, "latent_dtype": storage, "latent_shape": list(s.latents.shape),
              "temporal_stride": s.stride}
    text = json.dumps(header, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return [(f"{s.key}.{EXT_LATENTS}", npz_bytes(arrays, npz_level)), (f"{s.key}.{EXT_JSON}", text)]


def sample_from_members(key: str, members: dict[str, bytes], shard: str | Path = "<memory>") -> LatentSample:
    """Inverse of `sample_to_members`; raises ShardError naming the bad member."""
    import torch

    for ext in (EXT_JSON, EXT_LATENTS):
        if ext not in members:
            raise ShardError(shard, f"sample {key!r} has no .{ext} member (has: {sorted(members)})",
                             f"{key}.{ext}")
    try:
        h = json.loads(members[EXT_JSON].decode("utf-8"))
        if not isinstance(h, dict):
            raise ValueError("not a JSON object")
        if not isinstance(h.get("schema_version"), int) or h["schema_version"] > LATENT_SCHEMA_VERSION:
            raise ValueError(f"schema_version {h.get('schema_version')!r} not readable by this build "
                             f"(<= {LATENT_SCHEMA_VERSION})")
        missing = [f for f in ("prompt", "source", "latent_dtype", "latent_shape", "num_frames",
                               "height", "width") if f not in h]
        if missing:
            raise ValueError(f"lacks fields {missing}")
    except (ValueError, UnicodeDecodeError) as e:
        raise ShardError(shard, f"invalid JSON header ({e})", f"{key}.{EXT_JSON}") from e
    member = f"{key}.{EXT_LATENTS}"
    try:
        a = load_npz(members[EXT_LATENTS])
        absent = [n for n in LATENT_ARRAYS if n not in a]
        if absent:
            raise ValueError(f"lacks arrays {absent} (has {sorted(a)})")
        latents = latents_from_storage(a["latents"], h["latent_dtype"])
        if list(latents.shape) != list(h["latent_shape"]) or latents.ndim != 4:
            raise ValueError(f"latents have shape {list(latents.shape)}, JSON says {h['latent_shape']} "
                             "[C, T, h, w]")
        nf, T = a["c2w"].shape[0], latents.shape[1]
        expect = {"c2w": (nf, 4, 4), "intrinsics": (4,), "keyboard": (nf, 6), "mouse": (nf, 2)}
        if "poses" in a:
            expect["poses"] = (nf, 5)
        for name, shape in expect.items():
            if a[name].shape != shape:
                raise ValueError(f"{name} has shape {list(a[name].shape)}, expected {list(shape)}")
        stride = int(h.get("temporal_stride", 4))
        if nf != h["num_frames"] or nf != stride * (T - 1) + 1:
            raise ValueError(f"{nf} frames for {T} latents at stride {stride} (JSON num_frames "
                             f"{h['num_frames']}; expected {stride}*(T-1)+1)")
        length = a["text_length"]
        if a["text"].ndim != 2 or length.shape != (1,) or not 0 <= int(length[0]) <= a["text"].shape[0]:
            raise ValueError(f"text {list(a['text'].shape)} with text_length {length.tolist()} "
                             "(expected [1], <= L)")
        if not torch.isfinite(latents).all():
            raise ValueError("latents hold NaN/inf")
    except Exception as e:  # BadZipFile, zlib.error, ValueError: a corrupt member
        raise ShardError(shard, f"{type(e).__name__}: {e}", member) from e
    return LatentSample(key=key, latents=latents, c2w=a["c2w"], intrinsics=a["intrinsics"],
                        keyboard=a["keyboard"], mouse=a["mouse"], text=torch.from_numpy(a["text"]),
                        text_length=int(length[0]), prompt=h["prompt"], source=h["source"],
                        world_seed=h.get("world_seed"), height=int(h["height"]), width=int(h["width"]),
                        poses=a.get("poses"), stride=stride)


def write_latent_shard(path: str | Path, samples: Iterator[LatentSample], storage: StorageDtype,
                       npz_level: int = 1, config: dict[str, Any] | None = None) -> ShardInfo:
    """Write samples to one tar shard atomically (temp + os.replace); returns its index entry."""
    return write_shard_samples(path, samples, lambda s: sample_to_members(s, storage, npz_level),
                               config=config, kind="sample")


# -------------------------------------------------------------------------------------------------
# reading


def iter_latent_shard(path: str | Path, *, strict: bool = False, expected: dict[str, Any] | None = None,
                      stats: ReadStats | None = None) -> Iterator[LatentSample]:
    """Yield the samples of one latent shard; lenient by default (warn, count, skip), see the docstring."""
    return iter_shard_samples(path, sample_from_members, strict=strict, expected=expected, stats=stats)


class LatentShardReader:
    """Iterate the cached samples of a latent directory; `stats` counts what was read and skipped."""

    def __init__(self, root: str | Path, *, strict: bool = False, verify: bool = True):
        self.root = Path(root)
        self.paths = list_shards(self.root)
        if not self.paths:
            raise FileNotFoundError(f"no shard-*.tar files in {self.root}")
        self.strict, self.verify = strict, verify
        self.index = load_index(self.root)
        self.stats = ReadStats()

    def __len__(self) -> int:
        return len(self.paths)

    def vae_dir(self) -> Path:
        """DIR/vae: the VAE (with its latent statistics) that decodes these latents."""
        return self.root / VAE_DIR

    def iter_paths(self, paths: list[Path]) -> Iterator[LatentSample]:
        for p in paths:
            expected = self.index["shards"].get(p.name) if self.verify else None
            yield from iter_latent_shard(p, strict=self.strict, expected=expected, stats=self.stats)

    def __iter__(self) -> Iterator[LatentSample]:
        return self.iter_paths(self.paths)


# -------------------------------------------------------------------------------------------------
# encoding


def load_vae(path: str | Path, weights: Literal["ema", "raw"] = "ema") -> VAE:
    """A VAE folder (config.json + model.safetensors, e.g. DIR/vae: `VAE.load`), a run or a checkpoint."""
    from worldstream.model.vae import VAE

    path = Path(path)
    if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        return VAE.load(path)
    from worldstream.train.recipes.nano_vae import load_run_vae

    return load_run_vae(path, weights)


def save_vae(vae: VAE, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """`vae.save`: a checkpoint folder (config.json, model.safetensors float32, meta.json), atomic."""
    return vae.save(directory, meta=meta)


def compute_vae(vae: VAE, dtype: StorageDtype) -> VAE:
    """The VAE as used for encoding: weights cast to `dtype`, channels-last, eval, no grad."""
    import torch

    out = vae.to(getattr(torch, dtype)).eval().requires_grad_(False)
    return out.to_channels_last()


def video_tensor(video: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [1, 3, F, H, W] in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(video)).float().div_(127.5).sub_(1.0)
    return x.permute(3, 0, 1, 2)[None]


def encode_video(vae: VAE, video: np.ndarray, chunk_latents: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] (F = 1 + 4k) -> normalised latents [C, T, h, w] float32 (streaming encode)."""
    import torch

    with torch.no_grad():
        return vae.encode(video_tensor(video), chunk_latents=chunk_latents)[0]


def estimate_latent_stats(vae: VAE, clips: list[Clip], frames: int, chunk_latents: int) -> VAEConfig:
    """`vae.cfg` with the per-channel mean/std of the raw mean latents of the first `frames` of `clips`."""
    import torch

    mus = []
    with torch.no_grad():
        for c in clips:
            n = min(frames, c.num_frames - (c.num_frames - 1) % vae.cfg.temporal_stride)
            mus.append(vae.encode(video_tensor(c.video[:n]), normalise=False, chunk_latents=chunk_latents))
    mu = torch.cat([m.flatten(2) for m in mus], dim=2)  # [1, z, sum T*h*w]
    return vae.cfg.with_latent_stats(mu)


def _stats_clips(data_root: Path, n: int) -> list[Clip]:
    """First clips of shards spread over the dataset (deterministic)."""
    from worldstream.data.shards import ShardReader

    shards = list_shards(data_root)
    pick = sorted(set(np.linspace(0, len(shards) - 1, min(n, len(shards))).round().astype(int).tolist()))
    per = -(-n // len(pick))
    out: list[Clip] = []
    for i in pick:
        for j, clip in enumerate(ShardReader([shards[i]], with_video=True)):
            if j >= per:
                break
            out.append(clip)
    if not out:
        raise ValueError(f"{data_root}: no readable clips to estimate latent statistics")
    return out[:n]


def clip_sample(clip: Clip, latents: torch.Tensor, text: torch.Tensor, length: int,
                stride: int) -> LatentSample:
    return LatentSample(stride=stride, key=clip.key, latents=latents, c2w=clip.c2w,
                        intrinsics=clip.intrinsics,
                        keyboard=clip.keyboard, mouse=clip.mouse, text=text, text_length=int(length),
                        prompt=clip.prompt, source=clip.source, world_seed=clip.world_seed,
                        height=int(clip.height), width=int(clip.width), poses=clip.poses)


def encode_shard(src: Path, dst: Path, vae: VAE, text_encoder, cfg: CacheConfig, source_sha256: str | None,
                 progress: bool = False) -> ShardInfo:
    """Encode every readable clip of shard `src` into latent shard `dst` (lenient: bad clips skipped)."""
    from worldstream.data.shards import ShardReader

    reader = ShardReader(src.parent, strict=False)  # index.json of the source: sha256 + counts verified
    stride = vae.cfg.temporal_stride

    def samples() -> Iterator[LatentSample]:
        from tqdm import tqdm

        bar = tqdm(reader.iter_paths([src]), desc=src.name, unit="clip", disable=not progress,
                   file=sys.stderr, leave=False)
        for clip in bar:
            if clip.video is None:
                warnings.warn(f"{src}: clip {clip.key} has no video; skipped", CorruptShardWarning,
                              stacklevel=2)
                continue
            n = clip.num_frames - (clip.num_frames - 1) % stride  # 1 + 4k frames
            if n != clip.num_frames:
                clip = _prefix(clip, n)
            latents = encode_video(vae, clip.video, cfg.chunk_latents)
            text, lengths = text_encoder.encode([clip.prompt])
            yield clip_sample(clip, latents, text[0], int(lengths[0]), stride)

    info = write_latent_shard(dst, samples(), cfg.storage, cfg.npz_level,
                              config={"source_sha256": source_sha256})
    skipped = reader.stats.samples_skipped + reader.stats.shards_failed
    return dataclasses.replace(info, config={**info.config, "source_skipped": skipped,
                                             "source_errors": reader.stats.errors[:5]})


def _prefix(clip: Clip, n: int) -> Clip:
    from worldstream.data.dataset import take_frames

    return take_frames(clip, slice(0, n))


# -------------------------------------------------------------------------------------------------
# the command


def _dataset_entry(data_root: Path, vae_path: str, weights: str, vae: VAE,
                   cfg: CacheConfig) -> dict[str, Any]:
    return {"kind": "latents", "source": str(data_root), "vae_path": str(vae_path), "vae_weights": weights,
            "vae_config": vae.cfg.to_dict(), "cache": dataclasses.asdict(cfg),
            "latent_schema_version": LATENT_SCHEMA_VERSION}


def _compare_settings(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    keys = ("source", "vae_config", "cache")
    new = json.loads(json.dumps(new))  # as stored in index.json (tuples -> lists)
    diff = [k for k in keys if k in old and old[k] != new[k]]
    if diff:
        raise ValueError(f"{out} was cached with other settings ({', '.join(diff)} differ); "
                         "choose another --out or delete it")


def prepare_vae(vae_path: str | Path, weights: str, out: Path, data_root: Path, cfg: CacheConfig) -> VAE:
    """The encoding VAE with latent statistics: DIR/vae when it exists (resume; refused when `vae_path`
    holds other weights), else the trained VAE (+ estimated statistics when it has none), saved to DIR/vae
    before any shard is written."""
    import torch

    from worldstream.model.vae import VAE

    if (out / VAE_DIR / "model.safetensors").is_file():  # resume: the statistics must not change
        cached = load_vae(out / VAE_DIR)
        if Path(vae_path).resolve() != (out / VAE_DIR).resolve():
            given = load_vae(vae_path, weights).state_dict()
            same = given.keys() == cached.state_dict().keys() and all(
                torch.equal(v, given[k]) for k, v in cached.state_dict().items())
            if not same:
                raise ValueError(f"{out} was cached with another VAE ({out / VAE_DIR}: its weights differ "
                                 f"from --vae {vae_path}); choose another --out or delete it")
        return compute_vae(cached, cfg.compute_dtype)
    vae = load_vae(vae_path, weights)  # float32 weights: DIR/vae keeps them exactly
    if vae.cfg.latent_mean is None and vae.cfg.latent_std is None:
        work = compute_vae(load_vae(vae_path, weights), cfg.compute_dtype)
        stats_cfg = estimate_latent_stats(work, _stats_clips(data_root, cfg.stats_clips), cfg.stats_frames,
                                          cfg.chunk_latents)
        with_stats = VAE(stats_cfg)
        with_stats.load_state_dict(vae.state_dict())
        vae = with_stats.eval()
    save_vae(vae, out / VAE_DIR, meta={"source": str(vae_path), "weights": weights})
    return compute_vae(load_vae(out / VAE_DIR), cfg.compute_dtype)


def _worker_encode(args: tuple) -> tuple[str, dict[str, Any]]:
    src, dst, vae_dir, cfg, sha = args
    from worldstream.model.text import MiniLMEncoder

    vae = compute_vae(load_vae(vae_dir), cfg.compute_dtype)
    info = encode_shard(Path(src), Path(dst), vae, MiniLMEncoder(cfg.text_len), cfg, sha)
    return Path(dst).name, info.to_json()


def cache_latents(data_root: str | Path, out: str | Path, vae_path: str | Path, weights: str = "ema",
                  cfg: CacheConfig = CacheConfig(), workers: int = 1, max_shards: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Encode the clip shards of `data_root` into `out` (resumable); returns a summary."""
    from worldstream.model.text import MiniLMEncoder

    data_root, out = Path(data_root), Path(out)
    src_shards = list_shards(data_root)[:max_shards]
    if not src_shards:
        raise FileNotFoundError(f"no shard-*.tar files in {data_root}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    out.mkdir(parents=True, exist_ok=True)
    index = load_index(out)
    vae = prepare_vae(vae_path, weights, out, data_root, cfg)
    entry = _dataset_entry(data_root, str(vae_path), weights, vae, cfg)
    _compare_settings(index.get("dataset") or {}, entry, out)
    src_index = load_index(data_root)["shards"]

    todo = []
    for src in src_shards:
        dst = out / src.name
        sha = (src_index.get(src.name) or {}).get("sha256")
        done = index["shards"].get(src.name)
        if dst.is_file() and done and done.get("config", {}).get("source_sha256") == sha:
            continue
        todo.append((src, dst, sha))
    summary = {"shards": len(src_shards), "skipped_done": len(src_shards) - len(todo), "encoded": 0,
               "samples": 0, "source_skipped": 0}

    def record(name: str, info: dict[str, Any]) -> None:
        record_shard(out, name, ShardInfo(**info), dataset=entry)
        summary["encoded"] += 1
        summary["samples"] += info["samples"]
        summary["source_skipped"] += info["config"].get("source_skipped", 0)

    if workers == 1 or len(todo) <= 1:
        text_encoder = MiniLMEncoder(cfg.text_len)
        for src, dst, sha in todo:
            info = encode_shard(src, dst, vae, text_encoder, cfg, sha, progress=progress)
            record(dst.name, info.to_json())
            if progress:
                print(f"{dst}: {info.samples} samples", file=sys.stderr)
    else:
        import multiprocessing as mp

        jobs = [(str(s), str(d), str(out / VAE_DIR), cfg, sha) for s, d, sha in todo]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for name, info in pool.map(_worker_encode, jobs):
                record(name, info)
                if progress:
                    print(f"{out / name}: {info['samples']} samples", file=sys.stderr)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="clip shard directory (e.g. /work/data/nano_v1)")
    parser.add_argument("--vae", required=True,
                        help="trained VAE: a run dir (its ckpt/latest), a checkpoint folder, or a VAE folder "
                             "(config.json + model.safetensors)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema", help="run weights to use")
    parser.add_argument("--out", required=True, help="latent shard directory (created; re-run to resume)")
    parser.add_argument("--workers", type=int, default=1, help="parallel encoder processes (whole shards)")
    parser.add_argument("--storage", choices=("bfloat16", "float32"), default=CacheConfig.storage,
                        help="latent dtype on disk")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=CacheConfig.compute_dtype,
                        help="VAE compute dtype while encoding")
    parser.add_argument("--chunk-latents", type=int, default=CacheConfig.chunk_latents,
                        help="latents per encoder call (streaming)")
    parser.add_argument("--stats-clips", type=int, default=CacheConfig.stats_clips,
                        help="clips for the latent mean/std estimate when the VAE has none")
    parser.add_argument("--max-shards", type=int, default=None, help="encode only the first N shards")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    cfg = CacheConfig(storage=args.storage, compute_dtype=args.dtype, chunk_latents=args.chunk_latents,
                      stats_clips=args.stats_clips)
    if cfg.chunk_latents < 1 or cfg.stats_clips < 1:
        raise ValueError("--chunk-latents and --stats-clips must be >= 1")
    s = cache_latents(args.data, args.out, args.vae, args.weights, cfg, args.workers, args.max_shards,
                      progress=not args.quiet)
    print(f"{args.out}: {s['encoded']} shard(s) encoded ({s['samples']} samples), {s['skipped_done']} "
          f"already complete, {s['source_skipped']} bad source samples/shards skipped; "
          f"decode with {args.out}/{VAE_DIR}")
    return 0
