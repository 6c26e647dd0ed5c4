"""Repository rules checked on the source: model code is single-device (STYLE.md item 4).

Nothing under worldstream/model/ may import or reach torch.distributed; distribution is applied from
worldstream/parallel/ through the model's seams.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "worldstream" / "model"
BANNED = "torch.distributed"


def _dotted(node: ast.AST) -> str | None:
    """'a.b.c' for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _is_banned(name: str) -> bool:
    return name == BANNED or name.startswith(BANNED + ".")


def distributed_uses(source: str, filename: str = "<source>") -> list[str]:
    """'file:line: what' for every import of, or attribute path through, torch.distributed."""
    hits = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [_dotted(node) or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # importlib.import_module("...")
            names = [node.value]
        hits += [f"{filename}:{node.lineno}: {n}" for n in names if _is_banned(n)]
    return sorted(set(hits))


def test_model_code_never_uses_torch_distributed():
    files = sorted(MODEL.rglob("*.py"))
    assert len(files) >= 5, f"expected the model package under {MODEL}"
    hits = [h for f in files for h in distributed_uses(f.read_text(), str(f.relative_to(REPO)))]
    assert not hits, "model code must stay single-device (apply distribution in worldstream/parallel/):\n" + \
        "\n".join(hits)


@pytest.mark.parametrize("source", [
    "import torch.distributed as dist",
    "import torch.distributed.fsdp",
    "from torch.distributed import all_reduce",
    "from torch import distributed",
    "import torch\nok = torch.distributed.is_initialized()",
    "import importlib\nd = importlib.import_module('torch.distributed')",
])
def test_rule_catches_each_form(source):
    assert distributed_uses(source), source


def test_rule_allows_ordinary_torch():
    assert not distributed_uses("import torch\nimport torch.nn.functional as F\nx = torch.distributions.Normal(0, 1)")
