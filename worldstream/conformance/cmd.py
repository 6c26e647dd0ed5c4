"""`worldstream conformance DIR`: pass/fail table per golden case; exit code 1 on any failure."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("golden_dir", type=Path,
                   help="directory of golden files (format of shared/reference/golden)")
    p.add_argument("--group", action="append", help="only these groups (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")


def main(args: argparse.Namespace) -> int:
    from worldstream.conformance import format_table, run

    results = run(args.golden_dir, args.group)
    if not results:
        print(f"no golden files recognised in {args.golden_dir}")
        return 1
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.passed for r in results) else 1
