"""Where a run's independent jobs execute: serially, in N local worker processes (joblib), or as
tasks on a Ray cluster. Each job is a function of its own arguments only, so every backend gives
the same results; only throughput, timed afterwards in the main process, is not a job."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.codec import BenchError

BACKENDS = ("serial", "joblib", "ray")
RAY_CONNECT_TIMEOUT_S = 10.0
# PyTorch threads of every job unless --threads says otherwise, whatever the backend, so that the
# numbers do not depend on it: the default run has one worker per core, and two workers of two
# threads on two cores trained two autoencoders 2.8x slower than two workers of one thread.
JOB_THREADS = 1


@dataclass(frozen=True)
class Backend:
    name: str = "serial"  # one of BACKENDS
    jobs: int = 1  # worker processes for joblib (-1: one per core)
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray instance

    @property
    def parallel(self) -> bool:
        return self.name == "ray" or (self.name == "joblib" and self.jobs != 1)


def execute(fn: Callable[[Any, Any], Any], jobs: Sequence[Any], shared: Any, backend: Backend,
            on_done: Callable[[int, Any], None], resources: Callable[[Any], dict] = lambda job: {}
            ) -> list[Any]:
    """fn(job, shared) for every job, in any order; `on_done(i, result)` as each finishes.

    `fn` must report its own failures in its result: an exception that escapes it (a worker that
    dies) is a BenchError that names the job. `resources(job)` are Ray's per-task requests.
    """
    results: list[Any] = [None] * len(jobs)

    def done(i: int, result: Any) -> None:
        results[i] = result
        on_done(i, result)

    if not backend.parallel:
        for i, job in enumerate(jobs):
            done(i, fn(job, shared))
    elif backend.name == "joblib":
        _joblib(fn, jobs, shared, backend.jobs, done)
    else:
        _ray(fn, jobs, shared, backend.ray_address, resources, done)
    return results


def _indexed(fn, i, job, shared):
    return i, fn(job, shared)


def _joblib(fn, jobs, shared, n_jobs, done) -> None:
    from concurrent.futures import as_completed

    from joblib import effective_n_jobs
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    pool = worker_pool(effective_n_jobs(n_jobs))
    try:
        futures = {pool.submit(fn, job, shared): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            done(futures[future], future.result())
    except TerminatedWorkerError as exc:
        raise BenchError(f"a worker process died ({str(exc).splitlines()[0][:160]}); the jobs "
                         "that finished are cached: rerun to continue") from None
    except BaseException:  # Ctrl-C, say: stop the jobs still running, as joblib.Parallel does
        pool.shutdown(wait=False, kill_workers=True)
        raise


def worker_pool(workers: int):
    """joblib's reusable pool of local worker processes (loky), with the thread limits that
    joblib.Parallel gives its workers (BLAS and OpenMP: the cores shared out between them; float
    results depend on them). The run's jobs (one worker per core by default) and a learned codec's
    coding processes (one per core) ask for it alike, so the processes start once per run: a pool
    asked for with other arguments replaces the one there, which cost the throughput phase 3 s
    here (a new process imports PyTorch). Arguments are pickled, never memory-mapped: a pool used
    outside joblib.Parallel would leave its temporary files behind (and a warning at exit)."""
    from joblib.executor import get_memmapping_executor

    return get_memmapping_executor(workers, max_nbytes=None, env=_worker_env(workers))


@functools.cache
def cores() -> int:
    """The CPU cores this process may use (joblib's count: it heeds cgroup quotas and affinity)."""
    from joblib import cpu_count

    return cpu_count()


@functools.cache
def _worker_env(workers: int) -> dict[str, str]:
    from joblib.parallel import LokyBackend

    return LokyBackend()._prepare_worker_env(n_jobs=workers)


def ray_address(explicit: str | None) -> str | None:
    return explicit or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str) -> None:
    """Fail fast, naming the address, rather than let Ray retry for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise BenchError(f"--ray-address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BenchError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); "
                         "check --ray-address or RAY_ADDRESS") from None


def require_ray():
    try:
        import ray
    except ImportError:
        raise BenchError("--backend ray needs Ray: pip install 'aecodec-bench[ray]'") from None
    return ray


def _ray(fn, jobs, shared, address, resources, done) -> None:
    ray = require_ray()
    address = ray_address(address)
    if address:
        check_reachable(address)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        task = ray.remote(_indexed)
        shared_ref = ray.put(shared)
        pending = {task.options(**resources(job)).remote(fn, i, job, shared_ref): i
                   for i, job in enumerate(jobs)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                _, result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                raise BenchError(f"a Ray task died while running job {i + 1} ({type(exc).__name__}); "
                                 "the jobs that finished are cached: rerun to continue") from None
            done(i, result)
    finally:
        if started_here:
            ray.shutdown()
