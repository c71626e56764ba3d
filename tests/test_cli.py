import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.codec import BenchError
from conftest import run_in_fresh_python

RUN_CODECS = "jpeg,png,zlib,webp,ae95:epochs=1,pca95"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "small"
    rc = main(["run", "--codecs", RUN_CODECS, "--dataset", "mnist-5k", "--out", str(out),
               "--rounds", "3", "--sweep", "jpeg:quality=20/50/90,webp:quality=30/90"])
    assert rc == 0
    return out


def bench(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          **kwargs)


def test_run_writes_tables_with_the_promised_columns(run_dir):
    summary = pd.read_csv(run_dir / "summary.csv")
    for col in ("codec", "lossless", "bytes_mean", "header_bytes", "bpp", "compression_pct",
                "mse", "psnr_db", "ssim", "encode_img_s", "decode_img_s"):
        assert col in summary.columns, col
    main_rows = summary[summary["role"] == "main"]
    assert main_rows["codec"].tolist() == ["jpeg", "png", "zlib", "webp", "ae95:epochs=1", "pca95"]
    png = main_rows.set_index("codec").loc["png"]
    assert png["lossless"] and np.isinf(png["psnr_db"])
    assert png["compression_pct"] == pytest.approx(100 * (1 - png["bytes_mean"] / 784))
    ae = main_rows.set_index("codec").loc["ae95:epochs=1"]
    assert ae["bytes_mean"] == 39 and ae["dimension_compression_pct"] == pytest.approx(95.03, 0.01)
    assert ae["side_info_bytes"] > 0 and ae["curve"] == "ae:epochs=1"
    # A one-epoch ae95 sits below every classical lossy curve: no like-for-like reference.
    assert np.isnan(ae["breakeven_images"])
    assert ae["breakeven_note"].startswith("no classical lossy curve in this run spans")
    jpeg = main_rows.set_index("codec").loc["jpeg"]
    assert 300 < jpeg["header_bytes"] < jpeg["bytes_mean"]
    assert jpeg["content_bytes"] == pytest.approx(jpeg["bytes_mean"] - jpeg["header_bytes"])
    assert (main_rows["encode_img_s"] > 0).all() and (main_rows["decode_img_s"] > 0).all()
    per_image = pd.read_csv(run_dir / "per_image.csv")
    assert len(per_image) == 1000 * len(summary)  # every test image, every codec and sweep point
    assert set(per_image["label"]) == set(range(10))
    assert set(per_image["height"]) == set(per_image["width"]) == {28}
    # Megapixels per second beside images per second; what each learned codec was fitted on.
    np.testing.assert_allclose(main_rows["encode_mpx_s"], main_rows["encode_img_s"] * 784 / 1e6, rtol=1e-6)
    assert ae["fit_images"] == 3600 and ae["fit_pixels"] == 3600 * 784
    assert ae["fit_validation_images"] == 400 and len(str(ae["validation_loss"]).split(";")) == 1
    assert pd.isna(png["fit_images"])


def test_report_has_every_section_and_per_class_rows(run_dir):
    text = (run_dir / "report.md").read_text()
    for heading in ("## Summary", "## Autoencoder against its PCA control", "## Quality per class",
                    "## Error normalised by ink", "## Compression against error",
                    "## Rate–distortion", "## BD-rate: every curve against every other", "## Throughput",
                    "## Samples", "## t-SNE"):
        assert heading in text, heading
    assert "`mnist-5k`" in text and "3,600 train" in text and "400 validation" in text
    assert "1,000 test" in text
    assert "This run, by MSE: ae95:epochs=1: easiest " in text
    starved = text.split("### Is the learned side starved of data or training?")[1].split("## ")[0]
    assert "| ae95:epochs=1 | 3,600 images of 28x28 (2.82 Mpx); 400 validation images" in \
        re.sub(" +", " ", starved)
    assert "**cannot tell**: 1 epoch" in starved and "| pca95" in starved
    assert "encode MPx/s" in text and "median MPx/s" in text
    assert "## Per image size" not in text and "Training size" not in text  # one size
    mse_table = text.split("### MSE")[1].split("###")[0]
    rows = [line for line in mse_table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 6  # header + one row per codec
    assert rows[0].count("|") == 1 + 1 + 10 + 2  # codec, ten classes, best, worst
    # png is 60+ bytes larger than zlib and just as exact: it is dominated, by zlib.
    summary_rows = [r for r in text.split("## Summary")[1].split("##")[0].splitlines()
                    if r.startswith("| png ")]
    assert summary_rows and summary_rows[0].rstrip(" |").endswith("zlib")
    assert text.index("## Verdict") < text.index("## Summary")
    assert re.search(r"\| webp\s+\| jpeg\s+\| -\d+\.\d %", text)  # a BD-rate number


def test_derived_tables_are_written_beside_the_report(run_dir):
    bd = pd.read_csv(run_dir / "bd_rate.csv")
    for col in ("family", "anchor", "method", "bd_rate_pct", "bd_psnr_db", "psnr_low_db",
                "psnr_high_db", "points_in_overlap"):
        assert col in bd.columns, col
    webp = bd[(bd["family"] == "webp") & (bd["anchor"] == "jpeg")].iloc[0]
    assert webp["method"] == "pchip" and webp["bd_rate_pct"] < 0
    verdict = pd.read_csv(run_dir / "verdict.csv")
    assert set(verdict["amortize"]) == {0, 1_000_000}
    assert len(verdict) == 2 * (5 + 3)  # default PSNR and SSIM targets, per file and at scale
    for path in (run_dir / "report.md", run_dir / "bd_rate.csv", run_dir / "summary.csv"):
        assert path.stat().st_mode & 0o777 == 0o644  # readable by others under umask 022


def test_plots_are_real_pngs(run_dir):
    from PIL import Image

    for name in ("per_class_psnr", "ink", "compression_vs_error", "rate_distortion", "samples",
                 "tsne"):
        with Image.open(run_dir / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200
            assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10  # not blank
            if name == "tsne":  # one panel: the run has one autoencoder
                assert im.size[0] < 700


def test_report_rerenders_from_saved_results_only(run_dir, monkeypatch):
    before = (run_dir / "report.md").read_text()
    (run_dir / "report.md").unlink()
    (run_dir / "plots" / "tsne.png").unlink()
    import bench.registry

    def no_codecs(*a, **k):
        raise AssertionError("report must not build codecs")

    monkeypatch.setattr(bench.registry.Spec, "build", no_codecs)
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == before
    assert (run_dir / "plots" / "tsne.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["run", "--codecs", "jpg"], "unknown codec 'jpg'; did you mean jpeg"),
    (["run", "--codecs", "jpeg:quality=150"], "quality must be an integer from 1 to 100"),
    (["run", "--codecs", "zlib:level=x"], "level='x'"),
    (["run", "--codecs", "xyz*"], "'xyz*' matches no codec"),
    (["run", "--codecs", "jpeg", "--dataset", "folder:/nonexistent/images"], "not a readable folder"),
    (["run", "--codecs", "jpeg", "--dataset", "minst"], "did you mean mnist"),
    (["run", "--codecs", "jpeg", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--codecs", "jpeg", "--rounds", "2"], "--rounds must be at least 3"),
    (["run", "--codecs", "jpeg", "--amortize", "0"], "--amortize: bad value '0'"),
    (["run", "--codecs", "jpeg", "--amortize", "-5"], "--amortize: bad value '-5'"),
    (["run", "--codecs", "jpeg", "--amortize", "many"], "--amortize: bad value 'many'"),
    (["run", "--codecs", "jpeg", "--psnr-targets", "30,-1"], "--psnr-targets: bad value '-1'"),
    (["run", "--codecs", "jpeg", "--psnr-targets", "inf"], "--psnr-targets: bad value 'inf'"),
    (["run", "--codecs", "jpeg", "--ssim-targets", "0.9,1.5"], "--ssim-targets: bad value '1.5'"),
    (["run", "--codecs", "jpeg", "--ssim-targets", "x"], "--ssim-targets: bad value 'x'"),
    (["run", "--codecs", "jpeg", "--bd-method", "linear"], "unknown method 'linear'"),
    (["train", "--codecs", "jpeg"], "train takes the specs of learned codecs"),
    (["run", "--codecs", "nvjpeg", "--device", "cpu", "--dataset", "mnist-5k"], "nothing to run"),
    (["report", "/nonexistent/run"], "is not a bench run folder"),
])
def test_user_mistakes_are_one_line_exit_2_and_write_nothing(args, message, tmp_path):
    proc = bench(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()


def test_existing_out_is_not_overwritten(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = bench("run", "--codecs", "png", "--dataset", "mnist-5k", "--out", str(out))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_run_but_not_a_file_or_a_folder_of_ones_own(tmp_path):
    mine, note = tmp_path / "mine", tmp_path / "note.txt"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    (mine / "meta.json").write_text("{}")  # common in data folders: not enough to be a run
    note.write_text("mine")
    for out, message in ((mine, "is not an earlier run's folder"), (note, "is a file")):
        proc = bench("run", "--codecs", "png", "--dataset", "mnist-5k", "--out", str(out), "--overwrite")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert (mine / "keep.txt").read_text() == "mine" and note.read_text() == "mine"
    run = tmp_path / "run"
    for _ in range(2):  # the second replaces the first
        proc = bench("run", "--codecs", "png", "--dataset", "mnist-5k", "--sweep", "none", "--no-tsne",
                     "--out", str(run), "--overwrite")
        assert proc.returncode == 0, proc.stderr
    assert (run / "meta.json").is_file() and not list(tmp_path.glob(".run.*"))


def test_list_prints_every_codec_with_kind():
    proc = bench("list")
    assert proc.returncode == 0
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "lossless" in lines["png"] and "lossy" in lines["jpeg"]
    assert "quality=75" in lines["jpeg"] and "cuda" in lines["ae95"]
    # The default sweep of --sweep auto on the line after its codec; none for codecs without one.
    out = proc.stdout.splitlines()
    after = {out[i].split()[0]: out[i + 1].strip() for i in range(len(out) - 1)}
    assert after["factorized"] == "default sweep (--sweep auto): quality=2/4/6/8"
    assert after["jpeg"].endswith("optimize=1:quality=1/3/5/8/12/18/25/35/50/65/80/90/95")
    assert not after["png"].startswith("default sweep")


def test_train_then_run_reuses_the_model(tmp_path):
    cache = tmp_path / "cache"
    proc = bench("train", "--codecs", "ae99", "--epochs", "1", "--dataset", "mnist-5k",
                 "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "ae99:epochs=1: trained in" in proc.stdout and "validation PSNR" in proc.stdout
    proc = bench("train", "--codecs", "ae99", "--epochs", "1", "--dataset", "mnist-5k",
                 "--cache-dir", str(cache))
    assert "ae99:epochs=1: cached" in proc.stdout


def test_run_of_classical_codecs_does_not_import_torch(tmp_path):
    proc = run_in_fresh_python(["run", "--codecs", "png,zlib", "--dataset", "mnist-5k", "--rounds",
                                "3", "--out", str(tmp_path / "out")])
    assert proc.returncode == 0, proc.stderr
    assert "NO-TORCH" in proc.stdout and (tmp_path / "out" / "report.md").is_file()


def test_auto_sweep_is_the_default_curve_of_a_name_and_the_own_curve_of_a_spec():
    from types import SimpleNamespace

    from bench.cli import _sweeps
    from bench.registry import parse_specs

    specs = parse_specs("jpeg,jpeg:shared_header=1,webp:method=5:quality=30,zlib")
    curves = {s.curve for s in _sweeps(SimpleNamespace(sweep="auto"), specs)}
    assert curves == {"jpeg:optimize=1", "jpeg:shared_header=1", "webp:method=5"}
    assert _sweeps(SimpleNamespace(sweep="none"), specs) == []
    # auto as one item of a list: the default sweeps plus more points on the same curve.
    both = _sweeps(SimpleNamespace(sweep="auto, jpeg:optimize=1:quality=2/3"), specs)
    assert {s.canonical for s in both} >= {"jpeg:optimize=1:quality=2", "jpeg:optimize=1:quality=95"}
    assert len(both) == len(_sweeps(SimpleNamespace(sweep="auto"), specs)) + 1  # quality=3 twice
    # --epochs reaches explicit sweep items too, and 'none' stands alone.
    learned = parse_specs("factorized:epochs=1")
    trained = _sweeps(SimpleNamespace(sweep="auto,factorized:quality=1..8", epochs=1), learned)
    assert {s.curve for s in trained} == {"factorized:epochs=1"} and len(trained) == 8
    with pytest.raises(BenchError, match="'none' cannot be combined"):
        _sweeps(SimpleNamespace(sweep="none,jpeg:quality=1/2"), specs)


def test_a_run_saved_before_megapixels_and_mixed_sizes_still_renders(run_dir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    new_columns = {"summary": ["encode_mpx_s", "decode_mpx_s", "fit_images", "fit_pixels",
                               "fit_validation_images", "fit_size", "train_loss", "validation_loss"],
                   "throughput": ["batch_pixels", "median_mpx_s", "min_mpx_s", "max_mpx_s"],
                   "per_image": ["height", "width", "header_bytes"]}
    for name, columns in new_columns.items():
        table = pd.read_csv(old / f"{name}.csv")
        table.drop(columns=columns).to_csv(old / f"{name}.csv", index=False)
    assert main(["report", str(old)]) == 0
    text = (old / "report.md").read_text()
    assert "Is the learned side starved" not in text  # nothing to read it from
    from bench.report import _mpx

    first = pd.read_csv(run_dir / "throughput.csv").iloc[0]
    assert f"| {_mpx(first['median_mpx_s'])} " in text  # megapixels/s from img/s and the image size
