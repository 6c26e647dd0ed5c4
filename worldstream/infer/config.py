"""Streaming inference settings: `SessionConfig` (clip schedule, memory, sampler, switches) and its presets.

Sources: the official streaming pipelines (facts 5.1-5.5) for `mg3_5b`; `nano` follows the training windows
of `worldstream/train/conditioning.py` (P = 2 clean past latents + F = 4 new latents, 4 memory latents
including the anchor, reference frames 8 frames apart as in MG3), so the session runs exactly the clip
shapes the model was trained on:

| preset | first clip | later clips: window = past + new latents | memory | sampler |
|---|---|---|---|---|
| mg3_5b | 57 frames: image + 14 latents | 56 frames = 4 + 10 (40 new) | 5 incl. anchor | UniPC, 3 steps |
| nano | 25 frames: image + 6 latents | 24 frames = 2 + 4 (16 new) | 4 incl. anchor | UniPC, 3 steps |
(anchor: frame 4 = latent 1; shift 5 for both.)

NOTE the nano first clip is image + P + F = 7 latents, the first-clip window the base stage trains (a
first clip of image + 4 latents would be a shape the model never saw).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch

from worldstream.geometry.camera import MG3_SCHEDULE, ClipSchedule
from worldstream.geometry.memory import MemoryBankConfig
from worldstream.geometry.retrieval import MG3_RETRIEVAL, RetrievalConfig

__all__ = ["SamplerKind", "SessionConfig", "MG3_5B", "NANO", "PRESETS", "preset", "with_cpu_threads",
           "DEFAULT_CPU_DIT_THREADS"]

SamplerKind = Literal["unipc", "euler", "few_step"]
DTypeName = Literal["bfloat16", "float32"]
FEW_STEP_STEPS = 4  # FewStepConfig().denoising_timesteps has 4 entries (diffusion/samplers.py)
# DiT intra-op threads of `generate` / `play` on CPUs: 1. Measured on the shared 2-core machine
# (docs/results/speed.md): the DiT on 2 threads beside a busy core ran ~20x slower than on 1 (OpenMP
# threads wait for each other at every op); with async decode the worker takes the other core(s)
DEFAULT_CPU_DIT_THREADS = 1


@dataclass(frozen=True)
class SessionConfig:
    """How a `WorldSession` streams. Every number of the MG3 schedule is a field (STYLE 10)."""

    # --- clip schedule (facts 5.2): first clip, window, new frames, clean past latents, VAE time stride
    schedule: ClipSchedule = field(default_factory=lambda: MG3_SCHEDULE)
    # --- memory (facts 4.9): one slot per reference frame (window end - offset); the last slot is the anchor
    retrieval: RetrievalConfig = field(default_factory=lambda: MG3_RETRIEVAL)
    use_memory: bool = True  # False: no memory tokens in any clip (ablation, `--no-memory`)
    anchor: bool = True  # MG3 rule: the last memory slot is the anchor latent (frame 4 -> latent 1)
    memory_max_entries: int | None = 4096  # MemoryBank cap (4096 latents = 16k frames); None: unbounded
    retrieval_method: Literal["cascade", "full"] = "cascade"  # MemoryBank.retrieve: fast | exact full scan
    # --- sampling (facts 5.3): a fresh scheduler per clip; shift 5; distilled model 3 steps, no CFG
    sampler: SamplerKind = "unipc"
    steps: int = 3
    shift: float = 5.0
    timestep_in_latent_dtype: bool = True  # official quirk: bf16 timestep tokens (999 -> 1000, 713 -> 712)
    # --- switches (int8, light_vae, rope_overflow, dtype act when the models are loaded: load_bundle_for)
    int8: bool = False  # INT8 q/k/v/o (official --use_int8), applied when the bundle is loaded
    # how the INT8 layers compute (model/quant.py): "int8" = W8A8 int8 GEMM (official Triton kernels),
    # "dequant" = dequantised weights + bf16 linear (official no-Triton fallback), "auto" = int8 on CUDA,
    # dequant on CPUs (W8A8 elementwise passes cost more than the int8 GEMM saves: nano 0.85x vs ~1.0x)
    int8_compute: Literal["auto", "int8", "dequant"] = "auto"
    light_vae: bool = False  # decode with the pruned LightVAE decoder (official default: mg_lightvae_v2)
    rope_overflow: Literal["error", "extend"] = "extend"  # RoPE past the 2048-latent table (long sessions)
    seed: int = 0  # noise generator (official --seed 42)
    dtype: DTypeName = "bfloat16"  # DiT weights, latents, Plücker maps and text context (official bf16)
    # --- pixels
    height: int = 704  # generation size (official 704x1280; facts 5.1)
    width: int = 1280
    image_fit: Literal["crop", "stretch"] = "crop"  # crop: centre-crop to the aspect then resize (get_data);
    # stretch: plain resize of the whole image (interactive pipeline)
    decode_segment_size: int = 4  # latents per decoder call (official WAN_VAE_SEGMENT_SIZE default 4)
    fps: int = 16  # playback rate of written videos (official sample_fps 16)
    # --- async decode (official --use_async_vae, facts 5.7; infer/decode.py): a worker process owns the
    # decoder and its cache, so the DiT samples clip k+1 while clip k decodes (session submit/next_frames)
    async_decode: bool = False  # off: decode in the calling process (the default; tests, scripts)
    decode_queue_size: int = 2  # bounded queues, latents in / frames out (official latent queue maxsize 2)
    decode_threads: int | None = None  # worker intra-op threads; None: half the cores (1 of 2)
    dit_threads: int | None = None  # this process's intra-op threads while async; None: the other cores
    decode_device: str = "auto"  # auto: the CPU for CPU sessions, on CUDA the GPU after the DiT ranks (MG3)
    decode_max_restarts: int = 3  # consecutive worker crashes without a decoded clip before giving up

    def __post_init__(self):
        def bad(msg: str):
            raise ValueError(f"SessionConfig: {msg}")

        if self.sampler not in ("unipc", "euler", "few_step"):
            bad(f"sampler must be 'unipc', 'euler' or 'few_step', got {self.sampler!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            bad(f"steps must be an int >= 1, got {self.steps!r}")
        if self.sampler == "few_step" and self.steps != FEW_STEP_STEPS:
            bad(f"the few-step student uses {FEW_STEP_STEPS} fixed steps, got steps={self.steps}")
        if not self.shift > 0:
            bad(f"shift must be > 0, got {self.shift}")
        if self.dtype not in ("bfloat16", "float32"):
            bad(f"dtype must be 'bfloat16' or 'float32' (float16 is pathologically slow on CPUs), "
                f"got {self.dtype!r}")
        if self.int8_compute not in ("auto", "int8", "dequant"):
            bad(f"int8_compute must be 'auto', 'int8' or 'dequant', got {self.int8_compute!r}")
        if self.image_fit not in ("crop", "stretch"):
            bad(f"image_fit must be 'crop' or 'stretch', got {self.image_fit!r}")
        if self.rope_overflow not in ("error", "extend"):
            bad(f"rope_overflow must be 'error' or 'extend', got {self.rope_overflow!r}")
        if self.retrieval_method not in ("cascade", "full"):
            bad(f"retrieval_method must be 'cascade' or 'full', got {self.retrieval_method!r}")
        if self.height < 1 or self.width < 1:
            bad(f"height and width must be positive, got {self.height}x{self.width}")
        if self.decode_segment_size < 1 or self.fps < 1:
            bad(f"decode_segment_size and fps must be >= 1, got {self.decode_segment_size}, {self.fps}")
        if self.decode_queue_size < 1 or self.decode_max_restarts < 0:
            bad(f"decode_queue_size must be >= 1 and decode_max_restarts >= 0, got {self.decode_queue_size}, "
                f"{self.decode_max_restarts}")
        if any(t is not None and t < 1 for t in (self.decode_threads, self.dit_threads)):
            bad(f"decode_threads and dit_threads must be >= 1 or None, got {self.decode_threads}, "
                f"{self.dit_threads}")
        # the reference frames of clip 1 must exist: window end - largest offset >= 0
        if self.use_memory:
            end = self.schedule.window(1).end
            if min(self.retrieval.base_offsets) < 1 or end - max(self.retrieval.base_offsets) < 0:
                bad(f"retrieval.base_offsets {self.retrieval.base_offsets} must be >= 1 and reach no "
                    f"earlier than frame 0 from clip 1's window end {end}")
        # MemoryBankConfig validates the cap (>= 2)
        self.memory_bank_config()

    # ---- derived -----------------------------------------------------------------------------------
    @property
    def num_memory(self) -> int:
        """Memory latents per clip, the anchor included (MG3 5, nano 4)."""
        return self.retrieval.num_memory if self.use_memory else 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def first_step_frames(self) -> int:
        """Frames the first `step` returns: the first clip minus the image frame (MG3 56, nano 24)."""
        return self.schedule.first_clip_frames - 1

    @property
    def step_frames(self) -> int:
        """Frames every later `step` returns (MG3 40, nano 16)."""
        return self.schedule.new_frames

    def memory_bank_config(self) -> MemoryBankConfig:
        return MemoryBankConfig(max_entries=self.memory_max_entries, retrieval=self.retrieval,
                                schedule=self.schedule)

    def replace(self, **changes) -> SessionConfig:
        return dataclasses.replace(self, **changes)


########################################################################################################
# Presets

MG3_5B = SessionConfig(
    schedule=MG3_SCHEDULE,  # 57 / 56 / 40 frames, 4 past latents (facts 5.2)
    retrieval=MG3_RETRIEVAL,  # 5 slots, reference frames end-1, -9, ..., -33, anchor frame 4 (facts 4.9)
    sampler="unipc", steps=3, shift=5.0,  # distilled model (facts 5.3)
    light_vae=True,  # generate.py default --vae_type mg_lightvae_v2 (facts 6.2)
    seed=42,  # generate.py default --seed
    height=704, width=1280,
)

NANO = SessionConfig(
    # = train/conditioning.py TrainWindowConfig().schedule: first clip image + 2 + 4 latents (25 frames),
    # later windows 2 past + 4 new latents (24 f, 16 new)
    schedule=ClipSchedule(first_clip_frames=25, clip_frames=24, new_frames=16, past_latents=2,
                          temporal_stride=4),
    # = MemoryWindowConfig().retrieval: 4 slots (3 retrieved + the anchor), MG3's 8-frame spacing
    retrieval=RetrievalConfig(base_offsets=(1, 9, 17, 25)),
    sampler="unipc", steps=3, shift=5.0,
    height=96, width=160,  # the data engine's default render size (SPEC: ~96x160 px)
)

PRESETS: dict[str, SessionConfig] = {"nano": NANO, "mg3_5b": MG3_5B}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def with_cpu_threads(cfg: SessionConfig, dit_threads: int | None = None) -> SessionConfig:
    """`cfg` with the DiT on `dit_threads` (None: DEFAULT_CPU_DIT_THREADS) intra-op threads; with async
    decode the decode worker gets the remaining cores (at least 1). Sync sessions only record the number:
    the caller sets `torch.set_num_threads` (a session never changes threads without a worker)."""
    dit = DEFAULT_CPU_DIT_THREADS if dit_threads is None else dit_threads
    if isinstance(dit, bool) or not isinstance(dit, int) or dit < 1:
        raise ValueError(f"DiT threads must be an int >= 1, got {dit_threads!r}")
    decode = max(1, available_cores() - dit) if cfg.async_decode else cfg.decode_threads
    return cfg.replace(dit_threads=dit, decode_threads=decode)


def preset(name: str) -> SessionConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown session preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]
