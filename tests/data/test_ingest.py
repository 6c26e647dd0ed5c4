"""Ingestion: RealEstate10K (real samples + tampered copies), poses.npy, nerfstudio -> MG3 Clips and shards."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldstream.cli import main as cli_main
from worldstream.data.actions import poses_from_actions
from worldstream.data.inference import action_accuracy, exploration_revisit_actions
from worldstream.data.ingest import nerfstudio, poses_npy, realestate10k
from worldstream.data.ingest.common import IngestConfig, IngestError, make_clip, opencv_to_mg3
from worldstream.data.shards import ShardReader
from worldstream.geometry.camera import R_INIT, extrinsics_from_poses

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "realestate10k"
SAMPLES = sorted(ASSETS.glob("*.txt"))


def _mg3_to_opencv(c2w_mg3: np.ndarray, seed: int = 0, unit: float = 0.37) -> np.ndarray:
    """MG3 c2w (reflections) -> a right-handed OpenCV c2w in a random world with arbitrary scale/offset."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    B = q @ np.diag([1.0, 1.0, -1.0]) if np.linalg.det(q) > 0 else q  # a reflection: MG3 world -> source world
    out = np.tile(np.eye(4), (len(c2w_mg3), 1, 1))
    out[:, :3, :3] = B @ c2w_mg3[:, :3, :3]
    out[:, :3, 3] = (c2w_mg3[:, :3, 3] / 0.01) @ B.T * unit + rng.normal(size=3)
    assert np.allclose(np.linalg.det(out[:, :3, :3]), 1.0)
    return out


def _mg3_trajectory(seed: int, T: int, level: bool = False):
    kb, mouse = exploration_revisit_actions(seed, T)
    if level:
        mouse[:, 0] = 0.0  # no pitch: -mean camera y is exactly world up
    poses, _ = poses_from_actions(kb, mouse)
    return kb, mouse, poses


def _write_re10k(path: Path, c2w_cv: np.ndarray, ts: np.ndarray, intr=(0.5, 0.9, 0.5, 0.5)) -> None:
    lines = ["https://www.youtube.com/watch?v=test"]
    for t, m in zip(ts, c2w_cv):
        R, c = m[:3, :3], m[:3, 3]
        w2c = np.concatenate([R.T, (-R.T @ c)[:, None]], axis=1)
        lines.append(" ".join([str(int(t))] + [f"{v:.9f}" for v in intr] + ["0", "0"]
                              + [f"{v:.12f}" for v in w2c.reshape(-1)]))
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------
# conventions


@pytest.mark.parametrize("up", ["camera_y", "horizon"])
def test_roundtrip_recovers_mg3_trajectory_and_actions(up):
    kb, mouse, poses = _mg3_trajectory(3, 300, level=(up == "camera_y"))
    truth = extrinsics_from_poses(poses)
    c2w_cv = _mg3_to_opencv(truth)
    clip = make_clip("mem", "k", "test", c2w_cv, np.array([0.5, 0.9, 0.5, 0.5]), None, (90, 160),
                     IngestConfig(up=up, scale=1 / 0.37))
    np.testing.assert_allclose(clip.c2w, truth, atol=1e-6)  # exact world, origin, yaw 0, scale
    acc = action_accuracy(kb, mouse, clip.keyboard, clip.mouse, mask=np.arange(300) < 299)
    assert acc["action_exact"] >= 0.99, acc  # circular yaw average: only wrap steps may differ
    np.testing.assert_allclose(clip.intrinsics, [80, 81, 80, 45])


def test_auto_scale_maps_median_step_to_mg3_step():
    _, _, poses = _mg3_trajectory(4, 200, level=True)
    c2w, positions, info = opencv_to_mg3(_mg3_to_opencv(extrinsics_from_poses(poses), unit=0.05), IngestConfig())
    steps = np.linalg.norm(np.diff(positions[:, :2], axis=0), axis=1)
    assert abs(np.median(steps[steps > 1]) - 12.35) < 0.01
    assert info["scale_mode"] == "median_step"
    assert np.allclose(np.linalg.det(info["world_from_source"]), -1.0)  # the world reflection


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_realestate10k_samples(path):
    cams = realestate10k.read_camera_file(path)
    T = len(cams.timestamps_us)
    assert T == 16 and cams.url.startswith("https://")
    c2w_src = cams.c2w
    np.testing.assert_allclose(np.concatenate([cams.w2c, np.tile([[[0, 0, 0, 1.0]]], (T, 1, 1))], 1) @ c2w_src,
                               np.tile(np.eye(4), (T, 1, 1)), atol=1e-6)
    clip = realestate10k.load_clip(path)
    # MG3 convention: reflected c2w, first camera at the origin looking along +X (yaw 0)
    assert np.allclose(np.linalg.det(clip.c2w[:, :3, :3]), -1.0)
    np.testing.assert_allclose(clip.c2w[0, :3, 3], 0, atol=1e-12)
    assert abs(clip.poses[0, 4]) < 1e-4
    # world up (+Z) = -mean camera y
    up = -clip.c2w[:, :3, 1].mean(0)
    np.testing.assert_allclose(up / np.linalg.norm(up), [0, 0, 1], atol=1e-9)
    # relative rotations equal the source's (the reflection cancels); distances scale by k
    k = clip.meta["scale_to_pose_units"]
    rel = np.linalg.inv(clip.c2w[0]) @ clip.c2w[-1]
    rel_src = np.linalg.inv(c2w_src[0]) @ c2w_src[-1]
    np.testing.assert_allclose(rel[:3, :3], rel_src[:3, :3], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(rel[:3, 3]) / 0.01, k * np.linalg.norm(rel_src[:3, 3]), rtol=1e-9)
    # typical step = MG3 step; actions are valid multi-hot rows; intrinsics in pixels of the default size
    steps = np.linalg.norm(np.diff(clip.poses[:, :2], axis=0), axis=1)
    assert 8 < np.median(steps) < 17
    assert set(np.unique(clip.keyboard)) <= {0.0, 1.0} and clip.keyboard[:, 4:].sum() == 0
    fx, fy = cams.intrinsics_norm[0, :2]
    np.testing.assert_allclose(clip.intrinsics, [fx * 640, fy * 360, 320, 180])
    assert 0.0 <= clip.meta["action_confidence"] <= 1.0
    assert clip.video is None and clip.source == "realestate10k" and clip.key == f"re10k_{path.stem}"


# ------------------------------------------------------------------------------------------------
# bad files


def _tamper(tmp_path: Path, name: str, edit) -> Path:
    lines = SAMPLES[0].read_text().splitlines()
    lines = edit(lines)
    p = tmp_path / f"{name}.txt"
    p.write_text("\n".join(lines) + ("\n" if lines else ""))
    return p


def _set_token(lines, line_no, col, value):
    toks = lines[line_no - 1].split()
    toks[col] = value
    lines[line_no - 1] = " ".join(toks)
    return lines


@pytest.mark.parametrize("name, edit, where, msg", [
    ("truncated", lambda L: L[:4] + [" ".join(L[4].split()[:10])], "line 5", "expected 19 columns, got 10"),
    ("extra_col", lambda L: _set_token(L, 3, 0, L[2].split()[0] + " 7"), "line 3", "got 20"),
    ("text", lambda L: _set_token(L, 6, 9, "abc"), "line 6", "non-numeric token 'abc'"),
    ("nan", lambda L: _set_token(L, 7, 11, "nan"), "line 7", "NaN/inf value in column 12"),
    ("scaled_rot", lambda L: _set_token(L, 8, 7, "1.5"), "line 8", "not orthonormal"),
    ("mirror", lambda L: _set_token(_set_token(_set_token(L, 2, 7, str(-float(L[1].split()[7]))), 2, 11,
                                    str(-float(L[1].split()[11]))), 2, 15, str(-float(L[1].split()[15]))),
     "line 2", "right-handed"),
    ("no_url", lambda L: L[1:], "line 1", "expected the video URL"),
    ("time", lambda L: _set_token(L, 4, 0, "1"), "line 4", "does not increase"),
    ("empty", lambda L: [], None, "empty file"),
    ("url_only", lambda L: L[:1], None, "has 0 camera lines"),
])
def test_tampered_files_name_file_and_line(tmp_path, name, edit, where, msg):
    path = _tamper(tmp_path, name, edit)
    with pytest.raises(IngestError) as e:
        realestate10k.load_clip(path)
    text = str(e.value)
    assert str(path) in text and msg in text, text
    if where:
        assert f", {where}:" in text, text


def test_batch_command_reports_and_goes_on(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for p in SAMPLES[:3]:
        shutil.copy(p, src / p.name)
    (src / "zz_bad.txt").write_text(SAMPLES[0].read_text().replace("0.780003667", "x0.78", 1))
    out = tmp_path / "out"
    rc = cli_main(["data", "ingest", "--format", "realestate10k", str(src), "--out", str(out), "--clips-per-shard", "2"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "ingested 3 of 4 inputs" in captured.out and "1 failed" in captured.out
    assert "zz_bad.txt, line 2: non-numeric token 'x0.78'" in captured.err
    clips = list(ShardReader(out, strict=True))
    assert [c.key for c in clips] == [f"re10k_{p.stem}" for p in SAMPLES[:3]]
    assert len(list(out.glob("shard-*.tar"))) == 2
    # all inputs bad -> exit 1
    rc = cli_main(["data", "ingest", "--format", "realestate10k", str(src / "zz_bad.txt"), str(tmp_path / "nope.txt"),
                   "--out", str(tmp_path / "out2")])
    assert rc == 1
    assert "ingested 0 of 2 inputs" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# frames and video


def _frames(T: int, H: int = 12, W: int = 20) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)


def test_realestate10k_with_frames_dir_and_video(tmp_path):
    _, _, poses = _mg3_trajectory(5, 10, level=True)
    c2w_cv = _mg3_to_opencv(extrinsics_from_poses(poses))
    ts = np.arange(10) * 100_000  # 10 fps
    cam = tmp_path / "clipA.txt"
    _write_re10k(cam, c2w_cv, ts)
    frames = _frames(10)
    fdir = tmp_path / "frames"
    fdir.mkdir()
    for t, f in zip(ts, frames):
        Image.fromarray(f).save(fdir / f"{t}.png")
    cfg = IngestConfig(size=(6, 10))
    clip = realestate10k.load_clip(cam, cfg, frames_dir=fdir)
    assert clip.video.shape == (10, 6, 10, 3) and clip.video.dtype == np.uint8
    np.testing.assert_allclose(clip.intrinsics, [5.0, 5.4, 5.0, 3.0])
    assert abs(clip.meta["fps"] - 10.0) < 1e-9
    # a video file: frame = round(timestamp_s * fps)
    import imageio_ffmpeg

    vid = tmp_path / "clipA.mp4"
    big = np.repeat(np.repeat(frames, 8, axis=1), 8, axis=2)  # 96x160, x264-friendly
    w = imageio_ffmpeg.write_frames(str(vid), (160, 96), fps=10, codec="libx264", macro_block_size=1,
                                    output_params=["-qp", "0"], ffmpeg_log_level="error")
    w.send(None)
    for f in big:
        w.send(np.ascontiguousarray(f))
    w.close()
    clip_v = realestate10k.load_clip(cam, IngestConfig(size=(12, 20)), video=vid)
    assert clip_v.video.shape == (10, 12, 20, 3)
    err = np.abs(clip_v.video.astype(int) - frames.astype(int)).mean()
    assert err < 30, err  # the right frames in the right order (random frames differ by ~85)
    wrong = np.abs(clip_v.video[1:].astype(int) - frames[:-1].astype(int)).mean()
    assert wrong > 2 * err
    # command: --frames with a per-clip subdirectory, --size
    (tmp_path / "fr").mkdir()
    shutil.copytree(fdir, tmp_path / "fr" / "clipA")
    rc = cli_main(["data", "ingest", "--format", "realestate10k", str(cam), "--out", str(tmp_path / "o"),
                   "--frames", str(tmp_path / "fr"), "--size", "6x10"])
    assert rc == 0
    (clip_s,) = ShardReader(tmp_path / "o", strict=True)
    np.testing.assert_array_equal(clip_s.video, clip.video)


def test_frames_count_mismatch(tmp_path):
    fdir = tmp_path / "frames"
    fdir.mkdir()
    for i in range(3):
        Image.fromarray(_frames(1)[0]).save(fdir / f"{i}.png")
    with pytest.raises(IngestError, match="has 3 images"):
        realestate10k.load_clip(SAMPLES[0], frames_dir=fdir)


# ------------------------------------------------------------------------------------------------
# poses.npy and nerfstudio


def test_poses_npy_formats_and_errors(tmp_path):
    kb, mouse, poses = _mg3_trajectory(6, 60, level=True)
    truth = extrinsics_from_poses(poses)
    c2w_cv = _mg3_to_opencv(truth)
    d = tmp_path / "scene"
    d.mkdir()
    np.save(d / "poses.npy", c2w_cv)
    np.save(d / "intrinsics.npy", np.array([[50.0, 0, 40], [0, 50, 30], [0, 0, 1]]))
    clip = poses_npy.load_clip(d, IngestConfig(scale=1 / 0.37))
    np.testing.assert_allclose(clip.c2w, truth, atol=1e-6)
    assert (clip.height, clip.width) == (60, 80)  # principal point at the centre
    np.testing.assert_allclose(clip.intrinsics, [50, 50, 40, 30])
    # [T,3,4] + [4] + frames (resized): intrinsics follow the frames' size
    np.save(d / "poses.npy", c2w_cv[:, :3])
    np.save(d / "intrinsics.npy", np.array([10.0, 6.0, 10.0, 6.0]))
    (d / "images").mkdir()
    for i, f in enumerate(_frames(60)):
        Image.fromarray(f).save(d / "images" / f"{i}.png")
    clip = poses_npy.load_clip(d, IngestConfig(size=(6, 10)))
    assert clip.video.shape == (60, 6, 10, 3)
    np.testing.assert_allclose(clip.intrinsics, [5, 3, 5, 3])
    shutil.rmtree(d / "images")
    # errors name file and frame
    bad = c2w_cv.copy()
    bad[17, 1, 2] = np.nan
    np.save(d / "poses.npy", bad)
    with pytest.raises(IngestError, match=r"poses\.npy, frame 17: NaN"):
        poses_npy.load_clip(d)
    bad = c2w_cv.copy()
    bad[3, 3] = [0, 0, 1, 1]
    np.save(d / "poses.npy", bad)
    with pytest.raises(IngestError, match="frame 3: bottom row"):
        poses_npy.load_clip(d)
    np.save(d / "poses.npy", c2w_cv[:, :2])
    with pytest.raises(IngestError, match=r"expected \[T,4,4\] or \[T,3,4\]"):
        poses_npy.load_clip(d)
    np.save(d / "poses.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IngestError, match="not a readable .npy"):
        poses_npy.load_clip(d)
    np.save(d / "poses.npy", c2w_cv)
    np.save(d / "intrinsics.npy", np.eye(2))
    with pytest.raises(IngestError, match=r"intrinsics\.npy: intrinsics have shape \[2, 2\]"):
        poses_npy.load_clip(d)


def test_nerfstudio_opengl_matches_opencv(tmp_path):
    _, _, poses = _mg3_trajectory(8, 30, level=True)
    truth = extrinsics_from_poses(poses)
    c2w_cv = _mg3_to_opencv(truth, seed=2)
    c2w_gl = c2w_cv @ np.diag([1.0, -1.0, -1.0, 1.0])
    frames = [{"file_path": f"images/frame_{i + 1}.png", "transform_matrix": m.tolist()}
              for i, m in enumerate(c2w_gl)]
    frames = frames[::-1]  # listed out of order: sorted by file_path (natural order: 2 < 10)
    doc = {"fl_x": 40.0, "fl_y": 40.0, "cx": 20.0, "cy": 12.0, "w": 40, "h": 24, "frames": frames}
    d = tmp_path / "ns"
    d.mkdir()
    (d / "transforms.json").write_text(json.dumps(doc, indent=1))
    clip = nerfstudio.load_clip(d, IngestConfig(scale=1 / 0.37))
    np.testing.assert_allclose(clip.c2w, truth, atol=1e-6)
    assert clip.video is None and (clip.height, clip.width) == (24, 40)
    # with images
    (d / "images").mkdir()
    vid = _frames(30, 24, 40)
    for i, f in enumerate(vid):
        Image.fromarray(f).save(d / "images" / f"frame_{i + 1}.png")
    clip = nerfstudio.load_clip(d / "transforms.json")
    np.testing.assert_array_equal(clip.video, vid)
    (d / "images" / "frame_7.png").unlink()
    with pytest.raises(IngestError, match="frame_7.png is missing"):
        nerfstudio.load_clip(d)
    # broken JSON names the line; missing intrinsic names the frame
    text = (d / "transforms.json").read_text().splitlines()
    text[5] = text[5] + ","
    (d / "transforms.json").write_text("\n".join(text))
    with pytest.raises(IngestError, match=r"transforms\.json, line \d+: invalid JSON"):
        nerfstudio.load_clip(d)
    del doc["fl_y"]
    (d / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(IngestError, match="missing intrinsic 'fl_y'"):
        nerfstudio.load_clip(d)


def test_r_init_is_level_camera():
    # an upright level OpenCV camera looking along the source forward maps to MG3's R_INIT (yaw 0, pitch 0)
    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[:, :3, 3] = [[0, 0, 0], [0, 0, 1], [0, 0, 2]]  # moving along camera z
    out, pos, _ = opencv_to_mg3(c2w, IngestConfig())
    np.testing.assert_allclose(out[:, :3, :3], np.tile(R_INIT, (3, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(pos[:, 1:], 0, atol=1e-12)
    assert pos[2, 0] > pos[1, 0] > 0
