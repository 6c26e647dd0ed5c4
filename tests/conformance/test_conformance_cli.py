"""`worldstream conformance DIR` end to end for the camera and retrieval groups (exit codes, tampering)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from worldstream.cli import main

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"
FILES = ("camera_vectors.safetensors", "camera_vectors.json", "retrieval_vectors.safetensors",
         "retrieval_vectors.json")


def copy_golden(tmp_path: Path) -> Path:
    root = tmp_path / "golden"
    root.mkdir()
    for name in FILES:
        shutil.copy(GOLDEN / name, root / name)
    return root


def tamper_tensor(path: Path, key: str, index: tuple, delta: float) -> None:
    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors[key] = tensors[key].copy()
    tensors[key][index] += delta
    save_file(tensors, str(path), metadata=metadata)


def run(root: Path, capsys, *groups: str) -> tuple[int, str]:
    args = ["conformance", str(root)]
    for g in groups:
        args += ["--group", g]
    code = main(args)
    return code, capsys.readouterr().out


def failed_cases(out: str) -> set[str]:
    return {line.split()[1] for line in out.splitlines() if " FAIL " in line}


def test_golden_passes(tmp_path, capsys):
    report = tmp_path / "report.json"
    code = main(["conformance", str(GOLDEN), "--group", "camera", "--group", "retrieval", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert not failed_cases(out)
    rows = json.loads(report.read_text())
    cases = {r["case"] for r in rows}
    assert {r["group"] for r in rows} == {"camera", "retrieval"} and all(r["passed"] for r in rows)
    assert {"plucker.clip", "plucker.pose", "frame_to_latent", "out_and_back.memory_rel_poses"} <= cases


def test_tampered_camera_values_fail(tmp_path, capsys):
    root = copy_golden(tmp_path)
    code, out = run(root, capsys)  # all groups: only camera and retrieval have files here
    assert code == 0, out
    tamper_tensor(root / "camera_vectors.safetensors", "W_20.poses", (7, 0), 0.5)
    tamper_tensor(root / "camera_vectors.safetensors", "plucker.clip.out", (0, 700, 1, 2, 3), 1e-4)
    code, out = run(root, capsys, "camera")
    assert code == 1
    # the extrinsics are computed from the golden poses, so they flag the tampered pose as well
    assert failed_cases(out) == {"W_20.poses", "W_20.extrinsics", "plucker.clip"}


def test_tampered_retrieval_values_fail(tmp_path, capsys):
    root = copy_golden(tmp_path)
    meta_path = root / "retrieval_vectors.json"
    meta = json.loads(meta_path.read_text())
    name = next(iter(meta["trajectories"]))
    slot = next(s for c in meta["trajectories"][name]["clips"] for s in c["slots"] if s["robust"])
    slot["confidence"] = float(np.float32(slot["confidence"] + 0.001))  # one robust slot, one sample point
    meta_path.write_text(json.dumps(meta))
    tamper_tensor(root / "retrieval_vectors.safetensors", f"{name}.clip1.memory_rel_poses", (2, 0, 3), 1e-6)
    code, out = run(root, capsys, "retrieval")
    assert code == 1
    assert failed_cases(out) == {f"{name}.picks", f"{name}.memory_rel_poses"}
