"""Hostile payloads, arbitrary images and interrupted runs: nothing crashes, nothing is lost."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bench.codec import Codec, ImageError, PayloadError, payloads_to_decode
from bench.fuzz import assert_decoder_robust, fuzz_decoder, hostile_payloads
from bench.registry import get_codec
from conftest import training

FUZZ_EXAMPLES = int(os.environ.get("BENCH_FUZZ_EXAMPLES", "2000"))
# Shared-header variants are fuzzed on their own: their payloads are not whole files.
SHARED = ["jpeg:shared_header=1", "png:shared_header=1", "avif:shared_header=1",
          "jpeg2000:shared_header=1", "jpegls:shared_header=1"]
CPU_CODECS = ["raw", "jpeg", "png", "webp", "webp-lossless", "jpegxl", "jpegxl-lossless",
              "avif", "avif-lossless", "jpeg2000", "jpeg2000-lossless", "jpegls", "jpegls-near",
              "zlib", "lzma", "zstd", "brotli", *SHARED, "ae95", "pca95", "ar", "ar-lossy",
              "factorized", "linear"]  # linear: the worked plugin example, which make test installs
# Learned codecs are fuzzed with small models: what is fuzzed is the decoder, not the model.
FIT_AS = {"ae95": "ae95:epochs=1", "ar": "ar:width=16:epochs=1",
          "ar-lossy": "ar-lossy:width=16:epochs=1", "factorized": "factorized:epochs=1",
          "linear": "linear:epochs=1"}
# The ar decoders run 136 sequential wavefront steps per payload (about 30 ms for one image alone on
# this 2-core machine): fewer cases, about 10 s per codec.
FUZZ_CAP = {"ar": 200, "ar-lossy": 200}
# Entropy-coded learned codecs: the check symbol lets 1 in 16 damaged streams through.
ENTROPY_CODED = ["ar", "ar-lossy", "factorized", "linear"]
LOSSLESS = ["raw", "png", "webp-lossless", "jpegxl-lossless", "avif-lossless",
            "jpeg2000-lossless", "jpegls", "zlib", "lzma", "zstd", "brotli",
            "png:shared_header=1", "jpegls:shared_header=1"]
LOSSY = ["jpeg", "webp", "jpegxl", "avif", "jpeg2000", "jpegls-near", "jpeg:shared_header=1",
         "avif:shared_header=1", "jpeg2000:shared_header=1", "ae95", "pca95", "ar-lossy",
         "factorized", "linear"]
# Formats in which every byte string of the right length is a valid payload.
ANY_BYTES_VALID = ["raw", "ae95", "pca95"]
# JPEG, WebP and JPEG XL state the image size once, with no checksum: a bit flip there is a valid
# file of another size. (Shared-header variants send the size once, as side information.)
SIZE_UNCHECKED = ["jpeg", "webp", "webp-lossless", "jpegxl", "jpegxl-lossless"]


@pytest.fixture(scope="module")
def fitted(mnist5k, tmp_path_factory):
    """Every CPU codec, fitted where it learns, and a few valid payloads of each."""
    cache = tmp_path_factory.mktemp("fuzz-cache")
    train = mnist5k.train.images[:500]
    sample = mnist5k.test.images[:4]
    codecs, payloads = {}, {}
    for name in CPU_CODECS:
        codec = get_codec(FIT_AS.get(name, name))
        codec.fit(training(train if name != "raw" else sample, cache))
        codecs[name] = codec
        payloads[name] = list(codec.encode(sample))
    return codecs, payloads


@pytest.mark.parametrize("name", CPU_CODECS)
def test_decode_survives_hostile_payloads(name, fitted):
    codecs, payloads = fitted
    others = [p for other, ps in payloads.items() if other != name for p in ps]
    count = min(FUZZ_EXAMPLES, FUZZ_CAP.get(name, FUZZ_EXAMPLES))
    report = fuzz_decoder(codecs[name], payloads[name], others, shape=(28, 28), count=count)
    print(report)
    assert_decoder_robust(report, size_flips_ok=name in SIZE_UNCHECKED)
    if name in ANY_BYTES_VALID:  # only the right length decodes
        assert report.count("accepted", "truncated") == report.count("accepted", "extended") == 0
    if name in ENTROPY_CODED:  # 1 in 16 expected: bounded 4 standard deviations above
        for kinds in (("truncated", "bitflip", "extended"), ("random",)):
            tried = sum(report.tried(k) for k in kinds)
            passed = report.altered if kinds[0] == "truncated" else report.count("accepted", "random")
            assert passed <= tried / 16 + 4 * (tried / 16) ** 0.5 + 2, (kinds, passed, tried)


class Toy(Codec):
    """Decodes its one valid payload, and does `behaviour` with anything else."""

    name = "toy"
    valid = b"valid payload"

    def __init__(self, behaviour: str):
        self.behaviour = behaviour

    def decode(self, payloads):
        if payloads_to_decode(payloads, self.name)[0] == self.valid:
            return np.zeros((1, 28, 28), np.uint8)
        if self.behaviour == "crash":
            raise IndexError("oops")
        if self.behaviour == "mute":
            raise PayloadError()
        if self.behaviour == "slow":
            time.sleep(0.02)
        if self.behaviour in ("refuse", "slow"):
            raise PayloadError("not a toy payload")
        if self.behaviour == "resize":
            return np.zeros((1, 28, 27), np.uint8)
        return np.zeros((1, 28, 28), np.float32)


@pytest.mark.parametrize("behaviour, problem", [("crash", "60 crashes"), ("mute", "60 crashes"),
                                                ("float", "60 wrong shapes"),
                                                ("resize", "60 resized images"),
                                                ("slow", "6 hangs")])
def test_the_fuzz_helper_names_what_a_decoder_does_wrong(behaviour, problem):
    count = 6 if behaviour == "slow" else 60
    report = fuzz_decoder(Toy(behaviour), [Toy.valid], [b"foreign"], (28, 28), count=count, seed=1,
                          time_limit=0.01)
    with pytest.raises(AssertionError, match=f"toy: {problem} in {count} hostile payloads .seed 1."):
        assert_decoder_robust(report)
    if behaviour == "resize":  # only the bit flips are excused, not the other 50
        with pytest.raises(AssertionError, match="toy: 50 resized images"):
            assert_decoder_robust(report, size_flips_ok=True)


def test_the_fuzz_helper_counts_refusals_per_kind_from_its_seed():
    report = fuzz_decoder(Toy("refuse"), [Toy.valid], [b"foreign"], (28, 28), count=60, seed=1)
    assert_decoder_robust(report)
    assert report.refused == 60 and all(report.tried(kind) == 10 for kind in report.by_kind)
    assert str(report).startswith("toy: 60 payloads (seed 1): 60 refused, 0 accepted (none)")
    again = [list(hostile_payloads([Toy.valid], [b"foreign"], 60, np.random.default_rng(1)))
             for _ in range(2)]
    assert again[0] == again[1]


@pytest.mark.parametrize("name", LOSSLESS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=st.one_of(
    arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 64), st.integers(1, 64))),
    st.builds(lambda v, h, w: np.full((2, h, w), v, np.uint8),
              st.sampled_from([0, 255]), st.integers(1, 64), st.integers(1, 64)),
))
def test_lossless_round_trip_of_arbitrary_images(name, images, fitted):
    # Shared-header codecs were fitted on 28x28 digits: other sizes travel as whole files.
    codec = fitted[0][name]
    if name == "raw":
        codec.fit(training(images))
    decoded = codec.decode(codec.encode(images))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, images)


@pytest.mark.parametrize("name", LOSSY)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=arrays(np.uint8, st.tuples(st.integers(1, 4), st.just(28), st.just(28))))
def test_lossy_returns_the_right_shape_for_arbitrary_images(name, images, fitted):
    codec = fitted[0][name]
    decoded = codec.decode(codec.encode(images))
    assert decoded.shape == images.shape and decoded.dtype == np.uint8


BAD_IMAGES = [
    (np.zeros((2, 28, 28), np.int16), "must be uint8"),
    (np.full((2, 28, 28), np.nan, np.float32), "contains NaN"),
    (np.zeros((2, 28, 28, 3), np.uint8), "rank 4"),
    (np.zeros((0, 28, 28), np.uint8), "empty batch"),
    (np.zeros((1, 1025, 8), np.uint8), "1025x8"),
]


@pytest.mark.parametrize("name", CPU_CODECS)
@pytest.mark.parametrize("images, message", BAD_IMAGES)
def test_bad_images_are_named_before_any_work(name, images, message, fitted):
    with pytest.raises(ImageError, match=message):
        fitted[0][name].encode(images)


def test_full_cache_disk_is_a_stated_fallback(mnist5k, tmp_path, monkeypatch):
    import bench.learned
    import bench_codecs.autoencoder as ae

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench.learned, "atomic_write", full)
    messages = []
    codec = ae.AutoencoderCodec(8, epochs=1).fit(training(mnist5k.train.images[:200], tmp_path,
                                                          log=messages.append))
    assert codec.model is not None
    full_disk = [m for m in messages if "No space left on device" in m]  # beside any training notice
    assert len(full_disk) == 1 and "this run only" in full_disk[0]


def _start(args, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Ctrl-C as a terminal sends it: a shell starts background jobs with SIGINT ignored, and
    # the child would inherit that when the test suite itself runs in the background.
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, proc, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"finished before it could be interrupted: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting")


def test_interrupted_train_leaves_no_partial_checkpoint(tmp_path):
    cache = tmp_path / "cache"
    args = ["train", "--codecs", "ae99:epochs=1,ae95:epochs=40", "--dataset", "mnist-5k",
            "--cache-dir", str(cache), "--device", "cpu"]
    proc = _start(args, tmp_path)
    _wait_for(lambda: any(cache.glob("ae8-*.pt")), proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert [p.name.split("-")[0] for p in cache.iterdir()] == ["ae8"]  # no ae39, no temp file


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_nothing_half_written_and_rerun_reuses_models(sig, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["run", "--codecs", "ae99:epochs=1,ae95:epochs=40,png", "--dataset", "mnist-5k",
            "--cache-dir", str(cache), "--out", str(out), "--rounds", "3", "--no-tsne"]
    if sig == signal.SIGKILL:
        # Serial: a killed process cannot stop its worker processes, which would finish their
        # jobs (and write their checkpoints, atomically) after it.
        args += ["--jobs", "1"]
    proc = _start(args, tmp_path)
    # ae99 finishes training first; interrupt while ae95 trains.
    _wait_for(lambda: any(cache.glob("ae8-*.pt")), proc)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [p.name for p in cache.glob("*.pt")] == [next(cache.glob("ae8-*.pt")).name]
    finished = next(cache.glob("ae8-*.pt"))
    mtime = finished.stat().st_mtime_ns
    if sig == signal.SIGINT:
        assert not list(cache.glob(".*.tmp")) and not list(tmp_path.glob(".out.partial-*"))

    args[2] = "ae99:epochs=1,ae95:epochs=1,png"  # rerun, shorter, with the finished model
    rerun = _start(args, tmp_path)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert (out / "report.md").is_file() and (out / "summary.csv").is_file()
    assert finished.stat().st_mtime_ns == mtime  # reused, not retrained
