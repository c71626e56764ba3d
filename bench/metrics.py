"""Per-image quality metrics on uint8 batches of one size, and their aggregation per codec and
class. A run whose images mix sizes measures each size's batch and concatenates the rows: every
metric is per image, so rows of different sizes aggregate like any others."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.ndimage import uniform_filter

INK_THRESHOLD = 127  # a pixel is ink when its value is above half intensity (> 127 of 255)
SSIM_WINDOW = 7  # scikit-image's default; fits 28x28 with room to spare


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error per image, pixels scaled to [0, 1]."""
    d = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return (d * d).mean(axis=(1, 2))


def psnr_from_mse(m: np.ndarray | float) -> np.ndarray:
    """PSNR in dB for pixels in [0, 1]; a perfect reconstruction is +inf, never an error."""
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(m > 0, -10.0 * np.log10(np.where(m > 0, m, 1.0)), np.inf)


def ssim(a: np.ndarray, b: np.ndarray, win: int = SSIM_WINDOW) -> np.ndarray:
    """SSIM per image, identical to skimage.metrics.structural_similarity(data_range=255).

    Computed for the whole batch at once: a per-image call costs more than the arithmetic.
    """
    win = min(win, *(s - 1 + s % 2 for s in a.shape[1:]))  # the largest odd window that fits
    if win < 3:
        return np.where(np.all(a == b, axis=(1, 2)), 1.0, np.nan)
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cov_norm = win * win / (win * win - 1)  # sample covariance, as scikit-image

    def filt(z):
        return uniform_filter(z, size=(1, win, win), mode="reflect")

    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return s[:, pad : s.shape[1] - pad, pad : s.shape[2] - pad].mean(axis=(1, 2))


def ink(images: np.ndarray) -> np.ndarray:
    """Ink pixels per image: pixels above INK_THRESHOLD."""
    return (images > INK_THRESHOLD).sum(axis=(1, 2))


def per_image(original: np.ndarray, decoded: np.ndarray, sizes: np.ndarray,
              model_bits: np.ndarray | None = None) -> pd.DataFrame:
    """`model_bits`: the code length a codec's probability model predicts (NaN when it has none)."""
    height, width = original.shape[1:]
    pixels = height * width
    m = mse(original, decoded)
    n_ink = ink(original)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_ink = np.where(n_ink > 0, m * 100.0 / n_ink, np.nan)
    return pd.DataFrame({
        "bytes": sizes.astype(np.int64),
        "model_bytes": np.full(len(sizes), np.nan) if model_bits is None else model_bits / 8.0,
        "bpp": sizes * 8.0 / pixels,
        "mse": m,
        "psnr_db": psnr_from_mse(m),
        "ssim": ssim(original, decoded),
        "ink": n_ink,
        "mse_per_100_ink": per_ink,
        "height": np.full(len(sizes), height, dtype=np.int64),
        "width": np.full(len(sizes), width, dtype=np.int64),
    })


def aggregate(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Means with spreads. PSNR is that of the mean MSE (finite unless every image is exact)."""
    g = rows.groupby(by, sort=False)
    out = g.agg(
        images=("mse", "size"),
        bytes_mean=("bytes", "mean"),
        bytes_std=("bytes", "std"),
        model_bytes_mean=("model_bytes", "mean"),
        bpp=("bpp", "mean"),
        mse=("mse", "mean"),
        mse_std=("mse", "std"),
        ssim=("ssim", "mean"),
        ssim_std=("ssim", "std"),
        ink_mean=("ink", "mean"),
        mse_per_100_ink=("mse_per_100_ink", "mean"),
    )
    out.insert(out.columns.get_loc("mse_std") + 1, "psnr_db", psnr_from_mse(out["mse"].to_numpy()))
    finite = rows.assign(psnr_db=rows["psnr_db"].where(np.isfinite(rows["psnr_db"])))
    out.insert(out.columns.get_loc("psnr_db") + 1, "psnr_std",
               finite.groupby(by, sort=False)["psnr_db"].std())
    return out.reset_index()
