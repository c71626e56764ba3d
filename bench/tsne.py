"""The t-SNE of originals against reconstructions (the published experiment's figure): one joint
embedding, cached by content and checked against its digest before it is used."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bench.cache import atomic_write, default_cache_dir, digest
from bench.codec import stderr_line

TSNE_POINTS = 1000  # originals plus reconstructions in the one embedding
TSNE_RECIPE = {"pca_dims": 50, "max_iter": 500, "perplexity": 30.0}


def _load(path: Path, log: Callable[[str], None]) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            xy, stored = npz["xy"], str(npz["digest"])
        if stored != digest([xy.tobytes()]):
            raise ValueError("its points do not match their digest: the file was damaged")
        return xy
    except Exception as exc:  # any unreadable file is recomputed, never trusted
        log(f"t-SNE cache {path} is corrupt ({str(exc)[:120]}); recomputing it")
        return None


def _embed(x: np.ndarray, seed: int, cache_dir: Path, log: Callable[[str], None]) -> np.ndarray:
    """t-SNE of uint8 rows, cached by content: the same images give the same embedding."""
    key = hashlib.sha256(x.tobytes() + repr((x.shape, seed, TSNE_RECIPE)).encode()).hexdigest()
    path = cache_dir / f"tsne-{key[:20]}.npz"
    xy = _load(path, log)
    if xy is not None:
        return xy
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    dims = min(TSNE_RECIPE["pca_dims"], *x.shape)
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x / 255.0)
    xy = TSNE(n_components=2, init="pca", random_state=seed, max_iter=TSNE_RECIPE["max_iter"],
              perplexity=min(TSNE_RECIPE["perplexity"], (len(x) - 1) / 3)).fit_transform(reduced)
    buffer = io.BytesIO()
    np.savez(buffer, xy=xy, digest=digest([xy.tobytes()]))
    try:
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
    except OSError:
        pass  # an unwritable cache only costs the next run this embedding again
    return xy


def tsne_points(originals: np.ndarray, labels: np.ndarray, decoded: dict[str, np.ndarray],
                seed: int = 0, cache_dir: Path | None = None,
                log: Callable[[str], None] = stderr_line) -> pd.DataFrame:
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
    xy = _embed(x, seed, Path(cache_dir or default_cache_dir()), log)
    n = len(pick)
    return pd.DataFrame({
        "codec": np.repeat([g[1] for g in groups], n),
        "kind": np.repeat([g[0] for g in groups], n),
        "index": np.tile(pick, len(groups)), "label": np.tile(labels[pick], len(groups)),
        "x": xy[:, 0], "y": xy[:, 1],
    })
