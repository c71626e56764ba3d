import numpy as np
import pandas as pd
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from bench import metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_mse_and_psnr_match_scikit_image(pair):
    a, b = pair
    m = metrics.mse(a, b)
    for i in range(len(a)):
        assert m[i] == pytest.approx(mean_squared_error(a[i] / 255, b[i] / 255), rel=1e-12)
        assert metrics.psnr_from_mse(m[i]) == pytest.approx(
            peak_signal_noise_ratio(a[i], b[i], data_range=255), rel=1e-9)


def test_ssim_matches_scikit_image(pair):
    a, b = pair
    ours = metrics.ssim(a, b)
    theirs = [structural_similarity(x, y, data_range=255) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_ssim_on_small_images_uses_a_window_that_fits():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 5, 6), dtype=np.uint8)
    b = a // 2
    theirs = [structural_similarity(x, y, data_range=255, win_size=5) for x, y in zip(a, b)]
    np.testing.assert_allclose(metrics.ssim(a, b), theirs, rtol=1e-9)


def test_exact_reconstruction_is_infinite_psnr_without_warnings(pair):
    a, _ = pair
    with np.errstate(all="raise"):
        assert np.isinf(metrics.psnr_from_mse(metrics.mse(a, a))).all()
    assert np.allclose(metrics.ssim(a, a), 1.0)


def test_ink_counts_pixels_above_threshold():
    img = np.zeros((1, 4, 4), np.uint8)
    img[0, 0, :3] = [metrics.INK_THRESHOLD, metrics.INK_THRESHOLD + 1, 255]
    assert metrics.ink(img).tolist() == [2]


def test_aggregate_per_class_with_psnr_of_mean_mse(pair):
    a, b = pair
    rows = metrics.per_image(a, b, np.array([10, 20, 30, 40, 50, 60]))
    rows["codec"], rows["label"] = "x", [0, 0, 0, 1, 1, 1]
    agg = metrics.aggregate(rows, ["codec", "label"]).set_index("label")
    assert agg.loc[0, "images"] == 3 and agg.loc[1, "bytes_mean"] == 50
    assert agg.loc[1, "psnr_db"] == pytest.approx(
        10 * np.log10(1 / metrics.mse(a[3:], b[3:]).mean()))
    assert agg.loc[0, "bpp"] == pytest.approx(20 * 8 / 784)
    ink = metrics.ink(a[:3])
    assert agg.loc[0, "mse_per_100_ink"] == pytest.approx(
        np.mean(metrics.mse(a[:3], b[:3]) * 100 / ink))


def test_aggregate_of_a_lossless_codec_is_infinite_not_an_error(pair):
    a, _ = pair
    rows = metrics.per_image(a, a, np.full(6, 100))
    rows["codec"] = "png"
    agg = metrics.aggregate(rows, ["codec"])
    assert np.isinf(agg.loc[0, "psnr_db"]) and pd.isna(agg.loc[0, "psnr_std"])


def test_per_image_rows_carry_their_size_and_bpp_of_their_own_pixels():
    a = np.zeros((2, 20, 30), np.uint8)
    rows = metrics.per_image(a, a, np.array([75, 150]))
    assert rows["height"].tolist() == [20, 20] and rows["width"].tolist() == [30, 30]
    assert rows["bpp"].tolist() == [1.0, 2.0]  # 75 bytes * 8 / 600 pixels
