"""Conformance group `action_grouping`: block 0's action-module internals (golden README section 2).

* `action_grouping_block0.safetensors`: for prefix `case_b.` the module is called on the stored
  `block0_action_in` of the intermediates (else on our own block-0 input); for `case_a.` on our model's
  block-0 input of case a. Every stored tensor is compared (max |diff| <= 1e-4, float32).
* `action_grouping_tables.json`: the row-index tables. Like the harness, the module's mouse path is run with
  clip mouse row r set to the value r (memory rows to the marker) and the grouped mouse windows are read
  back: entry [i][w] = row feeding window slot w of grouped latent i.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from worldstream.conformance import CaseResult, compare, guarded
from worldstream.conformance import dit as dit_group

GROUP = "action_grouping"
TOL = dit_group.TOL
TENSORS = "action_grouping_block0.safetensors"
TABLES = "action_grouping_tables.json"
MEMORY_MARK = -7.0  # value the golden tables use for memory entries ("-7 marks a memory entry")
TABLE_NAME = re.compile(r"N(\d+)_T(\d+)(?:_with_(\d+)_memory)?$")


def applies(root: Path) -> bool:
    root = Path(root)
    return dit_group.applies(root) and ((root / TENSORS).exists() or (root / TABLES).exists())


def check(root: Path) -> Iterator[CaseResult]:
    root = Path(root)
    model = dit_group.load_model(root)
    module = _block0_action(model)
    if (root / TENSORS).exists():
        yield from guarded(GROUP, "tensors", lambda: _tensors(root, model, module))
    if (root / TABLES).exists():
        yield from guarded(GROUP, "tables", lambda: _tables(root, module))


def _block0_action(model):
    if not hasattr(model.blocks[0], "action_model"):
        raise ValueError("golden config has no action module in block 0")
    return model.blocks[0].action_model


def _tensors(root: Path, model, module) -> Iterator[CaseResult]:
    import torch
    from safetensors.torch import load_file

    stored = load_file(str(root / TENSORS))
    cases = dit_group.load_cases(root)
    inter_path = root / "dit_tiny_intermediates_b.safetensors"
    for case in sorted({k.split(".", 1)[0].removeprefix("case_") for k in stored}):
        kw, _ = dit_group.case_call(root, case, cases)
        if case == "b" and inter_path.exists():
            x_in = load_file(str(inter_path))["block0_action_in"]
        else:
            cap: dict = {}
            with torch.no_grad():
                model(**kw, capture=cap)
            x_in = cap["block0_action_in"]
        memory = kw.get("x_memory")
        M = 0 if memory is None else memory.shape[2]
        frames = M + kw["x"].shape[2]
        _, ph, pw = model.cfg.patch_size
        tokens_per_frame = (kw["x"].shape[3] // ph) * (kw["x"].shape[4] // pw)
        x_in = x_in[:, : frames * tokens_per_frame]  # valid tokens only
        capture: dict = {}
        with torch.no_grad():
            module(x_in, frames, kw["mouse_cond"], kw["keyboard_cond"], kw.get("mouse_cond_memory"),
                   kw.get("keyboard_cond_memory"), capture=capture)
        for key, expected in stored.items():
            if not key.startswith(f"case_{case}."):
                continue
            name = key.split(".", 1)[1]
            if name not in capture:
                yield CaseResult(GROUP, key, False, None, TOL, "not captured by the action module")
                continue
            actual = capture[name]
            if actual.ndim == expected.ndim + 1 and actual.shape[0] == 1:  # golden drops batch 1 here
                actual = actual[0]
            yield compare(GROUP, key, actual, expected, TOL)


def _tables(root: Path, module) -> Iterator[CaseResult]:
    import torch

    tables = json.loads((root / TABLES).read_text())
    cfg = module.cfg
    for name, table in tables.items():
        match = TABLE_NAME.search(name)
        if not isinstance(table, list) or match is None:
            continue
        n_rows, n_clip, n_mem = int(match[1]), int(match[2]), int(match[3] or 0)
        frames = n_mem + n_clip  # grouped entries: memory first, then the clip latents
        tokens_per_frame = 1
        mouse = torch.arange(n_rows, dtype=torch.float32)[None, :, None].expand(1, n_rows, cfg.mouse_dim_in)
        mouse_mem = torch.full((1, n_mem, cfg.mouse_dim_in), MEMORY_MARK) if n_mem else None
        keyboard = torch.zeros(1, n_rows, cfg.keyboard_dim_in)
        keyboard_mem = torch.zeros(1, n_mem, cfg.keyboard_dim_in) if n_mem else None
        x = torch.zeros(1, frames * tokens_per_frame, cfg.img_hidden_size)
        capture: dict = {}
        with torch.no_grad():
            module(x, frames, mouse, keyboard, mouse_mem, keyboard_mem, capture=capture)
        # mouse_windows [1, T, window*dim] window-major -> row values of component 0: [T, window]
        rows = capture["mouse_windows"][0].reshape(frames, cfg.window_rows, cfg.mouse_dim_in)[..., 0]
        yield compare(GROUP, f"table.{name}", rows, torch.tensor(table, dtype=torch.float32), 0.0)
