"""`worldstream bench retrieval`: memory-retrieval time per clip vs history length.

For histories of 1k, 10k and 100k frames of a revisiting random walk (`revisit_session`: MG3
kinematics through `poses_from_actions`, kept inside a bounded arena so the camera keeps coming back
to places it has seen), measures per clip (the MG3 schedule: 5 reference frames, anchor rule):
* full scan, MG3: `select_memory_idx_fov` over every past pixel frame (facts 4.9);
* full scan, per latent: the exact ratio over every stored latent (`MemoryBank.retrieve(method="full")`);
* MemoryBank: the cascade (`method="cascade"`), without a cap and with the default cap (eviction).
Also reports how often each bank's pick equals the per-latent full scan's on the timed clips, and for
the capped bank how much overlap (confidence) its picks lose against the uncapped full scan.
Writes a markdown table (docs/results/retrieval.md by default) and optionally JSON.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from worldstream.eval.benchmarks.common import machine, write_report


@dataclass(frozen=True)
class SessionConfig:
    """A random walk with revisits, in MG3 action units (facts 4.1)."""

    arena_radius: float = 3000.0  # pose units (= 30 extrinsic units, the retrieval far plane)
    block_frames: tuple[int, int] = (8, 48)  # each random action is held for this many frames [lo, hi)
    turn_mouse: float = 0.1  # yaw step when turning (1.5 deg/frame)
    pitch_mouse: float = 0.05  # occasional pitch nods (0.75 deg/frame)
    pitch_limit: float = 20.0  # degrees: beyond this the walk pitches back toward level
    pitch_prob: float = 0.15  # chance that a block also pitches
    heading_tolerance: float = 10.0  # degrees: when returning to the arena, turn until this aligned


@dataclass(frozen=True)
class RetrievalBenchConfig:
    history_frames: tuple[int, ...] = (1_000, 10_000, 100_000)
    clips_per_history: int = 5  # timed clips per history length (the last clips of the session)
    repeats: int = 3  # bank timing: best of this many runs per clip
    full_scan_frames_max: int = 100_000  # MG3 frame-level full scan is timed up to this history
    seed: int = 0


def revisit_session(num_frames: int, seed: int = 0, cfg: SessionConfig | None = None):
    """Keyboard [T,6], mouse [T,2] and poses [T,5] of a random walk that stays in a disc.

    Actions are drawn per block (forward, forward+turn, strafe, back, turn in place, with occasional
    pitch); outside the arena the walker turns toward the centre and walks back. Poses come from
    `poses_from_actions` block by block, which equals one call on the whole sequence.
    """
    from worldstream.data.actions import KEY_INDEX, MG3_KINEMATICS, poses_from_actions

    cfg = cfg or SessionConfig()
    rng = np.random.default_rng(seed)
    kb = np.zeros((num_frames, 6), np.float32)
    ms = np.zeros((num_frames, 2), np.float32)
    poses = np.zeros((num_frames, 5), np.float32)
    pose = np.zeros(5, np.float32)
    i = 0
    while i < num_frames:
        n = min(int(rng.integers(*cfg.block_frames)), num_frames - i)
        x, y, _, pitch, yaw = (float(v) for v in pose)
        k, m = np.zeros(6, np.float32), np.zeros(2, np.float32)
        if np.hypot(x, y) > cfg.arena_radius:  # head back to the centre
            err = (np.degrees(np.arctan2(-y, -x)) - yaw + 180.0) % 360.0 - 180.0
            k[KEY_INDEX["W"]] = 1
            if abs(err) > cfg.heading_tolerance:
                m[1] = cfg.turn_mouse * np.sign(err)
                n = min(n, int(abs(err) / (MG3_KINEMATICS.degrees_per_mouse_unit * cfg.turn_mouse)) + 1)
        else:
            choice = int(rng.integers(6))
            if choice <= 2:
                k[KEY_INDEX["W"]] = 1
            elif choice == 3:
                k[KEY_INDEX[str(rng.choice(["A", "D"]))]] = 1
            elif choice == 4:
                k[KEY_INDEX["S"]] = 1
            if choice in (1, 2, 5):
                m[1] = cfg.turn_mouse * rng.choice([-1.0, 1.0])
        if abs(pitch) > cfg.pitch_limit:
            m[0] = -cfg.pitch_mouse * np.sign(pitch)
        elif rng.random() < cfg.pitch_prob:
            m[0] = cfg.pitch_mouse * rng.choice([-1.0, 1.0])
        kb[i:i + n], ms[i:i + n] = k, m
        block, last = poses_from_actions(kb[i:i + n], ms[i:i + n], first_pose=pose)
        poses[i:i + n] = block
        pose = last.astype(np.float32)
        i += n
    return kb, ms, poses


def run(cfg: RetrievalBenchConfig) -> dict[str, Any]:
    from worldstream.geometry.camera import MG3_SCHEDULE, extrinsics_from_poses
    from worldstream.geometry.memory import MemoryBank, MemoryBankConfig
    from worldstream.geometry.retrieval import MG3_RETRIEVAL, select_memory_idx_fov

    sched, rc = MG3_SCHEDULE, MG3_RETRIEVAL
    bank_cfg = MemoryBankConfig()
    total = max(cfg.history_frames) + sched.first_clip_frames + sched.new_frames * cfg.clips_per_history
    _, _, poses = revisit_session(total, cfg.seed)
    c2ws = extrinsics_from_poses(poses)
    rows = []
    for history in cfg.history_frames:
        # clips whose candidate range [1, start) is ~`history` frames
        k0 = max(1, (history - 1) // sched.new_frames)
        clips = [sched.window(k) for k in range(k0, k0 + cfg.clips_per_history)]
        # banks filled with every latent before the first timed clip (eviction included)
        n_lat = int(sched.latent_of(clips[-1].start - 1)) + 1
        lat = np.arange(n_lat)
        banks = {"cap": MemoryBank(bank_cfg), "nocap": MemoryBank(replace(bank_cfg, max_entries=None))}
        for bank in banks.values():
            bank.add_many(lat, c2ws[sched.last_frame(lat)])
        times = {name: [] for name in banks}
        same = {name: 0 for name in banks}
        gap = []
        t_full, t_mg3 = [], []
        for w in clips:
            bases = c2ws[list(w.base_frames(rc.base_offsets))]
            got = {}
            for name, bank in banks.items():
                best = np.inf
                for _ in range(cfg.repeats):
                    t0 = time.perf_counter()
                    got[name] = bank.retrieve(bases, before_frame=w.start)
                    best = min(best, time.perf_counter() - t0)
                times[name].append(best)
            t0 = time.perf_counter()
            ref = banks["nocap"].retrieve(bases, before_frame=w.start, method="full")
            t_full.append(time.perf_counter() - t0)
            for name in banks:
                same[name] += int((got[name].latents[:-1] == ref.latents[:-1]).sum())
            gap += (ref.confidences[:-1] - got["cap"].confidences[:-1]).tolist()
            if history <= cfg.full_scan_frames_max and w is clips[0]:
                t0 = time.perf_counter()
                select_memory_idx_fov(c2ws, w.start, w.base_frames(rc.base_offsets), rc)
                t_mg3.append(time.perf_counter() - t0)
        picks = len(clips) * (rc.num_memory - 1)
        rows.append({
            "history_frames": clips[0].start - 1, "latents": n_lat, "bank_entries": len(banks["cap"]),
            "mg3_full_scan_ms": 1e3 * float(np.mean(t_mg3)) if t_mg3 else None,
            "latent_full_scan_ms": 1e3 * float(np.median(t_full)),
            "bank_ms_median": 1e3 * float(np.median(times["cap"])),
            "bank_ms_max": 1e3 * float(np.max(times["cap"])),
            "bank_nocap_ms_median": 1e3 * float(np.median(times["nocap"])),
            "nocap_same_pick": same["nocap"] / picks, "cap_same_pick": same["cap"] / picks,
            "cap_confidence_gap_mean": float(np.mean(gap)), "cap_confidence_gap_max": float(np.max(gap)),
        })
    bank_info = {"max_entries": bank_cfg.max_entries, "coarse_keep": bank_cfg.coarse_keep,
                 "fine_keep": bank_cfg.fine_keep}
    return {"config": asdict(cfg), "bank": bank_info, "machine": machine(), "rows": rows}


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Memory retrieval time vs history length",
        "",
        f"`worldstream bench retrieval` on {m['processor']} ({m['cpu_count']} CPUs, load average "
        f"{m['load_avg_1min']:.1f} at the start), {m['platform']}, numpy {m['numpy']}. "
        f"Revisiting random walk (MG3 kinematics, arena radius 30 units), "
        f"{res['config']['clips_per_history']} clips per history length, MG3 schedule (5 reference frames, "
        "last slot = anchor). Times per clip; bank: best of "
        f"{res['config']['repeats']} runs. Bank: cap {res['bank']['max_entries']} latents, coarse/fine keep "
        f"{res['bank']['coarse_keep']}/{res['bank']['fine_keep']}.",
        "",
        "| history (frames) | latents | MG3 full scan, every frame (ms) | full scan, every latent (ms) "
        "| MemoryBank no cap (ms) | no cap: same pick as full scan | MemoryBank, cap (ms, median / max) "
        "| cap: entries | cap: same pick | cap: confidence loss (mean / max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        mg3 = "-" if r["mg3_full_scan_ms"] is None else f"{r['mg3_full_scan_ms']:.0f}"
        lines.append(
            f"| {r['history_frames']} | {r['latents']} | {mg3} | {r['latent_full_scan_ms']:.0f} | "
            f"{r['bank_nocap_ms_median']:.2f} | {100 * r['nocap_same_pick']:.0f}% | "
            f"{r['bank_ms_median']:.2f} / {r['bank_ms_max']:.2f} | {r['bank_entries']} | "
            f"{100 * r['cap_same_pick']:.0f}% | {r['cap_confidence_gap_mean']:.3f} / "
            f"{r['cap_confidence_gap_max']:.3f} |")
    lines += [
        "",
        "'Same pick': the retrieved latent equals the per-latent full scan's (4 scored slots per clip). "
        "Past the cap the bank has evicted entries, so its picks are other views of the same places; the "
        "confidence loss (full-scan ratio minus the bank's) says how much overlap that costs.",
        "",
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="directory for retrieval.md")
    p.add_argument("--json", type=Path, help="also write the raw numbers as JSON")
    p.add_argument("--seed", type=int, default=0, help="random-walk seed")


def main(args: argparse.Namespace) -> int:
    res = run(RetrievalBenchConfig(seed=args.seed))
    md = to_markdown(res)
    write_report(Path(args.out) / "retrieval.md", md, args.json, res)
    print(md)
    return 0
