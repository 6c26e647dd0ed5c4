"""ActionModule: official grouping tables, action RoPE restart, weightless RMSNorm switch, golden internals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from worldstream.conformance import action_grouping
from worldstream.model.action import (
    ActionConfig,
    ActionModule,
    action_rope,
    apply_action_rope,
    group_action_windows,
    pad_clip_rows,
)

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"
TABLES = json.loads((GOLDEN / "action_grouping_tables.json").read_text())

TINY = ActionConfig(blocks=(0,), heads_num=2, hidden_size=16, img_hidden_size=64, keyboard_hidden_dim=128,
                    mouse_hidden_dim=128)


def rows_table(n_rows: int, n_memory: int) -> torch.Tensor:
    """Group clip rows valued r (memory rows -7, as the golden tables mark them) -> [T, 12]."""
    rows = torch.arange(n_rows, dtype=torch.float32)[None, :, None]
    memory = torch.full((1, n_memory, 1), -7.0) if n_memory else None
    return group_action_windows(rows, memory, ratio=4, windows=3)[0, ..., 0]


@pytest.mark.parametrize("name, n_rows, n_memory", [("first_clip_N13_T4", 13, 0), ("later_clip_N20_T5", 20, 0),
                                                    ("later_clip_N20_T5_with_3_memory", 20, 3)])
def test_grouping_matches_official_tables(name, n_rows, n_memory):
    assert torch.equal(rows_table(n_rows, n_memory), torch.tensor(TABLES[name], dtype=torch.float32))


def test_grouping_rule_full_size_clips():
    first = rows_table(57, 0)  # MG3 first clip: 15 latents, window stops one frame before the latent's last
    assert first.shape == (15, 12)
    assert first[14].tolist() == list(range(44, 56))
    later = rows_table(56, 5)  # later clips: 5 memory + 14 latents, window ends on the latent's last frame
    assert later.shape == (19, 12)
    assert (later[:5] == -7).all() and later[-1].tolist() == list(range(44, 56))
    with pytest.raises(ValueError, match="N=55"):
        pad_clip_rows(torch.zeros(1, 55, 2), 4, 3)


def test_action_rope_restarts_and_rotates_only_temporal_dims():
    pos = torch.cat([torch.arange(3), torch.arange(5)])  # memory 0..2, clip 0..4
    cos, sin = action_rope(pos, (8, 28, 28), 256)
    assert cos.shape == (8, 64)
    assert torch.equal(cos[:3], cos[3:6]) and torch.equal(sin[:3], sin[3:6])  # restart at 0
    assert (cos[:, 8:] == 1).all() and (sin[:, 8:] == 0).all()  # only the first 8 dims rotate
    # 4 pairs with frequencies 1, 1/4, 1/16, 1/64 (theta 256); pairs are interleaved (repeat_interleave)
    assert torch.allclose(cos[1, :8:2], torch.cos(torch.tensor([1.0, 1 / 4, 1 / 16, 1 / 64])))
    assert torch.equal(cos[:, 0::2][:, :4], cos[:, 1::2][:, :4])
    x = torch.randn(2, 8, 1, 64)
    y = apply_action_rope(x, cos, sin)
    assert torch.equal(y[..., 8:], x[..., 8:])
    assert torch.allclose(y[..., :8].norm(dim=-1), x[..., :8].norm(dim=-1), atol=1e-5)  # rotation


def _module_inputs(cfg: ActionConfig, T: int = 5, M: int = 2, S: int = 3):
    g = torch.Generator().manual_seed(0)
    n_rows = 4 * (T - M)
    return dict(x=torch.randn(1, T * S, cfg.img_hidden_size, generator=g), frames=T,
                mouse_cond=torch.randn(1, n_rows, 2, generator=g) * 0.1,
                keyboard_cond=torch.randint(0, 2, (1, n_rows, 6), generator=g).float(),
                mouse_cond_memory=torch.ones(1, M, 2), keyboard_cond_memory=-torch.ones(1, M, 6))


def test_action_norm_weight_switch():
    torch.manual_seed(0)
    official = ActionModule(TINY)
    fixed = ActionModule(dataclasses.replace(TINY, action_norm_weight=True))
    fixed.load_state_dict(official.state_dict())  # same keys either way
    kw = _module_inputs(TINY)
    with torch.no_grad():
        for m in (official, fixed):  # non-zero output projections so the branches matter
            m.proj_mouse.weight.normal_(0, 0.1)
            m.proj_keyboard.weight.normal_(0, 0.1)
        fixed.load_state_dict(official.state_dict())
        assert torch.equal(official(**kw), fixed(**kw))  # gains all ones: identical
        for m in (official, fixed):
            for name in ("img_attn_q_norm", "img_attn_k_norm", "key_attn_q_norm", "key_attn_k_norm"):
                getattr(m, name).weight.fill_(2.5)
        base, with_gains = official(**kw), fixed(**kw)
        official.img_attn_q_norm.weight.fill_(1.0)
        assert torch.equal(official(**kw), base)  # official ignores the gains
    assert (base - with_gains).abs().max() > 1e-3


def test_clip_rows_must_match_latents():
    module = ActionModule(TINY)
    kw = _module_inputs(TINY)
    with pytest.raises(ValueError, match="group into 3 latents, but there are 4"):
        module(**{**kw, "mouse_cond_memory": torch.ones(1, 1, 2), "keyboard_cond_memory": -torch.ones(1, 1, 6)})


def test_config_validation():
    with pytest.raises(ValueError, match="rope_dim_list"):
        dataclasses.replace(TINY, rope_dim_list=(8, 20, 20))
    with pytest.raises(ValueError, match="not divisible by heads_num"):
        dataclasses.replace(TINY, heads_num=3)


def test_golden_action_grouping_group_passes():
    results = list(action_grouping.check(GOLDEN))
    failed = [(r.case, r.max_diff, r.note) for r in results if not r.passed]
    assert not failed, failed
    names = {r.case for r in results}
    assert "case_b.keyboard_windows" in names and "case_a.mouse_windows" in names
    assert sum(n.startswith("table.") for n in names) == 3
