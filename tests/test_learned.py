"""The shared piece of every learned codec: its cache key covers every input that changes the
weights, and a model trained on one device is not silently reused for another."""

import importlib
import struct
import sys

import pytest
import torch

from bench import learned
from bench_codecs import autoencoder, pca
from bench_codecs.autoencoder import AutoencoderCodec
from conftest import training


@pytest.fixture(scope="module")
def images(mnist5k):
    return mnist5k.train.images[:300]


@pytest.fixture
def key(images):
    """The AE's cache key for the default inputs, and a function that recomputes it."""

    def compute(codec=None, **data_changes):
        codec = codec or AutoencoderCodec(8, epochs=1)
        return codec.cache_key(training(images, **data_changes))

    return compute(), compute


@pytest.mark.parametrize("change", [
    "architecture version", "recipe", "PCA initialisation constant", "torch version",
])
def test_every_module_level_input_is_in_the_key(change, key, monkeypatch):
    base, compute = key
    target, name, value = {
        "architecture version": (autoencoder, "ARCH_VERSION", autoencoder.ARCH_VERSION + 1),
        "recipe": (autoencoder, "RECIPE", {**autoencoder.RECIPE, "lr": 1e-3}),
        "PCA initialisation constant": (pca, "SPAN", pca.SPAN + 1),
        "torch version": (torch, "__version__", "0.0.0"),
    }[change]
    monkeypatch.setattr(target, name, value)
    assert compute() != base


def test_codec_parameters_are_in_the_key(key):
    base, compute = key
    assert compute(AutoencoderCodec(8, epochs=1)) == base  # deterministic
    for other in (AutoencoderCodec(8, epochs=2), AutoencoderCodec(8, epochs=1, seed=1),
                  AutoencoderCodec(39, epochs=1)):
        assert compute(other) != base


def test_the_training_and_validation_images_are_in_the_key(key, images):
    base, compute = key
    assert compute(validation=images[-100:]) == base  # the default validation, spelled out
    assert compute(validation=images[:100]) != base
    changed = images.copy()
    changed[0, 0, 0] ^= 1
    assert AutoencoderCodec(8, epochs=1).cache_key(training(changed)) != base


def test_the_training_device_is_in_the_key_but_not_the_inference_device(key):
    base, compute = key
    assert compute(train_device="cuda") != base
    # A codec that runs on CUDA but loads a CPU-trained model finds the same checkpoint.
    assert compute(AutoencoderCodec(8, epochs=1, device="cuda")) == base


def test_editing_the_training_code_changes_the_fingerprint(tmp_path, monkeypatch):
    module = tmp_path / "bench_fake_model.py"
    module.write_text("LR = 1e-3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    first = learned.source_fingerprint(["bench_fake_model"])
    module.write_text("LR = 2e-3\n")
    assert learned.source_fingerprint(["bench_fake_model"]) != first
    sys.modules.pop("bench_fake_model", None)


def test_the_autoencoders_key_covers_its_own_module_and_pca(key, monkeypatch):
    base, compute = key
    seen = []
    real = learned.source_fingerprint

    def spy(modules):
        seen.extend(modules)
        return real(modules)

    monkeypatch.setattr(learned, "source_fingerprint", spy)
    compute()
    assert {"bench_codecs.autoencoder", "bench_codecs.pca", "bench.learned"} <= set(seen)


def flip_inside_a_tensor(checkpoint, count=16):
    """Flip `count` bytes in the middle of the largest tensor's data in a torch checkpoint (a zip
    of stored, uncompressed entries): the file still loads as a checkpoint."""
    import zipfile

    with zipfile.ZipFile(checkpoint) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(checkpoint.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)  # local header
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for k in range(count):
        raw[start + k] ^= 0x5A
    checkpoint.write_bytes(bytes(raw))


@pytest.mark.parametrize("spec", ["ae95:epochs=1", "factorized:epochs=1", "ar:width=16:epochs=1",
                                  "ar-lossy:width=16:epochs=1"])
def test_a_damaged_checkpoint_is_named_retrained_and_gives_the_same_psnr(spec, mnist5k, tmp_path):
    """Through the harness: a run, bytes flipped inside a tensor of the cached model, a second
    run. The second prints one line naming the file, retrains, and measures what the first did."""
    from bench.data import Dataset, Split
    from bench.registry import parse_specs
    from bench.runner import run

    small = Dataset("mnist-5k", Split(mnist5k.train.images[:300], mnist5k.train.labels[:300]),
                    mnist5k.validation, Split(mnist5k.test.images[:100], mnist5k.test.labels[:100]),
                    mnist5k.classes, "300 training digits")

    def measure(messages):
        result = run(parse_specs(spec), small, ["cpu"], rounds=3, warmup=0, cache_dir=tmp_path,
                     threads=1, tsne_families=(), progress=False, log=messages.append)
        assert not result.meta["failed_jobs"], result.meta["failed_jobs"]
        return result.summary.set_index("codec").iloc[0][["psnr_db", "bytes_mean"]].tolist()

    first = measure([])
    (checkpoint,) = tmp_path.glob("*.pt")
    flip_inside_a_tensor(checkpoint)
    messages = []
    assert measure(messages) == first
    named = [m for m in messages if str(checkpoint) in m]  # beside any notice of the retraining
    assert len(named) == 1 and "digest" in named[0], messages
