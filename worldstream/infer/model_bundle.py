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
INT8 q/k/v/o conversion after the cast (official order: quantise the bf16 weights); the VAE stores its convs
channels-last in bf16 (several times faster on CPUs with AMX). The DiT is built with the session's
`rope_overflow` ("extend": sessions past the 2048-latent RoPE table); it is not a parameter, so any
checkpoint loads.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from worldstream.model.dit import DiTConfig, WorldDiT
from worldstream.model.text import TextConfig, TextEncoder
from worldstream.model.vae import VAE, LightVAE, VAEConfig

__all__ = ["BundleLayout", "InferenceBundle", "RandomInitWarning", "default_checkpoint", "load_bundle",
           "load_bundle_for", "prepare_bundle"]

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
                   int8: bool = False, device: torch.device | str = "cpu", source: str = "modules",
                   random_init: bool = False, preset: str | None = None) -> InferenceBundle:
    """Cast, freeze and optionally INT8-convert the modules (in place) -> InferenceBundle."""
    from worldstream.model.quant import convert_to_int8

    dit = dit.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if int8:
        dit = convert_to_int8(dit).to(dtype)  # quantise the cast weights; scales follow dtype (facts 7)
    vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if dtype == torch.bfloat16:
        for m in (vae.teacher, vae.student) if isinstance(vae, LightVAE) else (vae,):
            m.to_channels_last()
    return InferenceBundle(dit, vae, text, source, random_init, preset).check()


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
                dtype: torch.dtype = torch.bfloat16, int8: bool = False, light_vae: bool = False,
                rope_overflow: str = "extend", text: bool = True, device: torch.device | str = "cpu",
                vae_type: str = "mg_lightvae_v2") -> InferenceBundle:
    """Load a model for streaming.

    checkpoint: our folder (dit/, vae/[, lightvae/]) or an official release folder; None -> the default
    `checkpoints/<preset>` if present, else random initialisation of `preset` (RandomInitWarning).
    text=False skips the text encoder (prompts then go in as embeddings). vae_type picks the official
    LightVAE file ("mg_lightvae" p=0.5 or "mg_lightvae_v2" p=0.75) when light_vae is set.
    """
    enc: TextEncoder | None = None
    if checkpoint is None:
        checkpoint = default_checkpoint(preset)
    if checkpoint is None:
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
        folder = Path(checkpoint)
        if not folder.is_dir():
            raise NotADirectoryError(f"checkpoint folder not found: {folder}")
        source, random_init = str(folder), False
        if (folder / LAYOUT.official_marker).is_dir():
            dit, vae, enc = _official_models(folder, dtype, int8, rope_overflow, light_vae, vae_type, text)
            return prepare_bundle(dit, vae, enc, dtype=dtype, int8=False, device=device, source=source,
                                  preset="mg3_5b")
        if not (folder / LAYOUT.dit).is_dir():
            raise FileNotFoundError(f"{folder} is neither a worldstream checkpoint (no {LAYOUT.dit}/ folder) "
                                    f"nor an official release folder (no {LAYOUT.official_marker}/)")
        dit, vae = _our_models(folder, rope_overflow, light_vae)
    if text:
        from worldstream.model.text import build_text_encoder

        enc = build_text_encoder(text_config_for(dit.cfg), device)
    return prepare_bundle(dit, vae, enc, dtype=dtype, int8=int8, device=device, source=source,
                          random_init=random_init, preset=preset)


def load_bundle_for(cfg, checkpoint: str | Path | None = None, preset: str = "nano", *, text: bool = True,
                    device: torch.device | str = "cpu") -> InferenceBundle:
    """`load_bundle` with a SessionConfig's load-time switches (dtype, int8, light_vae, rope_overflow)."""
    return load_bundle(checkpoint, preset, dtype=cfg.torch_dtype, int8=cfg.int8, light_vae=cfg.light_vae,
                       rope_overflow=cfg.rope_overflow, text=text, device=device)
