"""`worldstream bench vae`: quality and speed of the full decoder vs LightVAE (an MG3 Table 2 analog).

For each held-out clip (rendered frames the VAE never trained on) and each decoder:
1. encode with the full encoder on the inference path (`VAE.encode`: mean latents, no sampling, the official
   first frame + chunks of 4; latents cast to the session dtype as `WorldSession.reset` does);
2. decode as a streaming session does: latent 0 alone as the first chunk (MG3's first-chunk rule), then
   `chunk_latents` latents (16 frames) per `stream_decode` call on one `DecodeCache`, clamped, rounded to
   uint8 (`infer/session.py:frames_to_uint8`);
3. PSNR and SSIM of every frame against the input frames (`common.psnr` / `common.ssim`), averaged per clip.
Times: encode per clip (and per 16 frames), decode per 16-frame streaming call (median over the calls).

NOTE the machine is shared and noisy, so the decoders are timed in one process, interleaved: every round
runs the encoder and every decoder once on the same clip, the order rotating from round to round. The
speed-up of a LightVAE is the median over (clip, round) of the ratio full / light measured in the same
round (adjacent in time, so both saw the same load); the ratio of the median times is reported beside it.

Decoders: the checkpoint's `vae/` (full) and `lightvae/` (if present), plus any `--extra-lightvae`: a
checkpoint root (its `lightvae/`), a checkpoint.py folder, or a `nano_lightvae_*` run dir / run checkpoint
(student weights; its decoder gets the checkpoint VAE's latent statistics, as `recipes/nano.py:export_nano`
does). Data: `--data DIR` shards (default the held-out set), or, if DIR does not exist, clips rendered with
the engine from `--world-seeds` (checked against the training worlds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from worldstream.eval.benchmarks.common import (
    add_common_arguments,
    machine,
    machine_line,
    psnr,
    save_plot,
    ssim,
    write_report,
)

DEFAULT_OUT = "docs/results/vae.md"
DEFAULT_DATA = "/work/data/nano_heldout"  # held-out shards: 16 clips x 129 frames, worlds of --seed 999
FULL = "full"  # name of the full decoder in the results


@dataclass(frozen=True)
class VAEBenchConfig:
    clips: int = 8  # held-out clips evaluated
    frames: int = 65  # frames per clip: 1 + 4k (the first frame, then 4 streaming calls of 16 frames)
    repeats: int = 3  # interleaved timing rounds per clip (after one untimed warm-up)
    chunk_latents: int = 4  # latents per streaming decode call: a later nano session clip (16 frames)
    segment_size: int = 4  # latents per decoder pass inside a call (SessionConfig.decode_segment_size)
    dtype: str = "bfloat16"  # the nano session's dtype (infer/config.py); "float32" for reference numbers
    threads: int = 1  # torch intra-op threads (0: torch's default). 1 = the async decode worker's share of
    # the 2 cores (infer/decode.py split_threads), timed on the thread's CPU clock (stable under load)
    data: str = DEFAULT_DATA
    world_seeds: tuple[int, ...] = (900, 901, 902, 903, 904, 905, 906, 907)  # render fallback worlds
    size: tuple[int, int] = (96, 160)  # render fallback H x W (the nano resolution)
    training_render_seed: int = 1  # `worldstream data render --seed` of the training set (nano_v1)
    training_worlds_checked: int = 10_000  # world indices of that seed checked against --world-seeds
    weights: str = "ema"  # which student weights of an --extra-lightvae run ("ema" or "raw")
    frames_per_step: int = 16  # times are reported per this many frames (a later nano session clip)
    targets: dict[str, float] = dataclasses.field(default_factory=lambda: {
        "full_psnr_db": 30.0,  # issue 6: VAE PSNR >= 30 dB
        "light_p050_psnr_gap_db": 2.0,  # LightVAE p=0.5 within 2 dB of the full decoder
        "light_p050_speedup": 2.5,  # ... at >= 2.5x decoder speed
    })

    QUICK: ClassVar[dict[str, int]] = {"clips": 2, "frames": 33, "repeats": 2}  # --quick caps

    def __post_init__(self):
        if self.frames < 5 or (self.frames - 1) % 4:
            raise ValueError(f"--frames must be 1 + 4k with k >= 1 (the first frame, then chunks of 4), "
                             f"got {self.frames}")
        if self.clips < 1 or self.repeats < 1 or self.chunk_latents < 1 or self.segment_size < 1:
            raise ValueError(f"--clips, --repeats, chunk_latents and segment_size must be >= 1, got "
                             f"{self.clips}, {self.repeats}, {self.chunk_latents}, {self.segment_size}")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"--dtype must be bfloat16 or float32 (float16 is pathologically slow on CPUs), "
                             f"got {self.dtype!r}")
        if self.weights not in ("ema", "raw"):
            raise ValueError(f"--weights must be 'ema' or 'raw', got {self.weights!r}")


@dataclass
class Decoder:
    name: str
    vae: Any  # worldstream.model.vae.VAE (full or pruned); only its decoder path is used
    pruning_rate: float
    source: str

    @property
    def decoder_params(self) -> int:
        return sum(p.numel() for n, p in self.vae.named_parameters() if n.startswith(("decoder.", "conv2.")))


@dataclass
class HeldOutClip:
    key: str
    world_seed: int | None
    video: np.ndarray  # [F, H, W, 3] uint8


########################################################################################################
# Models


def _student_from_run(path: Path, full_cfg, weights: str):
    """The pruned decoder of a nano_lightvae_* run (dir or checkpoint), with the full VAE's latent stats."""
    from worldstream.checkpoint import load_into, load_state_dict_file
    from worldstream.model.vae import VAE
    from worldstream.train.recipes.nano_vae import checkpoint_folder

    ckpt = checkpoint_folder(path)
    model = json.loads((ckpt / "config.json").read_text()).get("model", {})
    if "pruning_rate" not in model or not model["pruning_rate"]:
        raise ValueError(f"--extra-lightvae {path}: {ckpt / 'config.json'} is not a LightVAE run "
                         "(no model.pruning_rate > 0)")
    student = VAE(dataclasses.replace(full_cfg, pruning_rate=float(model["pruning_rate"])))
    name = "student_ema.safetensors" if weights == "ema" else "student.safetensors"
    return load_into(student, load_state_dict_file(ckpt / name), str(ckpt / name)), str(ckpt)


def load_decoders(checkpoint: str | Path | None, extra: list[str], weights: str = "ema"
                  ) -> tuple[Any, list[Decoder], str]:
    """(full VAE, decoders [full, checkpoint LightVAE?, extras...], checkpoint folder) in float32, eval."""
    from worldstream.checkpoint import from_pretrained
    from worldstream.infer.model_bundle import LAYOUT, default_checkpoint
    from worldstream.model.vae import VAE, LightVAE, VAEConfig

    # 1. the checkpoint folder and its full VAE
    if checkpoint is None:
        checkpoint = default_checkpoint("nano")
        if checkpoint is None:
            raise FileNotFoundError("no trained nano checkpoint (checkpoints/nano/ is absent): pass "
                                    "--checkpoint DIR (a folder with vae/ and optionally lightvae/)")
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise NotADirectoryError(f"--checkpoint {folder}: folder not found")
    if not (folder / LAYOUT.vae / "config.json").is_file():
        raise FileNotFoundError(f"--checkpoint {folder}: no {LAYOUT.vae}/ checkpoint (expected "
                                f"{folder / LAYOUT.vae / 'config.json'} and model.safetensors)")
    full = from_pretrained(folder / LAYOUT.vae, VAE, expected_type=VAEConfig)
    if full.cfg.pruning_rate:
        raise ValueError(f"{folder / LAYOUT.vae}: pruning_rate {full.cfg.pruning_rate}, expected the full "
                         "VAE (pruning_rate 0)")
    decoders = [Decoder(FULL, full, 0.0, str(folder / LAYOUT.vae))]
    # 2. LightVAE decoders: the checkpoint's, then the extras
    sources: list[tuple[Path, bool]] = []  # (path, from --extra-lightvae)
    if (folder / LAYOUT.lightvae / "config.json").is_file():
        sources.append((folder / LAYOUT.lightvae, False))
    sources += [(Path(p), True) for p in extra]
    for path, is_extra in sources:
        if is_extra and not path.exists():
            raise FileNotFoundError(f"--extra-lightvae {path}: not found")
        if (path / LAYOUT.lightvae / "config.json").is_file():  # a checkpoint root
            path = path / LAYOUT.lightvae
        if (path / "model.safetensors").is_file():  # a checkpoint.py folder
            student, src = from_pretrained(path, VAE, expected_type=VAEConfig), str(path)
        else:
            student, src = _student_from_run(path, full.cfg, weights)
        LightVAE(full, student)  # raises a clear error if the student does not fit the encoder's latents
        rate = float(student.cfg.pruning_rate)
        name = f"LightVAE p={rate:g}"
        if any(d.name == name for d in decoders):
            name = f"{name} ({path.parent.parent.name if path.name.startswith('step_') else path.name})"
        decoders.append(Decoder(name, student, rate, src))
    return full, decoders, str(folder)


def prepare(vae, dtype):
    """Inference form, as `model_bundle.py:prepare_bundle`: cast, eval, no grad, channels-last in bf16."""
    import torch

    vae = vae.to(dtype=dtype).eval().requires_grad_(False)
    return vae.to_channels_last() if dtype == torch.bfloat16 else vae


########################################################################################################
# Data


def training_world_seeds(cfg: VAEBenchConfig) -> set[int]:
    """World seeds of the training render (`data render --seed 1`: derive_seed(seed, "world", i))."""
    from worldstream.data.render_cmd import derive_seed

    return {derive_seed(cfg.training_render_seed, "world", i) for i in range(cfg.training_worlds_checked)}


def load_clips(cfg: VAEBenchConfig) -> tuple[list[HeldOutClip], str]:
    """`cfg.clips` clips of `cfg.frames` frames: from the shards in cfg.data (one per world first), or
    rendered from cfg.world_seeds when that folder does not exist. Returns (clips, source description)."""
    root = Path(cfg.data)
    if root.exists():
        from worldstream.data.shards import ShardReader

        picked: list[HeldOutClip] = []
        spare: list[HeldOutClip] = []  # second clips of a world, used if there are too few worlds
        worlds: set[Any] = set()
        for clip in ShardReader(root):
            if clip.video is None or clip.video.shape[0] < cfg.frames:
                n = None if clip.video is None else clip.video.shape[0]
                raise ValueError(f"{root}: clip {clip.key} has {n} frames, fewer than --frames {cfg.frames}")
            c = HeldOutClip(clip.key, clip.world_seed, np.ascontiguousarray(clip.video[: cfg.frames]))
            (spare if clip.world_seed in worlds and clip.world_seed is not None else picked).append(c)
            worlds.add(clip.world_seed)
            if len(picked) >= cfg.clips:
                break
        clips = (picked + spare)[: cfg.clips]
        if not clips:
            raise FileNotFoundError(f"{root}: no readable clips")
        return clips, f"shards in {root}"
    # render fallback
    from worldstream.data.engine import EngineConfig, render_clip

    overlap = sorted(set(cfg.world_seeds) & training_world_seeds(cfg))
    if overlap:
        warnings.warn(f"--world-seeds {overlap} are training worlds (data render --seed "
                      f"{cfg.training_render_seed}): not held out", stacklevel=2)
    ecfg = dataclasses.replace(EngineConfig(), height=cfg.size[0], width=cfg.size[1], num_frames=cfg.frames)
    clips = []
    for i in range(cfg.clips):
        ws, cs = cfg.world_seeds[i % len(cfg.world_seeds)], i // len(cfg.world_seeds)
        clip = render_clip(ws, cs, ecfg)
        clips.append(HeldOutClip(f"w{ws}_c{cs}", ws, clip.video))
    return clips, (f"{root} absent: rendered with the engine, world seeds {list(cfg.world_seeds)}, "
                   f"{cfg.size[0]}x{cfg.size[1]}")


########################################################################################################
# Measurement


def _to_video(frames: np.ndarray):
    """uint8 [F, H, W, 3] -> [1, 3, F, H, W] float32 in [-1, 1] (as `WorldSession.reset`)."""
    import torch
    from einops import rearrange

    from worldstream.infer.session import PIXEL_SCALE

    x = torch.from_numpy(frames).float().div_(PIXEL_SCALE).sub_(1)
    return rearrange(x, "f h w c -> 1 c f h w")


def clock_for(threads: int):
    """(name, clock): the thread's CPU clock for one intra-op thread (the work itself; time the core spent
    on other processes is not counted, so it is stable on a shared machine), the wall clock otherwise."""
    return ("thread CPU time", time.thread_time) if threads == 1 else ("wall time", time.perf_counter)


def stream_decode(vae, z, cfg: VAEBenchConfig) -> tuple[np.ndarray, list[float], list[float]]:
    """Session-style decode of latents [1, C, T, h, w]: latent 0 as the first chunk, then chunk_latents per
    call -> (uint8 frames [4T - 3, H, W, 3], then for each later call its seconds per `frames_per_step`
    frames on the bench clock and on the wall clock)."""
    from worldstream.infer.session import frames_to_uint8

    clock = clock_for(cfg.threads)[1]
    cache = vae.new_decode_cache()
    out = [frames_to_uint8(vae.stream_decode(z[:, :, :1], cache, first_chunk=True,
                                             segment_size=cfg.segment_size))]
    times, walls = [], []
    for s in range(1, z.shape[2], cfg.chunk_latents):
        c0, w0 = clock(), time.perf_counter()
        video = vae.stream_decode(z[:, :, s : s + cfg.chunk_latents], cache, first_chunk=False,
                                  segment_size=cfg.segment_size)
        c1, w1 = clock(), time.perf_counter()
        per_step = cfg.frames_per_step / video.shape[2]  # the last call may decode fewer frames
        times.append((c1 - c0) * per_step)
        walls.append((w1 - w0) * per_step)
        out.append(frames_to_uint8(video))
    return np.concatenate(out), times, walls


def evaluate_clip(encoder, decoders: list[Decoder], clip: HeldOutClip, cfg: VAEBenchConfig,
                  warm_up: bool = False) -> dict[str, Any]:
    """Quality and interleaved timing of every decoder on one clip (models already `prepare`d)."""
    import torch

    dtype = getattr(torch, cfg.dtype)
    video = _to_video(clip.video)  # [1, 3, F, H, W]
    with torch.inference_mode():
        z = encoder.encode(video).to(dtype)  # [1, C, T, h, w], normalised (first encode: untimed)
        if warm_up:
            for d in decoders:
                stream_decode(d.vae, z, cfg)
        # 1. quality (decoding is deterministic: the timed rounds give the same frames)
        row: dict[str, Any] = {"key": clip.key, "world_seed": clip.world_seed,
                               "frames": int(clip.video.shape[0]), "decoders": {}}
        for d in decoders:
            rec, _, _ = stream_decode(d.vae, z, cfg)
            if rec.shape != clip.video.shape:
                raise RuntimeError(f"{d.name}: decoded {rec.shape}, expected {clip.video.shape}")
            p, s = psnr(clip.video, rec), ssim(clip.video, rec)  # [F] each
            row["decoders"][d.name] = {"psnr_db": float(np.mean(p)), "ssim": float(np.mean(s)),
                                       "psnr_min_db": float(np.min(p)), "psnr_per_frame": p.tolist(),
                                       "step_s": [], "step_wall_s": []}
        # 2. interleaved timing rounds: encoder + every decoder, order rotating
        jobs = ["encode"] + [d.name for d in decoders]
        by_name = {d.name: d for d in decoders}
        clock = clock_for(cfg.threads)[1]
        encode_s: list[float] = []
        encode_wall_s: list[float] = []
        rounds: list[dict[str, float]] = []  # per round: name -> median seconds per step over the calls
        for r in range(cfg.repeats):
            this: dict[str, float] = {}
            for name in jobs[r % len(jobs):] + jobs[: r % len(jobs)]:
                if name == "encode":
                    c0, w0 = clock(), time.perf_counter()
                    encoder.encode(video)
                    encode_s.append(clock() - c0)
                    encode_wall_s.append(time.perf_counter() - w0)
                    continue
                _, steps, walls = stream_decode(by_name[name].vae, z, cfg)
                row["decoders"][name]["step_s"] += steps
                row["decoders"][name]["step_wall_s"] += walls
                this[name] = statistics.median(steps)
            rounds.append(this)
    # 3. per-clip times (medians, per frames_per_step frames); speed-up paired within rounds
    row["encode_ms_clip"] = 1e3 * statistics.median(encode_s)
    row["encode_wall_ms_clip"] = 1e3 * statistics.median(encode_wall_s)
    row["encode_ms_per_step"] = row["encode_ms_clip"] * cfg.frames_per_step / clip.video.shape[0]
    for d in decoders:
        r = row["decoders"][d.name]
        r["decode_ms_per_step"] = 1e3 * statistics.median(r["step_s"])
        r["decode_wall_ms_per_step"] = 1e3 * statistics.median(r["step_wall_s"])
        r["speedup_rounds"] = [x[FULL] / x[d.name] for x in rounds]
    return row


def run(cfg: VAEBenchConfig, checkpoint: str | Path | None = None, extra: list[str] | tuple = (),
        log=print) -> dict[str, Any]:
    import torch

    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, checkpoint, extra, log)
    finally:
        torch.set_num_threads(threads_before)  # `bench all` runs more benches in this process


def _run(cfg: VAEBenchConfig, checkpoint, extra, log) -> dict[str, Any]:
    import torch

    clock_name = clock_for(cfg.threads)[0]
    full, decoders, folder = load_decoders(checkpoint, list(extra), cfg.weights)
    dtype = getattr(torch, cfg.dtype)
    encoder = prepare(full, dtype)
    for d in decoders:
        d.vae = encoder if d.vae is full else prepare(d.vae, dtype)
    stride = full.cfg.spatial_stride
    clips, data_source = load_clips(cfg)
    h, w = clips[0].video.shape[1:3]
    if h % stride or w % stride:
        raise ValueError(f"clip frames are {h}x{w}; the VAE needs multiples of its spatial stride {stride}")
    mach = machine()
    rows = []
    for i, clip in enumerate(clips):
        t0 = time.perf_counter()
        rows.append(evaluate_clip(encoder, decoders, clip, cfg, warm_up=i == 0))
        log(f"bench vae: clip {i + 1}/{len(clips)} {clip.key}: "
            + ", ".join(f"{n} {r['psnr_db']:.2f} dB" for n, r in rows[-1]["decoders"].items())
            + f" ({time.perf_counter() - t0:.1f} s)")
    mach["load_avg_1min_end"] = machine()["load_avg_1min"]
    return {"config": dataclasses.asdict(cfg), "machine": mach, "checkpoint": folder, "data": data_source,
            "clock": clock_name, "threads_used": torch.get_num_threads(),
            "decoders": [{"name": d.name, "pruning_rate": d.pruning_rate, "source": d.source,
                          "decoder_params": d.decoder_params} for d in decoders],
            "clips": rows, "summary": summarise(rows, decoders, cfg)}


def summarise(rows: list[dict[str, Any]], decoders: list[Decoder], cfg: VAEBenchConfig) -> dict[str, Any]:
    """Means over clips; times as medians; speed-up = median of the paired per-round ratios."""
    out: dict[str, Any] = {"encode_ms_clip": statistics.median(r["encode_ms_clip"] for r in rows),
                           "encode_wall_ms_clip": statistics.median(r["encode_wall_ms_clip"] for r in rows),
                           "encode_ms_per_step": statistics.median(r["encode_ms_per_step"] for r in rows),
                           "decoders": {}}
    full_ms = 1e3 * statistics.median(t for r in rows for t in r["decoders"][FULL]["step_s"])
    for d in decoders:
        per = [r["decoders"][d.name] for r in rows]
        ms = 1e3 * statistics.median(t for p in per for t in p["step_s"])
        out["decoders"][d.name] = {
            "pruning_rate": d.pruning_rate,
            "psnr_db": float(np.mean([p["psnr_db"] for p in per])),
            "ssim": float(np.mean([p["ssim"] for p in per])),
            "decode_ms_per_step": ms,
            "decode_wall_ms_per_step": 1e3 * statistics.median(t for p in per for t in p["step_wall_s"]),
            "speedup_vs_full": statistics.median(x for p in per for x in p["speedup_rounds"]),
            "speedup_ratio_of_medians": full_ms / ms,
            "decoder_params": d.decoder_params,
        }
    s = out["decoders"]
    t = cfg.targets
    checks = {f"{FULL}: PSNR": {"target": f">= {t['full_psnr_db']:g} dB", "value": s[FULL]["psnr_db"],
                            "met": s[FULL]["psnr_db"] >= t["full_psnr_db"]}}
    for name, v in s.items():
        if name != FULL and abs(v["pruning_rate"] - 0.5) < 1e-9:
            gap = s[FULL]["psnr_db"] - v["psnr_db"]
            checks[f"{name}: PSNR gap"] = {"target": f"<= {t['light_p050_psnr_gap_db']:g} dB", "value": gap,
                                           "met": gap <= t["light_p050_psnr_gap_db"]}
            checks[f"{name}: speed-up"] = {"target": f">= {t['light_p050_speedup']:g}x",
                                           "value": v["speedup_vs_full"],
                                           "met": v["speedup_vs_full"] >= t["light_p050_speedup"]}
    out["targets"] = checks
    return out


########################################################################################################
# Report


def to_markdown(res: dict[str, Any], png_name: str | None = None) -> str:
    cfg, s, m = res["config"], res["summary"], res["machine"]
    step = cfg["frames_per_step"]
    lines = [
        "# VAE: full decoder vs LightVAE (an analog of MG3 Table 2)",
        "",
        f"`worldstream bench vae` on checkpoint `{res['checkpoint']}`; {len(res['clips'])} held-out clips "
        f"({res['data']}), {cfg['frames']} frames each, {cfg['dtype']}. "
        f"Encode: full encoder, mean latents (the inference path). Decode: as a streaming session, latent 0 "
        f"alone (first-chunk rule), then {cfg['chunk_latents']} latents = {cfg['chunk_latents'] * 4} frames "
        "per call with one cache, clamped, rounded to uint8. PSNR / SSIM: mean over frames and clips "
        "(SSIM: Gaussian 11x11, sigma 1.5, per channel).",
        "",
        machine_line(m) + f" Load at the end: {m.get('load_avg_1min_end', float('nan')):.1f}. Times are "
        f"medians of the {res['clock']} with {res['threads_used']} intra-op thread(s) (wall-clock medians in "
        f"the JSON); encoder and decoders timed interleaved in one process ({cfg['repeats']} rounds per "
        "clip, rotating order, after a warm-up); speed-up = median of the per-round ratios full / decoder.",
        "",
        f"| decoder | pruning p | decoder params | PSNR (dB) | SSIM | decode ms / {step} frames "
        "| speed-up vs full | (ratio of medians) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in s["decoders"].items():
        lines.append(f"| {name} | {v['pruning_rate']:g} | {v['decoder_params'] / 1e6:.2f} M "
                     f"| {v['psnr_db']:.2f} | {v['ssim']:.4f} | {v['decode_ms_per_step']:.1f} "
                     f"| {v['speedup_vs_full']:.2f}x | {v['speedup_ratio_of_medians']:.2f}x |")
    lines += ["", f"Encode (full encoder): {s['encode_ms_clip']:.0f} ms per {cfg['frames']}-frame clip, "
              f"{s['encode_ms_per_step']:.1f} ms per {step} frames.", "", "## Targets (issue 6)", "",
              "| check | target | measured | met |", "|---|---|---|---|"]
    for name, c in s["targets"].items():
        lines.append(f"| {name} | {c['target']} | {c['value']:.2f} | {'yes' if c['met'] else 'no'} |")
    names = list(s["decoders"])
    lines += ["", "## Per clip", "", "| clip | world seed | " + " | ".join(f"{n} PSNR / SSIM" for n in names)
              + " | encode ms |", "|---|---|" + "---|" * len(names) + "---|"]
    for r in res["clips"]:
        cells = [f"{r['decoders'][n]['psnr_db']:.2f} / {r['decoders'][n]['ssim']:.4f}" for n in names]
        lines.append(f"| {r['key']} | {r['world_seed']} | " + " | ".join(cells)
                     + f" | {r['encode_ms_clip']:.0f} |")
    if png_name:
        lines += ["", f"![PSNR per clip and decoder speed vs PSNR]({png_name})"]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], png_path: str | Path) -> None:
    from matplotlib.figure import Figure

    s, names = res["summary"]["decoders"], list(res["summary"]["decoders"])
    fig = Figure(figsize=(10, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(len(res["clips"]))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax1.bar(x + (i - (len(names) - 1) / 2) * width, [r["decoders"][n]["psnr_db"] for r in res["clips"]],
                width, label=n)
    ax1.set_xticks(x, [r["key"] for r in res["clips"]], rotation=60, fontsize=7)
    finite = [d["psnr_db"] for r in res["clips"] for d in r["decoders"].values() if np.isfinite(d["psnr_db"])]
    if finite:  # bars start near the data: the decoders differ by a few dB at most
        ax1.set_ylim(max(0.0, min(finite) - 3.0), max(finite) + 1.0)
    ax1.set_ylabel("PSNR (dB)")
    ax1.set_title("PSNR per held-out clip")
    ax1.legend(fontsize=8)
    step = res["config"]["frames_per_step"]
    for n in names:
        ax2.scatter(s[n]["decode_ms_per_step"], s[n]["psnr_db"], s=40)
        ax2.annotate(f"{n} ({s[n]['speedup_vs_full']:.2f}x)", (s[n]["decode_ms_per_step"], s[n]["psnr_db"]),
                     fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax2.set_xlabel(f"decode ms per {step} frames (median)")
    ax2.set_ylabel("mean PSNR (dB)")
    ax2.set_title("decoder speed vs quality")
    ax2.margins(x=0.35, y=0.2)
    save_plot(fig, png_path)


########################################################################################################
# CLI


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 96x160, got {text!r}") from None
    return h, w


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = VAEBenchConfig()
    add_common_arguments(p, default_out=DEFAULT_OUT)
    p.add_argument("--plot", default=None, metavar="PATH", help="PNG (default: --out with .png)")
    p.add_argument("--extra-lightvae", action="append", default=[], metavar="PATH",
                   help="another LightVAE decoder: a nano_lightvae_* run dir, a run checkpoint or a "
                        "checkpoint folder (repeatable)")
    p.add_argument("--weights", choices=("ema", "raw"), default=d.weights, help="student weights of a run")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"held-out clip shards (default {DEFAULT_DATA}); "
                                                        "if absent, clips are rendered from --world-seeds")
    p.add_argument("--world-seeds", type=_seeds, default=d.world_seeds,
                   help="render fallback: world seeds (default %(default)s; not training worlds)")
    p.add_argument("--size", type=_size, default=d.size, help="render fallback HxW (default 96x160)")
    p.add_argument("--clips", type=int, default=d.clips, help=f"clips (default {d.clips})")
    p.add_argument("--frames", type=int, default=d.frames,
                   help=f"frames per clip, 1 + 4k (default {d.frames})")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help=f"timing rounds per clip (default {d.repeats})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads (default 1: the async decode worker's share; timed on the thread's "
                        "CPU clock); 0 = torch's default, timed on the wall clock")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=d.dtype)
    p.add_argument("--quick", action="store_true", help="at most {clips} clips, {frames} frames, {repeats} "
                   "rounds (a smoke run)".format(**VAEBenchConfig.QUICK))


def config_from_args(args: argparse.Namespace) -> VAEBenchConfig:
    cfg = VAEBenchConfig(clips=args.clips, frames=args.frames, repeats=args.repeats, dtype=args.dtype,
                         threads=args.threads, data=args.data, world_seeds=tuple(args.world_seeds),
                         size=tuple(args.size), weights=args.weights)
    if args.quick:
        q = VAEBenchConfig.QUICK
        cfg = dataclasses.replace(cfg, clips=min(cfg.clips, q["clips"]), frames=min(cfg.frames, q["frames"]),
                                  repeats=min(cfg.repeats, q["repeats"]))
    return cfg


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    res = run(cfg, args.checkpoint, args.extra_lightvae, log=lambda s: print(s, file=sys.stderr))
    png = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    plot(res, png)
    rel = png.name if png.parent == Path(args.out).parent else str(png)
    write_report(args.out, to_markdown(res, rel), args.json, res)
    for name, v in res["summary"]["decoders"].items():
        print(f"{name}: PSNR {v['psnr_db']:.2f} dB, SSIM {v['ssim']:.4f}, decode "
              f"{v['decode_ms_per_step']:.1f} ms / {cfg.frames_per_step} frames, "
              f"{v['speedup_vs_full']:.2f}x vs full")
    print(f"wrote {args.out}, {png}" + (f", {args.json}" if args.json else ""))
    return 0
