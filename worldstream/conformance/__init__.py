"""Conformance against the official Matrix-Game 3.0 numerics.

A golden directory (format: `shared/reference/golden/README.md`, any seeds) is checked group by
group. Each group is a module in this package exposing

    applies(root: Path) -> bool                  # are this group's files present?
    check(root: Path) -> Iterator[CaseResult]    # one result per case

Groups never raise: an exception inside a case is reported as a failed case with its message.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# group name -> module; order = report order (data flows left to right)
GROUPS: dict[str, str] = {
    "camera": "worldstream.conformance.camera",
    "retrieval": "worldstream.conformance.retrieval",
    "dit": "worldstream.conformance.dit",
    "action_grouping": "worldstream.conformance.action_grouping",
    "vae": "worldstream.conformance.vae",
    "int8": "worldstream.conformance.int8",
    "scheduler": "worldstream.conformance.scheduler",
    "manifest": "worldstream.conformance.manifest",  # DiT manifests (plain + INT8 runtime)
    "manifest_vae": "worldstream.conformance.manifest_vae",  # Wan2.2 VAE + LightVAE manifests
}


@dataclass
class CaseResult:
    group: str
    case: str
    passed: bool
    max_diff: float | None = None  # max |actual - expected| (None where not numeric)
    tol: float | None = None
    note: str = ""


def compare(group: str, case: str, actual, expected, tol: float, note: str = "") -> CaseResult:
    """Max-abs-diff comparison of two tensors/arrays (shape mismatch fails with a note)."""
    import numpy as np
    import torch

    def as_f64(x):
        return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)

    a, e = as_f64(actual), as_f64(expected)
    if a.shape != e.shape:
        note = f"shape {tuple(a.shape)} != expected {tuple(e.shape)}"
        return CaseResult(group, case, False, None, tol, note)
    if a.size == 0:
        return CaseResult(group, case, True, 0.0, tol, note)
    diff = float(np.max(np.abs(a - e)))
    ok = bool(np.isfinite(diff) and diff <= tol)
    return CaseResult(group, case, ok, diff, tol, note)


def guarded(group: str, case: str, fn) -> Iterator[CaseResult]:
    """Run `fn()` (yielding or returning CaseResults); turn an exception into one failed case."""
    try:
        out = fn()
        if isinstance(out, CaseResult):
            yield out
        else:
            yield from out
    except Exception as e:  # noqa: BLE001 - a broken case must not hide the others
        last = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{last.filename}:{last.lineno}"
        yield CaseResult(group, case, False, None, None, f"{type(e).__name__}: {e} ({where})")


def run(root: Path, groups: list[str] | None = None) -> list[CaseResult]:
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"golden directory not found: {root}")
    results: list[CaseResult] = []
    for name, module_name in GROUPS.items():
        if groups and name not in groups:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # group not implemented in this build
        if module.applies(root):
            results.extend(guarded(name, "*", lambda m=module: m.check(root)))
    return results


def format_table(results: list[CaseResult]) -> str:
    rows = [("group", "case", "result", "max |diff|", "tol", "note")]
    for r in results:
        rows.append((
            r.group, r.case, "PASS" if r.passed else "FAIL",
            "-" if r.max_diff is None else f"{r.max_diff:.3g}",
            "-" if r.tol is None else f"{r.tol:.0e}", r.note,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for k, row in enumerate(rows):
        cells = "  ".join(c.ljust(w) for c, w in zip(row[:5], widths))
        lines.append(cells + ("  " + row[5] if row[5] else ""))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    n_fail = sum(not r.passed for r in results)
    lines.append(f"\n{len(results) - n_fail}/{len(results)} cases passed")
    return "\n".join(lines)
