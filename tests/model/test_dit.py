"""WorldDiT: golden conformance, padding/memory invariants, nano forward/backward, errors, RoPE table."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worldstream.conformance import dit as dit_group
from worldstream.model.attention import Rope3D, headwise_thetas
from worldstream.model.dit import NANO, DiTConfig, WorldDiT, sinusoidal_embedding

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"
TOL = 1e-4  # golden README: float32 max |diff|


def make_inputs(cfg: DiTConfig, F: int, M: int, H: int, W: int, first_clip: bool = False, seed: int = 0):
    """Random call kwargs for `cfg` (clip of F latents, M memory latents, H x W latents)."""
    g = torch.Generator().manual_seed(seed)
    h, w = H // cfg.patch_size[1], W // cfg.patch_size[2]
    n_rows = 1 + 4 * (F - 1) if first_clip else 4 * F
    kw = dict(
        x=torch.randn(1, cfg.in_dim, F, H, W, generator=g),
        t=torch.rand(1, F * h * w, generator=g) * 1000,
        context=[torch.randn(5, cfg.text_dim, generator=g)],
        plucker_emb=torch.randn(1, cfg.plucker_channels, M + F, H, W, generator=g) * 0.5,
        mouse_cond=(torch.randint(-1, 2, (1, n_rows, 2), generator=g) * 0.1).float(),
        keyboard_cond=torch.randint(0, 2, (1, n_rows, 6), generator=g).float(),
        predict_latent_idx=(0, F) if first_clip else (7, 7 + F),
    )
    if M:
        kw.update(x_memory=torch.randn(1, cfg.in_dim, M, H, W, generator=g),
                  timestep_memory=torch.zeros(1, M * h * w), memory_latent_idx=[1 + 2 * i for i in range(M)])
    return kw


def tiny_model(action: bool = True, **changes) -> WorldDiT:
    """The golden tiny config and weights (non-zero everywhere); optionally without action modules."""
    cfg = DiTConfig.from_json(GOLDEN / "dit_tiny_config.json")
    cfg = dataclasses.replace(cfg, action=cfg.action if action else None, **changes)
    model = WorldDiT(cfg).eval()
    state = load_file(str(GOLDEN / "dit_tiny_weights.safetensors"))
    if not action:
        state = {k: v for k, v in state.items() if ".action_model." not in k}
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------
# golden conformance


def test_golden_dit_group_passes():
    results = list(dit_group.check(GOLDEN))
    failed = [(r.case, r.max_diff, r.note) for r in results if not r.passed]
    assert not failed, failed
    names = {r.case for r in results}
    assert {"case_a", "case_b", "case_c", "case_d", "b.head_out", "b.return_memory.memory"} <= names
    assert any(n.startswith("probe.") for n in names)


def test_golden_case_b_intermediates_and_official_names():
    model = dit_group.load_model(GOLDEN)  # strict load of the official key names
    cases = dit_group.load_cases(GOLDEN)
    kw, tensors = dit_group.case_call(GOLDEN, "b", cases)
    capture: dict = {}
    with torch.no_grad():
        out = model(**kw, capture=capture)
    assert (out - tensors["out"]).abs().max() <= TOL
    assert capture["block0_action_in"].shape == (1, 48, 64)
    assert "block2_action_in" not in capture  # block 2 has no action module


def test_padding_does_not_reach_valid_tokens():
    model = dit_group.load_model(GOLDEN)
    kw, _ = dit_group.case_call(GOLDEN, "c", dit_group.load_cases(GOLDEN))
    with torch.no_grad():
        padded = model(**kw)  # seq_len 60, 36 valid
        unpadded = model(**{**kw, "seq_len": None})
    assert (padded - unpadded).abs().max() <= 1e-5


def test_action_norm_weight_probe_changes_output():
    """Applying the action-RMSNorm gains (the later upstream fix) must be caught: > 0.1 off golden."""
    cases = dit_group.load_cases(GOLDEN)
    kw, tensors = dit_group.case_call(GOLDEN, "b", cases)

    def with_weight(cfg):
        return dataclasses.replace(cfg, action=dataclasses.replace(cfg.action, action_norm_weight=True))

    model = dit_group.load_model(GOLDEN, with_weight)
    with torch.no_grad():
        out = model(**kw)
    assert (out - tensors["out"]).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------------
# memory order


def _permute_memory(kw: dict, perm: list[int]) -> dict:
    M = kw["x_memory"].shape[2]
    S = kw["timestep_memory"].shape[1] // M
    tm = kw["timestep_memory"].reshape(1, M, S)[:, perm].reshape(1, M * S)
    pl = torch.cat([kw["plucker_emb"][:, :, :M][:, :, perm], kw["plucker_emb"][:, :, M:]], dim=2)
    return {**kw, "x_memory": kw["x_memory"][:, :, perm], "timestep_memory": tm, "plucker_emb": pl,
            "memory_latent_idx": [kw["memory_latent_idx"][i] for i in perm]}


def test_memory_order_invariance_without_action_modules():
    """Self-attention sees memory as a set: reordering memory frames (with their latent indices, Plücker maps
    and timesteps) leaves the clip output unchanged and permutes the memory outputs."""
    model = tiny_model(action=False)
    kw = make_inputs(model.cfg, F=3, M=3, H=4, W=6)
    kw["timestep_memory"] = torch.rand_like(kw["timestep_memory"]) * 1000  # distinct per memory frame
    perm = [2, 0, 1]
    with torch.no_grad():
        mem, out = model(**kw, return_memory=True)
        mem_p, out_p = model(**_permute_memory(kw, perm), return_memory=True)
    scale = out.abs().max()  # float32 summation order changes: compare relative to the output size
    assert (out - out_p).abs().max() <= 1e-5 * scale
    assert (mem[:, :, perm] - mem_p).abs().max() <= 1e-5 * scale


def test_memory_order_matters_in_action_module_but_not_for_identical_frames():
    """Official behaviour: the action module's RoPE numbers memory *slots* 0..M-1, so reordering distinct
    memory frames changes the output; swapping two identical memory frames (repeated latent) does not."""
    model = tiny_model(action=True)
    kw = make_inputs(model.cfg, F=2, M=3, H=4, W=6)
    with torch.no_grad():
        out = model(**kw)
        out_perm = model(**_permute_memory(kw, [2, 0, 1]))
    assert (out - out_perm).abs().max() > 1e-4 * out.abs().max()  # float32 noise is ~1e-6 relative
    kw_rep = _permute_memory(kw, [0, 1, 1])  # frames 1 and 2 identical, same latent index
    with torch.no_grad():
        a = model(**kw_rep)
        b = model(**_permute_memory(kw_rep, [0, 2, 1]))
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_memory_defaults_are_clean_timesteps_and_null_actions():
    model = tiny_model(action=True)
    kw = make_inputs(model.cfg, F=2, M=2, H=4, W=6)
    explicit = {**kw, "mouse_cond_memory": torch.ones(1, 2, 2), "keyboard_cond_memory": -torch.ones(1, 2, 6)}
    implicit = {k: v for k, v in kw.items() if k != "timestep_memory"}
    with torch.no_grad():
        assert torch.equal(model(**explicit), model(**implicit))


# ---------------------------------------------------------------------------------------------------
# nano: forward / backward, bf16


def test_nano_forward_backward_all_grads_finite():
    cfg = NANO
    torch.manual_seed(0)
    model = WorldDiT(cfg)
    model.init_weights()
    with torch.no_grad():  # official init zeroes these; make them non-zero so every gradient path is live
        model.head.head.weight.normal_(0, 0.02)
        for block in model.blocks:
            for layer in (block.cam_scale_layer, block.cam_shift_layer):
                layer.weight.normal_(0, 0.02)
            if hasattr(block, "action_model"):
                block.action_model.proj_mouse.weight.normal_(0, 0.02)
                block.action_model.proj_keyboard.weight.normal_(0, 0.02)
    kw = make_inputs(cfg, F=2, M=2, H=4, W=4, seed=1)
    out = model(**kw, seq_len=40)  # 4 frames x 4 tokens = 16 valid + 24 padding
    assert out.shape == (1, cfg.out_dim, 2, 4, 4)
    out.square().mean().backward()
    weightless = {n for n, _ in model.named_parameters() if "attn_q_norm" in n or "attn_k_norm" in n}
    assert weightless and all(".action_model." in n for n in weightless)
    for name, p in model.named_parameters():
        if name in weightless:  # official: action-module RMSNorm ignores its weight -> no gradient
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_nano_bf16_close_to_float32():
    torch.manual_seed(0)
    model = WorldDiT(NANO).eval()
    kw = make_inputs(NANO, F=2, M=1, H=4, W=4, seed=2)
    with torch.no_grad():
        ref = model(**kw)
        out = model.to(torch.bfloat16)(**kw)
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert torch.isfinite(out).all() and err < 0.05, err


# ---------------------------------------------------------------------------------------------------
# errors at the model boundary


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda kw: {**kw, "x": kw["x"][:, :8]}, r"x: expected shape \[B, C, F, H, W\] = \[\*, 16, \*, \*, \*\]"),
        (lambda kw: {**kw, "t": kw["t"][:, :-1]}, r"t: expected shape .* got \[1, 17\]"),
        (lambda kw: {**kw, "plucker_emb": kw["plucker_emb"][:, :384]}, r"plucker_emb: expected .*1536"),
        (lambda kw: {**kw, "mouse_cond": kw["mouse_cond"][:, :-1], "keyboard_cond": kw["keyboard_cond"][:, :-1]},
         r"mouse_cond/keyboard_cond: action rows: N=11"),
        (lambda kw: {**kw, "keyboard_cond": kw["keyboard_cond"][..., :4]}, r"keyboard_cond: expected"),
        (lambda kw: {**kw, "memory_latent_idx": [1]}, r"memory_latent_idx: expected 2"),
        (lambda kw: {**kw, "predict_latent_idx": (7, 9)}, r"predict_latent_idx=\(7, 9\) covers 2"),
        (lambda kw: {**kw, "seq_len": 20}, r"seq_len=20 is shorter than the 30 valid tokens"),
        (lambda kw: {**kw, "context": [torch.zeros(17, 32)]}, r"context\[0\]: 17 rows exceed text_len=16"),
        (lambda kw: {**kw, "x_memory": kw["x_memory"][..., :2]}, r"x_memory: expected shape"),
        (lambda kw: {**kw, "mouse_cond": None}, r"mouse_cond: required"),
    ],
)
def test_shape_errors_name_the_tensor(change, match):
    model = tiny_model()
    kw = make_inputs(model.cfg, F=3, M=2, H=4, W=6)
    with pytest.raises(ValueError, match=match):
        model(**change(kw))


# ---------------------------------------------------------------------------------------------------
# RoPE, sinusoid


def test_rope_table_overflow_raises_and_extend_option_works():
    model = tiny_model(action=False)
    kw = make_inputs(model.cfg, F=3, M=1, H=4, W=6)
    with pytest.raises(ValueError, match="outside the table"):
        model(**{**kw, "predict_latent_idx": (2046, 2049)})
    with pytest.raises(ValueError, match="negative"):
        model(**{**kw, "memory_latent_idx": [-1]})
    extended = tiny_model(action=False, rope_overflow="extend")
    with torch.no_grad():
        inside = model(**{**kw, "predict_latent_idx": (2040, 2043)})
        same = extended(**{**kw, "predict_latent_idx": (2040, 2043)})
        beyond = extended(**{**kw, "predict_latent_idx": (5000, 5003)})
    assert torch.equal(inside, same)  # identical below the table length
    assert torch.isfinite(beyond).all()


def test_rope_frequencies_continue_the_table_formula():
    rope = Rope3D(head_dim=32, num_heads=2, theta=10000.0, sigma_theta=0.8, max_positions=2048, overflow="extend")
    f = rope.freqs([3000], 1, 1)  # [1, 2 heads, 16 pairs]
    thetas = headwise_thetas(2, 10000.0, 0.8)
    n_t = rope.pairs[0]
    omega = 1.0 / thetas[:, None] ** (torch.arange(0, 2 * n_t, 2, dtype=torch.float64) / (2 * n_t))
    expect = torch.polar(torch.ones_like(omega), 3000 * omega).to(torch.complex64)
    assert torch.equal(f[0, :, :n_t], expect)
    assert torch.equal(f[0, :, n_t:], torch.ones_like(f[0, :, n_t:]))  # h = w = 0


def test_headwise_thetas_mg3():
    thetas = headwise_thetas(24, 10000.0, 0.8)
    assert thetas.dtype == torch.float64
    assert math.isclose(thetas[0], 2000.0) and math.isclose(thetas[-1], 18000.0)
    assert torch.allclose(thetas.diff(), torch.full((23,), 16000 / 23, dtype=torch.float64))
    assert headwise_thetas(24, 10000.0, 0.0) is None


def test_sinusoid_is_cos_first_float64():
    emb = sinusoidal_embedding(torch.tensor([0.0, 1000.0]), 256, 10000.0)
    assert emb.dtype == torch.float64 and emb.shape == (2, 256)
    assert torch.equal(emb[0, :128], torch.ones(128, dtype=torch.float64))
    assert torch.equal(emb[0, 128:], torch.zeros(128, dtype=torch.float64))
    assert emb[1, 0] == math.cos(1000.0) and emb[1, 128] == math.sin(1000.0)


def test_config_official_round_trip_and_unknown_keys():
    cfg = DiTConfig.from_json(GOLDEN / "dit_tiny_config.json")
    assert cfg.plucker_channels == 1536 and cfg.camera_token_features == 6144 and cfg.rope_pairs == (6, 5, 5)
    assert DiTConfig.from_official(cfg.to_official()) == cfg
    with pytest.raises(ValueError, match="unknown constructor kwargs"):
        DiTConfig.from_official({**cfg.to_official(), "num_experts": 2})
    with pytest.raises(ValueError, match="window_size"):
        DiTConfig.from_official({**cfg.to_official(), "window_size": [4, 4]})
