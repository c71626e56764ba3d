"""Folders of mixed image sizes: every image measured at its own size, codecs given one uniform
batch per size, learned codecs trained on one size by the stated rule, and a report that says so."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bench import images as batches
from bench.data import load_dataset
from bench.registry import get_codec, parse_specs
from bench.runner import _tsne, run
from bench.samples import SAMPLE_MAX_SIDE, SAMPLE_SHAPES, sample_images, sample_indices
from conftest import run_in_fresh_python

CLASSICAL = "jpeg,webp,jpegls,png,zlib"
MIXED = {(20, 20): 5, (28, 28): 8, (64, 48): 4}
# Two classes of mixed sizes, and one of a single size each: the samples (one per class) mix sizes.
CLASSES = {"a": MIXED, "b": MIXED, "c": {(64, 48): 5}, "d": {(20, 20): 5}}


def picture(rng, h, w):
    """A smooth picture with some noise: lossy codecs have something to keep."""
    y, x = np.mgrid[:h, :w]
    img = 128 + 90 * np.sin(x / rng.uniform(2, 5) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(2, 5))
    return np.clip(img + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)


def write_folder(root, classes, seed=0):
    """PNG files, `classes[name][(h, w)]` of each size per class; returns {relative path: image}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for cls, counts in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for (h, w), n in counts.items():
            for i in range(n):
                img = picture(rng, h, w)
                Image.fromarray(img).save(root / cls / f"{h}x{w}-{i}.png")
                written[f"{cls}/{h}x{w}-{i}.png"] = img
    return written


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    return root, write_folder(root, CLASSES)


@pytest.fixture(scope="module")
def mixed_run(mixed_folder):
    root, _ = mixed_folder
    dataset = load_dataset(f"folder:{root}")
    result = run(parse_specs(CLASSICAL), dataset, ["cpu"], rounds=3, progress=False,
                 log=lambda m: None)
    return dataset, result


def test_a_folder_may_mix_sizes_and_keeps_every_image(mixed_folder):
    root, written = mixed_folder
    ds = load_dataset(f"folder:{root}")
    assert ds.mixed and ds.sizes == [(20, 20), (28, 28), (64, 48)]
    assert ds.shape == (28, 28)  # the training split's most common size
    everything = [im for split in (ds.train, ds.validation, ds.test) for im in split.images]
    assert sorted(im.tobytes() for im in everything) == sorted(im.tobytes() for im in written.values())
    assert batches.is_mixed(ds.test.images) and len(ds.test) == 3 + 3 + 1 + 1  # 20 % of each class
    assert "of 20x20 (15), 28x28 (16), 64x48 (13)" in ds.source
    again = load_dataset(f"folder:{root}")
    assert again.fingerprint == ds.fingerprint
    assert all(np.array_equal(a, b) for a, b in zip(again.test.images, ds.test.images))


def test_learned_codecs_get_one_size_by_the_stated_rule(mixed_folder):
    root, _ = mixed_folder
    ds = load_dataset(f"folder:{root}")
    train, validation = ds.training
    assert train.dtype == np.uint8 and train.shape[1:] == (28, 28) and validation.shape[1:] == (28, 28)
    # Per image: one tile of a 28x28 image, one of a padded 20x20, (64 // 28) x (48 // 28) = 2 of
    # a 64x48.
    expected = sum({(20, 20): 1, (28, 28): 1, (64, 48): 2}[im.shape] for im in ds.train.images)
    assert len(train) == expected
    assert np.array_equal(train, load_dataset(f"folder:{root}").training[0])  # seeded
    rule = ds.training_rule()
    assert "28x28, the most common in the training split" in rule
    assert f"{len(ds.train)} training images gave {len(train)} tiles" in rule
    uniform = load_dataset("mnist-5k")
    assert uniform.training[0] is uniform.train.images and uniform.training_rule() == ""


def test_to_one_size_pads_with_edges_tiles_and_caps_per_image():
    small = np.arange(20 * 20, dtype=np.uint8).reshape(20, 20)
    (tile,) = batches.to_one_size(batches.batch([small, np.zeros((5, 7), np.uint8)]), (28, 28), 0)[:1]
    assert np.array_equal(tile[4:24, 4:24], small)  # centred, edges repeated
    assert np.all(tile[:4, 4:24] == small[0]) and np.all(tile[4:24, :4] == small[:, :1])
    big = np.random.default_rng(0).integers(0, 256, (1000, 1000), np.uint8)
    tiles = batches.to_one_size(batches.batch([big, small]), (20, 20), 0)
    assert tiles.shape == (batches.MAX_TILES_PER_IMAGE + 1, 20, 20)
    assert np.array_equal(tiles[-1], small)
    assert np.array_equal(tiles, batches.to_one_size(batches.batch([big, small]), (20, 20), 0))
    assert not np.array_equal(tiles, batches.to_one_size(batches.batch([big, small]), (20, 20), 1))


def test_every_test_image_has_a_row_per_codec_at_its_own_size(mixed_run):
    ds, r = mixed_run
    shapes = batches.shapes(ds.test.images)
    pixels = batches.pixels(ds.test.images)
    assert sorted(r.per_image["codec"].unique()) == sorted(CLASSICAL.split(","))
    for codec, rows in r.per_image.groupby("codec"):
        assert rows["index"].tolist() == list(range(len(ds.test)))  # the original order
        assert list(zip(rows["height"], rows["width"])) == shapes
        np.testing.assert_allclose(rows["bpp"], rows["bytes"] * 8 / pixels)
        assert rows["label"].tolist() == ds.test.labels.tolist()
        codec_obj = get_codec(codec)
        for (h, w), g in rows.groupby(["height", "width"]):
            assert set(g["header_bytes"]) == {codec_obj.header_bytes((h, w))}
        if codec in ("jpegls", "png", "zlib"):
            assert np.isinf(rows["psnr_db"]).all()
        else:
            assert (rows["psnr_db"] > 25).all() and rows["ssim"].between(0, 1).all()
    s = r.summary.set_index("codec")
    jpeg = r.per_image[r.per_image["codec"] == "webp"]
    assert s.loc["webp", "header_bytes"] == pytest.approx(jpeg["header_bytes"].mean())
    assert s.loc["webp", "compression_pct"] == pytest.approx(
        100 * (1 - jpeg["bytes"].mean() / pixels.mean()))


def test_throughput_codes_every_size_and_reports_megapixels(mixed_run):
    ds, r = mixed_run
    t = r.throughput
    total = int(batches.pixels(ds.test.images).sum())
    assert (t["batch"] == len(ds.test)).all() and (t["batch_pixels"] == total).all()
    np.testing.assert_allclose(t["median_mpx_s"], t["median_img_s"] * total / len(ds.test) / 1e6)
    assert (r.summary["encode_mpx_s"] > 0).all() and (r.summary["decode_mpx_s"] > 0).all()
    assert np.isinf(t.loc[t["codec"] == "png", "psnr_db"]).all()


def test_samples_keep_their_sizes():
    images = batches.batch([np.zeros((20, 20), np.uint8), np.full((64, 48), 7, np.uint8),
                            np.full((200, 150), 9, np.uint8)])
    out, sizes = sample_images(images)
    assert out.shape == (3, SAMPLE_MAX_SIDE, SAMPLE_MAX_SIDE)
    assert sizes.tolist() == [[20, 20], [64, 48], [SAMPLE_MAX_SIDE, SAMPLE_MAX_SIDE]]
    y, x = (SAMPLE_MAX_SIDE - 64) // 2, (SAMPLE_MAX_SIDE - 48) // 2
    assert np.all(out[1, y : y + 64, x : x + 48] == 7) and out[1, 0, 0] == 255  # centred on white
    uniform = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    same, none = sample_images(uniform)
    assert np.array_equal(same, uniform) and none is None


def test_tsne_of_mixed_sizes_is_restricted_to_the_most_common_size(tmp_path):
    images = batches.batch([np.full((8, 8), i, np.uint8) for i in range(12)]
                           + [np.zeros((5, 6), np.uint8)] * 3)
    labels = np.arange(15) % 2
    decoded = {"ae95": images}
    points, note = _tsne(images, labels, decoded, tmp_path, lambda m: None)
    assert set(points["index"]) <= set(range(12)) and len(points) == 24
    assert note.startswith("restricted to the 12 test images of 8x8")
    few = batches.batch([np.zeros((8, 8), np.uint8)] * 4 + [np.zeros((5, 6), np.uint8)] * 3)
    points, note = _tsne(few, np.zeros(7, int), {"ae95": few}, tmp_path, lambda m: None)
    assert points.empty and note.startswith("skipped")


def test_the_mixed_report_says_how_sizes_were_handled(mixed_run, tmp_path):
    from PIL import Image

    from bench import results
    from bench.report import render

    ds, r = mixed_run
    out = results.save(r, tmp_path / "run", render=lambda d: render(results.load(d), d))
    text = (out / "report.md").read_text()
    sizes = batches.describe(ds.test.images)
    assert sizes.count("(") == 3  # three sizes in the test split
    assert f"8-bit grayscale of mixed sizes (test: {sizes})" in text
    assert "- **Training size:** Learned codecs train on one size, 28x28" in text
    assert "## Per image size" in text and "| webp    | 64x48  |" in text
    assert "a timed call codes every size of the batch" in text
    assert "median MPx/s" in text and "encode MPx/s" in text
    with np.load(out / "samples.npz") as samples:
        picked = batches.take(ds.test.images, sample_indices(ds.test.labels))
        assert samples[SAMPLE_SHAPES].tolist() == [list(s) for s in batches.shapes(picked)]
        assert samples["original"].shape == (4, 64, 48)
        assert set(samples.files) == {"original", SAMPLE_SHAPES, *CLASSICAL.split(",")}
    with Image.open(out / "plots" / "samples.png") as im:
        assert im.size[0] > 200 and im.size[1] > 400
    before = text
    (out / "report.md").unlink()
    render(results.load(out), out)
    assert (out / "report.md").read_text() == before


@pytest.mark.parametrize("size", [(32, 32), (40, 24)])
def test_single_size_folders_run_as_before(tmp_path, size):
    written = write_folder(tmp_path / "imgs", {"a": {size: 6}, "b": {size: 6}})
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}")
    assert not ds.mixed and ds.test.images.shape[1:] == size and ds.training_rule() == ""
    r = run(parse_specs(CLASSICAL), ds, ["cpu"], rounds=3, progress=False, log=lambda m: None)
    assert len(r.per_image) == len(ds.test) * 5 and set(r.per_image["height"]) == {size[0]}
    assert set(r.per_image["width"]) == {size[1]} and len(written) == 12
    assert r.meta["image_sizes"] == f"{size[0]}x{size[1]}" and not r.meta["mixed_sizes"]


def test_a_classical_run_on_a_mixed_folder_does_not_import_torch(mixed_folder, tmp_path):
    root, _ = mixed_folder
    proc = run_in_fresh_python(["run", "--codecs", "png,jpeg,raw", "--dataset", f"folder:{root}",
                                "--rounds", "3", "--sweep", "none", "--out", str(tmp_path / "out")])
    # raw's payloads carry no size: its job fails with one line, the others are reported.
    assert proc.returncode == 1 and "raw sends pixels only" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "NO-TORCH" in proc.stdout
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv")
    assert len(per_image) == 2 * 8 and set(per_image["height"]) == {20, 28, 64}


def test_the_timed_batch_of_mixed_sizes_is_tiled_and_grouped():
    from bench.runner import shape_groups, throughput_batch

    images = batches.batch([np.zeros((20, 20), np.uint8), np.ones((28, 28), np.uint8),
                            np.full((20, 20), 2, np.uint8)])
    timed = throughput_batch(images, 7)
    assert len(timed) == 7 and batches.shapes(timed)[3:6] == [(20, 20), (28, 28), (20, 20)]
    groups = shape_groups(timed)
    assert [g.shape for _, g in groups] == [(5, 20, 20), (2, 28, 28)]
    assert groups[0][0].tolist() == [0, 2, 3, 5, 6] and (groups[1][1] == 1).all()
    assert batches.is_mixed(throughput_batch(images, 2))
    one = throughput_batch(images[[0, 2]], 3)
    assert one.shape == (3, 20, 20)  # a selection of one size is a uniform batch


LEARNED = "ae95:epochs=1,factorized:epochs=1,ar:width=16:epochs=1,ar-lossy:width=16:epochs=1"


@pytest.mark.parametrize("sizes", [{(32, 32): 12}, {(40, 24): 12}, MIXED], ids=["32x32", "40x24", "mixed"])
def test_learned_codecs_code_folders_of_any_size(sizes, tmp_path):
    """Through `bench run` as a user would run it, with the learned codecs (one epoch) beside
    classical ones: every job succeeds, every test image gets a row at its own size, and the
    lossless learned codec gives every image back exactly."""
    root = tmp_path / "images"
    write_folder(root, {"a": sizes, "b": sizes}, seed=1)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--dataset", f"folder:{root}",
                           "--codecs", f"{LEARNED},jpeg,webp,jpegls,png", "--sweep", "none",
                           "--no-tsne", "--rounds", "3", "--out", str(out), "--cache-dir",
                           str(tmp_path / "cache")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pd.read_csv(out / "per_image.csv")
    dataset = load_dataset(f"folder:{root}")
    expected = batches.pixels(dataset.test.images)
    for codec, group in rows.groupby("codec"):
        assert len(group) == len(dataset.test), codec
        assert ((group["height"] * group["width"]).to_numpy() == expected).all(), codec
    lossless = rows[rows["codec"].str.startswith("ar:")]
    assert np.isinf(lossless["psnr_db"]).all()
