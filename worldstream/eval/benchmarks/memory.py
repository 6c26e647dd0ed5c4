"""`worldstream bench memory`: does the model remember a place when the camera comes back?

Issue 6: revisit trajectories on held-out worlds (go out, come back), PSNR/SSIM of the returning frames vs
the ground-truth renders and vs the model's own first visit, memory on vs memory off, by revisit distance.

Per (world seed, trajectory) the engine renders a held-out clip (eval/harness.py `ground_truth`) and the
model generates it twice from the same frame 0, prompt, actions and noise seed: memory on (the session's
MemoryBank retrieval + anchor, MG3 facts 4.9) and memory off (`use_memory=False`: only the clean past
latents of the window). Returning frames are the clip's revisit pairs (data/engine/clips.py
`revisit_pairs`: a later frame within 0.25 m and 10 degrees of an earlier frame, >= 8 frames apart), and
for each pair (later j, earlier i), distance j - i:
* vs GT: PSNR/SSIM of generated frame j against rendered frame j;
* self-consistency: generated j against generated i (the model's own first visit);
* GT self: rendered j against rendered i, the ceiling self-consistency can reach (the poses are close, not
  equal, except for full spins).
Non-revisit frames (all but frame 0 and the returning frames) give the PSNR vs GT for context. Frame 0 is
the VAE reconstruction of the start image, not a generated frame, and is left out everywhere.

Identical uint8 frames have an infinite PSNR (a full spin returns to the exact pose); means count them as
`psnr_cap_db`. Distance buckets: returns within `window_frames` (the nano window, 2 past + 4 new latents =
24 frames) can be copied from the clean past latents, farther ones only through memory.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from worldstream.eval.benchmarks.common import machine, machine_line, psnr, ssim, write_with_plot

DEFAULT_OUT = "docs/results/memory.md"
MODES = ("on", "off")
METRICS = ("psnr_gt", "ssim_gt", "psnr_self", "ssim_self")


@dataclass(frozen=True)
class MemoryBenchConfig:
    trajectories: tuple[str, ...] = ("retreat", "loop_circle", "spin", "out_and_back")  # revisits
    frames: int = 153  # session length (nano 25 + 8 x 16): out ~70 frames and back
    quick_trajectory: str = "retreat"  # --quick: the most returning frames per clip
    quick_frames: int = 89  # --quick: 25 + 4 x 16 frames, returns up to 88 frames apart
    # revisit distance buckets [a, b) in frames: 8 = the engine's REVISIT_MIN_GAP; 24 = the nano window
    # (2 past + 4 new latents), past it the first visit is only reachable through memory; then doubling
    distance_edges: tuple[int, ...] = (8, 24, 48, 96, 192)
    psnr_cap_db: float = 100.0  # identical frames (PSNR +inf) count as this in means
    target_gain_db: float = 3.0  # issue 6: memory on beats off by >= 3 dB PSNR on revisited frames
    target_self_db: float = 20.0  # issue 6: revisit self-consistency PSNR >= 20 dB


BENCH = MemoryBenchConfig()


########################################################################################################
# Measurement


def _capped(x: np.ndarray, cap: float) -> np.ndarray:
    return np.minimum(np.asarray(x, np.float64), cap)


def _mean(values) -> float:
    v = np.asarray(list(values), np.float64)
    return float(v.mean()) if len(v) else float("nan")


def bucket_label(d: int, edges: tuple[int, ...]) -> str:
    """'[a, b)' for the bucket holding distance d ('>= last' past the last edge, '< first' before)."""
    if d < edges[0]:
        return f"< {edges[0]}"
    for a, b in zip(edges[:-1], edges[1:]):
        if a <= d < b:
            return f"{a}-{b - 1}"
    return f">= {edges[-1]}"


def bucket_labels(edges: tuple[int, ...]) -> list[str]:
    return [f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:])] + [f">= {edges[-1]}"]


def measure_clip(gt, videos: dict[str, np.ndarray], bench: MemoryBenchConfig = BENCH) -> tuple[list, dict]:
    """Per-pair records and the non-revisit PSNR of one clip, for each mode's generated video [N, H, W, 3]."""
    n = min(len(v) for v in videos.values())
    truth = gt.video[:n]
    pairs = [(int(j), int(i)) for j, i in gt.meta["revisit_pairs"] if j < n]
    later = np.array([j for j, _ in pairs], np.int64)
    earlier = np.array([i for _, i in pairs], np.int64)
    records = [{"later": j, "earlier": i, "distance": j - i} for j, i in pairs]
    if pairs:
        gt_self = _capped(psnr(truth[later], truth[earlier]), bench.psnr_cap_db)
        for r, v in zip(records, gt_self):
            r["gt_self_psnr"] = float(v)
    non_revisit = {}
    rest = np.setdiff1d(np.arange(1, n), later)  # frame 0 is the start image
    for mode, video in videos.items():
        video = video[:n]
        if pairs:
            cols = {"psnr_gt": _capped(psnr(video[later], truth[later]), bench.psnr_cap_db),
                    "ssim_gt": ssim(video[later], truth[later]),
                    "psnr_self": _capped(psnr(video[later], video[earlier]), bench.psnr_cap_db),
                    "ssim_self": ssim(video[later], video[earlier])}
            for k, r in enumerate(records):
                r[mode] = {m: float(np.atleast_1d(cols[m])[k]) for m in METRICS}
        non_revisit[mode] = {"frames": len(rest),
                             "psnr_gt": _mean(_capped(psnr(video[rest], truth[rest]), bench.psnr_cap_db))
                             if len(rest) else float("nan")}
    return records, non_revisit


def summarise(pairs: list[dict], bench: MemoryBenchConfig = BENCH) -> dict:
    """Means over all returning frames, by distance bucket and by trajectory; gains on - off."""

    def block(rs: list[dict]) -> dict:
        out: dict = {"pairs": len(rs), "gt_self_psnr": _mean(r["gt_self_psnr"] for r in rs)}
        for mode in MODES:
            out[mode] = {m: _mean(r[mode][m] for r in rs) for m in METRICS}
        out["gain_db"] = {"psnr_gt": out["on"]["psnr_gt"] - out["off"]["psnr_gt"],
                          "psnr_self": out["on"]["psnr_self"] - out["off"]["psnr_self"]}
        out["mean_distance"] = _mean(r["distance"] for r in rs)
        return out

    by_distance = []
    for label in bucket_labels(bench.distance_edges):
        rs = [r for r in pairs if bucket_label(r["distance"], bench.distance_edges) == label]
        if rs:
            by_distance.append({"bucket": label, **block(rs)})
    by_trajectory = []
    for name in dict.fromkeys(r["trajectory"] for r in pairs):
        by_trajectory.append({"trajectory": name, **block([r for r in pairs if r["trajectory"] == name])})
    return {"all": block(pairs), "by_distance": by_distance, "by_trajectory": by_trajectory}


def run(bundle, cfg, world_seeds, trajectories, frames: int, bench: MemoryBenchConfig = BENCH, *,
        prompt=None, progress=None) -> dict:
    """The whole bench on an InferenceBundle and a SessionConfig -> the results dict (JSON-ready).

    prompt: None = each clip's own prompt (needs the bundle's text encoder), or an embedding for all.
    """
    from worldstream.eval.harness import aligned_frames, check_held_out, ground_truth, run_session

    seeds = check_held_out(world_seeds)
    n = aligned_frames(cfg, frames)
    configs = {"on": cfg.replace(use_memory=True), "off": cfg.replace(use_memory=False)}
    pairs, clips = [], []
    fps: dict[str, list[float]] = {m: [] for m in MODES}
    t_start = time.perf_counter()
    for seed in seeds:
        for name in trajectories:
            gt = ground_truth(seed, name, n, cfg.height, cfg.width)
            videos, mem_latents = {}, {}
            for mode, c in configs.items():
                g = run_session(bundle, c, gt, n, prompt=prompt)
                videos[mode], mem_latents[mode] = g.frames, g.memory_latents
                fps[mode].append(g.fps)
            records, non_revisit = measure_clip(gt, videos, bench)
            for r in records:
                r.update(world_seed=seed, trajectory=name)
            pairs += records
            clips.append({"world_seed": seed, "trajectory": name, "produced": gt.meta["trajectory"],
                          "frames": n, "revisit_frames": len(records), "non_revisit": non_revisit,
                          "memory_latents_used": mem_latents, "prompt": gt.prompt})
            if progress is not None:
                progress(f"world {seed} {name}: {len(records)} returning frames")
    summary = summarise(pairs, bench) if pairs else None
    non_rev = {m: _mean(c["non_revisit"][m]["psnr_gt"] for c in clips if c["non_revisit"][m]["frames"])
               for m in MODES}
    allm = summary["all"] if summary else None
    targets = {
        "gain_db": {"target": bench.target_gain_db, "measured": allm["gain_db"]["psnr_gt"] if allm else None},
        "self_consistency_db": {"target": bench.target_self_db,
                                "measured": allm["on"]["psnr_self"] if allm else None},
    }
    for t in targets.values():
        t["met"] = bool(t["measured"] is not None and t["measured"] >= t["target"])
    return {
        "bench": "memory",
        "machine": machine(),
        "settings": {"world_seeds": seeds, "trajectories": list(trajectories), "frames": n,
                     "height": cfg.height, "width": cfg.width, "sampler": cfg.sampler, "steps": cfg.steps,
                     "session_seed": cfg.seed, "num_memory": configs["on"].num_memory,
                     "distance_edges": list(bench.distance_edges), "psnr_cap_db": bench.psnr_cap_db,
                     "window_frames": cfg.schedule.clip_frames},
        "targets": targets,
        "summary": summary,
        "non_revisit_psnr_gt": non_rev,
        "fps": {m: _mean(v) for m, v in fps.items()},
        "clips": clips,
        "pairs": pairs,
        "seconds": time.perf_counter() - t_start,
    }


########################################################################################################
# Report


def _f(x, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _row_block(label: str, b: dict) -> str:
    on, off = b["on"], b["off"]
    return (f"| {label} | {b['pairs']} | {_f(on['psnr_gt'])} | {_f(off['psnr_gt'])} | "
            f"**{_f(b['gain_db']['psnr_gt'])}** | {_f(on['ssim_gt'], 3)} | {_f(off['ssim_gt'], 3)} | "
            f"{_f(on['psnr_self'])} | {_f(off['psnr_self'])} | {_f(b['gt_self_psnr'])} |")


def to_markdown(res: dict, checkpoint: str) -> str:
    s, t = res["settings"], res["targets"]
    met = {k: "yes" if v["met"] else "no" for k, v in t.items()}
    head = ("| | returning frames | PSNR vs GT, on | off | gain (dB) | SSIM vs GT, on | off | "
            "PSNR self, on | off | GT self |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [
        "# Memory: revisiting places (worldstream bench memory)", "",
        f"Checkpoint: `{checkpoint}`. Held-out world seeds {', '.join(map(str, s['world_seeds']))}; "
        f"trajectories {', '.join(s['trajectories'])}; {s['frames']} frames at {s['height']}x{s['width']}; "
        f"sampler {s['sampler']}, {s['steps']} steps, session seed {s['session_seed']}; memory on = "
        f"{s['num_memory']} memory latents per clip (anchor included), off = past latents only.",
        machine_line(res["machine"]), "",
        "Returning frames: the engine's revisit pairs (a later frame within 0.25 m and 10 degrees of an "
        "earlier one). *vs GT*: the generated returning frame against the render; *self*: against the "
        "model's own frame at the first visit; *GT self*: render against render, the ceiling of self. "
        f"PSNR in dB (identical frames count as {s['psnr_cap_db']:g} dB).", "",
        "## Targets", "",
        "| target | measured | met |", "|---|---|---|",
        f"| memory on beats off by >= {t['gain_db']['target']:g} dB (PSNR vs GT, revisited frames) | "
        f"{_f(t['gain_db']['measured'])} dB | {met['gain_db']} |",
        f"| revisit self-consistency >= {t['self_consistency_db']['target']:g} dB (memory on) | "
        f"{_f(t['self_consistency_db']['measured'])} dB | {met['self_consistency_db']} |",
        "",
    ]
    summ = res["summary"]
    if summ is None:
        lines += ["No returning frames: the trajectories chosen have no revisit pairs.", ""]
    else:
        lines += ["## Memory on vs off", "", head, _row_block("all", summ["all"]), "",
                  f"## By revisit distance (frames between the first visit and the return; the window is "
                  f"{s['window_frames']} frames)", "", head.replace("| |", "| distance |", 1)]
        lines += [_row_block(b["bucket"], b) for b in summ["by_distance"]]
        lines += ["", "## By trajectory", "", head.replace("| |", "| trajectory |", 1)]
        lines += [_row_block(b["trajectory"], b) for b in summ["by_trajectory"]]
    nr = res["non_revisit_psnr_gt"]
    lines += ["", "## Context", "",
              f"Non-revisit frames, PSNR vs GT: memory on {_f(nr['on'])} dB, off {_f(nr['off'])} dB. "
              f"Generation speed: on {_f(res['fps']['on'], 1)} FPS, off {_f(res['fps']['off'], 1)} FPS "
              f"(bench wall time {res['seconds']:.0f} s).", "",
              "| world | trajectory (produced) | frames | returning frames | memory latents used (on/off) |",
              "|---|---|---|---|---|"]
    for c in res["clips"]:
        ml = c["memory_latents_used"]
        lines.append(f"| {c['world_seed']} | {c['trajectory']} ({c['produced']}) | {c['frames']} | "
                     f"{c['revisit_frames']} | {ml['on']} / {ml['off']} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, png_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldstream.eval.benchmarks.common import save_plot

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    pairs = res["pairs"]
    for ax, metric, title in ((axes[0], "psnr_gt", "returning frame vs ground truth"),
                              (axes[1], "psnr_self", "returning frame vs own first visit")):
        for mode, color in (("on", "tab:blue"), ("off", "tab:orange")):
            d = [r["distance"] for r in pairs]
            ax.scatter(d, [r[mode][metric] for r in pairs], s=8, alpha=0.35, color=color)
            if res["summary"]:
                b = res["summary"]["by_distance"]
                ax.plot([x["mean_distance"] for x in b], [x[mode][metric] for x in b], "-o", color=color,
                        label=f"memory {mode}")
        if metric == "psnr_self" and pairs:
            ax.scatter([r["distance"] for r in pairs], [r["gt_self_psnr"] for r in pairs], s=8, marker="x",
                       color="gray", alpha=0.5, label="GT self (ceiling)")
        ax.set_title(title)
        ax.set_xlabel("revisit distance (frames)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Memory: PSNR of returning frames vs revisit distance (bucket means)")
    save_plot(fig, png_path)


def write(res: dict, md_path, json_path, checkpoint: str) -> str:
    """Markdown to md_path, JSON to json_path, the plot beside the markdown (.png); returns the markdown."""
    return write_with_plot(res, md_path, json_path, checkpoint, to_markdown=to_markdown, plot=plot)


########################################################################################################
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from worldstream.eval.harness import add_bench_arguments

    add_bench_arguments(p, default_out=DEFAULT_OUT, trajectory=",".join(BENCH.trajectories))
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames per session, rounded up to the clip schedule (default {BENCH.frames}; "
                        f"quick {BENCH.quick_frames})")


def main(args: argparse.Namespace) -> int:
    from functools import partial

    from worldstream.eval.harness import parse_worlds, run_bench

    seeds, trajectories = parse_worlds(args)
    frames = args.frames
    if args.quick:
        if args.trajectory == ",".join(BENCH.trajectories):  # not chosen by the user
            trajectories = [BENCH.quick_trajectory]
        frames = frames or BENCH.quick_frames
    frames = frames or BENCH.frames
    if frames < 2:
        raise ValueError(f"--frames must be >= 2, got {frames}")
    return run_bench(args, partial(run, world_seeds=seeds, trajectories=trajectories, frames=frames), write)
