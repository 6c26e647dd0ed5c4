"""The tiny random-init world model the session, decode and bench tests share (seconds on one CPU core).

Importable from every test module as `tiny_world` (pyproject.toml: [tool.pytest.ini_options] pythonpath =
["tests"]). Sizes: 16x32 pixels = 2 x 4 latents (VAE stride 8) = 1 x 2 DiT tokens per latent; the nano clip
schedule and memory (2 past + 4 new latents, 4 memory slots), 2 sampler steps.
"""

from __future__ import annotations

import dataclasses

import torch

from worldstream.infer import config as session_config
from worldstream.infer.model_bundle import InferenceBundle, prepare_bundle
from worldstream.model.dit import ActionConfig, DiTConfig, WorldDiT
from worldstream.model.vae import VAE, LightVAE, VAEConfig, prune_decoder

H, W = 16, 32  # pixels: 2 x 4 latents (VAE stride 8), 1 x 2 DiT tokens per latent
TINY_VAE = VAEConfig(dim=4, dec_dim=6, z_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(True, True))
TINY_ACTION = ActionConfig(blocks=(0,), heads_num=1, hidden_size=8, img_hidden_size=32, keyboard_hidden_dim=64,
                           mouse_hidden_dim=64)
TINY_DIT = DiTConfig(in_dim=8, out_dim=8, dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8, text_len=4,
                     action=TINY_ACTION, camera_block=8, sigma_theta=0.8, rope_overflow="extend")
TINY_SESSION = dataclasses.replace(session_config.NANO, height=H, width=W, steps=2, seed=5)
PROMPT = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))  # [L, text_dim] prompt embedding
MODEL_SEED = 0  # torch seed of the random init (the caller's RNG state is restored afterwards)
LIGHT_PRUNE = 0.5  # LightVAE: fraction of decoder channels pruned


def tiny_bundle(dit_cfg: DiTConfig = TINY_DIT, dtype=torch.bfloat16, int8: bool = False, light: bool = False,
                text=None) -> InferenceBundle:
    """Random-init DiT + VAE (LightVAE with `light`), seeded and prepared like a shipped bundle."""
    with torch.random.fork_rng():
        torch.manual_seed(MODEL_SEED)
        dit, vae = WorldDiT(dit_cfg), VAE(TINY_VAE).init_weights()
        if light:
            vae = LightVAE(vae, prune_decoder(vae, LIGHT_PRUNE))
    return prepare_bundle(dit, vae, text, dtype=dtype, int8=int8)
