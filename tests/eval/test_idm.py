"""Inverse-dynamics model (eval/idm.py): shapes, bad input, labels, accuracy arithmetic, learning, checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from worldstream.data.actions import KEY_INDEX
from worldstream.eval import idm

TINY = idm.IDMConfig(height=32, width=32, window=4, downsample=2, channels=(8, 16), hidden=32, dropout=0.0)


def _kb(*moves: str) -> np.ndarray:
    kb = np.zeros((len(moves), 6), np.float32)
    for i, m in enumerate(moves):
        for key in m:
            kb[i, KEY_INDEX[key]] = 1.0
    return kb


def test_forward_shapes_and_window_alignment():
    model = idm.build_idm(TINY)
    frames = idm.prepare_video(np.zeros((10, 32, 32, 3), np.uint8), TINY)
    assert frames.shape == (10, 3, 16, 16) and frames.dtype == torch.uint8
    out = model(frames[:4][None].repeat(5, 1, 1, 1, 1))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"move": (5, 9), "pitch": (5, 3), "yaw": (5, 3)}
    # window 4 predicts the middle transition: actions 1..T-3 of a 10-frame video
    pred = idm.predict_prepared(model, frames)
    assert TINY.target_offset == 1
    assert np.flatnonzero(pred.valid).tolist() == list(range(1, 8))
    assert pred.keyboard.shape == (10, 6) and pred.mouse.shape == (10, 2)


def test_area_downsample_rounds_like_an_image_resize():
    v = np.zeros((1, 32, 32, 3), np.uint8)
    v[0, 0, 0] = 255  # one bright pixel in a 2x2 block -> 63.75 -> 64
    x = idm.prepare_video(v, TINY)
    assert int(x[0, 0, 0, 0]) == 64 and int(x[0, 0, 0, 1]) == 0


def test_bad_input_names_the_problem():
    model = idm.build_idm(TINY)
    with pytest.raises(ValueError, match="expects 32x32"):
        idm.prepare_video(np.zeros((6, 24, 32, 3), np.uint8), TINY)
    with pytest.raises(ValueError, match="uint8"):
        idm.prepare_video(np.zeros((6, 32, 32, 3), np.float32), TINY)
    with pytest.raises(ValueError, match=r"\[T,H,W,3\]"):
        idm.prepare_video(np.zeros((6, 32, 32), np.uint8), TINY)
    with pytest.raises(ValueError, match=r"\[B, 4, 3, 16, 16\]"):
        model(torch.zeros(2, 3, 3, 16, 16))  # a 3-frame window for a 4-frame IDM
    for bad_window in (1, 5):  # the middle transition of an odd window is not unique
        with pytest.raises(ValueError, match="window must be even and >= 2"):
            idm.IDMConfig(window=bad_window)
    with pytest.raises(ValueError, match="not divisible"):
        idm.IDMConfig(height=33, width=32, downsample=2)
    # a video shorter than the window has nothing to score
    pred = idm.predict_video(model, np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="no transition"):
        idm.idm_accuracy(np.zeros((3, 6)), np.zeros((3, 2)), pred)
    with pytest.raises(ValueError, match=r"keyboard \[3,6\]"):
        idm.idm_accuracy(np.zeros((4, 6)), np.zeros((4, 2)), pred)


def test_labels_round_trip_and_augmentations():
    moves = ("", "W", "S", "A", "D", "WA", "WD", "SA", "SD", "WS")
    cls = idm.move_class(_kb(*moves))
    assert [idm.MOVE_CLASSES[c] for c in cls] == ["none", "W", "S", "A", "D", "W+A", "W+D", "S+A", "S+D", "none"]
    np.testing.assert_array_equal(idm.keyboard_from_move(cls[:9]), _kb(*moves[:9]))
    m = np.array([[0.0, 0.1], [0.0, -0.5], [0.1, 0.0], [-0.1, 0.0], [0.01, -0.019], [0.02, 0.0]], np.float32)
    mc = idm.mouse_classes(m)
    assert mc.tolist() == [[1, 2], [1, 0], [2, 1], [0, 1], [1, 1], [2, 1]]  # 0.02 is outside the dead zone
    assert [idm.DIRECTION_CLASSES[d] for d in idm.direction_class(mc)] == ["right", "left", "down", "up", "none",
                                                                          "down"]
    # augmentations that keep the action readable: a mirror and time reversal, exactly relabelled
    frames = torch.arange(8 * 3 * 16 * 16, dtype=torch.float32).reshape(8, 3, 16, 16).to(torch.uint8)
    labels = torch.as_tensor(idm.action_labels(_kb("WA", "D", "S", "", "A", "W", "SD", ""),
                                               np.array([[0, 0], [0.1, -0.1], [0, 0.3]] + [[0, 0]] * 5)))
    data = idm.IDMData(frames, labels, torch.arange(3), [], [], [], [], [])
    plain = dict(flip_prob=0.0, reverse_prob=0.0, gain=(1.0, 1.0), offset=0.0, max_shift=0, blur_prob=0.0)
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 1])
    win, y = idm._batch(data, idx, TINY, idm.IDMTrainConfig(**plain), gen)
    assert torch.equal(win[1], frames[1:5].float()) and y.tolist() == labels[[1, 2]].tolist()
    # mirror: A <-> D, yaw left <-> right, W/S and pitch unchanged.
    # window 0 predicts action 1 (D, pitch down, yaw left); window 1 action 2 (S, yaw right)
    win, y = idm._batch(data, idx, TINY, idm.IDMTrainConfig(**{**plain, "flip_prob": 1.0}), gen)
    assert torch.equal(win[0], frames[0:4].flip(-1).float())
    assert [idm.MOVE_CLASSES[int(c)] for c in y[:, 0]] == ["A", "S"] and y[:, 1:].tolist() == [[2, 2], [1, 0]]
    # time reversal: the inverse action, W <-> S, A <-> D, both mouse signs
    win, y = idm._batch(data, idx, TINY, idm.IDMTrainConfig(**{**plain, "reverse_prob": 1.0}), gen)
    assert torch.equal(win[1], frames[[4, 3, 2, 1]].float())
    assert [idm.MOVE_CLASSES[int(c)] for c in y[:, 0]] == ["A", "W"] and y[:, 1:].tolist() == [[0, 2], [1, 0]]
    # photometric / shift / blur augmentations keep the shape and the pixel range
    win, y = idm._batch(data, idx, TINY, idm.IDMTrainConfig(blur_prob=1.0), gen)
    assert win.shape == (2, 4, 3, 16, 16) and float(win.min()) >= 0 and float(win.max()) <= 255


def test_accuracy_on_hand_made_predictions():
    # 6 frames; the IDM can score rows 1..4 (valid); row 0 and 5 are excluded
    true_kb = _kb("W", "W", "W", "D", "", "S")
    true_mouse = np.array([[0, 0], [0, 0.1], [0, 0.1], [0, 0], [0.1, 0], [0, 0]], np.float32)
    move = idm.move_class(_kb("S", "W", "WA", "D", "", "W"))  # row 2 wrong (W+A for W)
    mcls = idm.mouse_classes(np.array([[0, 0], [0, 0.1], [0, -0.1], [0, 0], [0, 0], [0, 0]], np.float32))
    valid = np.array([False, True, True, True, True, False])
    pred = idm.IDMPrediction(move, mcls, idm.keyboard_from_move(move), idm.mouse_from_classes(mcls, 0.1), valid)
    acc = idm.idm_accuracy(true_kb, true_mouse, pred)
    assert acc["n_frames"] == 4
    assert acc["move"] == acc["keyboard_exact"] == 0.75
    assert acc["key_W"] == 1.0 and acc["key_A"] == 0.75 and acc["key_D"] == 1.0
    assert acc["mouse_yaw"] == 0.75 and acc["mouse_pitch"] == 0.75  # row 2 yaw sign, row 4 pitch missed
    assert acc["mouse_direction"] == 0.5
    assert acc["action_exact"] == 0.5  # rows 1 and 3: keys and both mouse axes right
    assert acc["direction_recall"]["right"] == {"n": 2, "recall": 0.5}
    assert acc["direction_recall"]["down"] == {"n": 1, "recall": 0.0}
    assert acc["move_confusion"][idm.MOVE_CLASSES.index("W")][idm.MOVE_CLASSES.index("W+A")] == 1
    # a mask narrows further
    acc2 = idm.idm_accuracy(true_kb, true_mouse, pred, mask=np.array([1, 1, 0, 1, 0, 1], bool))
    assert acc2["n_frames"] == 2 and acc2["action_exact"] == 1.0


@pytest.fixture(scope="module")
def rendered_clips():
    from worldstream.data.engine import EngineConfig, render_clip

    cfg = EngineConfig(height=32, width=32, num_frames=24, trajectories=("explore",), trajectory_weights=(1.0,))
    return [render_clip(11, 1, cfg), render_clip(11, 2, cfg)]


def test_tiny_idm_learns_from_rendered_clips(rendered_clips, tmp_path):
    data = idm.build_data(rendered_clips, TINY)
    assert data.num_clips == 2 and data.frames.shape == (48, 3, 16, 16) and data.starts.numel() == 42
    tcfg = idm.IDMTrainConfig(steps=60, batch=16, lr=3e-3, warmup=5, eval_every=0, label_smoothing=0.0)
    model, summary = idm.train_idm(data, data, TINY, tcfg)
    assert summary["loss_last"] < 0.7 * summary["loss_first"], (summary["loss_first"], summary["loss_last"])
    assert summary["steps"] == 60 and summary["val"]["n_frames"] == 2 * (24 - 3)
    # checkpoint round trip: same predictions; meta keeps the summary
    idm.save_idm(tmp_path / "idm", model, summary)
    loaded, meta = idm.load_idm(tmp_path / "idm")
    assert loaded.cfg == TINY and meta["steps"] == 60 and meta["val"]["move"] == summary["val"]["move"]
    a = idm.predict_video(model, rendered_clips[0].video)
    b = idm.predict_video(loaded, rendered_clips[0].video)
    np.testing.assert_array_equal(a.move, b.move)
    np.testing.assert_array_equal(a.mouse_cls, b.mouse_cls)


def test_load_errors(tmp_path, rendered_clips):
    with pytest.raises(NotADirectoryError, match="--train-idm"):
        idm.load_idm(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no video"):
        idm.build_data([dataclasses.replace(rendered_clips[0], video=None)], TINY)
    with pytest.raises(ValueError, match="expects 16x16"):
        idm.build_data(rendered_clips, dataclasses.replace(TINY, height=16, width=16))
    from worldstream.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "other", torch.nn.Linear(2, 2), dataclasses.replace(idm.IDMTrainConfig()))
    with pytest.raises(ValueError, match="expected worldstream.eval.idm.IDMConfig"):
        idm.load_idm(tmp_path / "other")


def test_pitch_warp_matches_a_pitched_render():
    """The synthetic-pitch augmentation re-renders a frame as the engine would at the pitched pose."""
    from worldstream.data.engine import EngineConfig, get_world
    from worldstream.geometry.camera import extrinsics_from_poses

    _, renderer = get_world(11, EngineConfig(height=32, width=32))  # the rendered_clips world (cached)
    x0, y0 = 0.0, 0.0
    for pitch in (6.0, -6.0):
        poses = np.array([[x0, y0, 170, 0, 45], [x0, y0, 170, pitch, 45]], np.float32)
        v = torch.as_tensor(renderer.render(extrinsics_from_poses(poses))).permute(0, 3, 1, 2).float()
        inner = (..., slice(4, -4), slice(None))  # rows the border repetition does not reach
        err = {s: float((idm.pitch_warp(v[:1], torch.tensor([s * pitch]), 90.0) - v[1:])[inner].abs().mean())
               for s in (1, 0, -1)}
        assert err[1] < 0.5 * err[0] and err[1] < 0.3 * err[-1], err
    assert torch.allclose(idm.pitch_warp(v, torch.zeros(2), 90.0), v, atol=1e-3)  # 0 degrees: identity
