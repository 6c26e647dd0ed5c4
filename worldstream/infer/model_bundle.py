"""The models a streaming session needs: DiT + VAE (+ LightVAE decoder) + text encoder, ready for inference.

Three sources, one `InferenceBundle`:
* Our checkpoint folder (`checkpoints/nano/`): sub-folders `dit/`, `vae/` and optionally `lightvae/` (the
  pruned decoder), each a self-describing checkpoint of `worldstream/checkpoint.py` (config.json +
  model.safetensors + meta.json), built with `from_pretrained` (meta device, checked keys and shapes). The
  text encoder follows the DiT: text_dim 384 is the packaged all-MiniLM-L6-v2 (model/text.py).
* The official release folder (model/convert.py: `base_distilled_model/`, `Wan2.2_VAE.pth`,
  `MG-LightVAE*.pth`, umT5): the official DiT, the Wan2.2 VAE as encoder, the LightVAE decoder on request.
* Nothing (no folder given and `checkpoints/<preset>/` absent): the preset's models randomly initialised from
  a fixed seed, with a `RandomInitWarning`. The trained nano ships later; until then every command runs end
  to end on random weights (the frames are noise, but deterministic).

Preparation (ours, for speed): weights cast to the session dtype (bf16 on the fast path), `eval()`, no grads;
INT8 q/k/v/o conversion after the cast (official order: quantise the bf16 weights), computing as
`int8_compute` says ("auto": the W8A8 int8 GEMM on CUDA, dequantised weights on CPUs, model/quant.py); the
VAE stores its convs channels-last in bf16 (several times faster on CPUs with AMX).

The session a checkpoint suggests (`suggest_session_config`, `InferenceBundle.session_config`) follows what
its DiT was trained for: `dit/meta.json` "sampler" = "few_step" (a DMD student, written by
`train/recipes/nano.py::export_nano`) -> the few-step sampler with its 4 steps; "unipc" / "euler" (or no
key) -> that sampler with the preset's steps. The DiT is built with the session's
`rope_overflow` ("extend": sessions past the 2048-latent RoPE table); it is not a parameter, so any
checkpoint loads.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worldstream.model.dit import DiTConfig, WorldDiT
from worldstream.model.text import TextConfig, TextEncoder
from worldstream.model.vae import VAE, LightVAE, VAEConfig

__all__ = ["BundleLayout", "InferenceBundle", "RandomInitWarning", "default_checkpoint", "has_light_vae",
           "load_bundle", "load_bundle_for", "prepare_bundle", "resolve_checkpoint", "session_config_for",
           "suggest_session_config"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class RandomInitWarning(UserWarning):
    """The models are randomly initialised (no trained checkpoint found)."""


@dataclass(frozen=True)
class BundleLayout:
    """Sub-folders of our checkpoint layout (each a checkpoint.py folder)."""

    dit: str = "dit"
    vae: str = "vae"
    lightvae: str = "lightvae"  # optional: pruned LightVAE decoder (config pruning_rate > 0)
    checkpoints: str = "checkpoints"  # default folders: <cwd or repo>/checkpoints/<preset>
    official_marker: str = "base_distilled_model"  # a folder holding this is an official release


LAYOUT = BundleLayout()
RANDOM_INIT_SEED = 0  # random weights are the same in every process (same seed -> same video)
RANDOM_LIGHTVAE_PRUNING = 0.5  # random-init LightVAE: MG-LightVAE's p = 0.5 (facts 6.2)
RANDOM_INIT_PRESETS = ("nano",)  # presets small enough to build randomly (mg3_5b would need ~26 GB)


@dataclass
class InferenceBundle:
    """DiT, VAE and text encoder of one model, prepared for inference."""

    dit: WorldDiT
    vae: VAE | LightVAE  # encode (full encoder) + stream_decode (full or pruned decoder)
    text: TextEncoder | None  # None: prompts must be given as embeddings [L, text_dim]
    source: str = "modules"  # where the weights came from (a folder, "random init", ...)
    random_init: bool = False
    preset: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the DiT checkpoint's meta.json ({}: none)

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.dit.patch_embedding.weight.device

    @property
    def vae_config(self) -> VAEConfig:
        return self.vae.teacher.cfg if isinstance(self.vae, LightVAE) else self.vae.cfg

    @property
    def latent_channels(self) -> int:
        return self.vae_config.z_dim

    def session_config(self):
        """The SessionConfig this model was trained for: its preset, the sampler of its meta.json."""
        from worldstream.infer.config import preset

        return session_config_for(preset(self.preset or "nano"), self.meta, self.source)

    def check(self) -> InferenceBundle:
        """Raise a clear error if the DiT and the VAE do not fit together."""
        d, v = self.dit.cfg, self.vae_config
        if d.in_dim != v.z_dim or d.out_dim != v.z_dim:
            raise ValueError(f"DiT in/out_dim {d.in_dim}/{d.out_dim} != VAE z_dim {v.z_dim}")
        if d.camera_block != v.spatial_stride:
            raise ValueError(f"DiT camera_block {d.camera_block} != VAE spatial stride {v.spatial_stride} "
                             "(one Plücker block per latent pixel)")
        if self.text is not None and (self.text.dim != d.text_dim or self.text.text_len > d.text_len):
            raise ValueError(f"text encoder (dim {self.text.dim}, text_len {self.text.text_len}) does not "
                             f"fit the DiT (text_dim {d.text_dim}, text_len {d.text_len})")
        return self


########################################################################################################
# Preparation


def prepare_bundle(dit: WorldDiT, vae: VAE | LightVAE, text: TextEncoder | None, *, dtype: torch.dtype,
                   int8: bool = False, int8_compute: str = "auto", device: torch.device | str = "cpu",
                   source: str = "modules", random_init: bool = False, preset: str | None = None,
                   meta: dict[str, Any] | None = None) -> InferenceBundle:
    """Cast, freeze and optionally INT8-convert the modules (in place) -> InferenceBundle.

    int8_compute applies to every Int8Linear of the DiT (also one converted before, e.g. on official load).
    """
    from worldstream.model.quant import convert_to_int8, default_int8_compute, set_int8_compute

    dit = dit.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if int8:
        dit = convert_to_int8(dit).to(dtype)  # quantise the cast weights; scales follow dtype (facts 7)
    set_int8_compute(dit, default_int8_compute(device) if int8_compute == "auto" else int8_compute)
    vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if dtype == torch.bfloat16:
        for m in (vae.teacher, vae.student) if isinstance(vae, LightVAE) else (vae,):
            m.to_channels_last()
    return InferenceBundle(dit, vae, text, source, random_init, preset, dict(meta or {})).check()


def text_config_for(dit_cfg: DiTConfig) -> TextConfig:
    """The text encoder our checkpoints pair with a DiT: MiniLM (384 wide), text_len of the DiT."""
    minilm = TextConfig()
    if dit_cfg.text_dim != minilm.dim:
        raise ValueError(f"the DiT expects text_dim={dit_cfg.text_dim}; outside the official release folder "
                         f"only the MiniLM encoder (dim {minilm.dim}) is available")
    return dataclasses.replace(minilm, text_len=dit_cfg.text_len)


########################################################################################################
# Sources


def default_checkpoint(preset: str) -> Path | None:
    """`checkpoints/<preset>` under the working directory or the repository, if it holds a DiT."""
    for root in (Path.cwd(), REPO_ROOT):
        d = root / LAYOUT.checkpoints / preset
        if (d / LAYOUT.dit / "config.json").is_file():
            return d
    return None


def resolve_checkpoint(checkpoint: str | Path | None, preset: str = "nano") -> Path | None:
    """The folder `load_bundle` would load: `checkpoint`, else `default_checkpoint(preset)` (None: random)."""
    if checkpoint is None:
        return default_checkpoint(preset)
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise NotADirectoryError(f"checkpoint folder not found: {folder}")
    return folder


def _is_official(folder: Path) -> bool:
    return (folder / LAYOUT.official_marker).is_dir()


def has_light_vae(checkpoint: str | Path | None, preset: str = "nano") -> bool:
    """Whether `light_vae=True` can load: our folder with a lightvae/ checkpoint, an official release
    folder (MG-LightVAE files), or random initialisation (a pruned random decoder)."""
    folder = resolve_checkpoint(checkpoint, preset)
    if folder is None or _is_official(folder):
        return True
    return (folder / LAYOUT.lightvae / "config.json").is_file()


def session_config_for(base, meta: dict[str, Any], where: str = "the checkpoint"):
    """`base` (a SessionConfig) with the sampler a DiT's meta.json names (few_step -> its fixed steps)."""
    from worldstream.infer.config import FEW_STEP_STEPS, SessionConfig

    name = meta.get("sampler")
    if name is None:
        return base
    if name == "few_step":
        return base.replace(sampler="few_step", steps=FEW_STEP_STEPS)
    if name in ("unipc", "euler"):
        # a few-step base -> the multi-step default (3, the distilled model's; facts 5.3)
        steps = base.steps if base.sampler != "few_step" else SessionConfig.steps
        return base.replace(sampler=name, steps=steps)
    raise ValueError(f"{where}: {LAYOUT.dit}/meta.json names sampler {name!r}; expected 'few_step', "
                     "'unipc' or 'euler'")


def suggest_session_config(checkpoint: str | Path | None = None, preset: str = "nano"):
    """The SessionConfig for the model `load_bundle(checkpoint, preset)` would load, without loading it:
    the preset (mg3_5b for an official release folder) with the sampler of `dit/meta.json`."""
    from worldstream.checkpoint import load_meta
    from worldstream.infer.config import preset as session_preset

    folder = resolve_checkpoint(checkpoint, preset)
    if folder is None:
        return session_preset(preset)
    if _is_official(folder):
        return session_preset("mg3_5b")
    dit = folder / LAYOUT.dit
    meta = load_meta(dit) if (dit / "meta.json").is_file() else {}
    return session_config_for(session_preset(preset), meta, str(folder))


def _random_models(preset: str, rope_overflow: str, light_vae: bool) -> tuple[WorldDiT, VAE | LightVAE]:
    from worldstream.model import dit as dit_mod
    from worldstream.model import vae as vae_mod
    from worldstream.model.vae import prune_decoder

    if preset not in dit_mod.PRESETS or preset not in vae_mod.PRESETS:
        raise ValueError(f"no random initialisation for preset {preset!r}: it needs both a DiT and a VAE "
                         f"preset (DiT {sorted(dit_mod.PRESETS)}, VAE {sorted(vae_mod.PRESETS)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        # NOTE PyTorch's default init, not `init_weights` (which zeroes the head, so every frame would be the
        # same noise whatever the actions): random weights still react to images, prompts and actions
        dit = WorldDiT(dataclasses.replace(dit_mod.preset(preset), rope_overflow=rope_overflow))
        vae = VAE(vae_mod.preset(preset)).init_weights()
        if light_vae:
            vae = LightVAE(vae, prune_decoder(vae, RANDOM_LIGHTVAE_PRUNING))
    return dit, vae


def _our_models(folder: Path, rope_overflow: str, light_vae: bool) -> tuple[WorldDiT, VAE | LightVAE]:
    from worldstream.checkpoint import from_pretrained

    def build_dit(c: DiTConfig) -> WorldDiT:
        return WorldDiT(dataclasses.replace(c, rope_overflow=rope_overflow))

    dit = from_pretrained(folder / LAYOUT.dit, build_dit, expected_type=DiTConfig)
    vae = from_pretrained(folder / LAYOUT.vae, VAE, expected_type=VAEConfig)
    if light_vae:
        light = folder / LAYOUT.lightvae
        if not (light / "config.json").is_file():
            raise FileNotFoundError(f"light_vae: {folder} has no {LAYOUT.lightvae}/ checkpoint (the pruned "
                                    "decoder)")
        vae = LightVAE(vae, from_pretrained(light, VAE, expected_type=VAEConfig))
    return dit, vae


def _official_models(root: Path, dtype: torch.dtype, int8: bool, rope_overflow: str, light_vae: bool,
                     vae_type: str, text: bool):
    from worldstream.model.convert import find_official_files, load_official_dit
    from worldstream.model.text import UMT5Encoder
    from worldstream.model.vae import load_official_vae

    paths = find_official_files(root, "distilled", vae_type if light_vae else "wan", text=text)
    dit = load_official_dit(paths, dtype=dtype, int8=int8, rope_overflow=rope_overflow)
    vae = load_official_vae(paths.vae_encoder, "mg3_wan22", dtype)
    if light_vae:
        name = {"mg_lightvae": "mg3_lightvae_p050", "mg_lightvae_v2": "mg3_lightvae_v2_p075"}[vae_type]
        vae = LightVAE(vae, load_official_vae(paths.vae_decoder, name, dtype))
    enc = None
    if text:
        enc = UMT5Encoder.from_files(paths.t5_checkpoint, paths.t5_tokenizer, text_len=dit.cfg.text_len,
                                     dtype=torch.bfloat16)
    return dit, vae, enc


def load_bundle(checkpoint: str | Path | None = None, preset: str = "nano", *,
                dtype: torch.dtype = torch.bfloat16, int8: bool = False, int8_compute: str = "auto",
                light_vae: bool = False, rope_overflow: str = "extend", text: bool = True,
                device: torch.device | str = "cpu", vae_type: str = "mg_lightvae_v2") -> InferenceBundle:
    """Load a model for streaming.

    checkpoint: our folder (dit/, vae/[, lightvae/]) or an official release folder; None -> the default
    `checkpoints/<preset>` if present, else random initialisation of `preset` (RandomInitWarning).
    text=False skips the text encoder (prompts then go in as embeddings). vae_type picks the official
    LightVAE file ("mg_lightvae" p=0.5 or "mg_lightvae_v2" p=0.75) when light_vae is set. int8_compute:
    "auto" | "int8" | "dequant" (SessionConfig.int8_compute).
    """
    from worldstream.checkpoint import load_meta

    enc: TextEncoder | None = None
    folder = resolve_checkpoint(checkpoint, preset)
    meta: dict[str, Any] = {}
    if folder is None:
        if preset not in RANDOM_INIT_PRESETS:
            raise FileNotFoundError(f"no checkpoint for preset {preset!r}: pass a checkpoint folder (for "
                                    "mg3_5b the official release folder); random initialisation is only "
                                    f"offered for {', '.join(RANDOM_INIT_PRESETS)}")
        warnings.warn(f"no trained {preset!r} checkpoint found ({LAYOUT.checkpoints}/{preset}/ is absent): "
                      f"using randomly initialised models, so the frames are noise. Pass --checkpoint DIR "
                      "once trained weights exist.", RandomInitWarning, stacklevel=2)
        dit, vae = _random_models(preset, rope_overflow, light_vae)
        source, random_init = "random init", True
    else:
        source, random_init = str(folder), False
        if _is_official(folder):
            dit, vae, enc = _official_models(folder, dtype, int8, rope_overflow, light_vae, vae_type, text)
            return prepare_bundle(dit, vae, enc, dtype=dtype, int8=False, int8_compute=int8_compute,
                                  device=device, source=source, preset="mg3_5b")
        if not (folder / LAYOUT.dit).is_dir():
            raise FileNotFoundError(f"{folder} is neither a worldstream checkpoint (no {LAYOUT.dit}/ folder) "
                                    f"nor an official release folder (no {LAYOUT.official_marker}/)")
        dit, vae = _our_models(folder, rope_overflow, light_vae)
        if (folder / LAYOUT.dit / "meta.json").is_file():
            meta = load_meta(folder / LAYOUT.dit)
    if text:
        from worldstream.model.text import build_text_encoder

        enc = build_text_encoder(text_config_for(dit.cfg), device)
    return prepare_bundle(dit, vae, enc, dtype=dtype, int8=int8, int8_compute=int8_compute, device=device,
                          source=source, random_init=random_init, preset=preset, meta=meta)


def load_bundle_for(cfg, checkpoint: str | Path | None = None, preset: str = "nano", *, text: bool = True,
                    device: torch.device | str = "cpu") -> InferenceBundle:
    """`load_bundle` with a SessionConfig's load-time switches (dtype, int8, int8_compute, light_vae,
    rope_overflow)."""
    return load_bundle(checkpoint, preset, dtype=cfg.torch_dtype, int8=cfg.int8,
                       int8_compute=cfg.int8_compute, light_vae=cfg.light_vae,
                       rope_overflow=cfg.rope_overflow, text=text, device=device)
