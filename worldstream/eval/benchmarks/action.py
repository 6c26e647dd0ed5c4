"""`worldstream bench action`: does the world model follow W/A/S/D and the mouse? Read back by an IDM.

For every held-out world seed (harness.check_held_out refuses training worlds) and trajectory kind, the data
engine renders the ground truth (harness.ground_truth), the world model generates the same actions from the
same first frame and prompt (harness.run_session: generated frame i <-> ground-truth frame i), and the
inverse-dynamics model (eval/idm.py, shipped at checkpoints/eval/idm/) predicts the action of every transition
of both videos. Reported, pooled over all clips, on ground truth and on generated video:
* keyboard: per key (W, S, A, D) and the movement class (all four keys right, `keyboard_exact`);
* mouse direction: per axis (pitch up/none/down, yaw left/none/right), both axes right (`mouse_direction`),
  and the recall of each direction (none, left, right, up, down);
* the ratio generated / ground truth (issue 6 target: >= 0.9 for keyboard and mouse direction).
A floor is measured too: the IDM on a "frozen" video (frame 0 repeated), i.e. a model that ignores the
actions. Where the floor is close to the ground truth (a trajectory that rarely moves), the ratio says little.

`--train-idm` trains the IDM instead (eval/idm.py `train_idm`, one thread, a few minutes) on rendered clips of
training worlds and validates it on held-out worlds; the bench report quotes that validation accuracy.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldstream.eval.benchmarks.common import add_common_arguments, machine, machine_line

DEFAULT_OUT = "docs/results/action.md"
DEFAULT_IDM = "checkpoints/eval/idm"
DEFAULT_TRAIN_DATA = "/work/data/nano_v1"
DEFAULT_VAL_DATA = "/work/data/nano_heldout"
TARGET_RATIO = 0.9  # issue 6: action accuracy on generated video >= 90% of the accuracy on ground truth
HEADLINE = (("keyboard_exact", "keyboard (movement class)"), ("mouse_direction", "mouse direction"))
KEY_ROWS = ("key_W", "key_S", "key_A", "key_D", "keyboard_exact", "mouse_pitch", "mouse_yaw",
            "mouse_direction", "action_exact")
VIDEOS = ("gt", "generated", "frozen")


@dataclass(frozen=True)
class ActionBenchConfig:
    frames: int = 121  # per clip; rounded up to a session length (nano 25 + 16k: 121 = 25 + 6 x 16)
    quick_frames: int = 57  # --quick: 25 + 2 x 16
    trajectories: str = "bench,explore"  # MG3's benchmark templates (W, A, D, turns) + exploration (S, pitch)
    train_clips: int = 200  # --train-idm: clips read from the training shards (spread over the shard set) ...
    train_per_world: int = 3  # ... at most this many per world (more worlds for the same number of clips)
    val_clips: int = 64  # --train-idm: at most this many held-out clips
    idm: Any = None  # --train-idm: the IDM architecture, an IDMConfig (None: defaults; no torch at --help)


def _repo_path(rel: str) -> Path:
    """A repository-relative default resolved from the working directory, else from the package's repo."""
    p = Path(rel)
    if p.exists():
        return p
    from worldstream.infer.model_bundle import REPO_ROOT

    return REPO_ROOT / rel


########################################################################################################
# Training the IDM


def train(args: argparse.Namespace, cfg: ActionBenchConfig) -> int:
    from worldstream.eval import idm

    out = Path(args.idm_out) if args.idm_out else _repo_path(DEFAULT_IDM)
    icfg = cfg.idm if cfg.idm is not None else idm.IDMConfig()
    steps = args.train_steps if args.train_steps is not None else idm.IDMTrainConfig().steps
    tcfg = idm.IDMTrainConfig(steps=steps, threads=args.threads)
    n_train = args.train_clips if args.train_clips is not None else cfg.train_clips
    t0 = time.perf_counter()
    train_data = idm.build_data(idm.iter_clips(args.train_data, n_train, cfg.train_per_world), icfg)
    val_data = idm.build_data(idm.iter_clips(args.val_data, cfg.val_clips), icfg)
    overlap = {s for s in train_data.world_seeds if s is not None} & set(val_data.world_seeds)
    if overlap:
        raise ValueError(f"--val-data {args.val_data} shares worlds {sorted(overlap)[:5]} with --train-data: "
                         "validation must use held-out worlds")
    print(f"IDM data: {train_data.num_clips} training clips ({len(set(train_data.world_seeds))} worlds), "
          f"{val_data.num_clips} held-out clips, loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    model, summary = idm.train_idm(train_data, val_data, icfg, tcfg, log=lambda m: print(m, flush=True))
    summary.update(train_data_dir=str(args.train_data), val_data_dir=str(args.val_data), machine=machine(),
                   steps_per_second=round(summary["steps"] / max(summary["train_seconds"], 1e-9), 2))
    idm.save_idm(out, model, summary)
    print(f"saved {out} ({idm.param_count(model)} parameters, {summary['train_seconds']:.0f} s training)")
    print(idm_table(summary["val"], "held-out GT"))
    if args.json:
        from worldstream.eval.benchmarks.common import write_report

        write_report(None, "", args.json, {k: v for k, v in summary.items()})
    return 0


########################################################################################################
# The bench


def _score(model, clip, video: np.ndarray):
    from worldstream.eval import idm

    pred = idm.predict_video(model, video)
    return pred, idm.idm_accuracy(clip.keyboard[: len(video)], clip.mouse[: len(video)], pred)


def run(args: argparse.Namespace, cfg: ActionBenchConfig, progress=print) -> dict[str, Any]:
    from worldstream.eval import harness, idm

    # 1. the IDM, the world model, held-out worlds
    idm_dir = Path(args.idm) if args.idm else _repo_path(DEFAULT_IDM)
    model, idm_meta = idm.load_idm(idm_dir)
    seeds = harness.check_held_out(harness.parse_seeds(args.world_seeds))
    trajectories = harness.parse_trajectories(args.trajectory)
    if args.quick:
        seeds, trajectories = seeds[:1], trajectories[:1]
    bundle, checkpoint = harness.load_for_bench(args)  # sets --threads
    m = machine()
    scfg = harness.session_config(checkpoint, sampler=args.sampler, steps=args.steps, seed=args.seed)
    if (model.cfg.height, model.cfg.width) != (scfg.height, scfg.width):
        raise ValueError(f"the IDM in {idm_dir} reads {model.cfg.height}x{model.cfg.width} frames but the "
                         f"session generates {scfg.height}x{scfg.width}; train an IDM at that size "
                         "(--train-idm)")
    want = args.frames if args.frames is not None else (cfg.quick_frames if args.quick else cfg.frames)
    n_frames = harness.aligned_frames(scfg, want)
    # 2. per clip: ground truth, generated, frozen; IDM on each
    clips, items = [], {v: [] for v in VIDEOS}
    for seed in seeds:
        for traj in trajectories:
            t0 = time.perf_counter()
            clip = harness.ground_truth(seed, traj, n_frames, scfg.height, scfg.width)
            gen = harness.run_session(bundle, scfg, clip)
            videos = {"gt": clip.video, "generated": gen.frames,
                      "frozen": np.repeat(clip.video[:1], clip.num_frames, axis=0)}
            row: dict[str, Any] = {"world_seed": seed, "trajectory": traj,
                                   "produced": clip.meta["trajectory"], "frames": clip.num_frames,
                                   "generate_fps": gen.fps}
            for name, video in videos.items():
                pred, acc = _score(model, clip, video)
                items[name].append((clip.keyboard, clip.mouse, pred))
                row[name] = {k: acc[k] for k in KEY_ROWS}
            clips.append(row)
            gt, gn = row["gt"], row["generated"]
            progress(f"world {seed} {traj}: keyboard GT {gt['keyboard_exact']:.3f} generated "
                     f"{gn['keyboard_exact']:.3f}; mouse GT {gt['mouse_direction']:.3f} generated "
                     f"{gn['mouse_direction']:.3f} ({time.perf_counter() - t0:.0f} s)")
    # 3. pooled accuracy and ratios
    pooled = {v: idm.pooled_accuracy(items[v]) for v in VIDEOS}
    ratio = {k: (pooled["generated"][k] / pooled["gt"][k] if pooled["gt"][k] > 0 else None) for k in KEY_ROWS}
    return {
        "machine": m, "checkpoint": str(checkpoint) if checkpoint else None,
        "random_init": bundle.random_init,
        "session": {"sampler": scfg.sampler, "steps": scfg.steps, "seed": scfg.seed,
                    "use_memory": scfg.use_memory, "height": scfg.height, "width": scfg.width},
        "world_seeds": seeds, "trajectories": trajectories, "frames": n_frames, "quick": bool(args.quick),
        "idm": {"dir": str(idm_dir), "config": _asdict(model.cfg), "params": idm.param_count(model),
                "val": idm_meta.get("val"), "val_clips": idm_meta.get("val_clips"),
                "val_worlds": idm_meta.get("val_worlds"), "train_clips": idm_meta.get("train_clips"),
                "train_worlds": idm_meta.get("train_worlds"), "train_seconds": idm_meta.get("train_seconds"),
                "steps": idm_meta.get("steps")},
        "pooled": pooled, "ratio": ratio, "clips": clips, "target_ratio": TARGET_RATIO,
    }


def _asdict(cfg) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


########################################################################################################
# Report


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def idm_table(acc: dict[str, Any], label: str) -> str:
    """Markdown: the IDM's accuracy on one set of videos (per key, per mouse axis, per direction recall)."""
    from worldstream.eval.idm import DIRECTION_CLASSES, MOVE_CLASSES

    lines = [f"| {label} | accuracy % |", "|---|---|"]
    lines += [f"| {k} | {_pct(acc[k])} |" for k in KEY_ROWS]
    lines += [f"| move class {c} recall (n={acc['move_recall'][c]['n']}) | "
              f"{_pct(acc['move_recall'][c]['recall'])} |"
              for c in MOVE_CLASSES if acc["move_recall"][c]["n"]]
    lines += [f"| mouse {c} recall (n={acc['direction_recall'][c]['n']}) | "
              f"{_pct(acc['direction_recall'][c]['recall'])} |"
              for c in DIRECTION_CLASSES if acc["direction_recall"][c]["n"]]
    lines.append(f"| transitions scored | {int(acc['n_frames'])} |")
    return "\n".join(lines)


def to_markdown(res: dict[str, Any]) -> str:
    from worldstream.eval.idm import DIRECTION_CLASSES, MOVE_CLASSES

    p, r = res["pooled"], res["ratio"]
    ck = res["checkpoint"] or "random init"
    s = res["session"]
    out = ["# Action following (IDM read-back)", "",
           f"`worldstream bench action{' --quick' if res['quick'] else ''}`: "
           f"world seeds {res['world_seeds']} "
           f"(held out), trajectories {', '.join(res['trajectories'])}, {res['frames']} frames per clip; "
           f"checkpoint `{ck}`{' (RANDOM INIT)' if res['random_init'] else ''}, sampler {s['sampler']} "
           f"{s['steps']} steps, memory {'on' if s['use_memory'] else 'off'}, {s['height']}x{s['width']}.",
           "", machine_line(res["machine"]), "",
           f"Target: generated >= {TARGET_RATIO:.0%} of ground truth (issue 6).", "",
           "| metric | ground truth % | generated % | ratio | frozen frame 0 % |", "|---|---|---|---|---|"]
    for k in KEY_ROWS:
        ratio = "n/a" if r[k] is None else f"{r[k]:.3f}"
        out.append(f"| {k} | {_pct(p['gt'][k])} | {_pct(p['generated'][k])} | {ratio} | "
                   f"{_pct(p['frozen'][k])} |")
    for label, key, classes in (("move", "move_recall", MOVE_CLASSES),
                                ("mouse", "direction_recall", DIRECTION_CLASSES)):
        for c in classes:
            n = p["gt"][key][c]["n"]
            if n:
                gt, gen, frozen = (_pct(p[v][key][c]["recall"]) for v in ("gt", "generated", "frozen"))
                out.append(f"| {label} {c} recall (n={n}) | {gt} | {gen} | | {frozen} |")
    out.append(f"| transitions scored | {int(p['gt']['n_frames'])} | {int(p['generated']['n_frames'])} | | |")
    verdicts = []
    for k, label in HEADLINE:
        if r[k] is None:
            verdicts.append(f"{label}: no ratio (ground-truth accuracy 0)")
        else:
            verdicts.append(f"{label} {r[k]:.2f} ({'met' if r[k] >= TARGET_RATIO else 'missed'})")
    out += ["", "Ratio generated / ground truth: " + "; ".join(verdicts) + ".", "",
            "Per clip (accuracy %, ground truth / generated):", "",
            "| world | trajectory (produced) | keyboard | mouse direction | generate FPS |",
            "|---|---|---|---|---|"]
    for c in res["clips"]:
        gt, gn = c["gt"], c["generated"]
        out.append(f"| {c['world_seed']} | {c['trajectory']} ({c['produced']}) | "
                   f"{_pct(gt['keyboard_exact'])} / {_pct(gn['keyboard_exact'])} | "
                   f"{_pct(gt['mouse_direction'])} / {_pct(gn['mouse_direction'])} | "
                   f"{c['generate_fps']:.1f} |")
    i = res["idm"]
    out += ["", "## The IDM", "",
            f"`{i['dir']}`: {i['params']} parameters, window {i['config']['window']} frames at "
            f"{i['config']['height'] // i['config']['downsample']}x"
            f"{i['config']['width'] // i['config']['downsample']}; "
            f"trained {i['steps']} steps ({i['train_seconds']} s, one thread) on {i['train_clips']} clips of "
            f"{i['train_worlds']} training worlds. Validation on {i['val_clips']} held-out clips "
            f"(worlds {i['val_worlds']}):", ""]
    out.append(idm_table(i["val"], "held-out GT (validation)") if i["val"] else "(no validation recorded)")
    out += ["", "![action](action.png)", ""]
    return "\n".join(out)


def plot(res: dict[str, Any], png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldstream.eval.benchmarks.common import save_plot
    from worldstream.eval.idm import MOVE_CLASSES

    p = res["pooled"]
    fig, (ax, axc) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    x = np.arange(len(KEY_ROWS))
    for j, (v, color) in enumerate((("gt", "tab:blue"), ("generated", "tab:orange"), ("frozen", "tab:gray"))):
        ax.bar(x + (j - 1) * 0.27, [100 * p[v][k] for k in KEY_ROWS], 0.27, label=v, color=color)
    ax.set_xticks(x, KEY_ROWS, rotation=35, ha="right")
    ax.set_ylabel("IDM accuracy %")
    ax.set_ylim(0, 119)
    ax.legend(loc="upper center", ncol=3, fontsize=8)
    ax.set_title("IDM read-back: ground truth vs generated vs frozen frame")
    conf = np.asarray(p["generated"]["move_confusion"], dtype=float)
    keep = [i for i in range(len(MOVE_CLASSES)) if conf[i].sum() > 0 or conf[:, i].sum() > 0]
    conf = conf[np.ix_(keep, keep)]
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    axc.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [MOVE_CLASSES[i] for i in keep]
    axc.set_xticks(range(len(keep)), names, rotation=45)
    axc.set_yticks(range(len(keep)), names)
    for a in range(len(keep)):
        for b in range(len(keep)):
            if conf[a, b]:
                axc.text(b, a, int(conf[a, b]), ha="center", va="center", fontsize=7,
                         color="white" if norm[a, b] > 0.5 else "black")
    axc.set_xlabel("IDM on generated video")
    axc.set_ylabel("action given")
    axc.set_title("movement class, generated video")
    save_plot(fig, png)


########################################################################################################
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from worldstream.eval import harness

    add_common_arguments(p, default_out=DEFAULT_OUT)
    harness.add_harness_arguments(p, trajectory=ActionBenchConfig().trajectories)
    p.add_argument("--frames", type=int, default=None,
                   help="frames per clip (default 121, --quick 57; rounded up to a session length)")
    p.add_argument("--idm", default=None, metavar="DIR", help=f"IDM checkpoint (default {DEFAULT_IDM})")
    p.add_argument("--plot", default=None, metavar="PNG", help="plot path (default: the --out path, .png)")
    g = p.add_argument_group("training the IDM (--train-idm)")
    g.add_argument("--train-idm", action="store_true",
                   help="train the inverse-dynamics model instead of benching")
    g.add_argument("--idm-out", default=None, metavar="DIR", help=f"where to save it (default {DEFAULT_IDM})")
    g.add_argument("--train-data", default=DEFAULT_TRAIN_DATA, metavar="DIR",
                   help="training-world clip shards")
    g.add_argument("--val-data", default=DEFAULT_VAL_DATA, metavar="DIR", help="held-out-world clip shards")
    g.add_argument("--train-clips", type=int, default=None, help="clips to read (default 200)")
    g.add_argument("--train-steps", type=int, default=None, help="optimizer steps (default: IDMTrainConfig)")


def main(args: argparse.Namespace) -> int:
    cfg = ActionBenchConfig()
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.train_idm:
        return train(args, cfg)
    res = run(args, cfg, progress=lambda msg: print(msg, flush=True))
    md = to_markdown(res)
    png = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    from worldstream.eval.benchmarks.common import write_report

    write_report(args.out, md.replace("](action.png)", f"]({png.name})"), args.json, res)
    plot(res, png)
    print(md)
    return 0
