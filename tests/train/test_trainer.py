"""The trainer on the toy recipes: exact resume (in-process and after SIGKILL), NaN guard, multi-module
updates, gradient accumulation, DDP (2 gloo processes) == 1 process, checkpoints, config overrides, CLI."""

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worldstream import cli
from worldstream.train.config import OptimConfig, RunConfig, ScheduleConfig, apply_overrides
from worldstream.train.logging import read_csv
from worldstream.train.objectives import ModelBundle
from worldstream.train.recipes import Recipe, get_recipe, list_recipes
from worldstream.train.recipes.toy import ToyCritic
from worldstream.train.trainer import (
    ConfigChangedWarning,
    NonFiniteError,
    SeededSampler,
    Trainer,
    latest_checkpoint,
    lr_factor,
)

REPO = Path(__file__).resolve().parents[2]
FAST = ["logging.progress=false", "logging.tensorboard=false"]
TIMING = {"steps_per_s", "samples_per_s"}


def make(out, name="toy", sets=(), resume=False):
    recipe = get_recipe(name)
    return Trainer(recipe, apply_overrides(recipe.config(), [*FAST, *sets]), out, resume=resume)


def run(out, name="toy", sets=(), stop_at=None, resume=False):
    return make(out, name, sets, resume).fit(stop_at=stop_at)


def csv_without_timing(out):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_csv(Path(out) / "train.csv")]


def weights(ckpt):
    return {p.name: load_file(p) for p in sorted(Path(ckpt).glob("*.safetensors"))}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for f in wa:
        for k in wa[f]:
            assert torch.equal(wa[f][k], wb[f][k]), f"{f}:{k} differs"


# -------------------------------------------------------------------------------------------------
# exact resume


@pytest.mark.parametrize("name", ["toy", "toy_multi"])
def test_interrupted_run_resumes_bit_exactly(tmp_path, name):
    sets = ["schedule.steps=10", "checkpoint.every_n_steps=3", "checkpoint.keep_last=5",
            "logging.sample_every_n_steps=4"]
    run(tmp_path / "full", name, sets)
    first = run(tmp_path / "part", name, sets, stop_at=6)
    assert first.step == 6 and latest_checkpoint(tmp_path / "part").name == "step_000006"
    resumed = make(tmp_path / "part", name, sets, resume=True)
    assert resumed.step == 6 and resumed.consumed == 6 * resumed.cfg.grad_accum
    resumed.fit()

    full, part = csv_without_timing(tmp_path / "full"), csv_without_timing(tmp_path / "part")
    assert [r["step"] for r in part] == [str(s) for s in range(1, 11)]
    assert full == part  # every loss, lr, grad norm, objective log and eval metric, as exact decimal strings
    assert any(r.get("eval/mse") for r in full) or name == "toy_multi"
    assert_same_weights(tmp_path / "full/ckpt/step_000010", tmp_path / "part/ckpt/step_000010")


def test_fit_twice_on_one_trainer_continues(tmp_path):
    whole = run(tmp_path / "whole", "toy", ["schedule.steps=6"])
    t = make(tmp_path / "split", "toy", ["schedule.steps=6"])
    t.fit(stop_at=2)
    t.fit()
    assert [r["loss"] for r in read_csv(tmp_path / "split/train.csv")] == [repr(r["loss"]) for r in whole.rows]


def test_resume_after_sigkill_of_cli_process(tmp_path):
    sets = ["schedule.steps=40", "checkpoint.every_n_steps=5", "data.delay_s=0.01", "logging.progress=false"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "worldstream", "train", "--recipe", "toy", "--out", str(tmp_path / "killed"),
           "--set", *sets]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pointer = tmp_path / "killed/ckpt/latest"
    deadline = time.time() + 120
    while not (pointer.exists() and pointer.read_text().strip() >= "step_000010"):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rows = read_csv(tmp_path / "killed/train.csv")
    assert int(rows[-1]["step"]) < 40  # really interrupted mid-run

    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 40/40" in resumed.stdout

    run(tmp_path / "ref", "toy", sets)  # uninterrupted, in this process
    assert csv_without_timing(tmp_path / "killed") == csv_without_timing(tmp_path / "ref")
    assert_same_weights(tmp_path / "killed/ckpt/step_000040", tmp_path / "ref/ckpt/step_000040")
    assert list((tmp_path / "killed/tb").glob("events.out.tfevents.*"))  # TensorBoard on by default


def test_resume_checks(tmp_path):
    sets = ["schedule.steps=6", "checkpoint.every_n_steps=3"]
    run(tmp_path / "a", "toy", sets, stop_at=3)
    with pytest.raises(ValueError, match="already holds a run"):
        make(tmp_path / "a", "toy", sets)
    with pytest.warns(ConfigChangedWarning, match=r"optim\.model\.lr: 0\.003 -> 0\.001"):
        make(tmp_path / "a", "toy", [*sets, "optim.model.lr=1e-3"], resume=True)
    with pytest.raises(ValueError, match="written by recipe 'toy'"):
        make(tmp_path / "a", "toy_multi", sets, resume=True)
    toy = get_recipe("toy")
    other = Recipe("toy", toy.make_config, lambda cfg: ModelBundle({"model": ToyCritic(cfg.model)}), toy.data,
                   toy.objective)
    with pytest.raises(ValueError, match="other module types: model: checkpoint .*ToyMLP vs now .*ToyCritic"):
        Trainer(other, apply_overrides(other.config(), [*FAST, *sets]), tmp_path / "a", resume=True)
    fresh = make(tmp_path / "b", "toy", sets, resume=True)  # --resume without a checkpoint: from step 0
    assert fresh.step == 0


# -------------------------------------------------------------------------------------------------
# loop features


def test_toy_learns_and_checkpoints(tmp_path):
    res = run(tmp_path, "toy", ["schedule.steps=30", "checkpoint.every_n_steps=4", "checkpoint.keep_last=2",
                               "logging.sample_every_n_steps=10", "logging.tensorboard=true"])
    rows = read_csv(tmp_path / "train.csv")
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 30 and sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert {"loss", "lr", "grad_norm", "steps_per_s", "samples_per_s", "loss_avg", "pred_std", "nonfinite",
            "eval/mse"} <= rows[0].keys()
    assert [r["eval/mse"] != "" for r in rows].count(True) == 3
    assert float(rows[0]["samples_per_s"]) / float(rows[0]["steps_per_s"]) == pytest.approx(32)  # 2 x 16
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").glob("step_*"))
    assert ckpts == ["step_000028", "step_000030"] and res.checkpoint.name == "step_000030"
    assert (tmp_path / "ckpt/latest").read_text().strip() == "step_000030"
    files = {p.name for p in res.checkpoint.iterdir()}
    assert {"model.safetensors", "model_ema.safetensors", "model_optim.pt", "rank_state.pt", "trainer_state.json",
            "config.json", "meta.json"} == files
    opt = torch.load(res.checkpoint / "model_optim.pt", weights_only=True)
    assert int(opt["state"][0]["step"]) == 30
    ema, raw = load_file(res.checkpoint / "model_ema.safetensors"), load_file(res.checkpoint / "model.safetensors")
    assert not torch.equal(ema["net.0.weight"], raw["net.0.weight"])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_lr_schedule():
    s = ScheduleConfig(steps=110, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert [lr_factor(i, s) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, s) == pytest.approx(1.0) and lr_factor(60, s) == pytest.approx(0.55)
    assert lr_factor(110, s) == pytest.approx(0.1)
    c = ScheduleConfig(steps=50, warmup_steps=0, decay="constant")
    assert {lr_factor(i, c) for i in range(50)} == {1.0}


def test_nonfinite_guard_skips_then_aborts(tmp_path):
    t = make(tmp_path / "skip", "toy", ["schedule.steps=5", "objective.nan_at_steps=2"])
    t.fit()
    rows = read_csv(tmp_path / "skip/train.csv")
    assert [r["nonfinite"] for r in rows] == ["0.0", "0.0", "1.0", "0.0", "0.0"]
    assert math.isnan(float(rows[2]["loss"])) and t.updates == {"model": 4}
    assert all(math.isfinite(float(r["loss"])) for i, r in enumerate(rows) if i != 2)
    with pytest.raises(NonFiniteError, match="3 consecutive steps"):
        run(tmp_path / "abort", "toy", ["schedule.steps=8", "objective.nan_at_steps=1,2,3,4",
                                        "max_nonfinite_steps=3"])
    assert len(read_csv(tmp_path / "abort/train.csv")) == 4  # the failing step is logged before aborting


def test_grad_accumulation_matches_big_batch(tmp_path):
    base = ["schedule.steps=2", "objective.input_noise=0", "model.dropout=0", "optim.model.grad_clip=0"]
    a = make(tmp_path / "a", "toy", [*base, "grad_accum=2", "data.batch_size=8"])
    b = make(tmp_path / "b", "toy", [*base, "grad_accum=1", "data.batch_size=16"])
    ra, rb = a.fit(), b.fit()
    for x, y in zip(ra.rows, rb.rows):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    for (n, pa), pb in zip(a.bundle.raw("model").named_parameters(), b.bundle.raw("model").parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_multi_module_update_ratio_and_isolation(tmp_path):
    t = make(tmp_path / "m", "toy_multi", ["schedule.steps=6"])
    teacher0 = {k: v.clone() for k, v in t.bundle.raw("teacher").state_dict().items()}
    res = t.fit()
    assert t.updates == {"critic": 6, "student": 3} and t.bundle.frozen == ("teacher",)
    assert all(torch.equal(v, teacher0[k]) for k, v in t.bundle.raw("teacher").state_dict().items())
    rows = read_csv(tmp_path / "m/train.csv")
    assert [r["lr/student"] != "" for r in rows] == [True, False] * 3
    assert all(r["lr/critic"] != "" for r in rows)
    files = {p.name for p in res.checkpoint.iterdir()}
    assert {"critic.safetensors", "student.safetensors", "student_ema.safetensors"} <= files
    assert not any(f.startswith("teacher") for f in files)

    # the student's loss flows through the critic, but the critic's gradient must come from its own loss only
    grads = []
    for w in ("0", "100"):
        u = make(tmp_path / f"w{w}", "toy_multi", ["schedule.steps=1", f"objective.critic_weight={w}"])
        u.fit()
        grads.append([p.grad.clone() for p in u.bundle.raw("critic").parameters()])
        student_grad = next(u.bundle.raw("student").parameters()).grad.clone()
        grads[-1].append(student_grad)
    assert all(torch.equal(x, y) for x, y in zip(grads[0][:-1], grads[1][:-1]))
    assert not torch.equal(grads[0][-1], grads[1][-1])  # while the student does feel the critic


def test_hooks_do_not_shift_the_random_stream(tmp_path):
    plain = run(tmp_path / "plain", "toy", ["schedule.steps=6"])
    t = make(tmp_path / "hooked", "toy", ["schedule.steps=6"])
    calls = []

    @t.every_n_steps(2)
    def draw(ctx):
        calls.append(ctx.step)
        return {"hook/rand": float(torch.rand(())) + float(torch.randn(()))}

    hooked = t.fit()
    assert calls == [2, 4, 6]
    assert [r["loss"] for r in plain.rows] == [r["loss"] for r in hooked.rows]
    assert [r.get("hook/rand") is not None for r in hooked.rows] == [False, True] * 3


def test_bf16_autocast_trains(tmp_path):
    fp32 = run(tmp_path / "fp32", "toy", ["schedule.steps=20"])
    bf16 = run(tmp_path / "bf16", "toy", ["schedule.steps=20", "precision=bf16"])
    losses = [r["loss"] for r in bf16.rows]
    assert all(math.isfinite(x) for x in losses) and sum(losses[-5:]) < sum(losses[:5])
    assert losses != [r["loss"] for r in fp32.rows]  # autocast did change the arithmetic


# -------------------------------------------------------------------------------------------------
# distributed: 2 gloo processes == 1 process on the same global batch


def _ddp_worker(rank, world, port, out, sets, result):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    t = make(out, "toy", sets)
    assert t.mode == "ddp" and t.env.world_size == world
    res = t.fit()
    if rank == 0:
        torch.save({"rows": [(r["loss"], r["grad_norm"]) for r in res.rows],
                    "grads": [p.grad.clone() for p in t.bundle.raw("model").parameters()],
                    "params": [p.detach().clone() for p in t.bundle.raw("model").parameters()]}, result)


def test_ddp_two_processes_match_one(tmp_path):
    base = ["schedule.steps=3", "objective.input_noise=0", "model.dropout=0", "grad_accum=2",
            "checkpoint.every_n_steps=0"]
    one = make(tmp_path / "one", "toy", [*base, "data.batch_size=8"])
    res1 = one.fit()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "ddp.pt"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, tmp_path / "two", [*base, "data.batch_size=4"], result),
                                nprocs=2, join=True)
    two = torch.load(result, weights_only=True)
    for (l1, g1), (l2, g2) in zip([(r["loss"], r["grad_norm"]) for r in res1.rows], two["rows"]):
        assert l2 == pytest.approx(l1, rel=1e-6) and g2 == pytest.approx(g1, rel=1e-5)
    for a, b in zip(one.bundle.raw("model").parameters(), two["grads"]):
        torch.testing.assert_close(b, a.grad, rtol=1e-5, atol=1e-7)
    for a, b in zip(one.bundle.raw("model").parameters(), two["params"]):
        torch.testing.assert_close(b, a.detach(), rtol=1e-5, atol=1e-6)
    assert len(read_csv(tmp_path / "two/train.csv")) == 3  # rank 0 only logs


def test_seeded_sampler_shards_the_global_batch():
    one = SeededSampler(num_samples=100, batch_size=8, seed=3)
    ranks = [SeededSampler(num_samples=100, batch_size=4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for k in (0, 5, 12, 13):  # 12 batches per epoch: 13 is in epoch 1
        assert one.indices(k).tolist() == ranks[0].indices(k).tolist() + ranks[1].indices(k).tolist()
    assert one.indices(12).tolist() != one.indices(0).tolist()
    assert [i.tolist() for i, _ in zip(one.iterate(5), range(2))] == [one.indices(5).tolist(), one.indices(6).tolist()]


# -------------------------------------------------------------------------------------------------
# config, registry, CLI


def test_overrides_coerce_types_and_name_mistakes():
    cfg = get_recipe("toy").config()
    new = apply_overrides(cfg, ["optim.model.lr=1e-4", "schedule.decay=constant", "model.hidden=64",
                                "objective.nan_at_steps=1,2", "optim.model.betas=(0.9, 0.95)",
                                "logging.tensorboard=false", "grad_accum=4", "data.delay_s=0"])
    assert new.optim["model"].lr == 1e-4 and new.schedule.decay == "constant" and new.model.hidden == 64
    assert new.objective.nan_at_steps == (1, 2) and new.optim["model"].betas == (0.9, 0.95)
    assert new.logging.tensorboard is False and new.grad_accum == 4 and cfg.grad_accum == 2
    for bad, msg in [("optim.modle.lr=1", r"unknown key 'modle' in optim.*did you mean 'model'"),
                     ("schedul.steps=3", r"unknown key 'schedul' in RunConfig.*did you mean 'schedule'"),
                     ("schedule.decay=linear", "expected one of cosine, constant"),
                     ("grad_accum=two", "grad_accum=two: expected int"),
                     ("grad_accum=1.5", "expected int"),
                     ("schedule=3", "is a section"),
                     ("optim.model.betas=0.9", "expected 2 comma-separated values"),
                     ("grad_accum=0", "grad_accum: expected >= 1"),
                     ("noequals", "expected key=value"),
                     ("seed.x=1", "seed is a value")]:
        with pytest.raises(ValueError, match=msg):
            apply_overrides(cfg, [bad])


def test_registry_lists_and_builds_toy_recipes():
    names = [r.name for r in list_recipes()]
    assert {"toy", "toy_multi"} <= set(names)
    for r in list_recipes():
        assert isinstance(r.config(), RunConfig) and r.config().recipe == r.name
    for name in ("toy", "toy_multi"):
        r = get_recipe(name)
        cfg = r.config()
        assert set(cfg.optim) <= set(r.build(cfg).names)
    with pytest.raises(ValueError, match="unknown recipe 'tyo' \\(did you mean 'toy'\\?\\)"):
        get_recipe("tyo")
    bad = RunConfig(optim={"model": OptimConfig(update_every=0)})
    with pytest.raises(ValueError, match="optim.model.update_every"):
        bad.validate()


def test_cli_list_and_errors(tmp_path, capsys):
    assert cli.main(["train", "--list"]) == 0
    assert "toy_multi" in capsys.readouterr().out
    assert cli.main(["train", "--recipe", "toy", "--out", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
    assert cli.main(["train", "--recipe", "toy", "--out", str(tmp_path / "r"), "--set", "schedule.steps=4",
                     "checkpoint.every_n_steps=2", *FAST]) == 0
    assert "step 4/4" in capsys.readouterr().out
    assert cli.main(["train", "--recipe", "toy", "--out", str(tmp_path / "r"), "--set", "schedule.steps=4"]) == 2
    assert "pass --resume" in capsys.readouterr().err
