"""`worldstream bench all`: the evaluation suite in one go (vae, memory, action, drift, speed, in that order).

Each bench runs in this process through its own `add_arguments` / `main(args)`, with its own defaults (its
markdown / PNG go to its usual place under docs/results/). `all` forwards only the options a user gave it,
and only to the benches whose parser has that option (discovered from the parser, so benches added later
need no change here): `--checkpoint`, `--quick` (each bench's own small settings), `--world-seeds`,
`--threads`; `--json` of each bench points into `--json-dir` (default: a temporary folder) and, with
`--results-dir DIR`, `--out` into DIR (a markdown default keeps its file name). A bench whose
module is missing or that fails (an exception or a non-zero exit code) is reported and the suite goes on;
the exit code is non-zero at the end if any did. `--json PATH` writes one combined JSON: machine, and per
bench its status, seconds, error and its full JSON result. `--out` (markdown) lists the benches and statuses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldstream.eval.benchmarks.common import add_common_arguments, machine, machine_line, write_report

DEFAULT_OUT = "docs/results/all.md"
MODULE_PREFIX = "worldstream.eval.benchmarks."


@dataclass(frozen=True)
class SuiteConfig:
    benches: tuple[str, ...] = ("vae", "memory", "action", "drift", "speed")  # run order
    forwarded: tuple[str, ...] = ("--checkpoint", "--quick", "--world-seeds", "--threads")  # if given
    error_tail_lines: int = 6  # traceback lines kept in the report of a failed bench


SUITE = SuiteConfig()


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    # NOTE argparse has no public listing of a parser's options; `_actions` is stable across versions
    return {s for action in parser._actions for s in action.option_strings}


def bench_argv(parser: argparse.ArgumentParser, args: argparse.Namespace,
               json_path: Path | None) -> list[str]:
    """The command line `all` gives one bench: the forwarded options the bench knows, and its --json."""
    known = _option_strings(parser)
    argv: list[str] = []
    for opt in SUITE.forwarded:
        if opt not in known:
            continue
        value = getattr(args, opt.lstrip("-").replace("-", "_"), None)
        if value is None or value is False:
            continue
        argv += [opt] if value is True else [opt, str(value)]
    if json_path is not None and "--json" in known:
        argv += ["--json", str(json_path)]
    if args.results_dir and "--out" in known:  # a file default keeps its name; a folder default is replaced
        default = Path(str(parser.get_default("out")))
        argv += ["--out", str(Path(args.results_dir) / default.name if default.suffix else args.results_dir)]
    return argv


def run_bench(name: str, args: argparse.Namespace, json_dir: Path, log=print) -> dict[str, Any]:
    """Import, parse and run one bench; never raises (the status says what happened)."""
    import torch

    entry: dict[str, Any] = {"status": "ok", "exit_code": 0, "seconds": 0.0, "error": None, "argv": None,
                             "result": None}
    try:
        module = importlib.import_module(MODULE_PREFIX + name)
    except ModuleNotFoundError as e:
        if e.name != MODULE_PREFIX + name:
            raise
        return {**entry, "status": "missing", "exit_code": None, "error": f"no module {MODULE_PREFIX + name}"}
    parser = argparse.ArgumentParser(prog=f"worldstream bench {name}")
    module.add_arguments(parser)
    json_path = json_dir / f"{name}.json"
    argv = bench_argv(parser, args, json_path)
    entry["argv"] = argv
    log(f"bench all: {name} {' '.join(argv)}")
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        code = int(module.main(parser.parse_args(argv)) or 0)
        entry["exit_code"] = code
        if code:
            entry["status"], entry["error"] = "failed", f"exit code {code}"
    except (Exception, SystemExit) as e:  # a bench's bug or bad input must not stop the suite
        tail = traceback.format_exc().strip().splitlines()[-SUITE.error_tail_lines:]
        code = e.code if isinstance(e, SystemExit) else None
        entry.update(status="failed", exit_code=code, error=f"{type(e).__name__}: {e}", traceback=tail)
    finally:
        torch.set_num_threads(threads)  # benches set their own thread counts
    entry["seconds"] = time.perf_counter() - t0
    if json_path.is_file():
        try:
            entry["result"] = json.loads(json_path.read_text())
        except ValueError as e:
            entry["status"], entry["error"] = "failed", f"unreadable JSON {json_path}: {e}"
    log(f"bench all: {name}: {entry['status']} in {entry['seconds']:.0f} s"
        + (f" ({entry['error']})" if entry["error"] else ""))
    return entry


def to_markdown(res: dict[str, Any]) -> str:
    lines = ["# Evaluation suite (`worldstream bench all`)", "", machine_line(res["machine"]), "",
             "| bench | status | seconds | options passed | error |", "|---|---|---|---|---|"]
    for name, e in res["benches"].items():
        argv = " ".join(a for a in (e["argv"] or []) if not a.endswith(".json") and a != "--json")
        err = (e["error"] or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {e['status']} | {e['seconds']:.0f} | `{argv}` | {err} |")
    lines += ["", "Each bench writes its own report under docs/results/ (see docs/evaluation.md)."]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, default_out=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="pass --quick to every bench that has it")
    p.add_argument("--world-seeds", default=None, help="passed to the benches that take held-out world seeds")
    p.add_argument("--threads", type=int, default=None, help="passed to the benches that take --threads")
    p.add_argument("--results-dir", default=None, metavar="DIR",
                   help="write every bench's markdown/PNG (and all.md, unless --out) here, not docs/results/")
    p.add_argument("--json-dir", default=None, metavar="DIR",
                   help="keep each bench's own JSON here as <bench>.json (default: a temporary folder)")
    p.add_argument("--benches", default=",".join(SUITE.benches),
                   help=f"comma-separated subset, run in this order (default {','.join(SUITE.benches)})")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.benches.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITE.benches]
    if unknown or not names:
        raise ValueError(f"--benches: unknown {unknown or names}; choose from {', '.join(SUITE.benches)}")
    res: dict[str, Any] = {"machine": machine(), "benches": {}}
    with tempfile.TemporaryDirectory(prefix="bench_all_") as tmp:
        json_dir = Path(args.json_dir) if args.json_dir else Path(tmp)
        json_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            res["benches"][name] = run_bench(name, args, json_dir, _log)
    out = args.out
    if args.results_dir and out == DEFAULT_OUT:  # the suite's own table goes with the benches' reports
        out = str(Path(args.results_dir) / Path(DEFAULT_OUT).name)
    write_report(out, to_markdown(res), args.json, res)
    bad = [n for n, e in res["benches"].items() if e["status"] != "ok"]
    print(f"bench all: {len(names) - len(bad)}/{len(names)} ok"
          + (f"; not ok: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0
