"""`worldstream ...`: thin entry point. Parse, build, call.

Every sub-command lives in its own module that exposes `add_arguments(parser)` and
`main(args) -> int`. Command modules keep heavy imports (torch, moderngl) inside `main`, so
`worldstream --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command path -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("preview",): ("worldstream.data.preview", "render a small world: preview video + contact sheet"),
    ("data", "render"): ("worldstream.data.render_cmd", "render worlds into WebDataset clip shards"),
    ("data", "ingest"): ("worldstream.data.ingest.cmd",
                         "RealEstate10K, poses.npy, transforms.json -> shards"),
    ("data", "filter"): ("worldstream.data.filter_cmd", "filter clip shards, with a removal report"),
    ("data", "inspect"): ("worldstream.data.inspect_cmd", "stats, contact sheet, trajectory plot"),
    ("data", "cache-latents"): ("worldstream.data.cache_latents", "encode clip shards into latent shards"),
    ("conformance",): ("worldstream.conformance.cmd", "check this install against official golden vectors"),
    ("train",): ("worldstream.train.train_cmd", "train a recipe"),
    ("generate",): ("worldstream.infer.generate_cmd", "image + prompt + actions -> mp4"),
    ("play",): ("worldstream.serve.play_cmd", "play in the browser (or --terminal)"),
    ("bench", "render"): ("worldstream.eval.benchmarks.render", "renderer frames/s and shard throughput"),
    ("bench", "retrieval"): ("worldstream.eval.benchmarks.retrieval", "retrieval time vs history length"),
    ("bench", "model"): ("worldstream.eval.benchmarks.model", "DiT / VAE forward time and GFLOP/s"),
    ("bench", "dit"): ("worldstream.eval.benchmarks.dit", "DiT forward time and GFLOP/s"),
    ("bench", "memory"): ("worldstream.eval.benchmarks.memory",
                          "revisits on held-out worlds: PSNR/SSIM of returning frames, memory on vs off"),
    ("bench", "drift"): ("worldstream.eval.benchmarks.drift", "PSNR vs ground truth over long sessions"),
    ("bench", "action"): ("worldstream.eval.benchmarks.action",
                          "action following: an inverse-dynamics model on generated vs ground-truth video"),
    ("bench", "speed"): ("worldstream.eval.benchmarks.speed",
                         "end-to-end FPS and latency, each acceleration off in turn"),
    ("bench", "vae"): ("worldstream.eval.benchmarks.vae", "VAE PSNR/SSIM and speed: full vs LightVAE"),
    ("bench", "all"): ("worldstream.eval.benchmarks.all", "vae, memory, action, drift, speed in sequence"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldstream", description=__doc__.splitlines()[0])
    subparsers: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    }
    for path, (module_name, help_text) in COMMANDS.items():
        # create intermediate groups ("data", "bench") on first use
        for depth in range(1, len(path)):
            group = path[:depth]
            if group not in subparsers:
                gp = subparsers[group[:-1]].add_parser(group[-1], help=f"{group[-1]} commands")
                subparsers[group] = gp.add_subparsers(dest=f"cmd_{depth}", metavar="COMMAND", required=True)
        p = subparsers[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:  # a command whose module is not built yet
            if e.name != module_name:
                raise
            p.set_defaults(_missing=True)
            continue
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"worldstream: command module {args._module} is not available in this build", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.main(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"worldstream: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
