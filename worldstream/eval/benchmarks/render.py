"""`worldstream bench render`: how fast the data engine fills shards on this machine.

Measures, in one process (= one `data render` worker):
1. renderer frames/s at the nano (96x160) and small (192x320) resolutions, via the engine's
   `measure_fps(world_seed, H, W, n)`;
2. shard throughput for clips rendered at 96x160: write (encode + tar + sha256) and read (decode)
   clips/s and MB/s for lossless npz frames vs lossy mp4, and the bytes per clip.
Writes a markdown table (docs/results/render.md by default) with a machine description.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from worldstream.eval.benchmarks.common import machine, write_report

MB = 1e6


@dataclass(frozen=True)
class RenderBenchConfig:
    sizes: tuple[tuple[int, int], ...] = ((96, 160), (192, 320))  # nano and small preset resolutions (SPEC)
    fps_frames: int = 97  # frames rendered per fps measurement (after the engine's own warm-up)
    world_seed: int = 1
    shard_clips: int = 8  # clips per shard-throughput measurement
    shard_frames: int = 33  # frames per clip (a nano training clip)
    shard_size: tuple[int, int] = (96, 160)


def bench_fps(cfg: RenderBenchConfig) -> list[dict[str, Any]]:
    from worldstream.data.engine.renderer import measure_fps

    rows = []
    for H, W in cfg.sizes:
        d = measure_fps(cfg.world_seed, H, W, cfg.fps_frames, details=True)
        rows.append({"height": H, "width": W, "frames": cfg.fps_frames, "fps": float(d["fps"]),
                     "triangles": d.get("triangles"), "gl_renderer": d.get("gl_renderer")})
    return rows


def bench_shards(cfg: RenderBenchConfig, tmp: Path) -> dict[str, Any]:
    from worldstream.data.engine import EngineConfig, render_clip
    from worldstream.data.render_cmd import derive_seed
    from worldstream.data.shards import ShardConfig, ShardReader, write_shard

    H, W = cfg.shard_size
    ecfg = replace(EngineConfig(), height=H, width=W, num_frames=cfg.shard_frames)
    t0 = time.perf_counter()
    clips = []
    for i in range(cfg.shard_clips):
        clip = render_clip(cfg.world_seed, derive_seed("bench", i), ecfg)
        clip.key = f"bench_{i:04d}"
        clips.append(clip)
    render_s = time.perf_counter() - t0
    raw_bytes = sum(c.video.nbytes for c in clips)
    rows = []
    for fmt in ("npz", "mp4"):
        path = tmp / f"shard-{fmt}.tar"
        t0 = time.perf_counter()
        info = write_shard(path, clips, ShardConfig(video_format=fmt))
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = sum(1 for _ in ShardReader([path], strict=True))
        read_s = time.perf_counter() - t0
        assert n == len(clips)
        rows.append({"format": fmt, "write_clips_per_s": len(clips) / write_s,
                     "write_mb_per_s": info.bytes / MB / write_s, "raw_mb_per_s": raw_bytes / MB / write_s,
                     "read_clips_per_s": len(clips) / read_s, "kb_per_clip": info.bytes / 1e3 / len(clips),
                     "ratio_vs_raw": raw_bytes / info.bytes})
    return {"clips": len(clips), "frames": cfg.shard_frames, "height": H, "width": W,
            "render_clips_per_s": len(clips) / render_s, "raw_kb_per_clip": raw_bytes / 1e3 / len(clips),
            "formats": rows}


def to_markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["shards"]
    lines = [
        "# Render and shard throughput (`worldstream bench render`)",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} logical CPUs, Python {m['python']}, "
        f"numpy {m['numpy']}; OpenGL: {result['fps'][0].get('gl_renderer')}. Load average when started: "
        f"{m['load_avg_1min']:.1f} (the cores were shared). One process (= one `data render` worker); "
        "numbers scale with workers only while there are free cores.",
        "",
        "## Renderer",
        "",
        "| resolution | frames timed | world triangles | frames/s per worker |",
        "|---|---:|---:|---:|",
        *[f"| {r['height']}x{r['width']} | {r['frames']} | {r['triangles']} | {r['fps']:.1f} |"
          for r in result["fps"]],
        "",
        f"## Shards ({s['clips']} clips of {s['frames']} frames at {s['height']}x{s['width']})",
        "",
        f"End-to-end rendering (engine, one worker): {s['render_clips_per_s']:.2f} clips/s. "
        f"Raw uint8 video: {s['raw_kb_per_clip']:.0f} kB per clip.",
        "",
        "| video | write clips/s | write MB/s (on disk) | raw video MB/s in | read clips/s | kB per clip "
        "| x smaller than raw |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['format']} | {r['write_clips_per_s']:.1f} | {r['write_mb_per_s']:.1f} | "
          f"{r['raw_mb_per_s']:.1f} | {r['read_clips_per_s']:.1f} | {r['kb_per_clip']:.0f} | "
          f"{r['ratio_vs_raw']:.1f} |" for r in s["formats"]],
        "",
        "npz = lossless frames (deflate level 1), mp4 = H.264 crf 18 (lossy). Write = encode + tar + sha256, "
        "read = tar + decode + validate.",
        "",
        f"Total benchmark time: {result['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def run(cfg: RenderBenchConfig = RenderBenchConfig()) -> dict[str, Any]:
    t0 = time.perf_counter()
    fps = bench_fps(cfg)
    with tempfile.TemporaryDirectory(prefix="ws-bench-render-") as tmp:
        shards = bench_shards(cfg, Path(tmp))
    return {"config": asdict(cfg), "machine": machine(), "fps": fps, "shards": shards,
            "seconds": time.perf_counter() - t0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="directory for render.md")
    p.add_argument("--json", type=Path, help="also write the raw numbers as JSON")


def main(args: argparse.Namespace) -> int:
    result = run()
    md = to_markdown(result)
    write_report(args.out / "render.md", md, args.json, result)
    print(md)
    return 0
