"""Conformance group `dit`: the golden `dit_tiny_*` vectors (golden README section 1).

Checks, all in float32 with the README's recommended max |diff| <= 1e-4:
* cases a-d (every case listed in `dit_tiny_cases.json`; a case file without `in.*` tensors reuses case a's
  inputs, as case d does), with the config read from `dit_tiny_config.json` (any seed or size);
* every tensor of `dit_tiny_intermediates_b.safetensors` (captured with `capture=`);
* case b with `return_memory=True` (memory-frame predictions and the clip output);
* bug probes: plausible implementation bugs (README "bug probe" table) must move the output by more than
  the tolerance, i.e. the check would catch them. Such a case passes when its deviation exceeds `tol`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from worldstream.conformance import CaseResult, compare, guarded

GROUP = "dit"
TOL = 1e-4  # golden README section 1: recommended max |diff| on out and intermediates (output max ~4.5)
FILES = ("dit_tiny_config.json", "dit_tiny_weights.safetensors", "dit_tiny_cases.json")
BASE_INPUT_CASE = "a"  # case files without inputs (case d) use case a's inputs with their own seq_len


def applies(root: Path) -> bool:
    return all((Path(root) / f).exists() for f in FILES)


def load_model(root: Path, transform: Callable[[Any], Any] | None = None):
    """The golden tiny DiT in float32 with the golden weights (strict load); `transform(cfg) -> cfg`."""
    from safetensors.torch import load_file

    from worldstream.model.dit import DiTConfig, WorldDiT

    cfg = DiTConfig.from_json(Path(root) / "dit_tiny_config.json")
    if transform is not None:
        cfg = transform(cfg)
    model = WorldDiT(cfg)
    model.load_state_dict(load_file(str(Path(root) / "dit_tiny_weights.safetensors")), strict=True)
    return model.float().eval()


def load_cases(root: Path) -> dict[str, dict]:
    return json.loads((Path(root) / "dit_tiny_cases.json").read_text())


def case_call(root: Path, name: str, cases: dict[str, dict]) -> tuple[dict, dict]:
    """(forward kwargs in float32, the case's tensors) for golden case `name`."""
    from safetensors.torch import load_file

    root = Path(root)
    tensors = load_file(str(root / f"dit_tiny_case_{name}.safetensors"))
    inputs = tensors
    if not any(k.startswith("in.") for k in tensors):
        inputs = load_file(str(root / f"dit_tiny_case_{BASE_INPUT_CASE}.safetensors"))
    kw = {k[3:]: v.float() for k, v in inputs.items() if k.startswith("in.")}
    kw["context"] = [kw["context"]]
    meta = cases[name]
    kw["seq_len"] = int(meta["seq_len"])
    kw["predict_latent_idx"] = tuple(meta["predict_latent_idx"])
    if "memory_latent_idx" in meta:
        kw["memory_latent_idx"] = [int(i) for i in meta["memory_latent_idx"]]
    return kw, tensors


def _run(model, kw: dict, **extra):
    import torch

    with torch.no_grad():
        return model(**{**kw, **extra})


def check(root: Path) -> Iterator[CaseResult]:
    root = Path(root)
    model = load_model(root)
    cases = load_cases(root)

    # 1. cases a-d
    for name in cases:

        def one(name=name):
            kw, tensors = case_call(root, name, cases)
            out = _run(model, kw)
            return compare(GROUP, f"case_{name}", out, tensors["out"], TOL, f"seq_len {kw['seq_len']}")

        yield from guarded(GROUP, f"case_{name}", one)

    # 2. intermediates and return_memory of case b
    inter = root / "dit_tiny_intermediates_b.safetensors"
    if "b" in cases:
        if inter.exists():
            yield from guarded(GROUP, "intermediates_b", lambda: _intermediates(model, root, cases, inter))
        yield from guarded(GROUP, "return_memory_b", lambda: _return_memory(model, root, cases))

    # 3. bug probes: each bug variant must differ from the golden output by more than TOL
    yield from guarded(GROUP, "probes", lambda: _probes(root, cases))


def _intermediates(model, root: Path, cases: dict, path: Path) -> Iterator[CaseResult]:
    from safetensors.torch import load_file

    kw, _ = case_call(root, "b", cases)
    capture: dict = {}
    _run(model, kw, capture=capture)
    for key, expected in load_file(str(path)).items():
        if key not in capture:
            yield CaseResult(GROUP, f"b.{key}", False, None, TOL, "not captured by the model")
        else:
            yield compare(GROUP, f"b.{key}", capture[key], expected, TOL)


def _return_memory(model, root: Path, cases: dict) -> Iterator[CaseResult]:
    kw, tensors = case_call(root, "b", cases)
    memory_out, out = _run(model, kw, return_memory=True)
    key = "out_memory_frames_return_memory"
    if key in tensors:
        yield compare(GROUP, "b.return_memory.memory", memory_out[0], tensors[key], TOL)
    yield compare(GROUP, "b.return_memory.clip", out, tensors["out"], TOL)


def _probes(root: Path, cases: dict) -> Iterator[CaseResult]:
    import torch

    note = "bug variant; passes when it differs from golden by > tol"

    def probe(label: str, case: str, transform=None, edit=None) -> CaseResult:
        if case not in cases:
            return CaseResult(GROUP, f"probe.{label}", True, None, TOL, f"skipped: no case {case}")
        kw, tensors = case_call(root, case, cases)
        if edit is not None:
            kw = edit(kw)
        out = _run(load_model(root, transform), kw)
        dev = float((out - tensors["out"]).abs().max())
        return CaseResult(GROUP, f"probe.{label}_{case}", dev > TOL, dev, TOL, note)

    def with_action_norm_weight(cfg):
        return dataclasses.replace(cfg, action=dataclasses.replace(cfg.action, action_norm_weight=True))

    def memory_at_slots(kw):  # memory frames rotated at 0..M-1 instead of memory_latent_idx
        return {**kw, "memory_latent_idx": list(range(len(kw["memory_latent_idx"])))}

    def clip_at_zero(kw):  # predicted frames at 0..F-1 instead of predict_latent_idx
        return {**kw, "predict_latent_idx": (0, kw["x"].shape[2])}

    def zero_memory_actions(kw):
        return {**kw, "mouse_cond_memory": torch.zeros_like(kw["mouse_cond_memory"]),
                "keyboard_cond_memory": torch.zeros_like(kw["keyboard_cond_memory"])}

    for case in ("a", "b"):
        yield probe("action_norm_weight_applied", case, transform=with_action_norm_weight)
    yield probe("memory_latent_idx_ignored", "b", edit=memory_at_slots)
    for case in ("b", "c"):
        yield probe("predict_latent_idx_ignored", case, edit=clip_at_zero)
    yield probe("memory_actions_zero", "b", edit=zero_memory_actions)
    yield probe("sigma_theta_0", "b", transform=lambda cfg: dataclasses.replace(cfg, sigma_theta=0.0))
