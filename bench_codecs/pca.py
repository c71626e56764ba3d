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


# Up to 64x64 the basis comes from the pixel covariance (128 MiB at that size); above, from an SVD
# of the training images, whose cost grows with their number, not with pixels squared.
COVARIANCE_MAX_PIXELS = 64 * 64
_EIGEN_CACHE: dict[str, tuple] = {}  # one decomposition serves every level of a family


def _eigen(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    key = hashlib.sha256(images.tobytes()).hexdigest() + str(images.shape)
    if key not in _EIGEN_CACHE:
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0
        mean = x.mean(axis=0)
        if x.shape[1] <= max(len(x), COVARIANCE_MAX_PIXELS):
            eigval, eigvec = np.linalg.eigh(np.cov(x - mean, rowvar=False))
        else:  # large images, fewer of them than pixels: the pixel covariance would not fit
            _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
            eigval, eigvec = s**2 / max(len(x) - 1, 1), vt.T
        _EIGEN_CACHE.clear()
        _EIGEN_CACHE[key] = (mean, eigval, eigvec)
    return _EIGEN_CACHE[key]


def fit_pca(images: np.ndarray, k: int) -> PCABasis:
    images = np.ascontiguousarray(images)
    if k > images.shape[1] * images.shape[2]:
        raise CodecError(f"PCA with {k} components needs images of at least {k} pixels")
    if k > len(images) and images.shape[1] * images.shape[2] > COVARIANCE_MAX_PIXELS:
        raise CodecError(f"PCA with {k} components needs at least {k} training images of "
                         f"{images.shape[1]}x{images.shape[2]}, got {len(images)}")
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
        self.shape: tuple[int, int] | None = None
        self.library = f"numpy {np.__version__}"

    def fit(self, data: TrainingData) -> PCACodec:
        images = check_images(data.train)
        self.basis, self.shape = fit_pca(images, self.latent), images.shape[1:]
        return self  # other sizes are coded in tiles of this one (bench_codecs.tiles)

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
        canvases = tiles.split(images, self.shape)
        x = canvases.reshape(len(canvases), -1).astype(np.float32) * np.float32(1 / 255)
        c = (x - b.mean) @ b.components.T
        u = np.rint((c / b.scale + 0.5) * 255)
        return tiles.pack(np.clip(u, 0, 255).astype(np.uint8), images.shape[1:], self.shape, self.shape)

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        b = self._require()
        rows, shape = tiles.unpack(payloads, self.latent, self.shape, self.shape, self.name)
        u = rows.astype(np.float32) * np.float32(1 / 255)
        x = ((u - 0.5) * b.scale) @ b.components + b.mean
        out = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        return tiles.join(out.reshape(len(rows), *self.shape), shape)
