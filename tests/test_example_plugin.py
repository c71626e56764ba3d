"""The worked plugin example (examples/linear-plugin, installed by `make test` like any third-party
package): listed by `bench list`, run by `bench run`, named in the results, and through the same
hostile-payload fuzz as the built-in codecs."""

import json
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from bench.fuzz import assert_decoder_robust, fuzz_decoder
from bench.registry import default_registry, get_codec
from conftest import training

INSTALL = "pip install -e examples/linear-plugin (make test does)"


@pytest.fixture(scope="module")
def plugin():
    if "linear" not in default_registry().codecs:
        pytest.fail(f"the example plugin is not installed: {INSTALL}")
    return default_registry().codecs["linear"]


def bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_bench_list_shows_the_plugin_and_where_it_comes_from(plugin, tmp_path):
    out = bench("list", cwd=tmp_path)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("linear "))
    assert "lossy" in line and "plugin bench_example_linear:LinearCodec (bench-example-linear)" in line
    assert plugin.learned and plugin.rate_param == "quality"


def test_bench_run_measures_it_and_names_it_in_the_results(plugin, tmp_path):
    out = bench("run", "--codecs", "linear,zlib", "--dataset", "mnist-5k", "--epochs", "1",
                "--sweep", "none", "--no-tsne", "--rounds", "3", "--out", "run", "--cache-dir", "cache",
                cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["environment"]["plugins"]["linear"] == {
        "entry_point": "bench_example_linear:LinearCodec", "distribution": "bench-example-linear",
        "version": metadata.version("bench-example-linear"),
        "requires": {"aecodec-bench": metadata.version("aecodec-bench")}}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "`linear` from bench-example-linear" in report
    assert not meta["failed_jobs"] and "| linear:epochs=1 " in report


def test_side_info_is_what_its_decoder_needs(plugin, mnist5k, tmp_path):
    codec = get_codec("linear:epochs=1").fit(training(mnist5k.train.images[:500], tmp_path))
    model = codec.model
    synthesis = 4 * (model.synthesis.weight.numel() + model.synthesis.bias.numel())
    tables = 4 * (2 * codec.features + model.tables.freq.numel())
    assert codec.side_info_bytes == synthesis + tables  # the analysis is not counted


def test_it_survives_the_hostile_payload_fuzz(plugin, mnist5k, tmp_path):
    codec = get_codec("linear:epochs=1").fit(training(mnist5k.train.images[:500], tmp_path))
    sample = mnist5k.test.images[:4]
    foreign = list(get_codec("zlib").encode(sample)) + list(get_codec("jpeg").encode(sample))
    report = fuzz_decoder(codec, list(codec.encode(sample)), foreign, (28, 28), count=2000)
    print(report)
    assert_decoder_robust(report)
    # The check symbol of bench.entropy: a damaged or foreign stream decodes to other pixels
    # about 1 time in 16 (appended bytes mostly leave the image as it was).
    damaged = sum(report.tried(k) for k in ("truncated", "bitflip", "extended"))
    assert report.altered <= damaged / 10 and report.count("accepted", "foreign") <= 40
    assert np.array_equal(codec.decode(codec.encode(sample)).shape, sample.shape)
