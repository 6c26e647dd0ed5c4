"""Conformance group `retrieval`: the golden `retrieval_*` vectors (golden README section 5).

Trajectories and clips are read from the JSON (names, clip indices, windows); tensors from
`<name>.extrinsics` and `<name>.clip<k>.memory_rel_poses`. Per trajectory:
* `schedule`: our `ClipSchedule` gives the JSON's window, base frames and predict_latent_idx;
* `picks`: `select_memory_idx_fov` per clip: robust slots exact pick and exact float32 confidence,
  non-robust slots (identical-pose revisits) pick within `near_best_within_*` and confidence within 0.1;
* `anchor`: the pipeline's anchor rule and latent indices on the official raw picks;
* `memory_rel_poses` (<= 1e-9), from the official pipeline picks and base frames.
Plus `frame_to_latent`: latent index and aligned block start for the listed frames (exact).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from worldstream.conformance import CaseResult, compare, guarded

GROUP = "retrieval"
VECTORS, META = "retrieval_vectors.safetensors", "retrieval_vectors.json"
TOL_CONF_FRAGILE = 0.1  # README: non-robust slots, confidence within 0.1
TOL_REL_POSES = 1e-9  # README: memory_rel_poses <= 1e-9


def applies(root: Path) -> bool:
    root = Path(root)
    return (root / VECTORS).is_file() and (root / META).is_file()


def check(root: Path) -> Iterator[CaseResult]:
    from safetensors.numpy import load_file

    root = Path(root)
    g = load_file(str(root / VECTORS))
    meta = json.loads((root / META).read_text())
    if "frame_to_latent" in meta:
        yield from guarded(GROUP, "frame_to_latent", lambda: _frame_to_latent(meta["frame_to_latent"]))
    for name, traj in meta.get("trajectories", {}).items():
        yield from guarded(GROUP, name, lambda n=name, t=traj: _trajectory(g, n, t))


def _frame_to_latent(table: dict) -> CaseResult:
    from worldstream.geometry.camera import MG3_SCHEDULE

    bad = [f for f, row in table.items() if MG3_SCHEDULE.latent_of(int(f)) != row["latent"]
           or MG3_SCHEDULE.aligned(int(f)) != row["aligned_block_start"]]
    return CaseResult(GROUP, "frame_to_latent", not bad, float(len(bad)), 0.0,
                      f"{len(table)} frames" + (f"; wrong: {bad[:5]}" if bad else ""))


def _trajectory(g: dict, name: str, traj: dict) -> Iterator[CaseResult]:
    from worldstream.geometry.camera import MG3_SCHEDULE
    from worldstream.geometry.retrieval import MG3_RETRIEVAL, apply_anchor, select_memory_idx_fov

    sched, rc = MG3_SCHEDULE, MG3_RETRIEVAL
    E = g[f"{name}.extrinsics"]
    sched_bad, pick_bad, anchor_bad = [], [], []
    n_slots = n_robust = 0
    worst_conf = 0.0
    rel_actual, rel_expected = [], []
    for clip in traj["clips"]:
        k = int(clip["clip_idx"])
        w = sched.window(k)
        base = list(w.base_frames(rc.base_offsets))
        # 1. schedule
        if ([w.start, w.end] != list(clip["window_frames"]) or base != list(clip["selected_index_base"])
                or w.start != clip.get("current_start_frame_idx", w.start)
                or [w.latent_start, w.latent_end] != list(clip["predict_latent_idx"])):
            sched_bad.append(k)
        # 2. picks (on the JSON's base frames and start, so a schedule error cannot hide here)
        start = int(clip.get("current_start_frame_idx", clip["window_frames"][0]))
        picks, confs = select_memory_idx_fov(E, start, clip["selected_index_base"], rc)
        for i, slot in enumerate(clip["slots"]):
            n_slots += 1
            pick, conf = picks[i], np.float32(confs[i])
            diff = abs(float(conf) - float(np.float32(slot["confidence"])))
            if slot["robust"]:
                n_robust += 1
                ok = pick == slot["pick"] and conf == np.float32(slot["confidence"])
                worst_conf = max(worst_conf, diff)
            else:
                near = next(v for key, v in slot.items() if key.startswith("near_best_within"))
                ok = str(pick) in near and diff <= TOL_CONF_FRAGILE
            if not ok:
                pick_bad.append(f"clip{k}[{i}] {pick}/{float(conf):.3f} vs "
                                f"{slot['pick']}/{slot['confidence']:.3f}")
        # 3. anchor rule and latents on the official raw picks
        pipeline = apply_anchor(clip["selected_index_raw"], rc)
        if pipeline != clip["selected_index_pipeline"] or \
                [sched.latent_of(f) for f in pipeline] != clip["memory_latent_idx"]:
            anchor_bad.append(k)
        # 4. relative poses of the official pipeline picks
        key = f"{name}.clip{k}.memory_rel_poses"
        if key in g:
            from worldstream.geometry.camera import memory_relative_pose

            rel_actual.append(np.stack([memory_relative_pose(E, m, b, sched) for m, b in
                                        zip(clip["selected_index_pipeline"], clip["selected_index_base"])]))
            rel_expected.append(g[key])
    yield CaseResult(GROUP, f"{name}.schedule", not sched_bad, float(len(sched_bad)), 0.0,
                     f"{len(traj['clips'])} clips" + (f"; wrong clips {sched_bad[:5]}" if sched_bad else ""))
    yield CaseResult(GROUP, f"{name}.picks", not pick_bad, worst_conf, 0.0,
                     f"{n_slots} slots, {n_robust} robust (exact), max |conf diff| on robust"
                     + (f"; {len(pick_bad)} wrong: {pick_bad[:3]}" if pick_bad else ""))
    yield CaseResult(GROUP, f"{name}.anchor", not anchor_bad, float(len(anchor_bad)), 0.0,
                     "anchor rule + memory_latent_idx"
                     + (f"; wrong clips {anchor_bad[:5]}" if anchor_bad else ""))
    if rel_actual:
        yield compare(GROUP, f"{name}.memory_rel_poses", np.stack(rel_actual), np.stack(rel_expected),
                      TOL_REL_POSES)
