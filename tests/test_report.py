import numpy as np
import pandas as pd
import pytest

from bench import analysis


def test_bd_rate_of_a_curve_against_itself_is_zero():
    rate, psnr = np.array([0.5, 1.0, 2.0, 4.0]), np.array([28.0, 31.0, 34.5, 38.0])
    assert analysis.bd_rate(rate, psnr, rate, psnr) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_half_the_rate_is_minus_fifty_percent():
    rate, psnr = np.array([0.5, 1.0, 2.0, 4.0]), np.array([28.0, 31.0, 34.5, 38.0])
    assert analysis.bd_rate(rate, psnr, rate / 2, psnr) == pytest.approx(-50.0, abs=1e-6)
    assert analysis.bd_rate(rate, psnr, rate * 2, psnr) == pytest.approx(100.0, abs=1e-6)


def test_bd_rate_without_overlap_is_nan():
    assert np.isnan(analysis.bd_rate([1, 2], [20, 25], [1, 2], [30, 35]))
    assert np.isnan(analysis.bd_rate([1], [20], [1, 2], [20, 25]))


def test_dominated_marks_exactly_the_dominated_points():
    pts = pd.DataFrame({"codec": ["a", "b", "c", "d", "e"],
                        "bytes_mean": [100, 120, 90, 200, 100],
                        "psnr_db": [30.0, 29.0, 25.0, np.inf, 30.0]})
    dom = analysis.dominated_by(pts)
    assert dom.tolist() == ["", "a", "", "", ""]  # a and e tie: neither strictly better


def test_lossless_point_is_dominated_by_a_smaller_lossless_one():
    pts = pd.DataFrame({"codec": ["png", "zlib"], "bytes_mean": [260.0, 197.0],
                        "psnr_db": [np.inf, np.inf]})
    assert analysis.dominated_by(pts).tolist() == ["zlib", ""]


def test_class_extremes():
    pc = pd.DataFrame({"codec": ["x"] * 3, "class": ["0", "1", "2"], "mse": [0.2, 0.1, 0.3]})
    row = analysis.class_extremes(pc).iloc[0]
    assert (row["best_class"], row["worst_class"]) == ("1", "2")


def test_tsne_points_are_seeded_and_labelled():
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8)
    labels = np.arange(60) % 3
    recon = {"ae95": originals // 2}
    a = analysis.tsne_points(originals, labels, recon)
    b = analysis.tsne_points(originals, labels, recon)
    assert len(a) == 120 and set(a["kind"]) == {"original", "reconstruction"}
    np.testing.assert_allclose(a[["x", "y"]], b[["x", "y"]])


def test_tsne_embeds_all_codecs_jointly_around_shared_originals():
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (900, 8, 8), dtype=np.uint8)
    recon = {f"ae{i}": originals // (i + 2) for i in range(4)}
    pts = analysis.tsne_points(originals, np.zeros(900, int), recon)
    assert len(pts) == 1000  # about 1,000 points whatever the number of codecs
    assert (pts["kind"] == "original").sum() == 200
    assert pts.groupby("codec").size().to_dict() == {"": 200, "ae0": 200, "ae1": 200, "ae2": 200,
                                                     "ae3": 200}
