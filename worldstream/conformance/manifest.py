"""Conformance group `manifest`: the 5B DiT manifests vs the `mg3_5b` preset built on the meta device.

Every `mg3_dit_5b_state_dict*.json` in the directory is recognised by its content (facts, manifests table):
* `{key: [shape]}` (checkpoint layout): keys, shapes and order must match, and the parameter count too;
* `{key: dtype}` (runtime dtypes): the keys must match;
* `{key: {shape, dtype}}` (INT8 runtime): the model after `worldstream.model.quant.convert_to_int8` and
  `.to(torch.bfloat16)`, as the official pipeline does, must match keys, shapes and dtypes. Reported as
  skipped when the quant module is not available.
Nothing is allocated: meta tensors carry only shapes and dtypes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from worldstream.conformance import CaseResult, guarded

GROUP = "manifest"
PATTERN = "mg3_dit_5b_state_dict*.json"


def applies(root: Path) -> bool:
    return any(Path(root).glob(PATTERN))


def build_meta_model():
    """The mg3_5b DiT on the meta device (shapes and dtypes only)."""
    import torch

    from worldstream.model.dit import MG3_5B, WorldDiT

    with torch.device("meta"):
        return WorldDiT(MG3_5B)


def check(root: Path) -> Iterator[CaseResult]:
    for path in sorted(Path(root).glob(PATTERN)):
        yield from guarded(GROUP, path.stem, lambda p=path: _check_file(p))


def _check_file(path: Path) -> Iterator[CaseResult]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path.name}: expected a non-empty JSON object {{key: ...}}")
    first = next(iter(data.values()))
    if isinstance(first, list):
        yield from _shapes(path, data)
    elif isinstance(first, str):
        yield _keys(path, data)
    elif isinstance(first, dict):
        yield from _int8_runtime(path, data)
    else:
        raise ValueError(f"{path.name}: unrecognised manifest entry {first!r}")


def _diff_note(expected: dict, actual: dict) -> str:
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[:3]})")
    return "; ".join(parts)


def _wrong_note(wrong: list[str], state: dict, manifest: dict) -> str:
    return f"{len(wrong)} differ (e.g. {[(k, state[k], manifest[k]) for k in wrong[:2]]})" if wrong else ""


def _shapes(path: Path, manifest: dict[str, list[int]]) -> Iterator[CaseResult]:
    import math

    model = build_meta_model()
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    note = _diff_note(manifest, state)
    yield CaseResult(GROUP, f"{path.stem}.keys", not note, None, None, note or f"{len(state)} keys")
    wrong = [k for k in manifest if k in state and state[k] != list(manifest[k])]
    yield CaseResult(GROUP, f"{path.stem}.shapes", not wrong, None, None, _wrong_note(wrong, state, manifest))
    same = list(state) == list(manifest)
    yield CaseResult(GROUP, f"{path.stem}.order", same, None, None, "" if same else "key order differs")
    n_expected, n_model = sum(math.prod(s) for s in manifest.values()), model.num_parameters
    yield CaseResult(GROUP, f"{path.stem}.num_parameters", n_model == n_expected, None, None,
                     f"{n_model:,} vs manifest {n_expected:,}")


def _keys(path: Path, manifest: dict[str, str]) -> CaseResult:
    state = build_meta_model().state_dict()
    note = _diff_note(manifest, state)
    return CaseResult(GROUP, f"{path.stem}.keys", not note, None, None, note or f"{len(state)} keys")


def _int8_runtime(path: Path, manifest: dict[str, dict]) -> Iterator[CaseResult]:
    import torch

    try:
        from worldstream.model.quant import convert_to_int8
    except ImportError as e:
        yield CaseResult(GROUP, path.stem, True, None, None, f"skipped: INT8 conversion unavailable ({e})")
        return
    model = convert_to_int8(build_meta_model()).to(torch.bfloat16)
    state = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
             for k, v in model.state_dict().items()}
    note = _diff_note(manifest, state)
    yield CaseResult(GROUP, f"{path.stem}.keys", not note, None, None, note or f"{len(state)} keys")
    wrong = [k for k in manifest if k in state and state[k] != {"shape": list(manifest[k]["shape"]),
                                                                "dtype": manifest[k]["dtype"]}]
    note = _wrong_note(wrong, state, manifest)
    yield CaseResult(GROUP, f"{path.stem}.shapes_dtypes", not wrong, None, None, note)
