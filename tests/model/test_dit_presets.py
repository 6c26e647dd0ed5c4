"""DiT presets: mg3_5b equals the official manifests (meta device); nano/small sizes and structure."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from worldstream.conformance import manifest
from worldstream.model.dit import MG3_5B, NANO, PRESETS, SMALL, DiTConfig, WorldDiT, preset

MANIFESTS = Path(__file__).resolve().parents[1] / "assets" / "manifests"


def meta_model(cfg) -> WorldDiT:
    with torch.device("meta"):
        return WorldDiT(cfg)


def test_mg3_5b_matches_manifest_key_for_key():
    expected = json.loads((MANIFESTS / "mg3_dit_5b_state_dict.json").read_text())
    model = meta_model(MG3_5B)
    state = model.state_dict()
    assert list(state) == list(expected)  # same keys, same (official) order
    assert {k: list(v.shape) for k, v in state.items()} == expected
    assert model.num_parameters == 6_469_915_584 == sum(math.prod(s) for s in expected.values())
    assert not list(model.buffers())  # the RoPE table is not state


def test_mg3_5b_derived_sizes():
    assert MG3_5B.head_dim == 128 and MG3_5B.rope_pairs == (22, 21, 21)
    assert MG3_5B.plucker_channels == 1536 and MG3_5B.camera_token_features == 6144
    assert MG3_5B.head_out_features == 192
    assert MG3_5B.action_blocks == frozenset(range(15)) and MG3_5B.sigma_theta == 0.8
    assert MG3_5B.action.mouse_window_features == 24 and MG3_5B.action.keyboard_window_features == 1536


def test_manifest_group_passes_including_int8_runtime():
    results = list(manifest.check(MANIFESTS))
    failed = [(r.case, r.note) for r in results if not r.passed]
    assert not failed, failed
    names = {r.case for r in results}
    assert "mg3_dit_5b_state_dict.num_parameters" in names
    assert "mg3_dit_5b_state_dict_runtime_dtypes.keys" in names
    assert any(n.startswith("mg3_dit_5b_state_dict_int8_runtime") for n in names)


def test_manifest_group_catches_a_wrong_shape(tmp_path):
    expected = json.loads((MANIFESTS / "mg3_dit_5b_state_dict.json").read_text())
    expected["head.head.weight"] = [96, 3072]
    (tmp_path / "mg3_dit_5b_state_dict.json").write_text(json.dumps(expected))
    results = {r.case: r for r in manifest.check(tmp_path)}
    assert not results["mg3_dit_5b_state_dict.shapes"].passed
    assert "head.head.weight" in results["mg3_dit_5b_state_dict.shapes"].note


@pytest.mark.parametrize("name, low, high", [("nano", 5e6, 30e6), ("small", 100e6, 300e6)])
def test_preset_sizes(name, low, high):
    cfg = preset(name)
    n = meta_model(cfg).num_parameters
    assert low <= n <= high, n


def test_nano_structure_mirrors_mg3():
    assert NANO.in_dim == NANO.out_dim == 16 and NANO.text_dim == 384
    assert 256 <= NANO.dim <= 384 and NANO.num_layers == 8 and 4 <= NANO.num_heads <= 6
    assert NANO.plucker_channels == 384 and NANO.camera_token_features == 1536  # camera_block 8
    assert max(NANO.action.blocks) < NANO.num_layers // 2  # action modules in the first half
    assert SMALL.num_layers == 16
    assert set(PRESETS) == {"nano", "small", "mg3_5b"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        NANO.dim = 512
    with pytest.raises(KeyError, match="unknown DiT preset"):
        preset("huge")


def test_config_consistency_errors():
    with pytest.raises(ValueError, match="img_hidden_size"):
        dataclasses.replace(NANO, dim=384, num_heads=6)
    with pytest.raises(ValueError, match="rope_overflow"):
        dataclasses.replace(NANO, rope_overflow="wrap")
    with pytest.raises(ValueError, match="action.blocks"):
        dataclasses.replace(NANO, num_layers=2)


def test_mg3_5b_from_an_official_config_json():
    """A diffusers config.json omits patch_size and text_dim (constructor defaults) and adds bookkeeping keys."""
    official = json.loads(json.dumps(MG3_5B.to_official()))  # JSON-serialisable
    for omitted in ("patch_size", "text_dim"):
        official.pop(omitted)
    official.update(_class_name="WanModel", _diffusers_version="0.35.1", is_action_model=True)
    assert DiTConfig.from_official(official) == MG3_5B
