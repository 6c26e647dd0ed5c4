"""eval/benchmarks/common.py: PSNR / SSIM against hand-computed values, shape errors, reports, machine()."""

import json
import math

import numpy as np
import pytest

from worldstream.eval.benchmarks.common import (
    SSIM,
    add_common_arguments,
    machine,
    psnr,
    save_plot,
    ssim,
    write_report,
)


def _const(value: int, shape=(24, 32, 3)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def _ssim_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    """Direct definition: every valid 11x11 window, Gaussian weights, per channel, then the mean."""
    x, y = a.astype(np.float64) / 255, b.astype(np.float64) / 255
    r = SSIM.window // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * SSIM.sigma**2))
    w /= w.sum()
    c1, c2 = SSIM.k1**2, SSIM.k2**2
    vals = []
    for c in range(3):
        for i in range(r, x.shape[0] - r):
            for j in range(r, x.shape[1] - r):
                px, py = x[i - r:i + r + 1, j - r:j + r + 1, c], y[i - r:i + r + 1, j - r:j + r + 1, c]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_hand_computed():
    # constant offset of 10 grey levels: MSE = (10/255)^2 -> 20 log10(25.5)
    assert psnr(_const(0), _const(10)) == pytest.approx(20 * math.log10(25.5), abs=1e-9)
    # half the pixels off by the full range: MSE = 0.5 -> 10 log10(2)
    a, b = _const(0), _const(0)
    b[:12] = 255
    assert psnr(a, b) == pytest.approx(10 * math.log10(2), abs=1e-9)


def test_psnr_identical_is_inf_and_per_frame():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 1] = np.clip(b[0, 1].astype(int) + 3, 0, 255)
    out = psnr(a, b)
    assert out.shape == (2, 3)
    assert np.isinf(out[1]).all() and np.isinf(out[0, [0, 2]]).all()
    assert np.isfinite(out[0, 1]) and out[0, 1] > 38  # ~3 levels off: about 20 log10(255/3) = 38.6 dB
    assert psnr(a[0, 0], a[0, 0]) == float("inf") and isinstance(psnr(a[0, 0], b[0, 0]), float)


def test_psnr_known_noise_level():
    rng = np.random.default_rng(1)
    a = _const(128, (4, 64, 64, 3))
    sigma = 5.0
    b = np.clip(np.round(128 + rng.normal(0, sigma, a.shape)), 0, 255).astype(np.uint8)
    # rounding adds 1/12 level^2 of variance
    expect = 10 * math.log10(255**2 / (sigma**2 + 1 / 12))
    assert np.allclose(psnr(a, b), expect, atol=0.15)


def test_ssim_identical_is_one_and_constant_images_closed_form():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    assert np.array_equal(ssim(a, a), np.ones(2))
    # two flat images: variances and covariance vanish -> SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1)
    mx, my, c1 = 100 / 255, 150 / 255, SSIM.k1**2
    assert ssim(_const(100), _const(150)) == pytest.approx((2 * mx * my + c1) / (mx**2 + my**2 + c1), abs=1e-12)


def test_ssim_matches_direct_definition():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (14, 17, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_ssim_brute_force(a, b), abs=1e-10)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)  # symmetric


def test_ssim_falls_with_noise():
    rng = np.random.default_rng(4)
    a = _const(128, (64, 64, 3))
    values = [ssim(a, np.clip(np.round(128 + rng.normal(0, s, a.shape)), 0, 255).astype(np.uint8))
              for s in (1.0, 5.0, 20.0)]
    assert values[0] > values[1] > values[2]
    # flat reference: SSIM ~ C2 / (local noise variance + C2); the window sees (1 - sum w^2) of sigma^2
    var = (5.0 / 255) ** 2 * (1 - 1 / (4 * math.pi * SSIM.sigma**2))
    assert values[1] == pytest.approx(SSIM.k2**2 / (var + SSIM.k2**2), abs=0.05)


@pytest.mark.parametrize("a_shape,b_shape,match", [
    ((16, 16, 3), (16, 16, 4), "shape"),
    ((16, 16, 3), (16, 17, 3), "shapes differ"),
    ((16, 16), (16, 16), r"\[\.\.\., H, W, 3\]"),
])
def test_bad_shapes(a_shape, b_shape, match):
    a, b = np.zeros(a_shape, np.uint8), np.zeros(b_shape, np.uint8)
    for fn in (psnr, ssim):
        with pytest.raises(ValueError, match=match):
            fn(a, b)


def test_bad_dtype_and_too_small_for_window():
    with pytest.raises(ValueError, match="uint8"):
        psnr(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((8, 30, 3), np.uint8), np.zeros((8, 30, 3), np.uint8))


def test_machine_and_reports(tmp_path):
    import argparse

    import matplotlib.figure

    m = machine()
    for key in ("cpu", "processor", "cores", "cpu_count", "platform", "python", "numpy", "torch", "threads",
                "load_avg_1min"):
        assert key in m
    p = argparse.ArgumentParser()
    add_common_arguments(p, default_out="docs/results/x.md")
    args = p.parse_args([])
    assert (args.json, args.checkpoint, args.out) == (None, None, "docs/results/x.md")
    md, js = tmp_path / "sub" / "r.md", tmp_path / "r.json"
    write_report(md, "# hi", js, {"psnr": np.float64(float("inf")), "m": m})
    assert md.read_text() == "# hi\n"
    assert json.loads(js.read_text())["psnr"] == float("inf")
    fig = matplotlib.figure.Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    save_plot(fig, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp-*"))
