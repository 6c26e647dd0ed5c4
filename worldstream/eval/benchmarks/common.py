"""Shared pieces of the `worldstream bench ...` commands: machine, common options, reports, metrics.

* `machine()`: one description of the computer a bench ran on (every bench stores it in its JSON and prints it
  above its tables; the cores are shared, so the 1-minute load average is part of every result).
* `add_common_arguments(p, default_out=...)`: `--json PATH`, `--checkpoint DIR`, `--out PATH` (markdown).
  `--checkpoint` defaults to None, which `infer/model_bundle.py:load_bundle` resolves to the shipped
  `checkpoints/nano` (argparse must not import torch, so the default is resolved at run time).
* `write_report` / `save_plot`: atomic writes (utils/io.py), so a report is never half written.
  `write_with_plot`: the report of a harness bench (memory, drift): markdown, JSON with the checkpoint, and
  the plot beside the markdown.
* `psnr` / `ssim` on uint8 RGB frames `[..., H, W, 3]`, one value per frame. PSNR uses the [0, 1] range
  (identical frames give +inf). SSIM is the standard one of Wang et al. 2004: an 11x11 Gaussian window with
  sigma 1.5, K1 = 0.01, K2 = 0.03, computed per colour channel over the "valid" window positions (no
  padding) and averaged over channels and positions (what skimage's `structural_similarity(...,
  gaussian_weights=True, use_sample_covariance=False, channel_axis=-1, data_range=1)` reports).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SSIMConfig", "add_common_arguments", "machine", "machine_line", "psnr", "save_plot", "ssim",
           "write_report", "write_with_plot"]


@dataclass(frozen=True)
class SSIMConfig:
    window: int = 11  # Gaussian window side (Wang et al. 2004)
    sigma: float = 1.5  # Gaussian window std in pixels
    k1: float = 0.01  # luminance stabiliser: C1 = (k1 * data_range)^2
    k2: float = 0.03  # contrast stabiliser: C2 = (k2 * data_range)^2
    data_range: float = 1.0  # frames are compared in [0, 1]


SSIM = SSIMConfig()
UINT8_MAX = 255.0


########################################################################################################
# Machine


def _cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine() -> dict[str, Any]:
    """The computer a bench runs on. Keys (the union of what the bench reports read):

    cpu (model name), processor (platform.processor() or the architecture), cores == cpu_count (logical CPUs),
    platform, python, numpy, torch (version or None), threads (torch intra-op threads or None),
    load_avg_1min (1-minute load average when called; other processes compete for the cores).
    """
    try:
        import torch

        torch_version, threads = torch.__version__, torch.get_num_threads()
    except ImportError:  # the render / retrieval benches do not need torch
        torch_version, threads = None, None
    cores = os.cpu_count()
    return {"cpu": _cpu_model(), "processor": platform.processor() or platform.machine(), "cores": cores,
            "cpu_count": cores, "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch_version, "threads": threads,
            "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def machine_line(m: dict[str, Any]) -> str:
    """One markdown sentence describing `machine()`'s dict, for the top of a report."""
    load = "n/a" if m.get("load_avg_1min") is None else f"{m['load_avg_1min']:.1f}"
    torch_part = f", torch {m['torch']} (intra-op threads: {m['threads']})" if m.get("torch") else ""
    return (f"Machine: {m['cpu']}, {m['cores']} logical CPUs, {m['platform']}, "
            f"Python {m['python']}{torch_part}; 1-min load average {load} at the start (shared cores).")


########################################################################################################
# Options and reports


def add_common_arguments(p: argparse.ArgumentParser, *, default_out: str) -> None:
    """--json PATH, --checkpoint DIR, --out PATH: the options every bench shares."""
    p.add_argument("--json", default=None, metavar="PATH", help="also write all numbers as JSON to PATH")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="checkpoint folder (dit/, vae/, lightvae/); default: the shipped checkpoints/nano")
    p.add_argument("--out", default=default_out, metavar="PATH",
                   help=f"markdown report (default {default_out})")


def write_report(md_path: str | os.PathLike | None, markdown: str, json_path: str | os.PathLike | None,
                 data: dict[str, Any]) -> None:
    """Atomically write the markdown report (if md_path) and the JSON numbers (if json_path).

    Parent directories are created. The JSON has sorted keys (utils/io.atomic_write_json); numpy scalars and
    arrays are converted, +-inf / nan are written as JSON's Infinity / NaN (Python's json reads them back).
    """
    from worldstream.utils.io import atomic_write_json, atomic_write_text

    if md_path is not None:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_path, data)


def write_with_plot(res: dict[str, Any], md_path: str | os.PathLike | None,
                    json_path: str | os.PathLike | None, checkpoint: str, *,
                    to_markdown: Callable[[dict, str], str], plot: Callable[[dict, Path], None]) -> str:
    """A bench's report: `to_markdown(res, checkpoint)` to md_path, `{**res, "checkpoint": checkpoint}` to
    json_path (write_report; either may be None) and `plot(res, png)` to md_path's name with .png (only with a
    markdown path). Returns the markdown."""
    md = to_markdown(res, checkpoint)
    write_report(md_path, md, json_path, {**res, "checkpoint": checkpoint})
    if md_path is not None:
        plot(res, Path(md_path).with_suffix(".png"))
    return md


def save_plot(fig, png_path: str | os.PathLike) -> None:
    """Render a matplotlib figure to PNG (Agg, no display) and write it atomically; closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldstream.utils.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(png_path, buf.getvalue())


########################################################################################################
# Metrics


def _check_frames(a: np.ndarray, b: np.ndarray, name: str,
                  min_side: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    for label, x in (("a", a), ("b", b)):
        if x.dtype != np.uint8:
            raise ValueError(f"{name}: frames {label} must be uint8 [..., H, W, 3], got dtype {x.dtype}")
        if x.ndim < 3 or x.shape[-1] != 3:
            raise ValueError(f"{name}: frames {label} must have shape [..., H, W, 3], got {tuple(x.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ: a {tuple(a.shape)} vs b {tuple(b.shape)}")
    if min(a.shape[-3:-1]) < min_side:
        raise ValueError(f"{name}: frames of {a.shape[-3]}x{a.shape[-2]} pixels are smaller than the "
                         f"{min_side}x{min_side} window")
    return a, b


def _per_frame(x: np.ndarray) -> float | np.ndarray:
    return float(x) if x.ndim == 0 else x


def psnr(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """PSNR in dB of uint8 frames [..., H, W, 3] (range [0, 1]): a float for one frame, else an array of shape
    [...]. Identical frames give +inf."""
    a, b = _check_frames(a, b, "psnr")
    diff = (a.astype(np.float64) - b.astype(np.float64)) / UINT8_MAX  # [..., H, W, 3]
    mse = np.mean(diff * diff, axis=(-3, -2, -1))  # [...]
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(1.0 / mse)
    return _per_frame(out)


def _gaussian_taps(cfg: SSIMConfig) -> np.ndarray:
    x = np.arange(cfg.window, dtype=np.float64) - (cfg.window - 1) / 2
    g = np.exp(-(x * x) / (2 * cfg.sigma**2))
    return g / g.sum()


def _valid_filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 2-D window average over axes (-3, -2) of [..., H, W, C], valid positions only."""
    from scipy.ndimage import correlate1d

    r = len(taps) // 2
    y = correlate1d(x, taps, axis=-3, mode="constant")[..., r:x.shape[-3] - r, :, :]
    y = correlate1d(y, taps, axis=-2, mode="constant")[..., r:x.shape[-2] - r, :]
    return y  # [..., H - 2r, W - 2r, C]


def ssim(a: np.ndarray, b: np.ndarray, cfg: SSIMConfig = SSIM) -> float | np.ndarray:
    """Mean SSIM of uint8 frames [..., H, W, 3] (Gaussian 11x11 window, sigma 1.5, per channel, valid
    positions): a float for one frame, else an array of shape [...]. Identical frames give 1.0."""
    a, b = _check_frames(a, b, "ssim", min_side=cfg.window)
    x = a.astype(np.float64) / UINT8_MAX  # [..., H, W, 3]
    y = b.astype(np.float64) / UINT8_MAX
    taps = _gaussian_taps(cfg)
    c1, c2 = (cfg.k1 * cfg.data_range) ** 2, (cfg.k2 * cfg.data_range) ** 2
    # 1. local means, variances and covariance under the window
    mu_x, mu_y = _valid_filter(x, taps), _valid_filter(y, taps)
    var_x = _valid_filter(x * x, taps) - mu_x * mu_x
    var_y = _valid_filter(y * y, taps) - mu_y * mu_y
    cov = _valid_filter(x * y, taps) - mu_x * mu_y
    # 2. the SSIM map, then the mean over positions and channels
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _per_frame(s.mean(axis=(-3, -2, -1)))
