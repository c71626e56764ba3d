"""PCA controls: the same latent sizes and one-byte quantization as the autoencoders, linear.

Coefficient i is sent as round(255 * (0.5 + c_i / (2 * SPAN * std_i))), clipped to 0..255: a
fixed mapping calibrated by each component's standard deviation on the training split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.codec import Codec, CodecError, Payloads, TrainingData, check_images
from bench_codecs import tiles

SPAN = 4.0  # standard deviations on each side of zero that the 256 levels cover


@dataclass(frozen=True)
class PCABasis:
    mean: np.ndarray  # (P,) pixels in [0, 1]
    components: np.ndarray  # (k, P), orthonormal rows, strongest first
    std: np.ndarray  # (k,) standard deviation of each coefficient on the training split

    @property
    def scale(self) -> np.ndarray:
        """Coefficient units per latent unit: latent u in [0, 1] <-> c = (u - 0.5) * scale."""
        return 2 * SPAN * self.std


_EIGEN_CACHE: dict[str, tuple] = {}  # one decomposition serves every level of a family
# Training tiles as float64 up to this size at once (full MNIST: 339 MB), the whole path peaking
# at about three times it; above it the covariance is summed in parts (500 photographs of
# 1024x1024 are 4 GiB of float64 tiles).
WHOLE_BYTES = 512 << 20
MAX_PIXELS = tiles.TILED_ABOVE**2  # the largest tile (bench_codecs.tiles): a covariance of 128 MiB


def _eigen(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean and the eigen-decomposition of the pixel covariance of (contiguous) tiles."""
    key = hashlib.sha256(images).hexdigest() + str(images.shape)
    if key not in _EIGEN_CACHE:
        flat = images.reshape(len(images), -1)
        if flat.size * 8 <= WHOLE_BYTES:
            x = flat.astype(np.float64) / 255.0
            mean = x.mean(axis=0)
            cov = np.cov(x - mean, rowvar=False)
        else:
            mean = flat.mean(axis=0, dtype=np.float64) / 255.0
            cov = np.zeros((flat.shape[1],) * 2)
            rows = max(1, WHOLE_BYTES // (8 * flat.shape[1]))
            for s in range(0, len(flat), rows):
                d = flat[s : s + rows].astype(np.float64) / 255.0 - mean
                cov += d.T @ d
            cov /= max(len(flat) - 1, 1)
        eigval, eigvec = np.linalg.eigh(cov)
        _EIGEN_CACHE.clear()
        _EIGEN_CACHE[key] = (mean, eigval, eigvec)
    return _EIGEN_CACHE[key]


def fit_pca(images: np.ndarray, k: int) -> PCABasis:
    images = np.ascontiguousarray(images)
    if images.shape[1] * images.shape[2] > MAX_PIXELS:
        raise ValueError(f"fit_pca takes tiles of at most {MAX_PIXELS} pixels (bench_codecs.tiles), "
                         f"not {images.shape[1]}x{images.shape[2]}")
    if k > images.shape[1] * images.shape[2]:
        raise CodecError(f"{k} latent values need images (or tiles of them) of at least {k} pixels; "
                         f"these are {images.shape[1]}x{images.shape[2]}")
    mean, eigval, eigvec = _eigen(images)
    order = np.argsort(eigval)[::-1][:k]
    std = np.sqrt(np.maximum(eigval[order], 1e-12))
    return PCABasis(mean.astype(np.float32), eigvec[:, order].T.astype(np.float32),
                    std.astype(np.float32))


class PCACodec(Codec):
    precision = "fp32"

    def __init__(self, latent: int):
        self.name = f"pca(latent={latent})"
        self.latent = latent
        self.basis: PCABasis | None = None
        self.shape: tuple[int, int] | None = None  # the training size
        self.tile: tuple[int, int] | None = None  # the size the basis sees (bench_codecs.tiles)
        self.library = f"numpy {np.__version__}"

    def fit(self, data: TrainingData) -> PCACodec:
        images = check_images(data.train)
        self.shape, self.tile = images.shape[1:], tiles.tile_for(images.shape[1:])
        self.basis = fit_pca(tiles.split(images, self.tile), self.latent)
        return self  # every size is coded in tiles of self.tile (bench_codecs.tiles)

    @property
    def side_info_bytes(self) -> int:
        b = self._require()
        return 4 * (b.mean.size + b.components.size + b.std.size)

    def header_bytes(self, shape: tuple[int, int]) -> int:
        return 0 if tuple(shape) == tuple(self.shape) else tiles.HEADER

    def _require(self) -> PCABasis:
        if self.basis is None:
            raise CodecError(f"{self.name} is not fitted: call .fit(training_data) first")
        return self.basis

    def encode(self, images: np.ndarray) -> Payloads:
        b = self._require()
        images = check_images(images, codec=self.name)
        canvases = tiles.split(images, self.tile)
        x = canvases.reshape(len(canvases), -1).astype(np.float32) * np.float32(1 / 255)
        c = (x - b.mean) @ b.components.T
        u = np.rint((c / b.scale + 0.5) * 255)
        return tiles.pack(np.clip(u, 0, 255).astype(np.uint8), images.shape[1:], self.shape, self.tile)

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        b = self._require()
        rows, shape = tiles.unpack(payloads, self.latent, self.shape, self.tile, self.name)
        u = rows.astype(np.float32) * np.float32(1 / 255)
        x = ((u - 0.5) * b.scale) @ b.components + b.mean
        out = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        return tiles.join(out.reshape(len(rows), *self.tile), shape)
