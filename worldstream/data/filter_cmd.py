"""`worldstream data filter IN --out OUT [--report report.json]`: keep the clips that pass every filter.

Reads the shards of IN (bad shards/samples are skipped and counted), runs `worldstream.data.filters`,
writes the kept clips to new shards in OUT and the report (per filter: removed clips and why) to
--report (default OUT/filter_report.json), and prints the report table. Thresholds: `--set name=value`
for any FilterConfig field (`--set inference.sigma_pos=0.5` for the inference config).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

REPORT_NAME = "filter_report.json"
DEFAULT_CLIPS_PER_SHARD = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, metavar="IN", help="dataset directory with shard-*.tar")
    p.add_argument("--out", required=True, type=Path, help="output dataset directory (no shards in it yet)")
    p.add_argument("--report", type=Path, help=f"report JSON path (default OUT/{REPORT_NAME})")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a FilterConfig threshold, e.g. --set jump_max_step=60")
    p.add_argument("--clips-per-shard", type=int, default=DEFAULT_CLIPS_PER_SHARD)
    p.add_argument("--video-format", choices=("npz", "mp4"), default="npz")


def _convert(value: str, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {name}: expected true/false, got {value!r}")
        return value.lower() in ("true", "1")
    try:
        return type(default)(value) if isinstance(default, (int, float)) else value
    except ValueError:
        raise ValueError(f"--set {name}: expected {type(default).__name__}, got {value!r}") from None


def apply_overrides(cfg: Any, items: list[str]) -> Any:
    """FilterConfig + ['a=1', 'inference.b=2'] -> new frozen config (unknown names are an error)."""
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        head, _, rest = name.strip().partition(".")
        fields = {f.name for f in dataclasses.fields(cfg)}
        if head not in fields:
            raise ValueError(f"--set {name}: unknown field; choose from {sorted(fields)}")
        if rest:
            cfg = dataclasses.replace(cfg, **{head: apply_overrides(getattr(cfg, head), [f"{rest}={value}"])})
        else:
            cfg = dataclasses.replace(cfg, **{head: _convert(value.strip(), getattr(cfg, head), name)})
    return cfg


def main(args: argparse.Namespace) -> int:
    from worldstream.data.filters import FilterConfig, check_clip, new_report
    from worldstream.data.ingest.common import write_clip_shards
    from worldstream.data.shards import ShardConfig, ShardReader, load_index
    from worldstream.utils.io import atomic_write_json

    cfg = apply_overrides(FilterConfig(), args.set)
    if args.input.resolve() == args.out.resolve():
        raise ValueError("--out must differ from IN (filtered shards go to a new dataset)")
    reader = ShardReader(args.input, strict=False)
    report = new_report(cfg)

    def kept():
        for clip in reader:
            reasons, skipped = check_clip(clip, cfg)
            report.add(clip.key, reasons, skipped)
            if not reasons:
                yield clip

    dataset = {"source": "filter", "input": str(args.input),
               "input_dataset": load_index(args.input)["dataset"]}
    shard_cfg = ShardConfig(video_format=args.video_format)
    counts = write_clip_shards(args.out, kept(), args.clips_per_shard, shard_cfg, dataset)
    out = report.to_json()
    out["read"] = reader.stats.as_dict() | {"errors": reader.stats.errors}
    out["written"] = counts
    report_path = args.report or args.out / REPORT_NAME
    atomic_write_json(report_path, out)
    print(report.table())
    stats = reader.stats
    if stats.samples_skipped or stats.shards_failed:
        print(f"\nunreadable input: {stats.samples_skipped} samples, {stats.shards_failed} shards "
              f"(see {report_path})")
    print(f"\nkept {report.kept} of {report.total} clips -> {counts['shards']} shard(s) in {args.out}; "
          f"report {report_path}")
    return 0
