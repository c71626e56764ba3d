import numpy as np
import pytest

from bench.codec import CodecError, PayloadError
from bench.metrics import mse
from bench.registry import get_codec
from bench_codecs import pca
from bench_codecs.pca import SPAN, fit_pca
from conftest import training


def test_payload_is_latent_bytes_and_quantization_costs_little(mnist5k):
    codec = get_codec("pca95").fit(training(mnist5k.train.images))
    test = mnist5k.test.images
    payloads = codec.encode(test)
    assert payloads.sizes.tolist() == [39] * len(test)
    quantized = mse(test, codec.decode(payloads)).mean()
    b = codec.basis
    x = test.reshape(len(test), -1) / 255.0
    exact = ((x - b.mean) @ b.components.T @ b.components + b.mean)
    exact = np.clip(np.rint(exact * 255), 0, 255).reshape(test.shape).astype(np.uint8)
    # One byte per coefficient over +-4 std: under 3 % more error than unquantized PCA.
    assert quantized <= mse(test, exact).mean() * 1.03


def test_components_are_orthonormal_and_ordered(mnist5k):
    b = fit_pca(mnist5k.train.images, 78)
    np.testing.assert_allclose(b.components @ b.components.T, np.eye(78), atol=1e-5)
    assert np.all(np.diff(b.std) <= 0)
    assert np.allclose(b.scale, 2 * SPAN * b.std)


def test_more_components_less_error(mnist5k):
    test = mnist5k.test.images[:300]
    errors = []
    for name in ("pca99", "pca95", "pca90", "pca50"):
        codec = get_codec(name).fit(training(mnist5k.train.images))
        errors.append(mse(test, codec.decode(codec.encode(test))).mean())
    assert errors == sorted(errors, reverse=True)


def test_unfitted_and_wrong_payloads_are_refused(digits):
    with pytest.raises(CodecError, match="not fitted"):
        get_codec("pca95").encode(digits)
    codec = get_codec("pca99").fit(training(digits))
    with pytest.raises(PayloadError, match="payload 0 has 9 bytes: neither 8 .*nor the 11"):
        codec.decode([bytes(9)])
    with pytest.raises(PayloadError, match="payload 1 has 9 bytes; its payloads have exactly 8"):
        codec.decode([bytes(8), bytes(9)])


def test_many_tiles_sum_their_covariance_in_parts_to_the_same_basis(monkeypatch):
    images = np.random.default_rng(2).integers(0, 256, (300, 12, 12), dtype=np.uint8)
    whole = pca.fit_pca(images, 20)
    pca._EIGEN_CACHE.clear()
    monkeypatch.setattr(pca, "WHOLE_BYTES", 8 * 144 * 7)  # parts of 7 tiles
    parts = pca.fit_pca(images, 20)
    pca._EIGEN_CACHE.clear()
    np.testing.assert_allclose(parts.std, whole.std, rtol=1e-6)
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-6)
    overlap = np.abs(parts.components @ whole.components.T)
    np.testing.assert_allclose(overlap, np.eye(20), atol=1e-4)  # the same axes, signs aside


def test_images_larger_than_64x64_are_fitted_and_coded_in_32x32_tiles():
    """Fewer 256x256 training images than components is fine (the basis sees their 32x32 tiles);
    the basis and the payloads grow with the tile, not the image."""
    rng = np.random.default_rng(1)
    images = np.cumsum(rng.integers(-8, 9, (20, 256, 256)), axis=2).clip(0, 255).astype(np.uint8)
    codec = get_codec("pca50").fit(training(images, validation=images[:5]))
    assert codec.tile == (32, 32) and codec.side_info_bytes == 4 * (1024 + 392 * 1024 + 392)
    payloads = codec.encode(images[:3])
    assert (payloads.sizes == 64 * 392).all() and codec.header_bytes((256, 256)) == 0
    decoded = codec.decode(payloads)
    assert decoded.shape == (3, 256, 256) and mse(images[:3], decoded).max() < 1e-4  # 40 dB
    corner = codec.encode(np.ascontiguousarray(images[:3, :32, :32]))  # another size: a header
    assert (corner.sizes == 3 + 392).all()
    assert np.array_equal(codec.decode(corner), decoded[:, :32, :32])
    odd = codec.encode(np.ascontiguousarray(images[:2, :100, :70]))
    assert (odd.sizes == 3 + 4 * 3 * 392).all() and codec.decode(odd).shape == (2, 100, 70)
    with pytest.raises(PayloadError, match="neither 25088 .an image of 256x256. nor"):
        codec.decode([bytes(100)])
    with pytest.raises(ValueError, match="tiles of at most 4096 pixels .* not 65x64"):
        fit_pca(images[:2, :65, :64], 8)  # a whole-image covariance would be (pixels)² floats
