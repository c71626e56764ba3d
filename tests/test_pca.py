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


def test_large_images_take_the_svd_and_agree_with_the_covariance(monkeypatch):
    """Above 64x64 the pixel covariance is not formed (256x256 would need 32 GiB); the SVD gives
    the same subspace and variances."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 12), dtype=np.uint8)
    by_covariance = pca.fit_pca(images, 8)
    pca._EIGEN_CACHE.clear()
    monkeypatch.setattr(pca, "COVARIANCE_MAX_PIXELS", 10)  # 144 pixels > 40 images > 10
    by_svd = pca.fit_pca(images, 8)
    np.testing.assert_allclose(by_svd.std, by_covariance.std, rtol=1e-4)
    overlap = np.abs(by_svd.components @ by_covariance.components.T)
    np.testing.assert_allclose(overlap, np.eye(8), atol=1e-3)  # the same axes, signs aside
    with pytest.raises(CodecError, match="at least 41 training images of 12x12, got 40"):
        pca.fit_pca(images, 41)
    pca._EIGEN_CACHE.clear()


def test_a_256x256_folder_trains_pca_in_little_memory():
    images = np.random.default_rng(1).integers(0, 256, (50, 256, 256), dtype=np.uint8)
    codec = get_codec("pca95").fit(training(images, validation=images[:5]))
    decoded = codec.decode(codec.encode(images[:3]))
    assert decoded.shape == (3, 256, 256)
