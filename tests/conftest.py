import os

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_dirs(tmp_path_factory):
    """Models and data go to temporary folders, never the user's cache; no test downloads."""
    root = tmp_path_factory.mktemp("bench-home")
    old = {k: os.environ.get(k) for k in ("BENCH_CACHE_DIR", "BENCH_DATA_DIR")}
    os.environ["BENCH_CACHE_DIR"] = str(root / "cache")
    os.environ["BENCH_DATA_DIR"] = str(root / "data")
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mnist5k():
    from bench.data import load_mnist_5k

    return load_mnist_5k()


@pytest.fixture(scope="session")
def digits(mnist5k):
    """200 test digits, 20 per class: enough to measure, quick to code."""
    idx = np.concatenate([np.flatnonzero(mnist5k.test.labels == c)[:20] for c in range(10)])
    return mnist5k.test.images[idx]


def write_idx(path, array):
    """An IDX file as MNIST ships it: magic 0x0000 08 ndim, big-endian dims, raw bytes."""
    import gzip

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist_idx(folder, n_train=60, n_test=20, seed=0, gz=False):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": n_train, "t10k": n_test}
    arrays = {}
    for part, n in parts.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels)
        arrays[part] = (images, labels)
    return arrays


def training(images, cache_dir=None, validation=None, **kwargs):
    """What Codec.fit gets; the validation images are the training images' last 100 unless given."""
    from bench.codec import TrainingData

    validation = images[-100:] if validation is None else validation
    return TrainingData(images, validation, cache_dir, progress=False, **kwargs)


def run_in_fresh_python(args: list[str]):
    """`bench` with args in a new interpreter; stdout ends with TORCH or NO-TORCH: whether the run
    imported PyTorch (a run of classical codecs must not pay for it)."""
    import subprocess
    import sys

    code = ("import sys; from bench.cli import main; "
            f"rc = main({args!r}); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package; they import each other by
    name, so their folder goes on sys.path while one loads)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).parents[1] / "scripts"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module
