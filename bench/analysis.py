"""The analyses the report shows: dominance, BD-rate, per-class extremes, t-SNE."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from bench.cache import atomic_write, default_cache_dir

TSNE_POINTS = 1000  # originals plus reconstructions in the one embedding
TSNE_RECIPE = {"pca_dims": 50, "max_iter": 500, "perplexity": 30.0}


def _embed(x: np.ndarray, seed: int, cache_dir: Path) -> np.ndarray:
    """t-SNE of uint8 rows, cached by content: the same images give the same embedding."""
    key = hashlib.sha256(x.tobytes() + repr((x.shape, seed, TSNE_RECIPE)).encode()).hexdigest()
    path = cache_dir / f"tsne-{key[:20]}.npy"
    try:
        return np.load(path)
    except (OSError, ValueError):
        pass
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    dims = min(TSNE_RECIPE["pca_dims"], *x.shape)
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x / 255.0)
    xy = TSNE(n_components=2, init="pca", random_state=seed, max_iter=TSNE_RECIPE["max_iter"],
              perplexity=min(TSNE_RECIPE["perplexity"], (len(x) - 1) / 3)).fit_transform(reduced)
    try:
        atomic_write(path, lambda f: np.save(f, xy))
    except OSError:
        pass  # an unwritable cache only costs the next run this embedding again
    return xy


def dominated_by(points: pd.DataFrame, rate: str = "bytes_mean", quality: str = "psnr_db") -> pd.Series:
    """For each row, a codec at least as small and at least as good (strictly better in one), or ''."""
    r, q, names = points[rate].to_numpy(), points[quality].to_numpy(), points["codec"].to_numpy()
    out = []
    for i in range(len(points)):
        better = (r <= r[i]) & (q >= q[i]) & ((r < r[i]) | (q > q[i]))
        better[i] = False
        if better.any():
            # The most convincing witness: the smallest of those that dominate.
            j = np.flatnonzero(better)[np.argmin(r[better])]
            out.append(str(names[j]))
        else:
            out.append("")
    return pd.Series(out, index=points.index)


def bd_rate(rate_a, psnr_a, rate_b, psnr_b) -> float:
    """Bjøntegaard delta rate of B against A in percent (negative: B needs fewer bits).

    log-rate is fitted as a polynomial of PSNR (cubic with 4+ points, lower with fewer) and
    integrated over the PSNR range both curves cover. NaN when they do not overlap.
    """
    a = _curve(rate_a, psnr_a)
    b = _curve(rate_b, psnr_b)
    if a is None or b is None:
        return float("nan")
    lo, hi = max(a[1].min(), b[1].min()), min(a[1].max(), b[1].max())
    if not hi > lo:
        return float("nan")
    integrals = []
    for log_rate, psnr in (a, b):
        deg = min(3, len(psnr) - 1)
        poly = np.polyint(np.polyfit(psnr, log_rate, deg))
        integrals.append((np.polyval(poly, hi) - np.polyval(poly, lo)) / (hi - lo))
    return float((np.exp(integrals[1] - integrals[0]) - 1) * 100)


def _curve(rate, psnr):
    rate, psnr = np.asarray(rate, float), np.asarray(psnr, float)
    ok = np.isfinite(rate) & np.isfinite(psnr) & (rate > 0)
    if ok.sum() < 2:
        return None
    return np.log(rate[ok]), psnr[ok]


def class_extremes(per_class: pd.DataFrame, metric: str = "mse",
                   higher_is_better: bool = False) -> pd.DataFrame:
    """Per codec, the best and the worst class by `metric` ('' when all classes tie)."""
    rows = []
    for codec, g in per_class.groupby("codec", sort=False):
        g = g.dropna(subset=[metric])
        if g.empty or g[metric].nunique() == 1:
            rows.append({"codec": codec, "best_class": "", "worst_class": ""})
            continue
        low, high = g.loc[g[metric].idxmin(), "class"], g.loc[g[metric].idxmax(), "class"]
        best, worst = (high, low) if higher_is_better else (low, high)
        rows.append({"codec": codec, "best_class": best, "worst_class": worst})
    return pd.DataFrame(rows)


def tsne_points(originals: np.ndarray, labels: np.ndarray, decoded: dict[str, np.ndarray],
                seed: int = 0, cache_dir: Path | None = None) -> pd.DataFrame:
    """One joint 2-D t-SNE of a subsample of originals and every codec's reconstructions.

    Joint, so the originals sit at the same place in every codec's panel; the subsample keeps
    the embedding at about TSNE_POINTS points.
    """
    rng = np.random.default_rng(seed)
    per_side = max(TSNE_POINTS // (1 + len(decoded)), 100)
    pick = np.sort(rng.choice(len(originals), min(per_side, len(originals)), replace=False))
    groups = [("original", "", originals[pick])]
    groups += [("reconstruction", codec, recon[pick]) for codec, recon in decoded.items()]
    x = np.concatenate([g[2] for g in groups]).reshape(len(groups) * len(pick), -1)
    xy = _embed(x, seed, Path(cache_dir or default_cache_dir()))
    n = len(pick)
    return pd.DataFrame({
        "codec": np.repeat([g[1] for g in groups], n),
        "kind": np.repeat([g[0] for g in groups], n),
        "index": np.tile(pick, len(groups)), "label": np.tile(labels[pick], len(groups)),
        "x": xy[:, 0], "y": xy[:, 1],
    })
