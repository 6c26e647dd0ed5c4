"""`worldstream bench drift`: how fast does a long session wander away from the world it started in?

Issue 6: PSNR vs ground truth over 60-second sessions; target: <= 2 dB drop between the first and the last
5 s. Per held-out world (eval/harness.py) the engine renders a long clip (default trajectory `explore`, the
reactive walker, which handles any length) and the model generates it from the same frame 0, prompt and
actions (memory on, the session as a player gets it). PSNR and SSIM of every generated frame against the
render, averaged per second of video (cfg.fps frames), then over worlds; drop = mean PSNR of the first
`window_seconds` minus that of the last. Frame 0 (the VAE reconstruction of the start image) is left out.
FPS = generated frames per second of `WorldSession.step` (DiT + decode, one video at a time).

NOTE the session length is rounded up to the clip schedule (nano 25 + 16k frames) and the metrics use the
first seconds x fps frames; the drop needs at least 2 x window_seconds of video.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from worldstream.eval.benchmarks.common import machine, machine_line, psnr, ssim, write_with_plot

DEFAULT_OUT = "docs/results/drift.md"


@dataclass(frozen=True)
class DriftBenchConfig:
    trajectory: str = "explore"  # a long exploring walk (the scripted revisit programs fit ~100 frames)
    seconds: float = 60.0  # issue 6: 60-second sessions (960 frames at 16 fps)
    quick_seconds: float = 10.0  # --quick: 1 world, 10 s (two non-overlapping 5 s windows)
    window_seconds: float = 5.0  # issue 6: first vs last 5 s
    psnr_cap_db: float = 100.0  # identical frames (PSNR +inf) count as this in means
    target_drop_db: float = 2.0  # issue 6: drift <= 2 dB between the first and the last 5 s


BENCH = DriftBenchConfig()


def _mean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if x.size and not np.isnan(x).all() else float("nan")


def per_second(values: np.ndarray, fps: int) -> np.ndarray:
    """Per-frame values [N] (NaN for frame 0) -> means per second [ceil(N / fps)]."""
    n = len(values)
    return np.array([_mean(values[s:min(s + fps, n)]) for s in range(0, n, fps)])


def measure_world(gt_frames: np.ndarray, video: np.ndarray, fps: int,
                  bench: DriftBenchConfig = BENCH) -> dict:
    """Per-frame and per-second PSNR / SSIM of one session, and its drop (first minus last window)."""
    n = min(len(gt_frames), len(video))
    p = np.full(n, np.nan)
    s = np.full(n, np.nan)
    if n > 1:
        p[1:] = np.minimum(psnr(video[1:n], gt_frames[1:n]), bench.psnr_cap_db)
        s[1:] = ssim(video[1:n], gt_frames[1:n])
    w = int(round(bench.window_seconds * fps))
    first, last = _mean(p[:w]), _mean(p[max(n - w, 0):])
    return {"psnr_per_second": per_second(p, fps).tolist(), "ssim_per_second": per_second(s, fps).tolist(),
            "psnr_mean": _mean(p), "ssim_mean": _mean(s), "psnr_first_window": first,
            "psnr_last_window": last, "drop_db": first - last, "frames": n}


def run(bundle, cfg, world_seeds, trajectory: str, seconds: float, bench: DriftBenchConfig = BENCH, *,
        prompt=None, progress=None) -> dict:
    """The bench on an InferenceBundle and a SessionConfig -> the results dict (JSON-ready)."""
    from worldstream.eval.harness import aligned_frames, check_held_out, ground_truth, run_session

    seeds = check_held_out(world_seeds)
    fps = cfg.fps
    n = int(round(seconds * fps))
    if n < 2 or seconds < 2 * bench.window_seconds:
        raise ValueError(f"--seconds must be >= {2 * bench.window_seconds:g} (two {bench.window_seconds:g} s "
                         f"windows), got {seconds:g}")
    total = aligned_frames(cfg, n)
    worlds, gen_fps = [], []
    t_start = time.perf_counter()
    for seed in seeds:
        t0 = time.perf_counter()
        gt = ground_truth(seed, trajectory, total, cfg.height, cfg.width)
        render_s = time.perf_counter() - t0
        g = run_session(bundle, cfg, gt, total, prompt=prompt)
        m = measure_world(gt.video[:n], g.frames[:n], fps, bench)
        worlds.append({"world_seed": seed, "produced": gt.meta["trajectory"], "fps": g.fps,
                       "render_seconds": render_s, "generate_seconds": g.step_seconds + g.reset_seconds,
                       "prompt": gt.prompt, **m})
        gen_fps.append(g.fps)
        if progress is not None:
            progress(f"world {seed}: PSNR {m['psnr_first_window']:.2f} dB (first {bench.window_seconds:g} s)"
                     f" -> {m['psnr_last_window']:.2f} dB (last), {g.fps:.1f} FPS")
    curve = np.nanmean(np.array([w["psnr_per_second"] for w in worlds]), axis=0)
    ssim_curve = np.nanmean(np.array([w["ssim_per_second"] for w in worlds]), axis=0)
    drop = _mean([w["drop_db"] for w in worlds])
    return {
        "bench": "drift",
        "machine": machine(),
        "settings": {"world_seeds": seeds, "trajectory": trajectory, "seconds": seconds, "frames": n,
                     "session_frames": total, "fps": fps, "height": cfg.height, "width": cfg.width,
                     "sampler": cfg.sampler, "steps": cfg.steps, "session_seed": cfg.seed,
                     "use_memory": cfg.use_memory, "window_seconds": bench.window_seconds,
                     "psnr_cap_db": bench.psnr_cap_db},
        "targets": {"drop_db": {"target": bench.target_drop_db, "measured": drop,
                                "met": bool(np.isfinite(drop) and drop <= bench.target_drop_db)}},
        "summary": {"psnr_mean": _mean([w["psnr_mean"] for w in worlds]),
                    "ssim_mean": _mean([w["ssim_mean"] for w in worlds]),
                    "psnr_first_window": _mean([w["psnr_first_window"] for w in worlds]),
                    "psnr_last_window": _mean([w["psnr_last_window"] for w in worlds]),
                    "drop_db": drop, "fps": _mean(gen_fps)},
        "psnr_per_second": curve.tolist(),
        "ssim_per_second": ssim_curve.tolist(),
        "worlds": worlds,
        "seconds": time.perf_counter() - t_start,
    }


########################################################################################################
# Report


def _f(x, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def to_markdown(res: dict, checkpoint: str) -> str:
    s, sm, t = res["settings"], res["summary"], res["targets"]["drop_db"]
    w = s["window_seconds"]
    lines = [
        "# Drift: PSNR vs ground truth over long sessions (worldstream bench drift)", "",
        f"Checkpoint: `{checkpoint}`. Held-out world seeds {', '.join(map(str, s['world_seeds']))}; "
        f"trajectory {s['trajectory']}; {s['seconds']:g} s = {s['frames']} frames at {s['fps']} fps, "
        f"{s['height']}x{s['width']}; sampler {s['sampler']}, {s['steps']} steps, session seed "
        f"{s['session_seed']}, memory {'on' if s['use_memory'] else 'off'}. Frame 0 (the start image) is "
        "left out.",
        machine_line(res["machine"]), "",
        "## Target", "",
        "| target | first window | last window | drop | met |", "|---|---|---|---|---|",
        f"| drop <= {t['target']:g} dB between the first and the last {w:g} s | "
        f"{_f(sm['psnr_first_window'])} dB | {_f(sm['psnr_last_window'])} dB | {_f(t['measured'])} dB | "
        f"{'yes' if t['met'] else 'no'} |", "",
        f"Mean over the session: PSNR {_f(sm['psnr_mean'])} dB, SSIM {_f(sm['ssim_mean'], 3)}. Generation "
        f"{_f(sm['fps'], 1)} FPS (`step`: DiT + decode; bench wall time {res['seconds']:.0f} s).", "",
        "## Per world", "",
        "| world | trajectory (produced) | PSNR mean | SSIM mean | first window | last window | drop | FPS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in res["worlds"]:
        lines.append(f"| {x['world_seed']} | {s['trajectory']} ({x['produced']}) | {_f(x['psnr_mean'])} | "
                     f"{_f(x['ssim_mean'], 3)} | {_f(x['psnr_first_window'])} | "
                     f"{_f(x['psnr_last_window'])} | {_f(x['drop_db'])} | {_f(x['fps'], 1)} |")
    lines += ["", "## PSNR per second (mean over worlds)", "",
              "| second | PSNR (dB) | SSIM |", "|---|---|---|"]
    for k, (p, q) in enumerate(zip(res["psnr_per_second"], res["ssim_per_second"])):
        lines.append(f"| {k} | {_f(p)} | {_f(q, 3)} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, png_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldstream.eval.benchmarks.common import save_plot

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, ax, label in (("psnr_per_second", a1, "PSNR (dB)"), ("ssim_per_second", a2, "SSIM")):
        for w in res["worlds"]:
            ax.plot(np.arange(len(w[key])) + 0.5, w[key], lw=0.8, alpha=0.5, label=f"world {w['world_seed']}")
        ax.plot(np.arange(len(res[key])) + 0.5, res[key], lw=2.2, color="black", label="mean")
        ax.set_xlabel("session time (s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle(f"Drift: generated vs ground truth, per second ({res['settings']['trajectory']})")
    save_plot(fig, png_path)


def write(res: dict, md_path, json_path, checkpoint: str) -> str:
    """Markdown to md_path, JSON to json_path, the plot beside the markdown (.png); returns the markdown."""
    return write_with_plot(res, md_path, json_path, checkpoint, to_markdown=to_markdown, plot=plot)


########################################################################################################
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from worldstream.eval.harness import add_bench_arguments

    add_bench_arguments(p, default_out=DEFAULT_OUT, trajectory=BENCH.trajectory)
    p.add_argument("--seconds", type=float, default=None,
                   help=f"session length in seconds (default {BENCH.seconds:g}; "
                        f"quick {BENCH.quick_seconds:g})")


def main(args: argparse.Namespace) -> int:
    from functools import partial

    from worldstream.eval.harness import parse_worlds, run_bench

    seeds, trajectory = parse_worlds(args)
    if len(trajectory) != 1:
        raise ValueError(f"--trajectory: drift takes one trajectory, got {trajectory}")
    seconds = args.seconds
    if args.quick:
        seconds = seconds or BENCH.quick_seconds
    seconds = seconds or BENCH.seconds
    return run_bench(args, partial(run, world_seeds=seeds, trajectory=trajectory[0], seconds=seconds), write)
