"""The official Matrix-Game 3.0 release folder: validation, paths, DiT config mapping and weight loading.

Layout (Hugging Face `Skywork/Matrix-Game-3.0`, facts 9.1):
    base_model/               config.json + diffusion_pytorch_model.safetensors   (50 steps + CFG)
    base_distilled_model/     config.json + diffusion_pytorch_model.safetensors   (3 steps; the default)
    Wan2.2_VAE.pth            Wan2.2 VAE (always the encoder; the decoder when vae_type = "wan")
    MG-LightVAE.pth           pruned decoder, p = 0.5   (vae_type "mg_lightvae")
    MG-LightVAE_v2.pth        pruned decoder, p = 0.75  (vae_type "mg_lightvae_v2", the generate.py default)
    models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/   umT5-XXL encoder (Wan naming) and its tokenizer

The DiT keys are already ours (dit.py uses the official names), so the DiT needs no key map; the T5 map
lives in model/text.py. The diffusers config.json is mapped to `DiTConfig` by `DiTConfig.from_official`
(dit.py), which this module calls. NOTE doubt: diffusers shards large saves (`*.safetensors.index.json` +
shards); the facts list one file per folder, but a sharded folder is accepted too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

ModelKind = Literal["distilled", "base"]
VaeType = Literal["wan", "mg_lightvae", "mg_lightvae_v2"]


@dataclass(frozen=True)
class OfficialLayout:
    """File names of the official release (facts 9.1)."""

    base_model: str = "base_model"
    distilled_model: str = "base_distilled_model"
    dit_config: str = "config.json"
    dit_weights: str = "diffusion_pytorch_model.safetensors"
    dit_weights_index: str = "diffusion_pytorch_model.safetensors.index.json"  # diffusers sharded save
    wan_vae: str = "Wan2.2_VAE.pth"
    lightvae: str = "MG-LightVAE.pth"
    lightvae_v2: str = "MG-LightVAE_v2.pth"
    t5_checkpoint: str = "models_t5_umt5-xxl-enc-bf16.pth"
    t5_tokenizer: str = "google/umt5-xxl"


MG3_LAYOUT = OfficialLayout()


@dataclass(frozen=True)
class OfficialPaths:
    root: Path
    model: ModelKind
    vae_type: VaeType
    dit_dir: Path
    dit_config: Path
    dit_weights: tuple[Path, ...]  # one file, or the shards listed by the index
    vae_encoder: Path  # Wan2.2_VAE.pth
    vae_decoder: Path  # the decoder weights for vae_type
    t5_checkpoint: Path | None  # None when text=False
    t5_tokenizer: Path | None


def _dit_weight_files(dit_dir: Path, layout: OfficialLayout, missing: list[str]) -> tuple[Path, ...]:
    single, index = dit_dir / layout.dit_weights, dit_dir / layout.dit_weights_index
    if single.is_file():
        return (single,)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a diffusers safetensors index ({e})") from e
        shards = tuple(dit_dir / name for name in sorted(set(weight_map.values())))
        missing.extend(f"{s} (DiT weight shard listed in {index.name})" for s in shards if not s.is_file())
        return shards
    missing.append(f"{single} (DiT weights)")
    return ()


def find_official_files(root: str | Path, model: ModelKind = "distilled",
                        vae_type: VaeType = "mg_lightvae_v2", text: bool = True,
                        layout: OfficialLayout = MG3_LAYOUT) -> OfficialPaths:
    """Validate an official checkpoint folder for one configuration; one error lists everything missing."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"official checkpoint folder not found: {root}")
    if model not in ("distilled", "base"):
        raise ValueError(f"model must be 'distilled' or 'base', got {model!r}")
    decoders = {"wan": layout.wan_vae, "mg_lightvae": layout.lightvae, "mg_lightvae_v2": layout.lightvae_v2}
    if vae_type not in decoders:
        raise ValueError(f"vae_type must be one of {sorted(decoders)}, got {vae_type!r}")
    missing: list[str] = []

    def need(path: Path, what: str, is_dir: bool = False) -> Path:
        if not (path.is_dir() if is_dir else path.is_file()):
            missing.append(f"{path} ({what})")
        return path

    dit_dir = root / (layout.distilled_model if model == "distilled" else layout.base_model)
    weights: tuple[Path, ...] = ()
    if need(dit_dir, f"{model} DiT folder", is_dir=True).is_dir():
        need(dit_dir / layout.dit_config, "DiT config")
        weights = _dit_weight_files(dit_dir, layout, missing)
    vae_encoder = need(root / layout.wan_vae, "Wan2.2 VAE, always the encoder")
    vae_decoder = root / decoders[vae_type]
    if vae_type != "wan":
        need(vae_decoder, f"{vae_type} decoder")
    t5 = need(root / layout.t5_checkpoint, "umT5-XXL encoder") if text else None
    tok = need(root / layout.t5_tokenizer, "umT5 tokenizer folder", is_dir=True) if text else None
    if missing:
        raise FileNotFoundError(f"official checkpoint folder {root} is incomplete for model={model}, "
                                f"vae_type={vae_type}; missing:\n  " + "\n  ".join(missing))
    return OfficialPaths(root, model, vae_type, dit_dir, dit_dir / layout.dit_config, weights, vae_encoder,
                         vae_decoder, t5, tok)


####################################################################################################
# DiT


def dit_config_from_official(config_json: str | Path | dict, **overrides):
    """Official diffusers config.json (path or dict) -> DiTConfig (via DiTConfig.from_official, dit.py)."""
    from worldstream.model.dit import DiTConfig

    if isinstance(config_json, dict):
        return DiTConfig.from_official(config_json, **overrides)
    path = Path(config_json)
    if not path.is_file():
        raise FileNotFoundError(f"DiT config not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    return DiTConfig.from_official(data, **overrides)


def load_official_dit_state_dict(files: tuple[Path, ...] | list[Path],
                                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Read the DiT safetensors file(s); keys are already the official = our names."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(str(f), device=str(device))
        dup = sorted(set(part) & set(state))
        if dup:
            raise ValueError(f"{f}: keys already read from another shard, e.g. {dup[:5]}")
        state.update(part)
    return state


def load_official_dit(paths: OfficialPaths, dtype: torch.dtype = torch.bfloat16,
                      device: torch.device | str = "cpu", int8: bool = False, **config_overrides):
    """The official DiT as a WorldDiT: meta build, strict checked assignment, cast to `dtype` (bf16, as the
    pipeline), then optionally the official INT8 conversion (weights quantised from the cast weights; the
    scales follow `dtype`, like the pipeline's later model.to(bf16))."""
    from worldstream.checkpoint import load_into, params_on_meta
    from worldstream.model.dit import WorldDiT
    from worldstream.model.quant import convert_to_int8

    config = dit_config_from_official(paths.dit_config, **config_overrides)
    with params_on_meta():
        model = WorldDiT(config)
    source = ", ".join(str(f) for f in paths.dit_weights)
    model = load_into(model, load_official_dit_state_dict(paths.dit_weights, device), source).to(dtype)
    if int8:
        model = convert_to_int8(model).to(dtype)
    return model.eval()


def load_torch_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A `.pth` state dict of the release (VAE, T5), read safely (weights_only, memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state
