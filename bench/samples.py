"""The sample images a report shows: one test image per class, the same in every run on a split,
kept as one array for samples.npz (mixed sizes centred on cells of the largest)."""

from __future__ import annotations

import numpy as np

SAMPLE_SEED = 0
SAMPLE_MAX_SIDE = 96  # samples larger than this are kept (and shown) as their central crop
SAMPLE_SHAPES = ".shapes"  # samples.npz key of the samples' own sizes, when they differ


def sample_indices(labels: np.ndarray) -> np.ndarray:
    """One test image per class, the same ones in every run on the same split."""
    rng = np.random.default_rng(SAMPLE_SEED)
    return np.array([rng.choice(np.flatnonzero(labels == c)) for c in np.unique(labels)])


def sample_images(images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples as one (C, H, W) array for samples.npz: each image's central crop of at most
    SAMPLE_MAX_SIDE a side; mixed sizes centred on white cells of the largest, with their (C, 2)
    sizes."""
    crops = []
    for im in images:
        h, w = im.shape
        y, x = max(h - SAMPLE_MAX_SIDE, 0) // 2, max(w - SAMPLE_MAX_SIDE, 0) // 2
        crops.append(im[y : y + SAMPLE_MAX_SIDE, x : x + SAMPLE_MAX_SIDE])
    sizes = np.array([c.shape for c in crops], dtype=np.int64).reshape(-1, 2)
    if len(set(map(tuple, sizes))) <= 1:
        return np.stack(crops) if crops else np.zeros((0, 0, 0), np.uint8), None
    cell = sizes.max(axis=0)
    out = np.full((len(crops), *cell), 255, np.uint8)
    for k, c in enumerate(crops):
        y, x = (cell[0] - c.shape[0]) // 2, (cell[1] - c.shape[1]) // 2
        out[k, y : y + c.shape[0], x : x + c.shape[1]] = c
    return out, sizes


