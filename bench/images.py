"""Batches of images of one size or of mixed sizes, and the rule that brings training images to one.

A batch is an (N, H, W) uint8 array when every image has one size, and an (N,) object array of
2-D uint8 arrays when sizes differ. Codecs only ever see the first kind: a mixed batch is coded
shape group by shape group (`groups`, `stack`), and learned codecs train on `to_one_size`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

# The training-size rule (to_one_size): tiles of the split's most common size.
TILE_SEED = 2  # the grid offsets and the choice among tiles; the validation split uses TILE_SEED + 1
MAX_TILES_PER_IMAGE = 16  # so that a few large images do not make up most of the training data


def batch(images: Sequence[np.ndarray]) -> np.ndarray:
    """(N, H, W) uint8 when the images share one size, else an (N,) object array of them."""
    images = [np.asarray(im, dtype=np.uint8) for im in images]
    if images and len({im.shape for im in images}) == 1:
        return np.stack(images)
    out = np.empty(len(images), dtype=object)
    for i, im in enumerate(images):  # item by item: numpy would broadcast equal shapes
        out[i] = im
    return out


def normalize(images: np.ndarray) -> np.ndarray:
    """A selection of a mixed batch whose images turn out to share one size, stacked."""
    if is_mixed(images) and len(images) and len(set(map(np.shape, images))) == 1:
        return np.stack(list(images))
    return images


def is_mixed(images: np.ndarray) -> bool:
    return images.dtype == object


def shapes(images: np.ndarray) -> list[tuple[int, int]]:
    """Each image's (H, W)."""
    if is_mixed(images):
        return [tuple(im.shape) for im in images]
    return [tuple(images.shape[1:])] * len(images)


def pixels(images: np.ndarray) -> np.ndarray:
    """Each image's pixel count, int64."""
    if is_mixed(images):
        return np.array([im.size for im in images], dtype=np.int64)
    return np.full(len(images), images.shape[1] * images.shape[2], dtype=np.int64)


def distinct_shapes(images: np.ndarray) -> list[tuple[int, int]]:
    return sorted(set(shapes(images)))


def groups(images: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
    """(shape, indices) for each size in the batch, sizes in order, indices ascending."""
    if not is_mixed(images):
        return [(tuple(images.shape[1:]), np.arange(len(images)))] if len(images) else []
    each = shapes(images)
    return [(s, np.array([i for i, t in enumerate(each) if t == s], dtype=np.int64))
            for s in sorted(set(each))]


def stack(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The images at `indices`, which share one size, as one C-contiguous (n, H, W) array."""
    if not is_mixed(images):
        return np.ascontiguousarray(images[indices])
    return np.stack([images[i] for i in indices])


def take(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A selection, as a uniform array when the selected images share one size."""
    return normalize(images[np.asarray(indices, dtype=np.int64)])


def assemble(parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Reconstructions of shape groups, (indices, (k, H, W) images), back in the original order."""
    if len(parts) == 1 and len(parts[0][0]) == n:
        return parts[0][1]
    out = np.empty(n, dtype=object)
    for indices, images in parts:
        for i, im in zip(indices, images):
            out[i] = im
    return out


def update_digest(h, images: np.ndarray) -> None:
    """Feed a batch's sizes and pixels to a hashlib object (an object array's own bytes would be
    pointers)."""
    if not is_mixed(images):
        h.update(np.ascontiguousarray(images).tobytes())
        return
    for im in images:
        h.update(repr(im.shape).encode())
        h.update(np.ascontiguousarray(im).tobytes())


def most_common_shape(images: np.ndarray) -> tuple[int, int]:
    """The size most images have; ties go to the smaller area, then the smaller height."""
    counts = Counter(shapes(images))
    return min(counts, key=lambda s: (-counts[s], s[0] * s[1], s))


def describe(images: np.ndarray, limit: int = 6) -> str:
    """'28x28', or '20x20 (3), 28x28 (5), 64x48 (2)' for a mixed batch."""
    counts = Counter(shapes(images))
    if len(counts) == 1:
        (h, w), = counts
        return f"{h}x{w}"
    items = [f"{h}x{w} ({n:,})" for (h, w), n in sorted(counts.items())]
    more = f" and {len(items) - limit} more sizes" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def to_one_size(images: np.ndarray, shape: tuple[int, int], seed: int) -> np.ndarray:
    """The training-size rule: every image cut into non-overlapping tiles of `shape` on a grid at a
    seeded offset (at most MAX_TILES_PER_IMAGE per image, chosen by the seed), an image shorter than
    `shape` in a side first padded to it by repeating its edge pixels (centred). A batch that
    already has that one size is returned as it is."""
    th, tw = shape
    if not is_mixed(images) and tuple(images.shape[1:]) == (th, tw):
        return images
    rng = np.random.default_rng(seed)
    tiles = []
    for im in images:
        h, w = im.shape
        ph, pw = max(th - h, 0), max(tw - w, 0)
        if ph or pw:
            im = np.pad(im, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="edge")
            h, w = im.shape
        ny, nx = h // th, w // tw
        oy, ox = int(rng.integers(0, h - ny * th + 1)), int(rng.integers(0, w - nx * tw + 1))
        grid = [(oy + y * th, ox + x * tw) for y in range(ny) for x in range(nx)]
        if len(grid) > MAX_TILES_PER_IMAGE:
            keep = np.sort(rng.choice(len(grid), MAX_TILES_PER_IMAGE, replace=False))
            grid = [grid[k] for k in keep]
        tiles += [im[y : y + th, x : x + tw] for y, x in grid]
    if not tiles:
        return np.zeros((0, th, tw), np.uint8)
    return np.ascontiguousarray(np.stack(tiles), dtype=np.uint8)
