"""`worldstream train --recipe NAME --out DIR [--resume] [--set key=value ...] [--list]`.

Multi-process: `torchrun --nproc_per_node 2 -m worldstream train --recipe ... --out ...` (gloo on CPU).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="recipe name (see --list)")
    parser.add_argument("--out", help="run directory: train.csv, tb/, ckpt/step_XXXXXX/, ckpt/latest")
    parser.add_argument("--resume", action="store_true",
                        help="continue from DIR/ckpt/latest (starts from step 0 when there is none yet)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend",
                        default=[],
                        help="override config fields, e.g. --set schedule.steps=100 optim.model.lr=3e-4")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the final config as JSON and exit")


def main(args: argparse.Namespace) -> int:
    import json

    from worldstream.train.config import apply_overrides, to_dict
    from worldstream.train.recipes import get_recipe, list_recipes

    if args.list:
        for r in list_recipes():
            print(f"{r.name:24s} {r.doc}")
        return 0
    if not args.recipe:
        raise ValueError("--recipe is required (see `worldstream train --list`)")
    recipe = get_recipe(args.recipe)
    cfg = apply_overrides(recipe.config(), args.overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=1))
        return 0
    if not args.out:
        raise ValueError("--out DIR is required")

    from worldstream.train.trainer import NonFiniteError, Trainer

    trainer = Trainer(recipe, cfg, args.out, resume=args.resume)
    try:
        result = trainer.fit()
    except NonFiniteError as e:
        print(f"worldstream: error: {e}", file=sys.stderr)
        return 3
    if trainer.env.is_main:
        loss = result.last_row.get("loss", float("nan"))
        print(f"{recipe.name}: step {result.step}/{cfg.schedule.steps}, loss {loss:.6g}, "
              f"{result.steps_per_s:.1f} steps/s; checkpoint {result.checkpoint}")
    return 0
