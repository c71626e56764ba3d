"""Payloads of fixed tiny models, held byte for byte against stored digests, so that a refactor
cannot change a payload unnoticed. The models are untrained (seeded initial weights, plus the
tables or integer export their codec derives from them), so no training run can move them. `ar`
codes with integers only; the autoencoders, PCA and `factorized` compute in float32, so their
digests hold for one build of PyTorch on one CPU family (x86-64 here and in CI), not on every
machine."""

import hashlib

import numpy as np
import pytest
import torch

from bench.learned import torch_threads
from bench.registry import get_codec
from conftest import training

# spec -> sha256 of (payload buffer, payload sizes, decoded images), first 16 hex digits
DIGESTS = {
    "ae95": "eb536d25fec25ac3", "ae99": "aa693d8e8b4039ff", "pca95": "cc0b62a45aae0585",
    "factorized:quality=2": "1b92a4d89b7b35f4", "factorized": "a7b09a74ce7a6e15",
    "ar:width=16": "4b129a84bb907c78", "ar-lossy:width=16": "1e3df34c6315fa2e",
    "ar-lossy:levels=3:width=16": "b0fadd3de8e7a48d", "jpeg": "771093a70c1b76d3",
    "zlib": "1a1c3bf8b2a5f5e6", "png": "9388a94b1a1d843c", "jpegls": "44b43935595edb95",
}
# The code lengths the entropy-coded models assign (their probability tables), apart from how a
# stream is ended (factorized: now its integer tables' code length, of the new model).
MODEL_BITS = {"factorized": "397c74f4f9054ca7", "ar:width=16": "fb9f4f3cd404704f",
              "ar-lossy:width=16": "306e2bdfba0fb208"}


@pytest.fixture(scope="module")
def images(mnist5k):
    noise = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    return np.concatenate([mnist5k.test.images[:56], noise])


def untrained(spec, mnist5k):
    codec = get_codec(spec)
    data = training(mnist5k.train.images[:200])
    if not codec.learned or not hasattr(codec, "build_model"):
        return codec.fit(data)
    torch.manual_seed(0)
    codec.model = codec.build_model((28, 28))
    if hasattr(codec.model, "table_freq"):
        from bench_codecs.factorized_model import build_tables

        build_tables(codec.model)
    codec.prepare(data)
    return codec


def digest(codec, images):
    with torch_threads(1):
        payloads = codec.encode(images)
        decoded = codec.decode(payloads)
    h = hashlib.sha256(payloads.buffer.tobytes())
    h.update(payloads.sizes.astype("<i8").tobytes())
    h.update(np.ascontiguousarray(decoded).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("spec", ["ae95", "ae99", "pca95", "factorized:quality=2", "factorized",
                                  "ar:width=16", "ar-lossy:width=16", "ar-lossy:levels=3:width=16",
                                  "jpeg", "zlib", "png", "jpegls"])
def test_payloads_of_fixed_models_are_unchanged(spec, mnist5k, images):
    got = digest(untrained(spec, mnist5k), images)
    print(f"{spec!r}: {got!r},")
    assert got == DIGESTS.get(spec, got)


@pytest.mark.parametrize("spec", ["factorized", "ar:width=16", "ar-lossy:width=16"])
def test_probability_models_of_fixed_models_are_unchanged(spec, mnist5k, images):
    with torch_threads(1):
        bits = untrained(spec, mnist5k).model_bits(images)
    got = hashlib.sha256(np.asarray(bits, "<f8").tobytes()).hexdigest()[:16]
    print(f"{spec!r}: {got!r},")
    assert got == MODEL_BITS.get(spec, got)
