"""`worldstream play`: stream a world model in the browser (or, with --terminal, from stdin keys).

Thin: parse, load the model bundle once, then either serve the page + websocket (server.py) or run
the terminal loop (terminal.py). The server binds 127.0.0.1 unless --host says otherwise.

Defaults (the README's main command: the shipped nano, MG3's fast path): the session the checkpoint
suggests (a DMD student samples with the few-step sampler, infer/model_bundle.py), memory on, INT8
attention projections (dequantised weights on CPUs, model/quant.py), the LightVAE decoder when the
checkpoint has one, async decode in a worker process, and the DiT on 1 intra-op thread
(config.DEFAULT_CPU_DIT_THREADS) while the decode worker takes the other cores. Each is a flag away.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path


def default_cache_dir() -> Path:
    """Built-in start frames on disk: $XDG_CACHE_HOME/worldstream/start_frames (~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "worldstream" / "start_frames"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="model folder (ours or the official release); default: checkpoints/nano, "
                             "else random-init nano")
    parser.add_argument("--max-sessions", type=int, default=4, help="concurrent browser sessions")
    parser.add_argument("--terminal", action="store_true",
                        help="no browser: read MG3's keys per clip from stdin, write mp4 files")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    parser.add_argument("--out", type=Path, default=Path("out/play"), help="--terminal: output directory")
    parser.add_argument("--image", default=None,
                        help="--terminal: start image file (PNG/JPEG) or builtin:NAME "
                             "(default: the first built-in)")
    parser.add_argument("--prompt", default=None, help="--terminal: prompt (default: the built-in's own)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache of built-in start frames (default: ~/.cache/worldstream/start_frames)")
    from worldstream.infer.generate_cmd import add_session_arguments

    add_session_arguments(parser)  # --sampler --steps --shift --no-memory --int8-compute --threads
    parser.add_argument("--no-int8", action="store_true", help="bf16 attention projections (INT8 is on)")
    parser.add_argument("--no-light-vae", action="store_true",
                        help="decode with the full VAE (default: LightVAE, when the checkpoint has one)")
    parser.add_argument("--sync-decode", action="store_true",
                        help="decode in the generating process (default: a worker process, overlapped)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def play_session_config(args: argparse.Namespace):
    """The checkpoint's suggested session with play's defaults (int8, LightVAE, async decode) and flags."""
    from worldstream.infer.generate_cmd import apply_session_arguments
    from worldstream.infer.model_bundle import has_light_vae, suggest_session_config

    cfg = suggest_session_config(args.checkpoint)
    light = not args.no_light_vae and has_light_vae(args.checkpoint)
    cfg = cfg.replace(int8=not args.no_int8, light_vae=light, async_decode=not args.sync_decode)
    return apply_session_arguments(cfg, args)


def describe(cfg, device="cpu") -> str:
    """One line: what the session runs."""
    from worldstream.model.quant import default_int8_compute

    compute = default_int8_compute(device) if cfg.int8_compute == "auto" else cfg.int8_compute
    decode = (f"async decode (DiT {cfg.dit_threads} + decoder {cfg.decode_threads} threads)"
              if cfg.async_decode else f"sync decode ({cfg.dit_threads} threads)")
    return ", ".join([f"{cfg.sampler} {cfg.steps} steps", "memory" if cfg.use_memory else "no memory",
                      f"INT8 ({compute})" if cfg.int8 else "bf16",
                      "LightVAE" if cfg.light_vae else "full VAE", decode])


def _terminal(args, bundle, session_cfg, serve_cfg) -> int:
    import numpy as np
    from PIL import Image

    from worldstream.infer.session import WorldSession
    from worldstream.serve.server import StartImages
    from worldstream.serve.terminal import run

    image, prompt = None, args.prompt
    starts = StartImages(serve_cfg.builtins, session_cfg.height, session_cfg.width, serve_cfg.cache_dir)
    try:
        spec = args.image or f"builtin:{starts.names[0]}"
        if spec.startswith("builtin:"):
            image, builtin_prompt = starts.get(spec[len("builtin:"):])
            prompt = builtin_prompt if prompt is None else prompt
        else:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"--image: no such file {path}")
            image = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
    except KeyError as e:
        raise ValueError(f"--image: {e.args[0]}") from None
    finally:
        starts.close()
    print(f"terminal play: {session_cfg.height}x{session_cfg.width}, {session_cfg.step_frames} frames per "
          f"clip, writing to {args.out}", flush=True)
    if not session_cfg.async_decode:  # async: the session splits the cores itself
        import torch

        torch.set_num_threads(session_cfg.dit_threads)
    with WorldSession(bundle, session_cfg) as session:  # close() stops the decode worker
        run(session, image, prompt or "", args.out, session_cfg.fps, sys.stdin, sys.stdout)
    return 0


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be >= 1, got {args.max_sessions}")
    if args.checkpoint is not None and not args.checkpoint.is_dir():
        raise NotADirectoryError(f"--checkpoint: folder not found: {args.checkpoint}")

    import warnings

    from worldstream.infer.model_bundle import RandomInitWarning, has_light_vae, load_bundle_for
    from worldstream.serve.server import ServeConfig

    # 1. session settings, then the model, loaded once; every session shares its weights
    session_cfg = play_session_config(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomInitWarning)
        bundle = load_bundle_for(session_cfg, args.checkpoint)
    for w in caught:
        print(f"worldstream: warning: {w.message}", file=sys.stderr, flush=True)
    if not args.no_light_vae and not has_light_vae(args.checkpoint):
        print(f"worldstream: note: {bundle.source} has no lightvae/ decoder; decoding with the full VAE",
              file=sys.stderr, flush=True)
    print(f"worldstream play: {bundle.source}: {describe(session_cfg, bundle.device)}", flush=True)
    serve_cfg = ServeConfig(host=args.host, port=args.port, max_sessions=args.max_sessions,
                            cache_dir=args.cache_dir or default_cache_dir(),
                            dit_threads=session_cfg.dit_threads)
    if args.terminal:
        return _terminal(args, bundle, session_cfg, serve_cfg)

    # 2. server
    import threading
    import webbrowser

    import uvicorn

    from worldstream.serve.server import bind_socket, create_app, uvicorn_config

    if not _is_loopback(args.host):
        print(f"WARNING: binding {args.host}: anyone who can reach this machine can play (and use its "
              "CPU/GPU)", file=sys.stderr)
    sock = bind_socket(serve_cfg)
    server = uvicorn.Server(uvicorn_config(create_app(bundle, session_cfg, serve_cfg), serve_cfg, "info"))

    def announce():
        # NOTE wait for the socket: with --port 0 the real port is known only then
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.05)
        port = sock.getsockname()[1]
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
        print(f"worldstream play: open {url}  ({bundle.source}; Ctrl-C stops)", flush=True)
        if args.open:
            webbrowser.open(url)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
