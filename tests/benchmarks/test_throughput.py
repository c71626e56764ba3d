"""pytest-benchmark suite: encode and decode of each default codec on a fixed mnist-5k batch.

`make bench` saves JSON under .benchmarks/; `make bench-compare` compares with the last save.
Bytes and PSNR go into extra_info so a speed change can be read beside its quality.
"""

import numpy as np
import pytest

from bench.metrics import mse, psnr_from_mse
from bench.registry import get_codec
from conftest import training

DEFAULT_CODECS = ["ae50", "ae90", "ae95", "ae99", "pca50", "pca90", "pca95", "pca99",
                  "jpeg", "webp", "png", "zlib"]
BATCH = 1024
# ae95 also at a batch whose activations outgrow the CPU's caches (the AE codes in chunks for this).
BIG_BATCH = 8192


def _tiled(images, n):
    return np.concatenate([images] * -(-n // len(images)))[:n]


@pytest.fixture(scope="module")
def batch(mnist5k):
    return _tiled(mnist5k.test.images, BATCH)


@pytest.fixture(scope="module")
def codecs(mnist5k):
    # Few epochs: speed does not depend on how well the weights are trained.
    built = {}
    for name in DEFAULT_CODECS:
        codec = get_codec(f"{name}:epochs=1" if name.startswith("ae") else name)
        codec.fit(training(mnist5k.train.images, validation=mnist5k.validation.images))
        built[name] = codec
    return built


def _info(benchmark, codec, batch, payloads):
    decoded = codec.decode(payloads)
    benchmark.extra_info.update({
        "batch": len(batch), "bytes_mean": float(payloads.sizes.mean()),
        "psnr_db": float(psnr_from_mse(mse(batch, decoded).mean())),
    })


@pytest.mark.parametrize("name", DEFAULT_CODECS)
def test_encode(benchmark, codecs, batch, name):
    codec = codecs[name]
    payloads = benchmark(codec.encode, batch)
    assert len(payloads) == len(batch)
    _info(benchmark, codec, batch, payloads)


@pytest.mark.parametrize("name", DEFAULT_CODECS)
def test_decode(benchmark, codecs, batch, name):
    codec = codecs[name]
    payloads = codec.encode(batch)
    decoded = benchmark(codec.decode, payloads)
    assert decoded.shape == batch.shape
    _info(benchmark, codec, batch, payloads)


@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_ae95_big_batch(benchmark, codecs, mnist5k, direction):
    codec, big = codecs["ae95"], _tiled(mnist5k.test.images, BIG_BATCH)
    payloads = codec.encode(big)
    out = benchmark(codec.encode, big) if direction == "encode" else benchmark(codec.decode, payloads)
    assert len(out) == BIG_BATCH
    _info(benchmark, codec, big, payloads)
