"""Parallel and distributed runs give the serial run's numbers; failures are named, not fatal."""

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from bench.codec import BenchError
from bench.executor import Backend, execute
from bench.registry import default_registry, parse_specs
from bench.runner import run

CODECS = "ae99:epochs=1,pca95,jpeg,zlib"
SWEEP = "jpeg:quality=20/60"
TIMING = ["encode_img_s", "decode_img_s", "encode_mpx_s", "decode_mpx_s", "job_seconds"]


def bench(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          **kwargs)


def small_run(mnist5k, tmp_path, backend):
    """A run on a slice of mnist-5k with its own, empty model cache: every model is trained."""
    from dataclasses import replace

    from bench.data import Split

    def cut(split, n):
        return Split(split.images[:n], split.labels[:n])

    data = replace(mnist5k, train=cut(mnist5k.train, 800), validation=cut(mnist5k.validation, 100),
                   test=cut(mnist5k.test, 200))
    sweeps = default_registry().sweep(SWEEP)
    return run(parse_specs(CODECS), data, ["cpu"], sweeps=sweeps, rounds=3, cache_dir=tmp_path,
               backend=backend, tsne_families=(), progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def serial(mnist5k, tmp_path_factory):
    return small_run(mnist5k, tmp_path_factory.mktemp("serial"), Backend())


def assert_same_numbers(a, b):
    pd.testing.assert_frame_equal(a.summary.drop(columns=TIMING), b.summary.drop(columns=TIMING))
    pd.testing.assert_frame_equal(a.per_image, b.per_image)
    for name, images in a.samples.items():
        assert np.array_equal(images, b.samples[name]), name


def test_two_local_workers_give_the_serial_numbers(serial, mnist5k, tmp_path):
    parallel = small_run(mnist5k, tmp_path, Backend("joblib", 2))
    assert parallel.meta["backend"] == {"name": "joblib", "jobs": 2}
    assert_same_numbers(serial, parallel)
    assert (parallel.throughput["median_img_s"] > 0).all()


def test_a_local_ray_instance_gives_the_serial_numbers_and_caches_its_models(serial, mnist5k,
                                                                             tmp_path):
    pytest.importorskip("ray")
    distributed = small_run(mnist5k, tmp_path, Backend("ray"))
    assert_same_numbers(serial, distributed)
    model = next(tmp_path.glob("ae8-*.pt"))  # written by a Ray worker
    mtime = model.stat().st_mtime_ns
    again = small_run(mnist5k, tmp_path, Backend())
    assert model.stat().st_mtime_ns == mtime  # found by the next run, not retrained
    assert_same_numbers(serial, again)


def _die_on_two(job, shared):
    if job == 2:
        os._exit(3)
    return job * shared


def test_a_worker_that_dies_is_a_clear_error():
    with pytest.raises(BenchError, match="a worker process died"):
        execute(_die_on_two, [1, 2, 3], 10, Backend("joblib", 2), lambda i, r: None)
    assert execute(_die_on_two, [1, 3], 10, Backend("joblib", 2), lambda i, r: None) == [10, 30]


def _pid_once_all_started(barrier, *_):
    barrier.wait(timeout=60)  # every worker holds one task: each reports its own process
    return os.getpid()


def test_the_jobs_and_a_codecs_coding_processes_share_one_pool_of_workers():
    """The processes started for the jobs (one per core) are the ones a learned codec codes in:
    a pool asked for with other arguments would replace them (new processes import PyTorch)."""
    import multiprocessing

    from bench.executor import cores
    from bench.learned import in_processes

    n = cores()
    if n < 2:
        pytest.skip("one core: no worker processes")
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(n)
        job_pids = execute(_pid_once_all_started, [barrier] * n, None, Backend("joblib", -1),
                           lambda i, r: None)
        coding_pids = in_processes(_pid_once_all_started, [(barrier,)] * n)
    assert len(set(job_pids)) == n
    assert set(coding_pids) == set(job_pids)


def test_a_failing_job_is_named_the_run_finishes_the_others_and_exits_1(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):  # 12x12: 144 pixels, fewer than pca50's 392 components; png does not care
        (tmp_path / "imgs" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(
            tmp_path / "imgs" / str(i % 2) / f"{i}.png")
    out = tmp_path / "out"
    proc = bench("run", "--dataset", f"folder:{tmp_path / 'imgs'}", "--codecs", "pca50,png",
                 "--sweep", "none", "--no-tsne", "--rounds", "3", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out), "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "job pca50 failed: CodecError: 392 latent values need images (or tiles of them) of at " \
        "least 392 pixels; these are 12x12" in proc.stderr
    assert "Traceback" not in proc.stderr
    report = (out / "report.md").read_text()
    assert "## Failed jobs" in report and "of at least 392 pixels; these are 12x12" in report
    assert pd.read_csv(out / "summary.csv")["codec"].tolist() == ["png"]


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs: bad value '0'"),
    (["--jobs", "two"], "--jobs: bad value 'two'"),
    (["--jobs", "-3"], "--jobs: bad value '-3'"),
    (["--backend", "dask"], "unknown backend 'dask'"),
    (["--ray-address", "127.0.0.1:9"], "--ray-address needs --backend ray"),
    (["--backend", "ray", "--ray-address", "127.0.0.1:9"], "cannot reach the Ray cluster at 127.0.0.1:9"),
    (["--backend", "ray", "--ray-address", "nonsense"], "is not HOST:PORT"),
])
def test_bad_parallel_options_are_one_line_and_write_nothing(args, message, tmp_path):
    start = time.perf_counter()
    proc = bench("run", "--codecs", "zlib", "--dataset", "mnist-5k", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()
    assert time.perf_counter() - start < 30


def test_ray_missing_names_the_extra(tmp_path):
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = bench("run", "--codecs", "zlib", "--dataset", "mnist-5k", "--backend", "ray",
                 cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert "pip install 'aecodec-bench[ray]'" in proc.stderr
    assert not (tmp_path / "reports").exists()
