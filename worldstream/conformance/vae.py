"""Conformance group `vae`: the golden `vae_tiny_*` vectors (golden README section 3).

The model is built from `vae_tiny_config.json` (`constructor_kwargs`, `lightvae.pruning_rate`,
`stream_decode` call arguments), so golden sets with other seeds or sizes are checked the same way.
Everything runs in float32; the README recommends max |diff| <= 1e-5 on every tensor.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

from worldstream.conformance import CaseResult, compare, guarded

GROUP = "vae"
CONFIG = "vae_tiny_config.json"
WEIGHTS = "vae_tiny_weights.safetensors"
LIGHT_WEIGHTS = "vae_tiny_lightvae_p050_weights.safetensors"
IO = "vae_tiny_io.safetensors"
TOL = 1e-5  # golden README section 3: values in (-1, 1), latents ~1


def applies(root: Path) -> bool:
    return all((Path(root) / f).is_file() for f in (CONFIG, WEIGHTS, IO))


def _latent_slice(expr: str) -> slice:
    """'stream_latents[:, :, 0:3]' -> slice(0, 3) (the call arguments recorded in the config)."""
    m = re.fullmatch(r"\s*stream_latents\[:,\s*:,\s*(\d+):(\d+)\]\s*", expr)
    if not m:
        raise ValueError(f"{CONFIG}: cannot parse stream latents {expr!r}")
    return slice(int(m.group(1)), int(m.group(2)))


def check(root: Path) -> Iterator[CaseResult]:
    import torch
    from safetensors.torch import load_file

    from worldstream.model.vae import VAE, WAN22_LATENT_MEAN, WAN22_LATENT_STD, VAEConfig

    root = Path(root)
    meta = json.loads((root / CONFIG).read_text())
    cfg = VAEConfig.from_official(meta["constructor_kwargs"])
    vae = VAE(cfg).eval()
    vae.load_state_dict({k: v.float() for k, v in load_file(root / WEIGHTS).items()}, strict=True)
    io = load_file(root / IO)
    video, z = io["video"].float(), io["encode_mean_normalised"]

    # 1. normalisation constants (exact float32 tensors of the official wrapper)
    if cfg.z_dim == len(WAN22_LATENT_MEAN):
        yield compare(GROUP, "scale_mean", torch.tensor(WAN22_LATENT_MEAN), io["scale_mean"], 0.0)
        yield compare(GROUP, "scale_inv_std", 1.0 / torch.tensor(WAN22_LATENT_STD), io["scale_inv_std"], 0.0)

    with torch.no_grad():
        # 2. encode: first frame alone, then chunks of 4 frames; mu only
        yield from guarded(
            GROUP,
            "encode_mean_raw",
            lambda: compare(
                GROUP, "encode_mean_raw", vae.encode(video, normalise=False), io["encode_mean_raw"], TOL
            ),
        )
        yield from guarded(
            GROUP,
            "encode_mean_normalised",
            lambda: compare(GROUP, "encode_mean_normalised", vae.encode(video), z, TOL),
        )
        # 3. decode, one latent at a time as the official decode()
        yield from guarded(
            GROUP,
            "decode_full",
            lambda: compare(GROUP, "decode_full", vae.decode(z, segment_size=1), io["decode_full"], TOL),
        )
        # 4. two streaming calls sharing one cache
        yield from guarded(GROUP, "stream_decode", lambda: _stream_cases(vae, meta, io))
        # 5. LightVAE: teacher encoder, pruned decoder
        if (root / LIGHT_WEIGHTS).is_file() and "light_decode_full" in io:
            yield from guarded(GROUP, "light_decode_full", lambda: _light_cases(root, cfg, meta, vae, io))


def _stream_cases(vae, meta: dict, io: dict) -> Iterator[CaseResult]:
    spec = meta["stream_decode"]
    latents, seg = io["stream_latents"].float(), int(spec["segment_size"])
    cache = vae.new_decode_cache()
    for call in ("call1", "call2"):
        args = spec[call]
        out = vae.stream_decode(
            latents[:, :, _latent_slice(args["latents"])],
            cache,
            first_chunk=bool(args["first_chunk"]),
            segment_size=seg,
        )
        yield compare(GROUP, f"stream_out_{call}", out, io[f"stream_out_{call}"], TOL)
    want = spec.get("cache_slot_shapes_after_call2")
    if want is not None:
        got = [list(s) if s is not None else None for s in cache.shapes()]
        ok = got == want
        note = "" if ok else f"{len(got)} slots {got[:3]}... vs expected {len(want)} slots {want[:3]}..."
        yield CaseResult(GROUP, "cache_slot_shapes_after_call2", ok, note=note)


def _light_cases(root: Path, cfg, meta: dict, teacher, io: dict) -> Iterator[CaseResult]:
    from safetensors.torch import load_file

    from worldstream.model.vae import VAE, LightVAE

    rate = float(meta.get("lightvae", {}).get("pruning_rate", 0.5))
    student = VAE(dataclasses.replace(cfg, pruning_rate=rate)).eval()
    state = {k: v.float() for k, v in load_file(root / LIGHT_WEIGHTS).items()}
    result = student.load_state_dict(state, strict=False)
    stray = [k for k in result.missing_keys if not k.startswith(("encoder.", "conv1."))]
    if stray or result.unexpected_keys:
        raise ValueError(f"{LIGHT_WEIGHTS}: missing {stray[:3]}, unexpected {result.unexpected_keys[:3]}")
    light = LightVAE(teacher, student)
    yield compare(
        GROUP,
        "light_decode_full",
        light.decode(io["encode_mean_normalised"], segment_size=1),
        io["light_decode_full"],
        TOL,
    )
    yield compare(
        GROUP, "light_encode_is_teacher", light.encode(io["video"].float()), io["encode_mean_normalised"], TOL
    )
