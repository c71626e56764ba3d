from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import analysis


def summary(rows):
    """A run summary with just the columns the analyses read."""
    df = pd.DataFrame(rows, columns=["codec", "curve", "lossless", "learned", "bytes_mean",
                                     "psnr_db", "ssim", "side_info_bytes"])
    return df.assign(encode_img_s=1000.0, decode_img_s=2000.0)


ANCHOR = [(400.0, 23.0), (500.0, 28.0), (650.0, 32.0), (900.0, 36.0), (1300.0, 40.0)]
TEST = [(150.0, 25.0), (190.0, 29.0), (240.0, 33.5), (320.0, 37.0), (420.0, 41.0)]


def two_curves():
    rows = [(f"a:q={i}", "a", False, False, b, q, 0.9, 0) for i, (b, q) in enumerate(ANCHOR)]
    rows += [(f"t:q={i}", "t", False, False, b, q, 0.9, 0) for i, (b, q) in enumerate(TEST)]
    return summary(rows)


def independent_bd_rate(anchor, test, kind):
    """BD-rate computed here without the bjontegaard package: the VCEG-M33 cubic fit of log rate
    against PSNR, or a PCHIP through the points, integrated over the common PSNR range."""
    from scipy.interpolate import PchipInterpolator

    (ra, qa), (rt, qt) = (np.array(c).T for c in (anchor, test))
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    means = []
    for r, q in ((ra, qa), (rt, qt)):
        if kind == "cubic":
            integral = np.polyint(np.polyfit(q, np.log10(r), 3))
            means.append((np.polyval(integral, hi) - np.polyval(integral, lo)) / (hi - lo))
        else:
            means.append(PchipInterpolator(q, np.log10(r)).integrate(lo, hi) / (hi - lo))
    return (10 ** (means[1] - means[0]) - 1) * 100


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_table_matches_an_independent_computation(method):
    bd = analysis.bd_table(two_curves(), method).set_index(["family", "anchor"])
    row = bd.loc[("t", "a")]
    assert row["bd_rate_pct"] == pytest.approx(independent_bd_rate(ANCHOR, TEST, method), abs=1e-6)
    assert (row["psnr_low_db"], row["psnr_high_db"]) == (25.0, 40.0)
    assert row["points_in_overlap"] == 4 and row["anchor_points_in_overlap"] == 4
    # The reverse pair covers the same range: its BD-rate is the exact inverse.
    back = bd.loc[("a", "t")]
    assert (1 + back["bd_rate_pct"] / 100) * (1 + row["bd_rate_pct"] / 100) == pytest.approx(1)
    assert back["bd_psnr_db"] == pytest.approx(-row["bd_psnr_db"])


def test_bd_rate_of_half_the_bytes_is_minus_fifty_percent_whatever_the_method():
    half = [(b / 2, q) for b, q in ANCHOR]
    rows = [(f"a{i}", "a", False, False, b, q, 0.9, 0) for i, (b, q) in enumerate(ANCHOR)]
    rows += [(f"h{i}", "h", False, False, b, q, 0.9, 0) for i, (b, q) in enumerate(half)]
    for method in analysis.BD_METHODS:
        bd = analysis.bd_table(summary(rows), method).set_index(["family", "anchor"])
        assert bd.loc[("h", "a"), "bd_rate_pct"] == pytest.approx(-50.0, abs=1e-9)


def test_bd_table_says_why_a_pair_has_no_number():
    rows = [(f"a{i}", "a", False, False, b, q, 0.9, 0) for i, (b, q) in enumerate(ANCHOR)]
    rows += [("hi0", "hi", False, False, 2000.0, 45.0, 0.99, 0),
             ("hi1", "hi", False, False, 3000.0, 48.0, 0.99, 0)]
    rows += [("one", "one", False, False, 300.0, 30.0, 0.9, 0)]
    rows += [("edge0", "edge", False, False, 100.0, 20.0, 0.8, 0),
             ("edge1", "edge", False, False, 140.0, 24.0, 0.85, 0)]
    rows += [("zlib", "zlib", True, False, 197.0, np.inf, 1.0, 0)]
    bd = analysis.bd_table(summary(rows)).set_index(["family", "anchor"])
    assert "zlib" not in bd.index.get_level_values(0)  # lossless codecs have no curve
    assert bd.loc[("hi", "a"), "note"] == "no common PSNR range"
    assert bd.loc[("one", "a"), "note"] == "one has 1 point(s) on its curve; pchip needs 2"
    assert bd.loc[("edge", "a"), "note"] == "edge has 1 point(s) in 23.0–24.0 dB; pchip needs 2"
    assert bd.loc[("edge", "a"), "psnr_low_db"] == 23.0
    assert bd["bd_rate_pct"].loc[[("hi", "a"), ("one", "a"), ("edge", "a")]].isna().all()


def test_a_curve_is_its_front():
    rows = [("q30", "j", False, False, 300.0, 30.0, 0.9, 0), ("q40", "j", False, False, 320.0, 29.0, 0.9, 0),
            ("q50", "j", False, False, 300.0, 31.0, 0.9, 0), ("q60", "j", False, False, 400.0, 35.0, 0.95, 0)]
    assert analysis.front(summary(rows))["codec"].tolist() == ["q50", "q60"]


def test_cost_at_interpolates_and_never_extrapolates():
    f = analysis.front(two_curves().query("curve == 'a'"))
    assert analysis.cost_at(f, 28.0) == pytest.approx(500.0)
    assert 500.0 < analysis.cost_at(f, 30.0) < 650.0
    assert np.isnan(analysis.cost_at(f, 22.9)) and np.isnan(analysis.cost_at(f, 40.1))


def test_verdict_picks_the_cheapest_curve_and_a_real_setting():
    s = pd.concat([two_curves(), summary([("zlib", "zlib", True, False, 250.0, np.inf, 1.0, 0)])])
    v = analysis.verdict(s, [("psnr", 30.0), ("psnr", 41.0), ("psnr", 50.0)]).set_index("target")
    at30 = v.loc[30.0]
    assert at30["curve"] == "t" and at30["setting"] == "t:q=2"  # 33.5 dB: the first point >= 30
    from scipy.interpolate import PchipInterpolator

    q, b = np.array(TEST).T[1], np.log(np.array(TEST).T[0])
    assert at30["bytes"] == pytest.approx(np.exp(PchipInterpolator(q, b)(30.0)))
    assert at30["runner_up_curve"] == "zlib" and at30["runner_up_bytes"] == 250.0
    assert v.loc[41.0, "curve"] == "zlib"  # t reaches 41 dB at 420 B, zlib is exact at 250 B
    assert v.loc[50.0, "curve"] == "zlib" and v.loc[50.0, "runner_up_curve"] != v.loc[50.0, "runner_up_curve"]


def test_a_curve_whose_cheapest_point_is_above_the_target_answers_with_that_point():
    v = analysis.verdict(two_curves(), [("psnr", 20.0), ("psnr", 24.0)]).set_index("target")
    # t starts at 25 dB for 150 B: it meets both targets there, measured, not extrapolated;
    # a (400 B at 23 dB) is the runner-up at 20 dB and interpolated at 24 dB.
    assert v.loc[20.0, "curve"] == "t" and v.loc[20.0, "bytes"] == 150.0
    assert v.loc[20.0, "setting"] == "t:q=0" and v.loc[20.0, "runner_up_bytes"] == 400.0
    assert v.loc[24.0, "bytes"] == 150.0 and 400.0 < v.loc[24.0, "runner_up_bytes"] < 500.0


def test_a_lossy_setting_that_gives_back_every_image_reaches_every_psnr_target():
    """PSNR ∞ cannot be interpolated, but an exact setting of a lossy codec (a near-lossless codec
    on images it happens to code exactly, the top of a sweep) reaches any target at its bytes, as a
    lossless codec does; alone on its curve it still counts."""
    exact = summary([("e:q=9", "e", False, False, 300.0, np.inf, 1.0, 0),
                     ("x:q=0", "x", False, True, 8.0, np.inf, 1.0, 0),
                     ("zlib", "zlib", True, False, 500.0, np.inf, 1.0, 0)])
    s = pd.concat([two_curves(), exact[:1]])
    v = analysis.verdict(s, [("psnr", 30.0), ("psnr", 40.0), ("psnr", 45.0)]).set_index("target")
    assert v.loc[30.0, "curve"] == "t" and v.loc[30.0, "runner_up_curve"] == "e"  # 2xx B < 300 B
    assert v.loc[40.0, "curve"] == "e" and v.loc[40.0, "setting"] == "e:q=9"  # t needs ~395 B
    assert v.loc[45.0, "curve"] == "e" and v.loc[45.0, "bytes"] == 300.0  # no other curve gets there
    alone = analysis.verdict(pd.concat([two_curves(), exact]), [("psnr", 45.0)]).iloc[0]
    assert alone["curve"] == "x" and alone["bytes"] == 8.0 and alone["runner_up_curve"] == "e"


@pytest.mark.parametrize("amortize", [None, 1000])
def test_a_sweep_with_an_exact_top_answers_with_whichever_of_its_points_is_cheaper(amortize):
    """m measures 100 B at 20 dB and 200 B at 30 dB, then an exact setting: at 25 dB its curve
    costs about 141 B, so an exact setting at 150 B is dearer and one at 120 B cheaper; above
    30 dB only the exact setting gets there. Side information (amortised) moves them alike."""
    def run(exact_bytes):
        rows = [("m:q=0", "m", False, False, 100.0, 20.0, 0.9, 50_000),
                ("m:q=1", "m", False, False, 200.0, 30.0, 0.95, 50_000),
                ("m:q=2", "m", False, False, exact_bytes, np.inf, 1.0, 50_000)]
        v = analysis.verdict(summary(rows), [("psnr", 25.0), ("psnr", 35.0)], amortize)
        return v.set_index("target")

    dear, cheap = run(150.0), run(120.0)
    assert dear.loc[25.0, "setting"] == "m:q=1" and dear.loc[25.0, "bytes"] < dear.loc[35.0, "bytes"]
    assert cheap.loc[25.0, "setting"] == "m:q=2" and cheap.loc[35.0, "setting"] == "m:q=2"
    side = 50.0 if amortize else 0.0
    assert dear.loc[35.0, "setting"] == "m:q=2" and dear.loc[35.0, "bytes"] == pytest.approx(150.0 + side)


def test_amortised_verdict_adds_side_information_per_image():
    rows = [(f"l{i}", "l", False, True, b / 4, q, 0.9, 4_000_000) for i, (b, q) in enumerate(TEST)]
    s = pd.concat([two_curves(), summary(rows)])
    per_file = analysis.verdict(s, [("psnr", 30.0)]).iloc[0]
    assert per_file["curve"] == "l" and per_file["learned"]
    at_1000 = analysis.verdict(s, [("psnr", 30.0)], amortize=1000).iloc[0]
    assert at_1000["curve"] == "t"  # 4 MB over 1,000 images is 4,000 B each
    at_1e6 = analysis.verdict(s, [("psnr", 30.0)], amortize=1_000_000).iloc[0]
    # Interpolated on the amortised points: within a rounding of the per-file bytes + 4 B.
    assert at_1e6["curve"] == "l" and at_1e6["bytes"] == pytest.approx(per_file["bytes"] + 4.0, abs=0.01)


def test_breakeven_is_against_the_best_classical_codec_at_the_same_quality():
    rows = [("ae-low", "ae", False, True, 40.0, 20.0, 0.8, 400_000),  # below every classical curve
            ("ae-mid", "ae", False, True, 100.0, 30.0, 0.9, 400_000),
            ("ae-big", "ae", False, True, 800.0, 36.0, 0.95, 400_000),  # bigger than both at 36 dB
            ("px", "px", True, True, 120.0, np.inf, 1.0, 50_000),
            ("zlib", "zlib", True, False, 197.0, np.inf, 1.0, 0)]
    s = pd.concat([two_curves(), summary(rows)])
    b = analysis.breakeven(s).set_index("codec")
    assert np.isnan(b.loc["ae-low", "breakeven_images"])
    assert b.loc["ae-low", "breakeven_note"] == "no classical lossy curve in this run spans 20.00 dB"
    from scipy.interpolate import PchipInterpolator

    q, r = np.array(TEST).T[1], np.log(np.array(TEST).T[0])
    t30 = float(np.exp(PchipInterpolator(q, r)(30.0)))  # t is cheaper than a at 30 dB
    assert b.loc["ae-mid", "breakeven_reference"] == f"t ({t30:.1f} B at 30.00 dB)"
    assert b.loc["ae-mid", "breakeven_images"] == np.ceil(400_000 / (t30 - 100.0))
    assert b.loc["ae-big", "breakeven_images"] == np.inf
    assert "t is smaller" in b.loc["ae-big", "breakeven_note"]
    assert b.loc["px", "breakeven_images"] == np.ceil(50_000 / (197.0 - 120.0))  # lossless: against zlib
    assert np.isnan(b.loc["zlib", "breakeven_images"]) and b.loc["zlib", "breakeven_note"] == ""


def test_an_exact_lossy_codecs_payback_is_against_lossless_codecs_and_exact_settings():
    rows = [("ae-low", "ae", False, True, 40.0, 20.0, 0.8, 400_000),
            ("ae-exact", "ae", False, True, 100.0, np.inf, 1.0, 400_000),
            ("e:q=9", "e", False, False, 300.0, np.inf, 1.0, 0),
            ("zlib", "zlib", True, False, 250.0, np.inf, 1.0, 0)]
    b = analysis.breakeven(pd.concat([two_curves(), summary(rows)])).set_index("codec")
    # Exact on every image: the quality of zlib (250 B) and of the exact setting (300 B).
    assert b.loc["ae-exact", "breakeven_reference"] == "zlib (250.0 B at ∞ dB (exact))"
    assert b.loc["ae-exact", "breakeven_images"] == np.ceil(400_000 / (250.0 - 100.0))
    without_zlib = analysis.breakeven(pd.concat([two_curves(), summary(rows[:3])])).set_index("codec")
    assert without_zlib.loc["ae-exact", "breakeven_reference"] == "e:q=9 (300.0 B at ∞ dB (exact))"
    # A lossy codec at 20 dB still compares with the lossy sweeps read at 20 dB, as before.
    assert b.loc["ae-low", "breakeven_note"] == "no classical lossy curve in this run spans 20.00 dB"
    none = analysis.breakeven(pd.concat([two_curves(), summary(rows[1:2])])).set_index("codec")
    assert none.loc["ae-exact", "breakeven_note"] == ("no classical codec in this run gives back these "
                                                     "images exactly")


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


def test_lossless_section_places_the_run_beside_the_published_mnist_figures():
    from bench.literature import PUBLISHED_LOSSLESS_MNIST
    from bench.report_quality import lossless as _lossless
    from bench.results import RunResult

    s = pd.DataFrame({"codec": ["zlib", "ar", "jpeg"], "lossless": [True, True, False],
                      "bpp": [1.97, 1.17, 5.7], "bytes_mean": [193.0, 115.0, 560.0],
                      "side_info_bytes": [0, 40_464, 0]})
    meta = {"dataset": "mnist-5k", "test_images": 1000}
    text = _lossless(RunResult(meta, s, pd.DataFrame(), pd.DataFrame()))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [row.split("|")[1].strip() for row in rows]
    assert names == ["ar", "BB-ANS (VAE, bits back)", "LZMA", "gzip",
                     "Bit-Swap (hierarchical VAE, bits back)", "zlib"]  # by bits per pixel
    assert "1.170" in rows[0] and "40,464 B side info" in rows[0] and "1.685" in rows[4]
    assert "jpeg" not in text and len(PUBLISHED_LOSSLESS_MNIST) == 4
    other = _lossless(RunResult({**meta, "dataset": "fashion-mnist"}, s, pd.DataFrame(), pd.DataFrame()))
    assert "zlib" in other and "BB-ANS" not in other  # MNIST figures only beside MNIST
    assert _lossless(RunResult(meta, s[~s["lossless"]], pd.DataFrame(), pd.DataFrame())) == ""


def test_a_class_with_no_test_image_is_named_not_silently_missing():
    from bench.report_quality import per_class
    from bench.results import RunResult

    images = pd.DataFrame({"codec": "c", "role": "main", "label": [0, 0, 1, 1], "bytes": 10, "bpp": 0.1,
                           "model_bytes": np.nan, "mse": [0.01, 0.02, 0.03, 0.04], "psnr_db": 20.0,
                           "ssim": 0.9, "ink": 100, "mse_per_100_ink": 0.01})
    s = pd.DataFrame({"codec": ["c"], "family": ["c"], "role": ["main"], "lossless": [False]})
    meta = {"dataset": "folder:x", "classes": ["cat", "dog", "lone"]}
    result = RunResult(meta, s, images, pd.DataFrame())
    figures = {"per_class_psnr": Path("per_class_psnr.png")}
    text = per_class(result, analysis.per_class(result), figures)
    assert "No test image has the class `lone`" in text
    full = per_class(RunResult({**meta, "classes": ["cat", "dog"]}, s, images, pd.DataFrame()),
                     analysis.per_class(result), figures)
    assert "No test image" not in full


def test_a_section_links_its_figure_only_when_it_was_drawn(tmp_path):
    from bench.report_quality import samples as _samples

    assert _samples({}) == ""
    assert _samples({"samples": tmp_path / "plots" / "samples.png"}).endswith("![Samples](plots/samples.png)")
