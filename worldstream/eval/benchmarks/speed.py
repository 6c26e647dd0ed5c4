"""`worldstream bench speed`: end-to-end FPS and action-to-first-frame latency of a streaming session.

What is timed is what a player sees: `WorldSession` from actions to uint8 frames (poses, Plücker maps,
memory retrieval, the DiT's sampling, VAE decoding), on the `nano` preset at its session size. The
configurations, all measured in the same run and interleaved round-robin (the order rotates every round)
so that they share the machine's noise:

* all on: the checkpoint's sampler (dit/meta.json: few-step 4 steps for a DMD student, else the preset's
  FlowUniPC 3 steps), memory with MemoryBank retrieval, INT8 q/k/v/o,
  LightVAE decoder, async decode in a worker process (DiT and decoder one core each on 2 cores);
* then one switched off at a time: INT8 off (bf16 q/k/v/o), LightVAE off (the full decoder), retrieval by
  the exact full scan over every stored latent instead of the MemoryBank cascade, async decode off (decode
  in the session's process, all cores, the default a user gets), plus async off on one thread.

The stream is pipelined as a server would run it (`WorldSession.submit` / `next_frames`): a producer
thread submits clip k+1 as soon as the DiT of clip k is done (at most `decode_queue_size` clips not yet
delivered), a consumer thread takes each clip's frames when they are decoded. FPS = frames delivered per
wall second over the clips after the first (the first clip of a video is longer and has no memory);
latency = from the moment a clip's actions are submitted to the moment its frames (hence its first frame)
are delivered. Without async decode the same harness runs, the decode happening inside `submit`.

A long session (all on) then runs `--long-minutes` and reports FPS per 1-minute bin, with the retrieval
time, the stored latents (the MemoryBank is capped) and the resident memory, to show the rate stays flat.
Actions are MG3's benchmark actions (`bench_actions`, facts 5.6), new rows every clip; the prompt is a
fixed random embedding (the text encoder runs once per video and is not timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldstream.eval.benchmarks.common import machine, write_report

TARGET_FPS = 32.0  # issue 5: >= 32 FPS with memory and decoding
TARGET_P50_S = 0.5  # issue 5: p50 action-to-frame latency <= 0.5 s
MIN_BIN_SHARE = 0.25  # a last, partial long-session bin shorter than this share of a bin is dropped
FLAT_TOLERANCE = 0.10  # "flat": the FPS trend fitted over the full 1-minute bins changes < 10% end to end


@dataclass(frozen=True)
class Variant:
    """One configuration: SessionConfig changes from all-on, and the intra-op threads of this process."""

    name: str
    label: str
    changes: dict[str, Any] = field(default_factory=dict)
    threads: str = "split"  # split: the async split (DiT share); all: every core; one: a single thread


VARIANTS = (
    Variant("all_on", "all on"),
    Variant("int8_off", "INT8 off", {"int8": False}),
    Variant("lightvae_off", "LightVAE off (full decoder)", {"light_vae": False}),
    Variant("full_scan", "retrieval by full scan", {"retrieval_method": "full"}),
    Variant("async_off", "async decode off", {"async_decode": False}, threads="all"),
    Variant("async_off_1t", "async decode off, 1 thread", {"async_decode": False}, threads="one"),
)
ALL_ON = {"int8": True, "light_vae": True, "use_memory": True, "retrieval_method": "cascade",
          "async_decode": True}


@dataclass(frozen=True)
class SpeedBenchConfig:
    seconds: float = 60.0  # measured seconds per configuration, split evenly over the rounds
    rounds: int = 4  # round-robin passes over the configurations
    long_minutes: float = 10.0  # long session (all on); 0 skips it
    history_seconds: float = 40.0  # then, on its long history: MemoryBank vs full scan, seconds per method
    history_rounds: int = 2  # ... alternated this many times
    bin_seconds: float = 60.0  # long-session FPS bins
    preset: str = "nano"
    seed: int = 0
    prompt_rows: int = 8  # rows of the random prompt embedding
    timeout_s: float = 600.0  # a clip that takes longer is an error (official: 600 s for the worker)


########################################################################################################
# Machine (machine() itself is common.machine)


def _proc_times() -> dict[int, tuple[float, str]]:
    """pid -> (CPU seconds so far, command line) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[int(d.name)] = ((int(fields[11]) + int(fields[12])) / tick, cmd)
    return out


def _short(cmd: str, limit: int = 90) -> str:
    """A command line with its program paths reduced to file names."""
    parts = cmd.split()
    parts[:2] = [os.path.basename(p) if "/" in p else p for p in parts[:2]]
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def busy_processes(sample_s: float = 1.0, min_share: float = 0.2) -> list[tuple[str, float]]:
    """Other processes using at least `min_share` of a core over `sample_s` seconds: (command, cores)."""
    if not Path("/proc/self/stat").exists():
        return []
    a = _proc_times()
    time.sleep(sample_s)
    b = _proc_times()
    busy = [(_short(cmd), (t - a[pid][0]) / sample_s) for pid, (t, cmd) in b.items()
            if pid in a and pid != os.getpid() and cmd and (t - a[pid][0]) / sample_s >= min_share]
    return sorted(busy, key=lambda x: -x[1])


def rss_mb(pid: int | None = None) -> float:
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


########################################################################################################
# Streaming harness


def stream(session, seconds: float, rng: random.Random, timeout_s: float) -> list[dict[str, Any]]:
    """Run clips (pipelined: producer = this thread, consumer = a thread) until `seconds` have passed
    since this call's second clip was submitted (the first is a warm-up: after a reset, the longer first
    clip without memory). One record per clip; `cpu` = this thread's CPU seconds in `submit` (the DiT work
    when it runs on one intra-op thread: insensitive to waiting for a core)."""
    from worldstream.data.engine.agents import bench_actions

    records: list[dict[str, Any]] = []
    room = threading.Semaphore(session.cfg.decode_queue_size)
    submitted: queue.Queue = queue.Queue()
    failure: list[BaseException] = []

    def consume():
        while (item := submitted.get()) is not None:
            clip, t0, cpu, latents, stored = item
            try:
                frames = session.next_frames(timeout=timeout_s)
            except BaseException as e:  # reported by the producer
                failure.append(e)
                room.release()
                return
            t1 = time.perf_counter()
            dec = session._decoder
            records.append({"clip": clip, "submit": t0, "done": t1, "frames": len(frames), "cpu": cpu,
                            "timings": dict(session.info.last.timings), "latents": latents,
                            "stored_latents": stored,
                            "rss_mb": rss_mb(), "worker_rss_mb": rss_mb(dec.pid) if dec else 0.0,
                            "load1": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")})
            room.release()

    consumer = threading.Thread(target=consume, name="bench-consumer", daemon=True)
    consumer.start()
    end, calls = None, 0
    try:
        while end is None or time.perf_counter() < end:
            if not room.acquire(timeout=timeout_s) or failure:
                raise RuntimeError("the stream stalled") from (failure[0] if failure else None)
            t0, c0 = time.perf_counter(), time.thread_time()
            kb, mouse = bench_actions(session.next_step_frames, rng)
            clip = session.submit(kb, mouse)
            info = session.info
            submitted.put((clip, t0, time.thread_time() - c0, info.latents, info.stored_latents))
            calls += 1
            if calls == 2:
                end = t0 + seconds
    finally:
        submitted.put(None)
        consumer.join(timeout_s)
    if failure:
        raise RuntimeError("decoding failed during the benchmark") from failure[0]
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-configuration numbers from clip records of several runs (each list: one video, clip 0 first)."""
    frames = seconds = 0.0
    lat, phases = [], {}
    for run in records:
        timed = run[1:]  # the first clip of each stream is a warm-up
        if not timed:
            continue
        frames += sum(r["frames"] for r in timed)
        seconds += timed[-1]["done"] - timed[0]["submit"]
        lat += [r["done"] - r["submit"] for r in timed]
        for r in timed:
            for k, v in r["timings"].items():
                phases.setdefault(k, []).append(v)
    q = np.quantile(lat, [0.5, 0.9]).tolist() if lat else [float("nan")] * 2
    return {"fps": frames / seconds if seconds else float("nan"), "frames": int(frames), "seconds": seconds,
            "clips": len(lat), "latency_p50": q[0], "latency_p90": q[1],
            "phases": {k: statistics.fmean(v) for k, v in phases.items()}}


def bins(run: list[dict[str, Any]], bin_s: float) -> list[dict[str, Any]]:
    """Long session: FPS and phase means per `bin_s` bin of delivery time (clips after the first)."""
    timed = run[1:]
    if not timed:
        return []
    t0, t_end = timed[0]["submit"], timed[-1]["done"]
    out = []
    for i in range(int(np.ceil((t_end - t0) / bin_s))):
        lo, hi = t0 + i * bin_s, min(t0 + (i + 1) * bin_s, t_end)
        rs = [r for r in timed if lo <= r["done"] < hi or (r is timed[-1] and hi == t_end)]
        if not rs or hi - lo < MIN_BIN_SHARE * bin_s:  # the stream's last seconds: too short to rate
            continue
        lat = [r["done"] - r["submit"] for r in rs]
        out.append({"minute": i + 1, "seconds": hi - lo, "full": hi - lo >= bin_s * 0.999,
                    "fps": sum(r["frames"] for r in rs) / (hi - lo), "clips": len(rs),
                    "latency_p50": float(np.median(lat)),
                    "sample_s": statistics.fmean(r["timings"].get("sample", 0.0) for r in rs),
                    "cpu_s": statistics.fmean(r["cpu"] for r in rs),
                    "retrieval_ms": 1e3 * statistics.fmean(r["timings"].get("retrieval", 0.0) for r in rs),
                    "decode_s": statistics.fmean(r["timings"].get("decode", 0.0) for r in rs),
                    "stored_latents": rs[-1]["stored_latents"], "latents": rs[-1]["latents"],
                    "rss_mb": rs[-1]["rss_mb"], "worker_rss_mb": rs[-1]["worker_rss_mb"],
                    "load1": statistics.fmean(r["load1"] for r in rs)})
    return out


def trend(long_bins: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least-squares line through the full bins: FPS and CPU s/clip change from the first to the last
    minute, relative to their mean (noise on a shared machine scatters the single minutes)."""
    full = [b for b in long_bins if b["full"]]
    if len(full) < 2:
        return None
    x = np.arange(len(full), dtype=float)
    out = {}
    for key in ("fps", "cpu_s", "retrieval_ms"):
        y = np.array([b[key] for b in full])
        slope = np.polyfit(x, y, 1)[0]
        out[key] = float(slope * (len(full) - 1) / y.mean())
        out[key + "_spread"] = float(np.abs(y / y.mean() - 1).max())
    return out


########################################################################################################
# Run


def _session_config(preset: str, variant: Variant, split: tuple[int, int], checkpoint: str | None = None):
    from worldstream.infer.model_bundle import suggest_session_config

    # the checkpoint's own sampler (dit/meta.json: few_step 4 steps for a DMD student), as play runs it
    cfg = suggest_session_config(checkpoint, preset).replace(**ALL_ON).replace(**variant.changes)
    return cfg.replace(dit_threads=split[0], decode_threads=split[1]) if cfg.async_decode else cfg


def run(cfg: SpeedBenchConfig, checkpoint: str | None = None, progress=print,
        note: str = "") -> dict[str, Any]:
    import warnings

    import torch

    from worldstream.infer.decode import split_threads
    from worldstream.infer.model_bundle import RandomInitWarning, load_bundle_for
    from worldstream.infer.session import WorldSession

    t_start = time.perf_counter()
    mach = machine()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = busy_processes()
    threads_all = torch.get_num_threads()
    split = split_threads(threads_all)
    thread_count = {"split": split[0], "all": threads_all, "one": 1}

    # 1. models: one bundle per (int8, light_vae), shared by the configurations that need it
    cfgs = {v.name: _session_config(cfg.preset, v, split, checkpoint) for v in VARIANTS}
    bundles: dict[tuple[bool, bool], Any] = {}
    random_init, source = False, ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        for c in cfgs.values():
            key = (c.int8, c.light_vae)
            if key not in bundles:
                bundles[key] = load_bundle_for(c, checkpoint, cfg.preset, text=False)
                random_init, source = bundles[key].random_init, bundles[key].source
    some = next(iter(bundles.values()))
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randn(cfg.prompt_rows, some.dit.cfg.text_dim, generator=gen).to(some.dtype)
    img_cfg = cfgs["all_on"]
    image = np.random.default_rng(cfg.seed).integers(0, 256, (img_cfg.height, img_cfg.width, 3),
                                                     dtype=np.uint8)
    sessions = {name: WorldSession(bundles[(c.int8, c.light_vae)], c) for name, c in cfgs.items()}

    # 2. round-robin passes; the order rotates so that no configuration always follows the same one
    runs: dict[str, list] = {v.name: [] for v in VARIANTS}
    per_round = cfg.seconds / cfg.rounds
    rng = random.Random(cfg.seed)
    try:
        for r in range(cfg.rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
            for v in order:
                torch.set_num_threads(thread_count[v.threads])
                s = sessions[v.name]
                s.reset(image, prompt)
                runs[v.name].append(stream(s, per_round, rng, cfg.timeout_s))
                got = summarise(runs[v.name][-1:])
                progress(f"round {r + 1}/{cfg.rounds} {v.label}: {got['fps']:.1f} FPS, "
                         f"p50 {got['latency_p50']:.3f} s")
        # 3. long session, all on
        long_run: list = []
        history_runs: dict[str, list] = {"cascade": [], "full": []}
        if cfg.long_minutes > 0:
            torch.set_num_threads(thread_count["split"])
            s = sessions["all_on"]
            s.reset(image, prompt)
            progress(f"long session: {cfg.long_minutes:g} min, all on")
            long_run = stream(s, cfg.long_minutes * 60.0, rng, cfg.timeout_s)
            # 4. retrieval on that long history: the MemoryBank cascade vs the exact full scan, alternated
            all_on_cfg = s.cfg
            for r in range(cfg.history_rounds if cfg.history_seconds > 0 else 0):
                for method in ("cascade", "full") if r % 2 == 0 else ("full", "cascade"):
                    s.cfg = all_on_cfg.replace(retrieval_method=method)  # read by every clip's rollout
                    history_runs[method].append(stream(s, cfg.history_seconds / cfg.history_rounds, rng,
                                                       cfg.timeout_s))
                    got = summarise(history_runs[method][-1:])
                    progress(f"long history ({s.info.stored_latents} latents), retrieval {method}: "
                             f"{got['fps']:.1f} FPS, {1e3 * got['phases'].get('retrieval', 0):.1f} ms/clip")
            s.cfg = all_on_cfg
    finally:
        restarts = [r for s in sessions.values() if s.state is not None for r in s.info.decode_restarts]
        for s in reversed(list(sessions.values())):
            s.close()
        torch.set_num_threads(threads_all)

    results = {v.name: {"label": v.label, "threads": thread_count[v.threads],
                        "decoder_threads": split[1] if cfgs[v.name].async_decode else 0,
                        **summarise(runs[v.name])} for v in VARIANTS}
    base = results["all_on"]
    for res in results.values():
        res["fps_vs_all_on"] = res["fps"] / base["fps"]
        res["p50_vs_all_on"] = res["latency_p50"] / base["latency_p50"]
    history = {m: {**summarise(runs_), "latents": runs_[-1][-1]["stored_latents"]}
               for m, runs_ in history_runs.items() if runs_}
    long_bins = bins(long_run, cfg.bin_seconds)
    return {
        "machine": mach, "load_avg_start": load_start,
        "load_avg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "busy_processes": busy, "config": dataclasses.asdict(cfg), "checkpoint": source,
        "random_init": random_init,
        "preset": cfg.preset, "size": [img_cfg.height, img_cfg.width],
        "schedule": {"first_step_frames": img_cfg.first_step_frames, "step_frames": img_cfg.step_frames},
        "sampler": f"{img_cfg.sampler}, {img_cfg.steps} steps, shift {img_cfg.shift:g}",
        "num_memory": img_cfg.num_memory, "memory_max_entries": img_cfg.memory_max_entries,
        "results": results, "long": long_bins, "long_trend": trend(long_bins), "history_retrieval": history,
        "long_summary": summarise([long_run]) if long_run else None, "decode_restarts": restarts,
        "note": note,
        "total_s": time.perf_counter() - t_start,
    }


########################################################################################################
# Report


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def to_markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    model = ("random init (no trained checkpoint yet: the frames are noise; speed does not depend on the "
             "weights)" if res["random_init"] else f"checkpoint `{res['checkpoint']}`")
    h, w = res["size"]
    busy = ", ".join(f"`{cmd}` ({cores:.1f} cores)" for cmd, cores in res["busy_processes"]) or "none seen"
    lines = [
        "# End-to-end speed (`worldstream bench speed`)",
        "",
        f"Preset `{res['preset']}` ({h}x{w}, {res['schedule']['step_frames']} new frames per clip, "
        f"{res['num_memory']} memory latents, {res['sampler']}), model: {model}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Load average "
        f"{res['load_avg_start']:.1f} at the start, {res['load_avg_end']:.1f} at the end. Other processes "
        f"busy at the start: {busy}.",
        "",
        f"NOTE {res['note'] + ' ' if res['note'] else ''}On a shared machine absolute FPS are depressed "
        f"and noisy; the configurations were interleaved round-robin ({cfg['rounds']} rounds, "
        f"{cfg['seconds']:g} s each in total), so compare the ratios within this run.",
        "",
        "## Each acceleration off in turn",
        "",
        "FPS = frames delivered per wall second (clips after the first of each video); latency = actions "
        "submitted -> that clip's frames delivered (its first frame is available then). Streams are "
        "pipelined: the DiT samples clip k+1 while the worker decodes clip k.",
        "",
        "| configuration | FPS | FPS vs all on | latency p50 s | p90 s | p50 vs all on | DiT sample s/clip | "
        "decode s/clip | retrieval ms/clip | clips | threads (DiT + decoder) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["results"].values():
        p = r["phases"]
        thr = f"{r['threads']} + {r['decoder_threads']}" if r["decoder_threads"] else f"{r['threads']}"
        lines.append(
            f"| {r['label']} | {r['fps']:.1f} | {r['fps_vs_all_on']:.2f}x | {r['latency_p50']:.3f} | "
            f"{r['latency_p90']:.3f} | {r['p50_vs_all_on']:.2f}x | {p.get('sample', float('nan')):.3f} | "
            f"{p.get('decode', float('nan')):.3f} | {1e3 * p.get('retrieval', float('nan')):.1f} | "
            f"{r['clips']} | {thr} |")
    lines += [
        "",
        "`FPS vs all on` > 1: the configuration is faster than all-on, i.e. that acceleration does not pay "
        "here. `decode s/clip` is the decoder's own time (in the worker when async).",
        "",
    ]
    base = res["results"]["all_on"]
    long = res["long"]
    full = [b for b in long if b["full"]]
    lines += ["## Targets", "",
              f"* >= {TARGET_FPS:g} FPS with memory and decoding (all on): {base['fps']:.1f} FPS, "
              f"{_met(base['fps'] >= TARGET_FPS)}.",
              f"* p50 latency <= {TARGET_P50_S} s: {base['latency_p50']:.3f} s, "
              f"{_met(base['latency_p50'] <= TARGET_P50_S)}."]
    tr = res["long_trend"]
    if full and tr:
        lines.append(f"* FPS flat over {cfg['long_minutes']:g} min (fitted trend over the {len(full)} full "
                     f"minutes changes < {FLAT_TOLERANCE:.0%} end to end): {tr['fps']:+.1%} "
                     f"({_met(abs(tr['fps']) < FLAT_TOLERANCE)}); single minutes within "
                     f"{tr['fps_spread']:.0%} of the mean. The DiT process's CPU time per clip, which does "
                     f"not count waiting for a core, changes {tr['cpu_s']:+.1%} (minutes within "
                     f"{tr['cpu_s_spread']:.0%}); retrieval {tr['retrieval_ms']:+.1%}.")
    if long:
        lines += ["", f"## Long session ({cfg['long_minutes']:g} min, all on)", "",
                  "| minute | FPS | clips | latency p50 s | DiT sample s/clip | DiT CPU s/clip | "
                  "retrieval ms/clip | decode s/clip | latents generated | latents stored | "
                  "RSS MB (main / worker) | load avg |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for b in long:
            if not b["full"] and b["seconds"] < MIN_BIN_SHARE * cfg["bin_seconds"]:
                continue
            part = "" if b["full"] else f" ({b['seconds']:.0f} s)"
            lines.append(f"| {b['minute']}{part} | {b['fps']:.1f} | {b['clips']} | {b['latency_p50']:.3f} | "
                         f"{b['sample_s']:.3f} | {b['cpu_s']:.3f} | {b['retrieval_ms']:.1f} | "
                         f"{b['decode_s']:.3f} | "
                         f"{b['latents']} | {b['stored_latents']} | {b['rss_mb']:.0f} / "
                         f"{b['worker_rss_mb']:.0f} | {b['load1']:.1f} |")
        lines += ["", "`latents generated`: the latent timeline's length at the end of the minute; `latents "
                  "stored`: what the session keeps (MemoryBank entries, capped at "
                  f"{res['memory_max_entries']}, + the clean prefix). `DiT CPU s/clip`: CPU time of the "
                  "thread that runs `submit` (poses, retrieval, Plücker maps, the DiT on one thread). "
                  "`load avg`: the machine's 1-minute load average, mean over the minute."]
    hist = res["history_retrieval"]
    if hist:
        c = hist["cascade"]
        lines += ["", f"## Retrieval on the long history ({c['latents']} stored latents, all on)", "",
                  "The short round-robin videos hold a few hundred latents at most, where any retrieval is "
                  "cheap; here the long session continues, alternating the MemoryBank cascade and the exact "
                  "full scan over every stored latent.", "",
                  "| retrieval | FPS | FPS vs cascade | retrieval ms/clip | latency p50 s | clips |",
                  "|---|---:|---:|---:|---:|---:|"]
        for m, h in hist.items():
            ms = 1e3 * h["phases"].get("retrieval", float("nan"))
            lines.append(f"| {'MemoryBank cascade' if m == 'cascade' else 'full scan'} | {h['fps']:.1f} | "
                         f"{h['fps'] / c['fps']:.2f}x | {ms:.1f} | {h['latency_p50']:.3f} | {h['clips']} |")
    lines += ["", f"Decode worker restarts during the run: {len(res['decode_restarts'])}. "
              f"Total benchmark time: {res['total_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="directory for speed.md")
    p.add_argument("--json", type=Path, help="also write the raw numbers as JSON")
    p.add_argument("--checkpoint", help="nano checkpoint folder (default checkpoints/nano, else random init)")
    p.add_argument("--seconds", type=float, help="measured seconds per configuration (default 60; quick 12)")
    p.add_argument("--long-minutes", type=float, help="long-session minutes (default 10; quick 1; 0: skip)")
    p.add_argument("--rounds", type=int, help="round-robin passes (default 4; quick 2)")
    p.add_argument("--quick", action="store_true", help="short run: 12 s per configuration, 1-minute session")
    p.add_argument("--seed", type=int, default=0, help="image, prompt and action seed")
    p.add_argument("--note", default="", help="a sentence for the report (e.g. what else ran on the machine)")


def main(args: argparse.Namespace) -> int:
    quick = args.quick
    cfg = SpeedBenchConfig(
        seconds=args.seconds if args.seconds is not None else (12.0 if quick else 60.0),
        rounds=args.rounds if args.rounds is not None else (2 if quick else 4),
        long_minutes=args.long_minutes if args.long_minutes is not None else (1.0 if quick else 10.0),
        history_seconds=10.0 if quick else 40.0,
        seed=args.seed)
    if cfg.seconds <= 0 or cfg.rounds < 1 or cfg.long_minutes < 0:
        raise ValueError(f"need --seconds > 0, --rounds >= 1, --long-minutes >= 0; got {cfg.seconds}, "
                         f"{cfg.rounds}, {cfg.long_minutes}")
    res = run(cfg, args.checkpoint, progress=lambda msg: print(msg, flush=True), note=args.note)
    md = to_markdown(res)
    write_report(Path(args.out) / "speed.md", md, args.json, res)
    print(md)
    return 0
