"""pytest-benchmark suite: encode and decode of each default codec (`bench run`'s default
`--codecs`) and of every learned codec, on a fixed mnist-5k batch.

`make bench` saves JSON under .benchmarks/; `make bench-compare` compares with the last save and
fails on a median 25 % slower. Bytes and PSNR go into extra_info so a speed change can be read
beside its quality; so does each codec's speed as a share of JPEG-LS near-lossless (with its
shared header) timed in the same session, which carries across machines where img/s do not.
"""

import time

import numpy as np
import pytest

from bench.cli import DEFAULT_CODECS
from bench.metrics import mse, psnr_from_mse
from bench.registry import default_registry, with_param
from conftest import training

REFERENCE = "jpegls-near:shared_header=1"
LEARNED = "ae*,pca*,factorized,factorized:quality=2,ar,ar-lossy,ar-lossy:levels=3"
SPECS = {s.canonical: s for s in default_registry().parse(f"{DEFAULT_CODECS},{LEARNED},{REFERENCE}")}
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
    # One epoch: speed does not depend on how well the weights are trained (the widths are the
    # defaults, so the per-image work is the real codec's).
    built = {}
    for name, spec in SPECS.items():
        codec = (with_param(spec, "epochs", 1) if spec.info.learned else spec).build()
        codec.fit(training(mnist5k.train.images, validation=mnist5k.validation.images))
        built[name] = codec
    return built


@pytest.fixture(scope="module")
def reference(codecs, batch):
    """JPEG-LS near-lossless's median seconds per call, encode and decode, in this session."""
    codec = codecs[REFERENCE]
    payloads = codec.encode(batch)

    def median(fn):
        for _ in range(3):  # warm-up, as the benchmarks have
            fn()
        seconds = []
        for _ in range(9):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        return float(np.median(seconds))

    return {"encode": median(lambda: codec.encode(batch)), "decode": median(lambda: codec.decode(payloads))}


def _info(benchmark, codec, batch, payloads, reference, direction):
    decoded = codec.decode(payloads)
    benchmark.extra_info.update({
        "batch": len(batch), "bytes_mean": float(payloads.sizes.mean()),
        "psnr_db": float(psnr_from_mse(mse(batch, decoded).mean())),
    })
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # absent when benchmarks are disabled (make test runs each call once)
        benchmark.extra_info[f"share_of_{REFERENCE}"] = reference[direction] / stats.stats.median


@pytest.mark.parametrize("name", SPECS)
def test_encode(benchmark, codecs, batch, reference, name):
    codec = codecs[name]
    payloads = benchmark(codec.encode, batch)
    assert len(payloads) == len(batch)
    _info(benchmark, codec, batch, payloads, reference, "encode")


@pytest.mark.parametrize("name", SPECS)
def test_decode(benchmark, codecs, batch, reference, name):
    codec = codecs[name]
    payloads = codec.encode(batch)
    decoded = benchmark(codec.decode, payloads)
    assert decoded.shape == batch.shape
    _info(benchmark, codec, batch, payloads, reference, "decode")


@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_ae95_big_batch(benchmark, codecs, mnist5k, reference, direction):
    codec, big = codecs["ae95"], _tiled(mnist5k.test.images, BIG_BATCH)
    payloads = codec.encode(big)
    out = benchmark(codec.encode, big) if direction == "encode" else benchmark(codec.decode, payloads)
    assert len(out) == BIG_BATCH
    _info(benchmark, codec, big, payloads, {k: v * BIG_BATCH / BATCH for k, v in reference.items()},
          direction)
