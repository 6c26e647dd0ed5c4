"""`worldstream bench all`: runs the benches in order, forwards only known options, survives failures."""

import argparse
import json

import torch

from worldstream.checkpoint import save_checkpoint
from worldstream.cli import main as cli_main
from worldstream.eval.benchmarks.all import bench_argv, run_bench
from worldstream.model.vae import VAE, VAEConfig, prune_decoder

TINY = VAEConfig(dim=4, dec_dim=8, z_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(True, True))


def test_bench_argv_forwards_only_given_and_known_options(tmp_path):
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    p.add_argument("--out", default="docs/results/x.md")
    args = argparse.Namespace(checkpoint="CK", quick=True, world_seeds="900,901", threads=None, results_dir="R")
    assert bench_argv(p, args, tmp_path / "x.json") == ["--checkpoint", "CK", "--quick", "--json",
                                                         str(tmp_path / "x.json"), "--out", "R/x.md"]
    args = argparse.Namespace(checkpoint=None, quick=False, world_seeds=None, threads=None, results_dir=None)
    assert bench_argv(p, args, None) == []
    p.set_defaults(out="docs/results")  # a bench whose --out is a folder (speed) gets the folder
    args.results_dir = "R"
    assert bench_argv(p, args, None) == ["--out", "R"]


def test_missing_bench_is_reported(tmp_path):
    args = argparse.Namespace(checkpoint=None, quick=True, world_seeds=None, threads=None, results_dir=None)
    e = run_bench("no_such_bench", args, tmp_path, log=lambda m: None)
    assert e["status"] == "missing" and "no_such_bench" in e["error"]


def test_all_continues_after_a_failure(tmp_path, capsys, monkeypatch):
    import worldstream.eval.benchmarks.vae as vae_bench

    monkeypatch.setattr(vae_bench, "DEFAULT_DATA", str(tmp_path / "absent"))  # render clips (no held-out set)
    # a checkpoint with vae/ + lightvae/ but no dit/: vae runs, drift fails at load, `all` goes on
    torch.manual_seed(0)
    vae = VAE(TINY).init_weights()
    save_checkpoint(tmp_path / "ck" / "vae", vae, vae.cfg)
    light = prune_decoder(vae, 0.5)
    save_checkpoint(tmp_path / "ck" / "lightvae", light, light.cfg)
    threads = torch.get_num_threads()
    out, js = tmp_path / "res" / "all.md", tmp_path / "all.json"  # --results-dir takes the suite's table too
    rc = cli_main(["bench", "all", "--benches", "vae,drift", "--checkpoint", str(tmp_path / "ck"), "--quick",
                   "--world-seeds", "900", "--json-dir", str(tmp_path / "per"), "--results-dir", str(tmp_path / "res"),
                   "--json", str(js)])
    assert rc == 1 and torch.get_num_threads() == threads
    res = json.loads(js.read_text())
    assert list(res["benches"]) == ["drift", "vae"]  # sorted keys
    v, d = res["benches"]["vae"], res["benches"]["drift"]
    assert v["status"] == "ok" and "--quick" in v["argv"] and "--world-seeds" in v["argv"]
    assert v["result"]["summary"]["decoders"]["full"]["psnr_db"] > 0
    assert (tmp_path / "per" / "vae.json").is_file() and (tmp_path / "res" / "vae.md").is_file()
    assert "rendered" in v["result"]["data"]
    assert d["status"] == "failed" and d["error"]
    text = out.read_text()
    assert "| vae | ok |" in text and "| drift | failed |" in text
    assert "1/2 ok; not ok: drift" in capsys.readouterr().out
