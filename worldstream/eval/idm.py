"""Inverse-dynamics model (IDM): which MG3 action produced a frame transition, judged from the pixels alone.

The action-following benchmark (`worldstream bench action`) runs this model on ground-truth renders and on the
world model's video of the same actions: if the generated video follows the actions, the IDM reads them
back about as well as from the renders. The idea is the inverse-dynamics labeller of Video PreTraining (Baker
et al. 2022), used as a metric, as game world-model papers score action following with a learned IDM.

Notable:
* Alignment (MG3 kinematics, data/actions.py): pose[i+1] = next_pose(pose[i], action[i]), so frame i+1
  shows the effect of action i. A window of `window` (even) consecutive frames starting at frame s predicts
  the action of its middle transition, i = s + `target_offset` (window 4: frames i-1, i, i+1, i+2 ->
  action i). Transitions without a full window (the first `target_offset`, the last window - 1 -
  target_offset) are not predicted.
* Targets (the classes data/inference.py uses to infer actions from poses):
  - movement class: one of 9 (none, W, S, A, D, W+A, W+D, S+A, S+D) from the keyboard's W/S/A/D as MG3's
    kinematics read them (`move_components`: W and S together cancel); per-key accuracy follows from it.
    The engine's agents press W/S/A/D only (Space/Attack are never pressed, as in MG3), so they are 0.
  - mouse direction per axis: the sign of the mouse delta with MG3's 0.02 dead zone (inference.py
    `_mouse_direction`): pitch up / none / down (positive pitch tilts the view down), yaw left / none / right.
    Magnitudes (0.1 to 0.5) are not predicted.
* Input: frames are area-downsampled by `downsample` and rounded to uint8 once per video (`prepare_video`), so
  training and evaluation see identical pixels. The net stacks the window's frames and their differences
  (scaled by `diff_gain`: a 1-pixel shift is a small change in intensity) as channels, runs stride-2 conv
  stages, and keeps a small spatial map for the heads (forward motion is an expansion: the left half of the
  image moves left, the right half right, which global pooling would lose).
* Augmentation (`_batch`): a horizontal flip mirrors the world (A <-> D, yaw left <-> right; W/S and pitch
  stay), balancing turns and strafes; time reversal of the window is the inverse action (W <-> S, A <-> D,
  both mouse signs flip; exact for MG3's kinematics, whose step uses the average yaw), which supplies the
  rare S; synthetic camera pitch (`pitch_warp`, the exact homography of a camera rotation) supplies the
  pitch classes, which the agents' short glances barely cover; a per-window translation, blur and brightness
  gain/offset make it read motion rather than texture (generated frames are softer, their colours drift).
* Training (`train_idm`) is CPU-sized: one thread, bf16 autocast (never fp16 on CPU), about 5 minutes on
  ~200 rendered clips of training worlds (3 per world), validated on held-out worlds. Checkpoints use
  worldstream/checkpoint.py (config.json, model.safetensors, meta.json with the training summary and the
  validation accuracy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from worldstream.data.actions import KEY_INDEX, KEYS, MG3_KINEMATICS, MOUSE_AXES
from worldstream.data.inference import _mouse_direction, action_accuracy

# movement classes: (forward sign, right sign) as MG3's kinematics read the keyboard
MOVE_CLASSES: tuple[str, ...] = ("none", "W", "S", "A", "D", "W+A", "W+D", "S+A", "S+D")
_MOVE_SIGNS: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 0), (-1, 0), (0, -1), (0, 1), (1, -1), (1, 1), (-1, -1), (-1, 1))
# mouse direction classes per axis: index = sign + 1
AXIS_CLASSES: dict[str, tuple[str, str, str]] = {"pitch": ("up", "none", "down"),
                                                  "yaw": ("left", "none", "right")}
# one mouse direction per transition (MG3 and the engine never move both axes at once; "both" if they do)
DIRECTION_CLASSES: tuple[str, ...] = ("none", "left", "right", "up", "down", "both")
HEADS: tuple[str, ...] = ("move", "pitch", "yaw")
PREPARE_CHUNK = 16  # frames converted at a time by prepare_video (bounded temporaries)


@dataclass(frozen=True)
class IDMConfig:
    height: int = 96  # frames the IDM accepts (the nano video, SPEC)
    width: int = 160
    window: int = 4  # consecutive frames per prediction
    downsample: int = 2  # area downsampling before the convs (96x160 -> 48x80)
    channels: tuple[int, ...] = (32, 48, 64, 96)  # one stride-2 3x3 conv stage each (48x80 -> 3x5)
    hidden: int = 128  # MLP width of the heads
    norm_groups: int = 8  # GroupNorm groups per conv stage (1 when a stage's width is not a multiple)
    diff_gain: float = 4.0  # frame differences are small: scale them up next to the frames
    dropout: float = 0.1
    nominal_mouse: float = 0.1  # mouse value written for a predicted direction (MG3's usual step, facts 3.1)

    def __post_init__(self) -> None:
        for name in ("height", "width", "window", "downsample", "hidden", "norm_groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"IDMConfig.{name} must be a positive int, got {v!r}")
        if self.window < 2 or self.window % 2:
            raise ValueError(f"IDMConfig.window must be even and >= 2 (a middle transition), "
                             f"got {self.window}")
        if self.height % self.downsample or self.width % self.downsample:
            raise ValueError(f"IDMConfig: {self.height}x{self.width} is not divisible by downsample "
                             f"{self.downsample}")
        if not self.channels:
            raise ValueError("IDMConfig.channels must name at least one conv stage")

    @property
    def target_offset(self) -> int:
        """Index (within the window) of the transition whose action is predicted: the middle one."""
        return self.window // 2 - 1

    @property
    def net_size(self) -> tuple[int, int]:
        return self.height // self.downsample, self.width // self.downsample

    @property
    def feature_size(self) -> tuple[int, int]:
        h, w = self.net_size
        for _ in self.channels:
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


@dataclass(frozen=True)
class IDMTrainConfig:
    steps: int = 2400
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100  # linear warm-up steps, then cosine decay to 0
    label_smoothing: float = 0.05
    # sample windows with weight freq(move class)^-balance (0: uniform; 1: every class equally often)
    balance: float = 0.5
    # --- augmentation (each keeps the action readable; see the module docstring)
    flip_prob: float = 0.5  # horizontal flip = mirrored world: A <-> D, yaw left <-> right
    reverse_prob: float = 0.25  # time reversal = the inverse action: W <-> S, A <-> D, both mouse signs flip
    gain: tuple[float, float] = (0.75, 1.25)  # per-window brightness gain ...
    offset: float = 20.0  # ... and offset (+-, in 0..255 pixel units): generated colours drift
    max_shift: int = 3  # per-window translation (pixels at the net size, replicate padding)
    blur_prob: float = 0.3  # 3x3 box blur of the whole window: generated frames are softer than renders
    # synthetic pitch: the agents rarely glance (0.5% of the training transitions), so windows whose middle
    # action has no pitch are re-rendered as pitching up / not / down (a third each; `pitch_warp`)
    pitch_synth_prob: float = 0.15
    pitch_synth_deg: tuple[float, float] = (1.0, 3.0)  # degrees per frame (MG3's 0.1 mouse step: 1.5)
    horizontal_fov_deg: float = 90.0  # of the renders (engine/renderer.py: square pixels, fx = W/2)
    seed: int = 0
    threads: int = 1
    eval_every: int = 400  # validation accuracy logged every this many steps (0: only at the end)
    max_seconds: float | None = None  # stop early past this wall time (None: run every step, reproducible)


# ------------------------------------------------------------------------------------------------
# labels


def move_class(keyboard: np.ndarray) -> np.ndarray:
    """keyboard [T,6] multi-hot -> movement class index [T] into MOVE_CLASSES."""
    kb = np.asarray(keyboard) > 0.5
    fwd = kb[:, KEY_INDEX["W"]].astype(int) - kb[:, KEY_INDEX["S"]].astype(int)
    right = kb[:, KEY_INDEX["D"]].astype(int) - kb[:, KEY_INDEX["A"]].astype(int)
    lut = {s: i for i, s in enumerate(_MOVE_SIGNS)}
    return np.array([lut[(int(f), int(r))] for f, r in zip(fwd, right)], dtype=np.int64)


def keyboard_from_move(classes: np.ndarray) -> np.ndarray:
    """Movement class index [T] -> keyboard [T,6] float32 (the keys that class holds)."""
    classes = np.asarray(classes, dtype=np.int64)
    kb = np.zeros((classes.shape[0], len(KEYS)), dtype=np.float32)
    for i, (f, r) in enumerate(_MOVE_SIGNS):
        rows = classes == i
        if f:
            kb[rows, KEY_INDEX["W" if f > 0 else "S"]] = 1.0
        if r:
            kb[rows, KEY_INDEX["D" if r > 0 else "A"]] = 1.0
    return kb


def mouse_classes(mouse: np.ndarray, deadzone: float = MG3_KINEMATICS.mouse_deadzone) -> np.ndarray:
    """mouse [T,2] (pitch, yaw) -> class index [T,2] per axis (0 = negative, 1 = none, 2 = positive)."""
    return (_mouse_direction(np.asarray(mouse, dtype=np.float32), deadzone) + 1).astype(np.int64)


def mouse_from_classes(classes: np.ndarray, nominal: float) -> np.ndarray:
    """Per-axis class index [T,2] -> mouse [T,2] float32 (sign x nominal)."""
    return ((np.asarray(classes, dtype=np.int64) - 1) * nominal).astype(np.float32)


def direction_class(mouse_cls: np.ndarray) -> np.ndarray:
    """Per-axis class index [T,2] -> one mouse direction [T] into DIRECTION_CLASSES."""
    pitch, yaw = np.asarray(mouse_cls)[:, 0] - 1, np.asarray(mouse_cls)[:, 1] - 1
    out = np.full(pitch.shape, DIRECTION_CLASSES.index("both"), dtype=np.int64)
    out[(pitch == 0) & (yaw == 0)] = DIRECTION_CLASSES.index("none")
    out[(pitch == 0) & (yaw < 0)] = DIRECTION_CLASSES.index("left")
    out[(pitch == 0) & (yaw > 0)] = DIRECTION_CLASSES.index("right")
    out[(pitch < 0) & (yaw == 0)] = DIRECTION_CLASSES.index("up")
    out[(pitch > 0) & (yaw == 0)] = DIRECTION_CLASSES.index("down")
    return out


def action_labels(keyboard: np.ndarray, mouse: np.ndarray) -> np.ndarray:
    """keyboard [T,6], mouse [T,2] -> labels [T,3] int64: (move class, pitch class, yaw class)."""
    return np.concatenate([move_class(keyboard)[:, None], mouse_classes(mouse)], axis=1)


# ------------------------------------------------------------------------------------------------
# input


def prepare_video(video: np.ndarray | torch.Tensor, cfg: IDMConfig) -> torch.Tensor:
    """uint8 [T,H,W,3] at the config's size -> uint8 [T,3,h,w], area-downsampled and rounded (the IDM's
    pixels)."""
    v = torch.as_tensor(np.asarray(video)) if not isinstance(video, torch.Tensor) else video
    if v.dtype != torch.uint8:
        raise ValueError(f"IDM input video must be uint8 [T,H,W,3], got dtype {v.dtype}")
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"IDM input video must have shape [T,H,W,3], got {list(v.shape)}")
    if tuple(v.shape[1:3]) != (cfg.height, cfg.width):
        raise ValueError(f"IDM input frames are {v.shape[1]}x{v.shape[2]}, this IDM expects "
                         f"{cfg.height}x{cfg.width} (HxW)")
    # NOTE in chunks of frames into one output: whole-clip float temporaries fragment the heap (RSS grew by
    # 4x the kept data while reading training clips)
    T, (h, w) = int(v.shape[0]), cfg.net_size
    out = torch.empty((T, 3, h, w), dtype=torch.uint8)
    for a in range(0, T, PREPARE_CHUNK):
        x = rearrange(v[a:a + PREPARE_CHUNK], "f h w c -> f c h w").float()
        if cfg.downsample > 1:
            x = F.avg_pool2d(x, cfg.downsample)
        out[a:a + PREPARE_CHUNK] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out  # [T,3,h,w]


def window_starts(num_frames: int, cfg: IDMConfig) -> np.ndarray:
    """Window start frames covering every predictable transition of a video of num_frames frames."""
    return np.arange(0, max(0, num_frames - cfg.window + 1))


# ------------------------------------------------------------------------------------------------
# model


class ConvStage(nn.Module):
    """Stride-2 3x3 conv + a residual 3x3 conv, GroupNorm and SiLU: [B,c_in,h,w] -> [B,c_out,h/2,w/2]."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        groups = groups if c_out % groups == 0 else 1
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm(self.conv(x)))
        return F.silu(x + self.norm2(self.conv2(x)))


class InverseDynamics(nn.Module):
    """windows [B, window, 3, h, w] (uint8 pixels or float in [0, 255]) -> logits per head."""

    def __init__(self, cfg: IDMConfig):
        super().__init__()
        self.cfg = cfg
        c_in = 3 * cfg.window + 3 * (cfg.window - 1)  # frames + differences
        stages, c = [], c_in
        for c_out in cfg.channels:
            stages.append(ConvStage(c, c_out, cfg.norm_groups))
            c = c_out
        self.stages = nn.Sequential(*stages)
        fh, fw = cfg.feature_size
        self.trunk = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c * fh * fw, cfg.hidden),
                                   nn.SiLU())
        self.heads = nn.ModuleDict({"move": nn.Linear(cfg.hidden, len(MOVE_CLASSES)),
                                    "pitch": nn.Linear(cfg.hidden, 3), "yaw": nn.Linear(cfg.hidden, 3)})

    def forward(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        h, w = cfg.net_size
        if windows.ndim != 5 or tuple(windows.shape[1:]) != (cfg.window, 3, h, w):
            raise ValueError(f"IDM windows must be [B, {cfg.window}, 3, {h}, {w}] (prepare_video output), "
                             f"got {list(windows.shape)}")
        # 1. pixels to [-1, 1], differences of consecutive frames
        x = windows.float() / 127.5 - 1.0  # [B,K,3,h,w]
        d = (x[:, 1:] - x[:, :-1]) * cfg.diff_gain  # [B,K-1,3,h,w]
        x = torch.cat([rearrange(x, "b k c h w -> b (k c) h w"), rearrange(d, "b k c h w -> b (k c) h w")], 1)
        # 2. conv stages -> small spatial map -> shared MLP
        feat = self.trunk(self.stages(x))  # [B, hidden]
        # 3. one linear head per target
        return {name: head(feat).float() for name, head in self.heads.items()}


def build_idm(cfg: IDMConfig) -> InverseDynamics:
    return InverseDynamics(cfg)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# prediction and accuracy


@dataclass
class IDMPrediction:
    move: np.ndarray  # [T] int64 movement class (valid rows only meaningful)
    mouse_cls: np.ndarray  # [T,2] int64 per-axis class
    keyboard: np.ndarray  # [T,6] float32 keys of `move`
    mouse: np.ndarray  # [T,2] float32 sign x nominal
    valid: np.ndarray  # [T] bool: transitions with a full window (action T-1 is never observable)


@torch.no_grad()
def predict_prepared(model: InverseDynamics, frames: torch.Tensor, batch: int = 256) -> IDMPrediction:
    """Prepared frames uint8 [T,3,h,w] -> per-transition predictions (row i = action i)."""
    cfg = model.cfg
    T = int(frames.shape[0])
    starts = window_starts(T, cfg)
    move = np.zeros(T, dtype=np.int64)
    mcls = np.ones((T, 2), dtype=np.int64)
    valid = np.zeros(T, dtype=bool)
    was_training = model.training
    model.eval()
    offsets = torch.arange(cfg.window)
    for b0 in range(0, len(starts), batch):
        s = torch.as_tensor(starts[b0:b0 + batch])
        win = frames[s[:, None] + offsets[None, :]]  # [B,K,3,h,w]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(win)
        rows = s.numpy() + cfg.target_offset
        move[rows] = logits["move"].argmax(-1).numpy()
        mcls[rows, 0] = logits["pitch"].argmax(-1).numpy()
        mcls[rows, 1] = logits["yaw"].argmax(-1).numpy()
        valid[rows] = True
    model.train(was_training)
    mouse = mouse_from_classes(mcls, cfg.nominal_mouse)
    return IDMPrediction(move, mcls, keyboard_from_move(move), mouse, valid)


def predict_video(model: InverseDynamics, video: np.ndarray | torch.Tensor,
                  batch: int = 256) -> IDMPrediction:
    """uint8 video [T,H,W,3] -> per-transition predictions (row i = action i; see IDMPrediction.valid)."""
    return predict_prepared(model, prepare_video(video, model.cfg), batch)


def _recall(true: np.ndarray, pred: np.ndarray, names: Iterable[str]) -> dict[str, dict[str, float]]:
    out = {}
    for i, name in enumerate(names):
        rows = true == i
        out[name] = {"n": int(rows.sum()), "recall": float((pred[rows] == i).mean()) if rows.any() else None}
    return out


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> list[list[int]]:
    """Confusion counts [true class][predicted class]."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (np.asarray(true), np.asarray(pred)), 1)
    return m.tolist()


def idm_accuracy(keyboard: np.ndarray, mouse: np.ndarray, pred: IDMPrediction,
                 mask: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy of IDM predictions against the true actions keyboard [T,6], mouse [T,2] on the valid rows.

    Returns inference.action_accuracy's keys (key_W..., keyboard_exact, mouse_pitch, mouse_yaw, ...,
    action_exact, n_frames) plus: `move` (movement-class accuracy), `mouse_direction` (both axes right),
    `move_recall` / `direction_recall` ({class: {n, recall}}), and the confusion matrices `move_confusion`,
    `direction_confusion` (rows true, columns predicted; class order MOVE_CLASSES / DIRECTION_CLASSES).
    """
    keyboard, mouse = np.asarray(keyboard, dtype=np.float32), np.asarray(mouse, dtype=np.float32)
    T = pred.move.shape[0]
    if keyboard.shape != (T, len(KEYS)) or mouse.shape != (T, len(MOUSE_AXES)):
        raise ValueError(f"true actions must be keyboard [{T},6] and mouse [{T},2] (one row per frame of the "
                         f"video), got {list(keyboard.shape)} and {list(mouse.shape)}")
    sel = pred.valid.copy()
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (T,):
            raise ValueError(f"mask has shape {list(mask.shape)}, expected [{T}]")
        sel &= mask
    if not sel.any():
        raise ValueError("no transition to score (video shorter than the IDM window, or an empty mask)")
    out: dict[str, Any] = action_accuracy(keyboard, mouse, pred.keyboard, pred.mouse, mask=sel)
    tm, pm = move_class(keyboard)[sel], pred.move[sel]
    tc, pc = mouse_classes(mouse)[sel], pred.mouse_cls[sel]
    td, pd = direction_class(tc), direction_class(pc)
    out["move"] = float((tm == pm).mean())
    out["mouse_direction"] = float((tc == pc).all(1).mean())
    out["move_recall"] = _recall(tm, pm, MOVE_CLASSES)
    out["direction_recall"] = _recall(td, pd, DIRECTION_CLASSES)
    out["move_confusion"] = confusion(tm, pm, len(MOVE_CLASSES))
    out["direction_confusion"] = confusion(td, pd, len(DIRECTION_CLASSES))
    return out


def pooled_accuracy(items: list[tuple[np.ndarray, np.ndarray, IDMPrediction]]) -> dict[str, Any]:
    """idm_accuracy over several videos at once: [(keyboard, mouse, prediction), ...]."""
    if not items:
        raise ValueError("pooled_accuracy needs at least one video")
    kb = np.concatenate([k for k, _, _ in items])
    mo = np.concatenate([m for _, m, _ in items])
    cat = IDMPrediction(*(np.concatenate([getattr(p, f) for _, _, p in items])
                          for f in ("move", "mouse_cls", "keyboard", "mouse", "valid")))
    return idm_accuracy(kb, mo, cat)


# ------------------------------------------------------------------------------------------------
# data


@dataclass
class IDMData:
    """Prepared clips concatenated: frames uint8 [sum T, 3, h, w], labels [sum T, 3], window starts [N]."""

    frames: torch.Tensor
    labels: torch.Tensor
    starts: torch.Tensor  # [N] global index of each training window's first frame
    keyboard: list[np.ndarray]  # per clip, for accuracy
    mouse: list[np.ndarray]
    bounds: list[tuple[int, int]]  # per clip [begin, end) rows in `frames`
    keys: list[str]
    world_seeds: list[int | None]

    @property
    def num_clips(self) -> int:
        return len(self.bounds)


def build_data(clips: Iterable[Any], cfg: IDMConfig) -> IDMData:
    """Clips (worldstream Clip with video) -> IDMData. Raises naming the clip on a missing or wrong video."""
    frames, labels, starts, kbs, mice, bounds, keys, seeds = [], [], [], [], [], [], [], []
    n = 0
    for clip in clips:
        if clip.video is None:
            raise ValueError(f"clip {clip.key} has no video: the IDM trains on pixels")
        try:
            f = prepare_video(clip.video, cfg)
        except ValueError as e:
            raise ValueError(f"clip {clip.key}: {e}") from e
        T = f.shape[0]
        if T < cfg.window:
            raise ValueError(f"clip {clip.key} has {T} frames, fewer than the IDM window ({cfg.window})")
        frames.append(f)
        labels.append(torch.as_tensor(action_labels(clip.keyboard, clip.mouse)))
        starts.append(torch.as_tensor(window_starts(T, cfg)) + n)
        kbs.append(np.asarray(clip.keyboard, np.float32))
        mice.append(np.asarray(clip.mouse, np.float32))
        bounds.append((n, n + T))
        keys.append(clip.key)
        seeds.append(clip.world_seed)
        n += T
    if not frames:
        raise ValueError("no clips to build IDM data from")
    return IDMData(torch.cat(frames), torch.cat(labels), torch.cat(starts), kbs, mice, bounds, keys, seeds)


def iter_clips(root: str | Path, max_clips: int, per_world: int | None = None) -> Iterator[Any]:
    """Up to max_clips clips of a shard directory, at most per_world per world seed (None: all), reading as
    few shards as that needs: evenly spaced over the set first (more worlds), then the others. A generator,
    so build_data keeps only the downsampled frames."""
    from worldstream.data.shards import ShardReader

    if max_clips < 1:
        raise ValueError(f"max_clips must be >= 1, got {max_clips}")
    reader = ShardReader(root)
    paths, shards = reader.paths, reader.index.get("shards", {})
    per_shard = max([int(v.get("samples", 1)) for v in shards.values()] or [1])
    world_clips = int(reader.index.get("dataset", {}).get("clips_per_world", 1))
    take = per_shard if per_world is None else per_shard * min(1.0, per_world / max(1, world_clips))
    need = min(len(paths), int(np.ceil(max_clips / max(1.0, take))))
    first = list(dict.fromkeys(np.linspace(0, len(paths) - 1, need).round().astype(int).tolist()))
    order = [paths[i] for i in first] + [p for i, p in enumerate(paths) if i not in first]
    n, seen = 0, {}
    for clip in reader.iter_paths(order):
        if per_world is not None:
            seen[clip.world_seed] = seen.get(clip.world_seed, 0) + 1
            if seen[clip.world_seed] > per_world:
                continue
        yield clip
        n += 1
        if n >= max_clips:
            return


def evaluate(model: InverseDynamics, data: IDMData) -> dict[str, Any]:
    """Pooled accuracy of the model on every clip of `data` (true actions from the clips)."""
    items = []
    for (a, b), kb, mo in zip(data.bounds, data.keyboard, data.mouse):
        items.append((kb, mo, predict_prepared(model, data.frames[a:b])))
    return pooled_accuracy(items)


# ------------------------------------------------------------------------------------------------
# training


def pitch_warp(frames: torch.Tensor, pitch_deg: torch.Tensor, horizontal_fov_deg: float) -> torch.Tensor:
    """Re-render frames float [N,3,h,w] as if the camera pitched by pitch_deg [N] degrees (positive: the view
    tilts down, MG3's sign): the homography K R K^-1 of a pure rotation (square pixels, principal point at
    the centre), bilinear, border pixels repeated where the new view leaves the old one."""
    N, _, h, w = frames.shape
    f = (w / 2) / np.tan(np.deg2rad(horizontal_fov_deg) / 2)
    # 1. output pixel centres -> rays (x, y, 1) in the new camera
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    x, y = (u - w / 2) / f, (v - h / 2) / f  # [h,w]
    # 2. rotate into the old camera: its forward axis tilts down (+y) by theta
    t = torch.deg2rad(pitch_deg.float())[:, None, None]  # [N,1,1]
    c, s = torch.cos(t), torch.sin(t)
    dy, dz = c * y + s, -s * y + c  # [N,h,w]
    # 3. project and sample (grid_sample's normalised coordinates, align_corners=False)
    us = f * x / dz + w / 2
    vs = f * dy / dz + h / 2
    grid = torch.stack([2 * us / w - 1, 2 * vs / h - 1], dim=-1)  # [N,h,w,2]
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _mirror_move(kind: str) -> torch.Tensor:
    """Movement class -> its class under a mirror ("flip": right sign flips) or time reversal (both flip)."""
    flip = {"flip": (1, -1), "reverse": (-1, -1)}[kind]
    lut = {sg: i for i, sg in enumerate(_MOVE_SIGNS)}
    return torch.as_tensor([lut[(f * flip[0], r * flip[1])] for f, r in _MOVE_SIGNS])


def _batch(data: IDMData, idx: torch.Tensor, cfg: IDMConfig, tcfg: IDMTrainConfig, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented windows float [B,K,3,h,w] (pixel units) and labels [B,3] for window indices idx."""
    B, K = idx.numel(), cfg.window
    h, w = cfg.net_size
    s = data.starts[idx]  # [B]
    x = data.frames[s[:, None] + torch.arange(K)[None, :]].float()  # [B,K,3,h,w]
    y = data.labels[s + cfg.target_offset].clone()  # [B,3] (move, pitch, yaw)
    # 1. mirror: A <-> D, yaw left <-> right
    flip = torch.rand(B, generator=gen) < tcfg.flip_prob
    x[flip] = x[flip].flip(-1)
    y[flip, 0] = _mirror_move("flip")[y[flip, 0]]
    y[flip, 2] = 2 - y[flip, 2]
    # 2. time reversal: the middle transition runs backwards (window even: it stays the middle one)
    rev = torch.rand(B, generator=gen) < tcfg.reverse_prob
    x[rev] = x[rev].flip(1)
    y[rev, 0] = _mirror_move("reverse")[y[rev, 0]]
    y[rev, 1:] = 2 - y[rev, 1:]
    # 3. synthetic camera pitch (level 0 too, so resampling alone does not signal a pitch)
    syn = (torch.rand(B, generator=gen) < tcfg.pitch_synth_prob) & (y[:, 1] == 1)
    if syn.any():
        n = int(syn.sum())
        sign = torch.randint(-1, 2, (n,), generator=gen)  # [n]
        lo, hi = tcfg.pitch_synth_deg
        step = lo + (hi - lo) * torch.rand(n, generator=gen)
        base = step * (2 * torch.rand(n, generator=gen) - 1)
        angle = base[:, None] + (sign * step)[:, None] * (torch.arange(K) - cfg.target_offset)[None, :]
        xs = rearrange(x[syn], "b k c h w -> (b k) c h w")
        xs = pitch_warp(xs, angle.reshape(-1), tcfg.horizontal_fov_deg)
        x[syn] = rearrange(xs, "(b k) c h w -> b k c h w", k=K)
        y[syn, 1] = sign + 1
    # 4. the same translation for every frame of a window (replicate padding)
    if tcfg.max_shift:
        m = tcfg.max_shift
        padded = F.pad(rearrange(x, "b k c h w -> b (k c) h w"), (m, m, m, m), mode="replicate")
        dy, dx = (torch.randint(0, 2 * m + 1, (2, B), generator=gen)).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(B)])
        x = rearrange(x, "b (k c) h w -> b k c h w", k=K)
    # 5. blur, brightness gain and offset per window
    blur = torch.rand(B, generator=gen) < tcfg.blur_prob
    if blur.any():
        xb = rearrange(x[blur], "b k c h w -> (b k) c h w")
        xb = F.avg_pool2d(xb, 3, stride=1, padding=1, count_include_pad=False)
        x[blur] = rearrange(xb, "(b k) c h w -> b k c h w", k=K)
    lo, hi = tcfg.gain
    gain = lo + (hi - lo) * torch.rand(B, 1, 1, 1, 1, generator=gen)
    off = tcfg.offset * (2 * torch.rand(B, 1, 1, 1, 1, generator=gen) - 1)
    return (x * gain + off).clamp(0, 255), y


def _sample_weights(data: IDMData, cfg: IDMConfig, balance: float) -> torch.Tensor:
    cls = data.labels[data.starts + cfg.target_offset, 0]  # [N]
    counts = torch.bincount(cls, minlength=len(MOVE_CLASSES)).float().clamp(min=1)
    return counts[cls] ** -balance


def _lr(step: int, tcfg: IDMTrainConfig) -> float:
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    p = (step - tcfg.warmup) / max(1, tcfg.steps - tcfg.warmup)
    return tcfg.lr * 0.5 * (1.0 + np.cos(np.pi * min(1.0, p)))


def train_idm(train: IDMData, val: IDMData | None, cfg: IDMConfig, tcfg: IDMTrainConfig = IDMTrainConfig(),
              log: Callable[[str], None] | None = None) -> tuple[InverseDynamics, dict[str, Any]]:
    """Train an IDM from scratch -> (model in eval mode, summary with losses, timings and val accuracy)."""
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    gen = torch.Generator().manual_seed(tcfg.seed)
    model = build_idm(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    weights = _sample_weights(train, cfg, tcfg.balance)
    losses: list[float] = []
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    stopped_early = False
    model.train()
    for step in range(tcfg.steps):
        # 1. sample windows (class-balanced), augment
        idx = torch.multinomial(weights, tcfg.batch, replacement=True, generator=gen)
        win, y = _batch(train, idx, cfg, tcfg, gen)
        # 2. forward in bf16, losses in fp32: one cross-entropy per head
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(win)
        loss = sum(F.cross_entropy(logits[h], y[:, i], label_smoothing=tcfg.label_smoothing)
                   for i, h in enumerate(HEADS))
        # 3. step
        for g in opt.param_groups:
            g["lr"] = _lr(step, tcfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if val is not None and tcfg.eval_every and done % tcfg.eval_every == 0 and done < tcfg.steps:
            acc = evaluate(model, val)
            history.append({"step": done, "loss": float(np.mean(losses[-50:])), "val_move": acc["move"],
                            "val_mouse_direction": acc["mouse_direction"],
                            "seconds": time.perf_counter() - t0})
            if log:
                log(f"step {done}: loss {history[-1]['loss']:.3f} val move {acc['move']:.3f} "
                    f"mouse {acc['mouse_direction']:.3f} ({history[-1]['seconds']:.0f} s)")
        if tcfg.max_seconds is not None and time.perf_counter() - t0 > tcfg.max_seconds:
            stopped_early = True
            if log:
                log(f"stopping at step {done}: past max_seconds {tcfg.max_seconds:g}")
            break
    train_s = time.perf_counter() - t0
    model.eval()
    summary: dict[str, Any] = {
        "steps": len(losses), "train_seconds": round(train_s, 1), "stopped_early": stopped_early,
        "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:])),
        "losses": [round(v, 4) for v in losses], "history": history, "params": param_count(model),
        "train_clips": train.num_clips, "train_windows": int(train.starts.numel()),
        "train_worlds": len({s for s in train.world_seeds if s is not None}), "train_config": asdict(tcfg),
    }
    if val is not None:
        summary["val"] = evaluate(model, val)
        summary["val_clips"] = val.num_clips
        summary["val_worlds"] = sorted({s for s in val.world_seeds if s is not None})
    return model, summary


# ------------------------------------------------------------------------------------------------
# checkpoints


def save_idm(directory: str | Path, model: InverseDynamics, summary: dict[str, Any] | None = None) -> Path:
    """Atomic checkpoint folder: config.json (IDMConfig), model.safetensors, meta.json (summary)."""
    from worldstream.checkpoint import save_checkpoint

    meta = {"recipe": "idm", **{k: v for k, v in (summary or {}).items() if k != "losses"}}
    if summary and "losses" in summary:
        meta["step"] = len(summary["losses"])
    return save_checkpoint(directory, model, model.cfg, meta=meta)


def load_idm(directory: str | Path) -> tuple[InverseDynamics, dict[str, Any]]:
    """-> (model in eval mode, meta dict). Clear errors for a missing folder or a non-IDM checkpoint."""
    from worldstream.checkpoint import from_pretrained, load_meta

    d = Path(directory)
    if not d.is_dir():
        raise NotADirectoryError(f"IDM checkpoint folder not found: {d} (train one with "
                                 "`worldstream bench action --train-idm`)")
    model = from_pretrained(d, build_idm, expected_type=IDMConfig).float().eval()
    return model, load_meta(d)
