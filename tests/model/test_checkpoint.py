"""Checkpoint folders (config.json + model.safetensors + meta.json) and the official release layout loader."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from worldstream import checkpoint as ckpt
from worldstream.checkpoint import (
    config_from_dict,
    config_to_dict,
    from_pretrained,
    load_config,
    load_meta,
    load_preset,
    save_checkpoint,
)
from worldstream.model.convert import (
    OfficialLayout,
    dit_config_from_official,
    find_official_files,
    load_official_dit,
)
from worldstream.model.quant import Int8Linear, convert_to_int8

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"
HAS_DIT = importlib.util.find_spec("worldstream.model.dit") is not None


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 8
    kind: Literal["linear", "mlp"] = "mlp"


@dataclass(frozen=True)
class TinyConfig:
    dim: int = 8
    depth: int = 2
    window: tuple[int, int] = (2, 3)
    head: HeadConfig | None = HeadConfig()
    scale: float = 1.0
    preset: str = "tiny"


class TinyNet(nn.Module):
    """Has a non-persistent buffer and a plain tensor attribute computed in __init__ (like a RoPE table)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(nn.Linear(cfg.dim, cfg.dim) for _ in range(cfg.depth))
        self.out = nn.Linear(cfg.dim, cfg.head.hidden if cfg.head else cfg.dim)
        self.register_buffer("table", torch.arange(cfg.dim, dtype=torch.float32) * 0.5, persistent=False)
        self.freqs = torch.linspace(0, 1, cfg.dim)
        self.register_buffer("step_count", torch.tensor(7))

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x)) + self.table + self.freqs
        return self.out(x)


def load(directory, build_fn, **kw):
    """from_pretrained for this module's config type (test types are not importable by name)."""
    return from_pretrained(directory, build_fn, expected_type=TinyConfig, **kw)


def _saved(tmp_path: Path, cfg: TinyConfig = TinyConfig(), **meta) -> tuple[Path, TinyNet]:
    torch.manual_seed(0)
    model = TinyNet(cfg)
    return save_checkpoint(tmp_path / "ckpt", model, cfg, {"step": 12, "recipe": "tiny_test", **meta}), model


def test_round_trip(tmp_path):
    d, model = _saved(tmp_path, note="hello")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    cfg = load_config(d, TinyConfig, "tiny")
    assert cfg == TinyConfig() and isinstance(cfg.window, tuple) and isinstance(cfg.head, HeadConfig)
    assert load_preset(d) == "tiny"
    meta = load_meta(d)
    assert meta["step"] == 12 and meta["recipe"] == "tiny_test" and meta["note"] == "hello"
    assert {"git_sha", "created", "worldstream_version"} <= set(meta)
    loaded = load(d, TinyNet)
    assert not any(p.is_meta for p in loaded.parameters())
    assert torch.equal(loaded.table, model.table) and torch.equal(loaded.freqs, model.freqs)
    assert loaded.step_count.item() == 7
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), model(x))
    assert loaded.blocks[0].weight.dtype == torch.float32
    assert load(d, TinyNet, dtype=torch.bfloat16).blocks[0].weight.dtype == torch.bfloat16


def test_build_skips_parameter_init(tmp_path):
    d, _ = _saved(tmp_path)
    inits = []
    orig = nn.Linear.reset_parameters

    def spy(self):
        inits.append(self.weight.is_meta)
        orig(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.Linear, "reset_parameters", spy)
        load(d, TinyNet)
    assert inits and all(inits)  # every init ran on meta tensors: no memory, no random numbers


def test_overwrite_is_atomic_and_keeps_foreign_files(tmp_path):
    d, _ = _saved(tmp_path)
    (d / "MODEL_CARD.md").write_text("card")
    cfg2 = dataclasses.replace(TinyConfig(), scale=2.0)
    save_checkpoint(d, TinyNet(cfg2), cfg2, {"step": 13})
    assert load_config(d, TinyConfig).scale == 2.0 and load_meta(d)["step"] == 13
    assert (d / "MODEL_CARD.md").read_text() == "card"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or backup folders left


def test_failed_save_leaves_old_checkpoint(tmp_path, monkeypatch):
    d, _ = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(d, TinyNet(TinyConfig()), TinyConfig(), {"step": 99})
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a checkpoint folder"):
        save_checkpoint(tmp_path / "notes", TinyNet(TinyConfig()), TinyConfig())


def test_tied_weights_are_saved(tmp_path):
    model = TinyNet(TinyConfig(head=None))
    model.out.weight = model.blocks[0].weight  # shared storage
    d = save_checkpoint(tmp_path / "tied", model, TinyConfig(head=None))
    state = load_file(str(d / "model.safetensors"))
    assert torch.equal(state["out.weight"], state["blocks.0.weight"])


def test_missing_files_and_folder(tmp_path):
    with pytest.raises(NotADirectoryError, match="checkpoint folder not found"):
        load_config(tmp_path / "nope")
    d, _ = _saved(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load(d, TinyNet)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_config(d)


def test_key_and_shape_errors_name_the_keys(tmp_path):
    d, _ = _saved(tmp_path)
    with pytest.raises(KeyError, match=r"lacks 2 key\(s\).*blocks\.2\.weight"):
        load(d, lambda c: TinyNet(dataclasses.replace(c, depth=3)))
    with pytest.raises(KeyError, match=r"does not know.*blocks\.1\.weight"):
        load(d, lambda c: TinyNet(dataclasses.replace(c, depth=1)))
    with pytest.raises(ValueError, match=r"'out\.weight' has shape \(8, 8\), the model expects \(4, 8\)"):
        load(d, lambda c: TinyNet(dataclasses.replace(c, head=HeadConfig(hidden=4))))


def test_type_and_preset_errors(tmp_path):
    d, _ = _saved(tmp_path)
    with pytest.raises(ValueError, match="holds a .*TinyConfig config, expected .*HeadConfig"):
        load_config(d, HeadConfig)
    with pytest.raises(ValueError, match="'tiny' preset checkpoint, expected 'mg3_5b'"):
        load(d, TinyNet, expected_preset="mg3_5b")
    with pytest.raises(ValueError, match="not a worldstream type"):
        load_config(d)  # a type outside worldstream is never imported by name from a file


def test_config_json_validation():
    data = config_to_dict(TinyConfig(), "tiny")
    assert data["config"]["window"] == [2, 3] and data["config"]["head"] == {"hidden": 8, "kind": "mlp"}
    bad = json.loads(json.dumps(data))
    bad["config"]["colour"] = "red"
    with pytest.raises(ValueError, match=r"does not know: \['colour'\]"):
        config_from_dict(bad, TinyConfig)
    bad = json.loads(json.dumps(data))
    bad["config"]["head"]["kind"] = "conv"
    with pytest.raises(ValueError, match="'conv' is not one of"):
        config_from_dict(bad, TinyConfig)
    old = json.loads(json.dumps(data))
    del old["config"]["scale"]
    with pytest.warns(UserWarning, match="lacks \\['scale'\\]"):
        assert config_from_dict(old, TinyConfig).scale == 1.0
    with pytest.raises(TypeError, match="dataclass instance"):
        config_to_dict({"dim": 3})
    with pytest.raises(ValueError, match="not a worldstream checkpoint config"):
        config_from_dict({"dim": 3}, TinyConfig)


def test_int8_model_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = TinyConfig()

    def build(c):
        net = TinyNet(c)
        net.blocks[0].q = nn.Linear(c.dim, c.dim)  # an attention-style name converted by the official rule
        return convert_to_int8(net)

    model = build(cfg)
    d = save_checkpoint(tmp_path / "int8", model, cfg)
    loaded = load(d, build)
    assert isinstance(loaded.blocks[0].q, Int8Linear) and loaded.blocks[0].q.weight_int8.dtype == torch.int8
    assert torch.equal(loaded.blocks[0].q.weight_int8, model.blocks[0].q.weight_int8)
    x = torch.randn(2, 8)
    assert torch.equal(loaded.blocks[0].q(x), model.blocks[0].q(x))


@pytest.mark.skipif(not HAS_DIT, reason="worldstream.model.dit not built")
def test_dit_configs_round_trip_through_config_json():
    from worldstream.model.dit import PRESETS, DiTConfig

    for name, cfg in PRESETS.items():
        data = json.loads(json.dumps(config_to_dict(cfg, name)))
        assert config_from_dict(data, DiTConfig, name) == cfg


# ---- official release layout -----------------------------------------------------------------------------


def _fake_release(root: Path, sharded: bool = False) -> Path:
    """The official folder with tiny files; the DiT is the golden tiny DiT under the official file names."""
    kwargs = json.loads((GOLDEN / "dit_tiny_config.json").read_text())["constructor_kwargs"]
    for sub in ("base_model", "base_distilled_model"):
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text(json.dumps({"_class_name": "WanModel", **kwargs}))
        state = load_file(str(GOLDEN / "dit_tiny_weights.safetensors"))
        if sharded:
            keys = sorted(state)
            parts = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                     "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
            for fname, ks in parts.items():
                save_file({k: state[k] for k in ks}, str(root / sub / fname))
            index = {"weight_map": {k: f for f, ks in parts.items() for k in ks}}
            (root / sub / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
        else:
            save_file(state, str(root / sub / "diffusion_pytorch_model.safetensors"))
    for name in ("Wan2.2_VAE.pth", "MG-LightVAE.pth", "MG-LightVAE_v2.pth", "models_t5_umt5-xxl-enc-bf16.pth"):
        torch.save({"w": torch.zeros(2)}, root / name)
    (root / "google" / "umt5-xxl").mkdir(parents=True)
    return root


def test_find_official_files(tmp_path):
    root = _fake_release(tmp_path / "Matrix-Game-3.0")
    p = find_official_files(root)
    assert p.dit_dir == root / "base_distilled_model" and p.dit_weights == (p.dit_dir / OfficialLayout.dit_weights,)
    assert p.vae_encoder.name == "Wan2.2_VAE.pth" and p.vae_decoder.name == "MG-LightVAE_v2.pth"
    assert p.t5_tokenizer == root / "google" / "umt5-xxl"
    assert find_official_files(root, "base", "wan").vae_decoder.name == "Wan2.2_VAE.pth"


def test_find_official_files_lists_everything_missing(tmp_path):
    root = _fake_release(tmp_path / "rel")
    (root / "MG-LightVAE_v2.pth").unlink()
    (root / "models_t5_umt5-xxl-enc-bf16.pth").unlink()
    (root / "base_distilled_model" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as e:
        find_official_files(root)
    msg = str(e.value)
    for needle in ("MG-LightVAE_v2.pth", "models_t5_umt5-xxl-enc-bf16.pth", "diffusion_pytorch_model.safetensors"):
        assert needle in msg
    assert "Wan2.2_VAE.pth" not in msg
    find_official_files(root, "base", vae_type="mg_lightvae", text=False)  # all this configuration needs
    shutil.rmtree(root / "base_model")
    with pytest.raises(FileNotFoundError, match="base DiT folder"):
        find_official_files(root, "base", text=False)
    with pytest.raises(NotADirectoryError):
        find_official_files(tmp_path / "absent")
    with pytest.raises(ValueError, match="vae_type"):
        find_official_files(root, vae_type="tiny")  # type: ignore[arg-type]


def test_sharded_dit_folder(tmp_path):
    root = _fake_release(tmp_path / "rel", sharded=True)
    p = find_official_files(root)
    assert len(p.dit_weights) == 2
    (p.dit_weights[1]).unlink()
    with pytest.raises(FileNotFoundError, match="00002-of-00002"):
        find_official_files(root)


@pytest.mark.skipif(not HAS_DIT, reason="worldstream.model.dit not built")
def test_load_official_dit_matches_golden_case_a(tmp_path):
    from worldstream.conformance import dit as dit_group

    root = _fake_release(tmp_path / "rel")
    paths = find_official_files(root, text=False)
    cfg = dit_config_from_official(paths.dit_config)
    assert (cfg.dim, cfg.num_layers, cfg.sigma_theta, cfg.patch_size) == (64, 3, 0.8, (1, 2, 2))
    model = load_official_dit(paths, dtype=torch.float32)
    kw, tensors = dit_group.case_call(GOLDEN, "a", dit_group.load_cases(GOLDEN))
    with torch.no_grad():
        out = model(**kw)
    assert (out - tensors["out"]).abs().max() <= 1e-4
    q = load_official_dit(paths, dtype=torch.bfloat16, int8=True)
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 8 * cfg.num_layers
    assert q.blocks[0].self_attn.q.weight_scales.dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError, match="DiT config"):
        dit_config_from_official(root / "absent.json")


def test_checkpoint_module_has_no_side_effects_on_torch():
    with ckpt.params_on_meta():
        lin = nn.Linear(2, 2)
    assert lin.weight.is_meta
    assert not nn.Linear(2, 2).weight.is_meta  # the patch is gone after the context
