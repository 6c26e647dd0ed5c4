"""Stage 1: VAE / LightVAE objectives, the nano_vae recipes' data and a tiny end-to-end run (seconds)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from worldstream.data.schema import Clip
from worldstream.data.shards import CorruptShardWarning, record_shard, shard_name, write_shard
from worldstream.model.vae import VAE, VAEConfig, prune_decoder
from worldstream.train.config import CheckpointConfig, LoggingConfig, ScheduleConfig
from worldstream.train.objectives import ModelBundle
from worldstream.train.objectives.vae import (
    LightVAEObjective,
    LightVAEObjectiveConfig,
    VAEObjective,
    VAEObjectiveConfig,
    decode_train,
    psnr,
)
from worldstream.train.recipes import get_recipe
from worldstream.train.recipes.nano_vae import (
    FrameIndex,
    VideoDataConfig,
    build_lightvae,
    build_vae,
    load_run_vae,
    video_batches,
)
from worldstream.train.trainer import DataPosition, Trainer

TINY = VAEConfig(dim=4, dec_dim=8, z_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(True, True))  # 4x8x8


def smooth_video(seed: int, B: int = 2, F: int = 5, H: int = 16, W: int = 16) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1]: low-frequency content (learnable by a tiny VAE)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(B, 3, F, 3, 3, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(F, H, W), mode="trilinear", align_corners=True)


def train(objective, bundle: ModelBundle, name: str, x: torch.Tensor, steps: int, lr: float) -> list[float]:
    params = [p for p in bundle.raw(name).parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for step in range(steps):
        loss, logs = objective(bundle, x, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_vae_objective_overfits_one_batch():
    torch.manual_seed(0)
    bundle = ModelBundle({"vae": VAE(TINY).init_weights()})
    x = smooth_video(1)
    obj = VAEObjective(VAEObjectiveConfig(kl_weight=1e-3))
    loss0, logs = obj(bundle, x, 0)
    assert set(logs) == {"l1", "mse", "psnr", "kl", "mu_std", "logvar"}
    assert float(logs["kl"]) >= 0
    losses = train(obj, bundle, "vae", x, steps=60, lr=3e-3)
    assert min(losses[-5:]) < 0.5 * float(loss0.detach()), losses[::10]
    # the inference path (mean latents, VAE.decode) reconstructs the batch better than at the start
    with torch.no_grad():
        vae = bundle.raw("vae").eval()
        assert psnr((vae.decode(vae.encode(x)) - x).pow(2).mean()) > float(logs["psnr"]) + 3


def test_vae_objective_bf16_autocast_finite():
    torch.manual_seed(0)
    bundle = ModelBundle({"vae": VAE(TINY).init_weights()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = VAEObjective(VAEObjectiveConfig())(bundle, smooth_video(2), 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in bundle.raw("vae").parameters() if p.grad is not None)


def test_bad_video_named():
    bundle = ModelBundle({"vae": VAE(TINY)})
    obj = VAEObjective(VAEObjectiveConfig())
    with pytest.raises(ValueError, match="1\\+4k frames"):
        obj(bundle, torch.zeros(1, 3, 6, 16, 16), 0)
    with pytest.raises(ValueError, match="video: expected"):
        obj(bundle, torch.zeros(1, 4, 5, 16, 16), 0)


@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_lightvae_distillation_reduces_gap(rate):
    torch.manual_seed(0)
    teacher = VAE(TINY).init_weights()
    x = smooth_video(3)
    train(VAEObjective(VAEObjectiveConfig()), ModelBundle({"vae": teacher}), "vae", x, steps=15, lr=3e-3)
    teacher.zero_grad(set_to_none=True)
    teacher.eval().requires_grad_(False)
    student = prune_decoder(teacher, rate)
    student.encoder.requires_grad_(False)
    student.conv1.requires_grad_(False)
    bundle = ModelBundle({"teacher": teacher, "student": student})

    def gap() -> float:
        with torch.no_grad():
            mu = teacher.moments(x)[0]
            return float((decode_train(student, mu) - decode_train(teacher, mu).clamp(-1, 1)).abs().mean())

    before = gap()
    obj = LightVAEObjective(LightVAEObjectiveConfig(teacher_weight=1.0, gt_weight=0.1))
    _, logs = obj(bundle, x, 0)
    assert {"l1_teacher", "l1_gt", "psnr", "psnr_teacher"} <= set(logs)
    train(obj, bundle, "student", x, steps=40, lr=3e-3)
    assert gap() < 0.7 * before, (before, gap())
    # only the student's decoder trained: no gradient ever reached the teacher or the student encoder
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in student.encoder.parameters())


def _old_decoder_pass(vae: VAE, z: torch.Tensor) -> torch.Tensor:
    """The student pass LightVAEObjective made before `VAE.forward(z=...)`: decoder called directly."""
    from worldstream.model.vae import unpatchify

    return unpatchify(vae.decoder(vae.conv2(z.to(vae.dtype)), None, first_chunk=True), vae.cfg.patch_size)


def _lightvae_pair(seed: int = 0) -> tuple[VAE, VAE]:
    torch.manual_seed(seed)
    teacher = VAE(TINY).init_weights().eval().requires_grad_(False)
    student = prune_decoder(teacher, 0.5)
    student.encoder.requires_grad_(False)
    student.conv1.requires_grad_(False)
    return teacher, student


@pytest.mark.parametrize("bf16", [False, True])
def test_lightvae_loss_unchanged_by_the_forward_decode(bf16):
    teacher, student = _lightvae_pair()
    x = smooth_video(5)
    c = LightVAEObjectiveConfig(teacher_weight=1.0, gt_weight=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = LightVAEObjective(c)(ModelBundle({"teacher": teacher, "student": student}), x, 0)
        with torch.no_grad():
            mu = teacher.moments(x)[0]
            target = _old_decoder_pass(teacher, mu).float().clamp(-1, 1)
        out = _old_decoder_pass(student, mu).float()
    ref = c.teacher_weight * (out - target).abs().mean() + c.gt_weight * (out - x).abs().mean()
    assert float(loss.detach()) == float(ref.detach())  # bit-identical
    grads = torch.autograd.grad(loss, [p for p in student.parameters() if p.requires_grad])
    refs = torch.autograd.grad(ref, [p for p in student.parameters() if p.requires_grad])
    assert all(torch.equal(a, b) for a, b in zip(grads, refs))


def _lightvae_ddp_worker(rank, world, port, result):
    import os

    from worldstream.parallel.dist import init_distributed, read_dist_env
    from worldstream.parallel.parallelize import parallelize
    from worldstream.train.config import ParallelConfig

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    env = read_dist_env()
    device, created = init_distributed(env, "gloo")
    assert created
    teacher, student = _lightvae_pair()
    bundle = ModelBundle({"teacher": teacher, "student": student})
    bundle.trained = ("student",)
    assert parallelize(bundle, ParallelConfig(mode="ddp"), world, device) == "ddp"
    x = smooth_video(5, B=2 * world)[rank * 2 : rank * 2 + 2]  # this rank's half of the global batch
    loss, _ = LightVAEObjective(LightVAEObjectiveConfig())(bundle, x, 0)
    loss.backward()
    if rank == 0:
        torch.save([p.grad.clone() for p in student.parameters() if p.requires_grad], result)
    torch.distributed.barrier()  # no rank tears gloo down while another still uses it (SIGABRT otherwise)
    torch.distributed.destroy_process_group()


def test_lightvae_objective_ddp_two_processes_match_one(tmp_path):
    import socket

    teacher, student = _lightvae_pair()
    loss, _ = LightVAEObjective(LightVAEObjectiveConfig())(ModelBundle({"teacher": teacher, "student": student}),
                                                           smooth_video(5, B=4), 0)
    loss.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_lightvae_ddp_worker, args=(2, port, tmp_path / "grads.pt"), nprocs=2, join=True)
    two = torch.load(tmp_path / "grads.pt", weights_only=True)
    one = [p.grad for p in student.parameters() if p.requires_grad]
    assert len(one) == len(two) and all(g is not None for g in one)
    for a, b in zip(one, two):  # DDP averaged the two half-batch gradients through forward(z=...)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------------------------------------
# recipes: data and a tiny end-to-end run


def clip(i: int, T: int = 9, H: int = 16, W: int = 16) -> Clip:
    rng = np.random.default_rng(i)
    video = ((smooth_video(i, B=1, F=T, H=H, W=W)[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255)
    video = video.to(torch.uint8).numpy()
    return Clip(key=f"w{i:04d}_c0000", c2w=np.tile(np.eye(4), (T, 1, 1)), intrinsics=np.array([8.0, 8, 8, 8]),
                keyboard=np.zeros((T, 6), np.float32), mouse=rng.normal(size=(T, 2)).astype(np.float32),
                prompt=f"a test world {i}", source="test", video=video, world_seed=100 + i)


def make_shards(root, n_shards: int = 2, per: int = 2, offset: int = 0):
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        clips = [clip(offset + s * per + j) for j in range(per)]
        info = write_shard(root / shard_name(s), clips)
        record_shard(root, shard_name(s), info)
    return root


def tiny_run_config(name: str, tmp_path, **data):
    cfg = get_recipe(name).config()
    d = VideoDataConfig(root=str(tmp_path / "train"), eval_root=str(tmp_path / "heldout"), frames=5,
                        batch_size=2, eval_windows=2, eval_frames=5, **data)
    return dataclasses.replace(cfg, data=d, schedule=ScheduleConfig(steps=2, warmup_steps=1),
                               logging=LoggingConfig(every_n_steps=1, tensorboard=False, progress=False,
                                                     sample_every_n_steps=2),
                               checkpoint=CheckpointConfig(every_n_steps=0))


def test_video_batches_follow_position(tmp_path):
    make_shards(tmp_path / "train")
    cfg = tiny_run_config("nano_vae", tmp_path)
    it = video_batches(cfg, DataPosition(0))
    first = [next(it).video for _ in range(5)]
    assert first[0].shape == (2, 3, 5, 16, 16) and first[0].min() >= -1 and first[0].max() <= 1
    resumed = next(video_batches(cfg, DataPosition(3))).video
    assert torch.equal(resumed, first[3])
    assert not torch.equal(first[0], first[1])


def test_frame_index_corrupt_member_skipped(tmp_path):
    root = make_shards(tmp_path / "train", n_shards=1, per=2)
    index = FrameIndex(root)
    path, key, offset, size = index.entries[0]
    with open(path, "r+b") as f:  # damage the first clip's frames member
        f.seek(offset + size // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(ValueError, match=f"member {key}.frames.npz"):
        index.video(0)
    cfg = dataclasses.replace(tiny_run_config("nano_vae", tmp_path), data=VideoDataConfig(
        root=str(root), frames=5, batch_size=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = next(video_batches(cfg, DataPosition(0))).video
    assert batch.shape[0] == 2
    assert any(issubclass(w.category, CorruptShardWarning) for w in caught)


def test_recipes_registered_and_tiny_runs(tmp_path):
    make_shards(tmp_path / "train")
    make_shards(tmp_path / "heldout", n_shards=1, offset=50)
    for name in ("nano_vae", "nano_lightvae_p050", "nano_lightvae_p075"):
        assert get_recipe(name).config().precision == "bf16"
    cfg = dataclasses.replace(tiny_run_config("nano_vae", tmp_path), model=TINY)
    logvar_bias = build_vae(cfg).raw("vae").conv1.bias[TINY.z_dim :]  # small posterior noise at the start
    assert torch.equal(logvar_bias, torch.full_like(logvar_bias, cfg.objective.logvar_init))
    result = Trainer(get_recipe("nano_vae"), cfg, tmp_path / "vae_run").fit()
    assert result.step == 2 and np.isfinite(result.last_row["loss"])
    assert 0 < result.last_row["eval/psnr"] < 60
    vae = load_run_vae(tmp_path / "vae_run")
    assert vae.cfg == TINY

    light = tiny_run_config("nano_lightvae_p050", tmp_path)
    light = dataclasses.replace(light, model=dataclasses.replace(light.model, teacher_run=str(tmp_path / "vae_run")))
    bundle = build_lightvae(light)
    assert not any(p.requires_grad for p in bundle.raw("teacher").parameters())
    assert not any(p.requires_grad for p in bundle.raw("student").encoder.parameters())
    assert bundle.raw("student").cfg.pruning_rate == 0.5
    result = Trainer(get_recipe("nano_lightvae_p050"), light, tmp_path / "light_run").fit()
    assert result.step == 2
    assert {"eval/psnr", "eval/psnr_teacher", "l1_teacher"} <= set(result.last_row)

    missing = dataclasses.replace(light, model=dataclasses.replace(light.model, teacher_run=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        build_lightvae(missing)
