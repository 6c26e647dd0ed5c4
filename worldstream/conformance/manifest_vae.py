"""Conformance group `manifest_vae`: VAE presets on the meta device vs the official state-dict manifests.

Manifests (`{key: shape}` in `state_dict()` order, shared/reference) were made by instantiating the
official `WanVAE_` with the 5B config: `mg3_wan22_vae_state_dict.json` (full Wan2.2 VAE) and
`mg3_lightvae*_p<rate>_state_dict.json` (pruning_rate = rate / 100, e.g. p050 -> 0.5). Each manifest
gives one case: same keys in the same order, same shapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from worldstream.conformance import CaseResult, guarded

GROUP = "manifest_vae"
PATTERNS = ("mg3_wan22_vae*.json", "mg3_lightvae*.json")


def _manifests(root: Path) -> list[Path]:
    return sorted({p for pattern in PATTERNS for p in Path(root).glob(pattern)})


def applies(root: Path) -> bool:
    return bool(_manifests(root))


def pruning_rate_of(path: Path) -> float:
    """0 for the Wan2.2 manifest, rate/100 for `..._p<rate>_...` LightVAE manifests."""
    if path.name.startswith("mg3_wan22_vae"):
        return 0.0
    m = re.search(r"_p(\d+)(?:_|\.)", path.name)
    if not m:
        raise ValueError(
            f"{path.name}: LightVAE manifest name must carry the rate as _p<rate>_ (e.g. _p050_)"
        )
    return int(m.group(1)) / 100  # percent: p050 -> 0.5, p075 -> 0.75


def check(root: Path) -> Iterator[CaseResult]:
    for path in _manifests(root):
        yield from guarded(GROUP, path.name, lambda p=path: _check_one(p))


def _check_one(path: Path) -> CaseResult:
    import dataclasses

    import torch

    from worldstream.model.vae import MG3_WAN22, VAE

    want = {k: list(v) for k, v in json.loads(path.read_text()).items()}
    cfg = dataclasses.replace(MG3_WAN22, pruning_rate=pruning_rate_of(path))
    with torch.device("meta"):
        got = {k: list(v.shape) for k, v in VAE(cfg).state_dict().items()}
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    shapes = [f"{k} {got[k]} vs {want[k]}" for k in want if k in got and got[k] != want[k]]
    order_ok = [k for k in got if k in want] == [k for k in want if k in got]
    ok = not missing and not extra and not shapes and order_ok
    note = f"p={cfg.pruning_rate}, {len(got)} keys"
    if not ok:
        note += "".join(
            [
                f"; missing {missing[:3]}" if missing else "",
                f"; extra {extra[:3]}" if extra else "",
                f"; shapes {shapes[:3]}" if shapes else "",
                "" if order_ok else "; key order differs",
            ]
        )
    return CaseResult(GROUP, path.name, ok, note=note)
