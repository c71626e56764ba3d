"""Codecs x dataset x devices -> tidy tables. results.py saves them, report.py renders them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench import metrics
from bench.codec import Codec, CodecError, TrainingData, decode_checked
from bench.data import Dataset
from bench.executor import Backend, execute
from bench.registry import Spec
from bench.results import RunResult, VerdictOptions
from bench.timing import device_name, measure

SAMPLE_SEED = 0
SERIAL = Backend()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def sample_indices(labels: np.ndarray) -> np.ndarray:
    """One test image per class, the same ones in every run on the same split."""
    rng = np.random.default_rng(SAMPLE_SEED)
    return np.array([rng.choice(np.flatnonzero(labels == c)) for c in np.unique(labels)])


def devices_for(spec: Spec, devices: list[str]) -> list[str]:
    """The selected devices that `spec` runs on, in the selected order."""
    return [d for d in devices if d in spec.info.devices]


def runnable(specs: list[Spec], devices: list[str], log: Callable[[str], None] = _log) -> list[Spec]:
    """The specs that run on a selected device; the others are named in one line."""
    skipped = [s.canonical for s in specs if not devices_for(s, devices)]
    if specs and len(skipped) == len(specs):
        raise CodecError(f"nothing to run: {', '.join(skipped)} cannot run on "
                         f"{', '.join(devices)} (see `bench list`, and --device)")
    if skipped:
        log(f"skipping {', '.join(skipped)}: not available on {', '.join(devices)}")
    return [s for s in specs if s.canonical not in skipped]


def throughput_batch(images: np.ndarray, batch: int | None) -> np.ndarray:
    """The test images, tiled or cut to `batch` images."""
    if not batch or batch == len(images):
        return images
    reps = -(-batch // len(images))
    return np.concatenate([images] * reps)[:batch]


@dataclass(frozen=True)
class QualityJob:
    """One codec spec's quality pass: fit on the training split, code the test split, measure."""

    spec: Spec
    role: str  # "main" (a selected codec) or "sweep" (a point of a quality sweep)
    device: str
    keep_decoded: bool  # the main codecs' reconstructions feed the samples and t-SNE


@dataclass(frozen=True)
class JobInputs:
    """What every quality job reads; shipped to workers once."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    cache_dir: Path | None
    train_device: str
    threads: int  # PyTorch threads: float results depend on it, so every worker uses the same
    progress: bool
    log: Callable[[str], None]  # module-level (picklable) for workers
    keep_codec: bool  # jobs run in this process: their fitted codecs are timed afterwards

    def training(self) -> TrainingData:
        return TrainingData(self.train, self.validation, self.cache_dir, self.train_device,
                            self.progress, self.log, self.threads)


@dataclass
class JobResult:
    row: dict | None = None
    per_image: pd.DataFrame | None = None
    decoded: np.ndarray | None = None
    codec: Codec | None = None  # the fitted codec, when the job ran in this process
    error: str = ""  # why the job failed: one line


def quality_job(job: QualityJob, inputs: JobInputs) -> JobResult:
    """Runs in the main process or a worker; a failure is returned, never raised."""
    start = time.perf_counter()
    try:
        codec = job.spec.build(job.device).fit(inputs.training())
        payloads = codec.encode(inputs.test)
        decoded = decode_checked(codec, payloads, inputs.test.shape)
        frame = metrics.per_image(inputs.test, decoded, payloads.sizes, codec.model_bits(inputs.test))
        frame.insert(0, "codec", job.spec.canonical)
        frame.insert(1, "role", job.role)
        frame.insert(2, "index", np.arange(len(inputs.test)))
        frame.insert(3, "label", inputs.labels)
        row = _codec_row(job.spec, codec, job.role, inputs.test.shape[1:])
        row["job_seconds"] = time.perf_counter() - start  # fit (or cache load) and quality
        return JobResult(row, frame, decoded if job.keep_decoded else None,
                         codec if inputs.keep_codec else None)
    except Exception as exc:  # reported with its spec; the other jobs go on
        first = (str(exc).splitlines() or [""])[0]
        return JobResult(error=f"{type(exc).__name__}: {first}"[:300])


def run(specs: list[Spec], dataset: Dataset, devices: list[str], *, sweeps: list[Spec] = (),
        rounds: int = 5, warmup: int = 1, batch: int | None = None, cache_dir: Path | None = None,
        train_device: str | None = None, verdict: VerdictOptions | None = None,
        backend: Backend = SERIAL, threads: int | None = None,
        tsne_families: tuple[str, ...] = ("ae",), progress: bool = True,
        log: Callable[[str], None] = _log) -> RunResult:
    """Quality of every spec and sweep point on the test split (the jobs, on `backend`), then, in
    this process and one codec at a time, throughput: of the selected codecs on every selected
    device, and of the settings the verdict names."""
    from tqdm import tqdm

    from bench.analysis import verdict_settings

    verdict = verdict or VerdictOptions()
    test = dataset.test
    specs = runnable(specs, devices, log)
    sweeps = [s for s in sweeps if devices_for(s, devices) and s not in specs]
    inputs = JobInputs(dataset.train.images, dataset.validation.images, test.images, test.labels,
                       cache_dir, train_device or devices[0], threads or os.cpu_count() or 1,
                       progress and not backend.parallel, _log if backend.parallel else log,
                       keep_codec=not backend.parallel)
    jobs = [QualityJob(s, role, devices_for(s, devices)[0], role == "main")
            for role, group in (("main", specs), ("sweep", sweeps)) for s in group]
    bar = tqdm(total=len(jobs), desc="jobs", unit="job", disable=None if progress else True)

    def done(i: int, result: JobResult) -> None:
        bar.set_postfix_str(jobs[i].spec.canonical, refresh=False)
        bar.update()
        if result.error:
            bar.write(f"job {jobs[i].spec.canonical} failed: {result.error}", file=sys.stderr)

    def resources(job: QualityJob) -> dict:
        return {"num_gpus": 1} if job.device.startswith("cuda") else {"num_cpus": 1}

    start = time.perf_counter()
    try:
        results = execute(quality_job, jobs, inputs, backend, done, resources)
    finally:
        bar.close()
    phases = {"jobs": time.perf_counter() - start}
    failed = [{"codec": j.spec.canonical, "error": r.error} for j, r in zip(jobs, results) if r.error]
    ok = [(j, r) for j, r in zip(jobs, results) if not r.error]
    if not ok:
        raise CodecError("every job failed: " + "; ".join(f"{f['codec']}: {f['error']}" for f in failed))
    per_image = pd.concat([r.per_image for _, r in ok], ignore_index=True)
    rows = pd.DataFrame([r.row for _, r in ok])
    keep = sample_indices(test.labels)
    samples = {"original": test.images[keep]}
    samples.update({j.spec.canonical: r.decoded[keep] for j, r in ok if j.keep_decoded})
    decoded_for_tsne = {j.spec.canonical: r.decoded for j, r in ok
                        if j.keep_decoded and j.spec.info.family in tsne_families}

    # Speed is measured here, after the jobs, one codec at a time: never under parallel load.
    # A codec fitted by its job is timed as it is; one fitted elsewhere (a worker, another
    # device) is fitted again here, which for a learned codec loads the model its job cached.
    timed = throughput_batch(test.images, batch)
    fitted = {(j.spec.canonical, j.device): r.codec for j, r in ok if r.codec is not None}
    training = replace(inputs, progress=progress, log=log).training()

    def time_on(spec: Spec, device: str) -> list[dict]:
        codec = fitted.get((spec.canonical, device)) or spec.build(device).fit(training)
        return _throughput(codec, spec, device, timed, rounds, warmup)

    speed = []
    for job, _ in ok:
        if job.role == "main":
            for device in devices_for(job.spec, devices):
                speed += time_on(job.spec, device)
    summary = summarize(rows, per_image, pd.DataFrame(speed), dataset.shape, devices[0])
    # The verdict names settings (often sweep points) whose speed it quotes: time those too.
    by_name = {j.spec.canonical: j.spec for j, _ in ok}
    already = {r["codec"] for r in speed}
    for name in verdict_settings(summary, verdict.targets, verdict.amortize):
        if name not in already:
            speed += time_on(by_name[name], devices_for(by_name[name], devices)[0])
    fitted.clear()
    throughput = pd.DataFrame(speed)
    summary = summarize(rows, per_image, throughput, dataset.shape, devices[0])
    phases["throughput"] = time.perf_counter() - start - phases["jobs"]
    tsne = pd.DataFrame()
    if decoded_for_tsne:
        from bench.tsne import tsne_points

        tsne = tsne_points(test.images, test.labels, decoded_for_tsne, cache_dir=cache_dir, log=log)
    meta = {"dataset": dataset.name, "dataset_source": dataset.source, "dataset_why": dataset.why,
            "dataset_fingerprint": dataset.fingerprint, "classes": list(dataset.classes),
            "image_shape": list(dataset.shape), "train_images": len(dataset.train),
            "validation_images": len(dataset.validation), "test_images": len(test),
            "devices": devices, "train_device": inputs.train_device, "torch_threads": inputs.threads,
            "backend": {"name": backend.name, "jobs": backend.jobs}, "rounds": rounds,
            "warmup": warmup, "throughput_batch": len(timed),
            "codecs": [s.canonical for s in specs], "sweeps": [s.canonical for s in sweeps],
            "failed_jobs": failed,
            "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
            "verdict": {"psnr_targets": list(verdict.psnr_targets),
                        "ssim_targets": list(verdict.ssim_targets),
                        "amortize": verdict.amortize, "bd_method": verdict.bd_method}}
    return RunResult(meta, summary, per_image, throughput, tsne, samples)


def _throughput(codec: Codec, spec: Spec, device: str, batch: np.ndarray, rounds: int,
                warmup: int) -> list[dict]:
    warmup = max(warmup, 0)
    enc, payloads = measure(lambda: codec.encode(batch), len(batch), rounds, warmup, device)
    dec, decoded = measure(lambda: decode_checked(codec, payloads, batch.shape), len(batch), rounds,
                           warmup, device)
    psnr = float(metrics.psnr_from_mse(metrics.mse(batch, decoded).mean()))
    return [{
        "codec": spec.canonical, "device": device, "device_name": device_name(device),
        "direction": direction, "batch": len(batch), "rounds": len(t.seconds),
        "median_img_s": t.median_img_s, "min_img_s": t.min_img_s, "max_img_s": t.max_img_s,
        "psnr_db": psnr, "precision": codec.precision, "library": codec.library,
    } for direction, t in (("encode", enc), ("decode", dec))]


def _codec_row(spec: Spec, codec: Codec, role: str, shape: tuple[int, int]) -> dict:
    latent = dict(spec.values).get("latent")
    return {
        "codec": spec.canonical, "curve": spec.curve, "family": spec.info.family or spec.info.name,
        "role": role, "lossless": bool(codec.lossless), "learned": bool(codec.learned),
        "latent": latent, "header_bytes": int(codec.header_bytes(shape)),
        "side_info_bytes": int(codec.side_info_bytes),
    }


def summarize(codecs: pd.DataFrame, per_image: pd.DataFrame, throughput: pd.DataFrame,
              shape: tuple[int, int], device: str) -> pd.DataFrame:
    """One row per codec; its throughput columns are those measured on `device`."""
    from bench.analysis import breakeven

    pixels = shape[0] * shape[1]
    stats = metrics.aggregate(per_image, ["codec"])
    out = codecs.merge(stats, on="codec")
    out["content_bytes"] = out["bytes_mean"] - out["header_bytes"]
    out["compression_pct"] = 100.0 * (1.0 - out["bytes_mean"] / pixels)
    out["dimension_compression_pct"] = 100.0 * (1.0 - out["latent"] / pixels)
    if len(throughput):
        rates = throughput[throughput["device"] == device].pivot_table(
            index="codec", columns="direction", values="median_img_s")
        rates = rates.rename(columns=lambda d: f"{d}_img_s").reset_index()
        out = out.merge(rates, on="codec", how="left")
    for col in ("encode_img_s", "decode_img_s"):
        if col not in out:
            out[col] = np.nan
    return out.merge(breakeven(out), on="codec", how="left")
