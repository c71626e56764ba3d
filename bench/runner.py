"""Codecs x dataset x devices -> tidy tables. results.py saves them, report.py renders them."""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench import images as batches
from bench import metrics
from bench.codec import Codec, CodecError, Payloads, TrainingData, decode_checked, stderr_line
from bench.data import Dataset
from bench.executor import JOB_THREADS, Backend, execute
from bench.registry import Spec
from bench.results import RunResult, VerdictOptions
from bench.samples import SAMPLE_SHAPES, sample_images, sample_indices
from bench.summary import codec_row, summarize
from bench.timing import WARMUP_IMAGES, device_name, measure

TSNE_MIN_IMAGES = 10  # a mixed-size run embeds its most common size only, when it has this many
SERIAL = Backend()


def devices_for(spec: Spec, devices: list[str]) -> list[str]:
    """The selected devices that `spec` runs on, in the selected order."""
    return [d for d in devices if d in spec.info.devices]


def runnable(specs: list[Spec], devices: list[str], log: Callable[[str], None] = stderr_line) -> list[Spec]:
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
    return batches.normalize(np.concatenate([images] * reps)[:batch])


def shape_groups(images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(indices, (n, H, W) images) per size: what a codec is given, one uniform batch at a time."""
    if not batches.is_mixed(images):
        return [(np.arange(len(images)), images)]
    return [(idx, batches.stack(images, idx)) for _, idx in batches.groups(images)]


@dataclass(frozen=True)
class QualityJob:
    """One codec spec's quality pass: fit on the training split, code the test split, measure."""

    spec: Spec
    role: str  # "main" (a selected codec) or "sweep" (a point of a quality sweep)
    device: str
    keep_decoded: bool  # the main codecs' reconstructions feed the samples and t-SNE


@dataclass(frozen=True)
class JobInputs:
    """What every quality job reads (pickled with each job that a worker process runs)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    cache_dir: Path | None
    train_device: str
    threads: int  # PyTorch threads: float results depend on it, so every worker uses the same
    progress: bool
    log: Callable[[str], None]  # module-level (picklable) for workers
    in_process: bool  # jobs run in this process (not in worker processes)

    def training(self) -> TrainingData:
        return TrainingData(self.train, self.validation, self.cache_dir, self.train_device,
                            self.progress, self.log, self.threads)


@dataclass
class JobResult:
    row: dict | None = None
    per_image: pd.DataFrame | None = None
    decoded: np.ndarray | None = None
    codec: Codec | None = None  # the fitted codec, to be timed afterwards (see _returned)
    error: str = ""  # why the job failed: one line


def quality_job(job: QualityJob, inputs: JobInputs) -> JobResult:
    """Runs in the main process or a worker; a failure is returned, never raised."""
    start = time.perf_counter()
    where = ""
    try:
        codec = job.spec.build(job.device).fit(inputs.training())
        frames, parts = [], []
        for idx, x in shape_groups(inputs.test):  # one size at a time: the codec contract
            if batches.is_mixed(inputs.test):  # a failure names the size it failed on
                where = f" (coding the {x.shape[1]}x{x.shape[2]} test images)"
            payloads = codec.encode(x)
            decoded = decode_checked(codec, payloads, x.shape)
            where = ""
            frame = metrics.per_image(x, decoded, payloads.sizes, codec.model_bits(x))
            frame.insert(0, "index", idx)
            frame["header_bytes"] = int(codec.header_bytes(x.shape[1:]))
            frames.append(frame)
            parts.append((idx, decoded))
        frame = pd.concat(frames, ignore_index=True).sort_values("index", kind="stable")
        frame = frame.reset_index(drop=True)
        frame.insert(0, "codec", job.spec.canonical)
        frame.insert(1, "role", job.role)
        frame.insert(3, "label", inputs.labels)
        row = codec_row(job.spec, codec, job.role, frame, (inputs.train, inputs.validation))
        row["job_seconds"] = time.perf_counter() - start  # fit (or cache load) and quality
        decoded = batches.assemble(parts, len(inputs.test)) if job.keep_decoded else None
        return JobResult(row, frame, decoded, codec if inputs.in_process else _returned(codec))
    except Exception as exc:  # reported with its spec; the other jobs go on
        first = (str(exc).splitlines() or [""])[0]
        return JobResult(error=f"{type(exc).__name__}: {first}"[:300 - len(where)] + where)


def _waves(jobs: list[QualityJob], inputs: JobInputs) -> list[list[int]]:
    """Job indices in two waves for parallel workers: first one job per model to train (learned
    codecs first, since they take longest) and every job of a codec without one, then the jobs
    that reuse a model the first wave trained (the other qualities of a variable-rate model, say),
    which would otherwise train it again at the same time."""
    first, second, seen = [], [], set()
    training = inputs.training()
    for i, job in enumerate(jobs):
        try:
            key = job.spec.build(job.device).cache_key(training)
        except Exception:  # no model cache, or a codec that fails: its job says why
            key = None
        if key is not None and key in seen:
            second.append(i)
        else:
            first.append(i)
            seen.add(key)
    first.sort(key=lambda i: not jobs[i].spec.info.learned)
    return [wave for wave in (first, second) if wave]


def _returned(codec: Codec) -> Codec | None:
    """The fitted codec as a worker's job returns it: pickled (a learned codec leaves out what
    its `prepare` derives), or None when it does not pickle, and the main process fits it again."""
    try:
        pickle.dumps(codec)
    except Exception:
        return None
    return codec


def run(specs: list[Spec], dataset: Dataset, devices: list[str], *, sweeps: list[Spec] = (),
        rounds: int = 5, warmup: int = 1, batch: int | None = None, cache_dir: Path | None = None,
        train_device: str | None = None, verdict: VerdictOptions | None = None,
        backend: Backend = SERIAL, threads: int | None = None,
        tsne_families: tuple[str, ...] = ("ae",), progress: bool = True,
        log: Callable[[str], None] = stderr_line) -> RunResult:
    """Quality of every spec and sweep point on the test split (the jobs, on `backend`), then, in
    this process and one codec at a time, throughput: of the selected codecs on every selected
    device, and of the settings the verdict names."""
    from tqdm import tqdm

    from bench.analysis import verdict_settings

    verdict = verdict or VerdictOptions()
    test = dataset.test
    specs = runnable(specs, devices, log)
    sweeps = [s for s in sweeps if devices_for(s, devices) and s not in specs]
    train, validation = dataset.training  # one size (bench.images' rule when the data mix sizes)
    inputs = JobInputs(train, validation, test.images, test.labels,
                       cache_dir, train_device or devices[0], threads or JOB_THREADS,
                       progress and not backend.parallel, stderr_line if backend.parallel else log,
                       in_process=not backend.parallel)
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
    results: list[JobResult | None] = [None] * len(jobs)
    try:
        for wave in _waves(jobs, inputs) if backend.parallel else [list(range(len(jobs)))]:
            for i, result in zip(wave, execute(quality_job, [jobs[i] for i in wave], inputs, backend,
                                               lambda k, r, wave=wave: done(wave[k], r), resources)):
                results[i] = result
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
    samples = {}
    samples["original"], sample_sizes = sample_images(test.images[keep])
    samples.update({j.spec.canonical: sample_images(r.decoded[keep])[0] for j, r in ok if j.keep_decoded})
    if sample_sizes is not None:
        samples[SAMPLE_SHAPES] = sample_sizes
    decoded_for_tsne = {j.spec.canonical: r.decoded for j, r in ok
                        if j.keep_decoded and j.spec.info.family in tsne_families}

    # Speed is measured here, after the jobs, one codec at a time: never under parallel load.
    # A codec fitted by its job is timed as it is (from a worker, its model prepared again here);
    # one fitted for another device is fitted here, which loads the model its job cached.
    timed = throughput_batch(test.images, batch)
    fitted = {(j.spec.canonical, j.device): r.codec for j, r in ok if r.codec is not None}
    training = replace(inputs, progress=progress, log=log).training()

    def time_on(spec: Spec, device: str) -> list[dict]:
        codec = fitted.get((spec.canonical, device))
        try:
            codec = codec.restore(training) if codec is not None else spec.build(device).fit(training)
            return _throughput(codec, spec, device, timed, rounds, warmup)
        except CodecError as e:  # one codec failing to be timed costs its speed, not the run
            log(f"speed of {spec.canonical} on {device} not measured: {e}")
            failed.append({"codec": spec.canonical, "error": f"speed on {device}: {e}"})
            return []

    speed = []
    for job, _ in ok:
        if job.role == "main":
            for device in devices_for(job.spec, devices):
                speed += time_on(job.spec, device)
    summary = summarize(rows, per_image, pd.DataFrame(speed), devices[0])
    # The verdict names settings (often sweep points) whose speed it quotes: time those too.
    by_name = {j.spec.canonical: j.spec for j, _ in ok}
    already = {r["codec"] for r in speed}
    for name in verdict_settings(summary, verdict.targets, verdict.amortize):
        if name not in already:
            speed += time_on(by_name[name], devices_for(by_name[name], devices)[0])
    fitted.clear()
    throughput = pd.DataFrame(speed)
    summary = summarize(rows, per_image, throughput, devices[0])
    phases["throughput"] = time.perf_counter() - start - phases["jobs"]
    tsne, tsne_note = _tsne(test.images, test.labels, decoded_for_tsne, cache_dir, log)
    meta = {"dataset": dataset.name, "dataset_source": dataset.source, "dataset_why": dataset.why,
            "dataset_fingerprint": dataset.fingerprint, "classes": list(dataset.classes),
            # image_shape: the one size; with mixed sizes (image_sizes), the size trained on
            "image_shape": list(dataset.shape), "image_sizes": batches.describe(test.images),
            "mixed_sizes": dataset.mixed, "training_rule": dataset.training_rule(),
            "tsne_note": tsne_note, "train_images": len(dataset.train),
            "validation_images": len(dataset.validation), "test_images": len(test),
            "devices": devices, "train_device": inputs.train_device, "torch_threads": inputs.threads,
            "backend": {"name": backend.name, "jobs": backend.jobs}, "rounds": rounds,
            "warmup": warmup, "throughput_batch": len(timed),
            "throughput_batch_pixels": int(batches.pixels(timed).sum()),
            "codecs": [s.canonical for s in specs], "sweeps": [s.canonical for s in sweeps],
            "failed_jobs": failed,
            "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
            "verdict": {"psnr_targets": list(verdict.psnr_targets),
                        "ssim_targets": list(verdict.ssim_targets),
                        "amortize": verdict.amortize, "bd_method": verdict.bd_method}}
    return RunResult(meta, summary, per_image, throughput, tsne, samples)


def _tsne(images: np.ndarray, labels: np.ndarray, decoded: dict[str, np.ndarray],
          cache_dir: Path | None, log: Callable[[str], None]) -> tuple[pd.DataFrame, str]:
    """The t-SNE points, and a note when the test images mix sizes: one embedding needs one size,
    so it is restricted to the test images of the most common size (skipped below TSNE_MIN_IMAGES)."""
    if not decoded:
        return pd.DataFrame(), ""
    from bench.tsne import tsne_points

    if not batches.is_mixed(images):
        return tsne_points(images, labels, decoded, cache_dir=cache_dir, log=log), ""
    shape = batches.most_common_shape(images)
    idx = dict(batches.groups(images))[shape]
    size = f"{shape[0]}x{shape[1]}"
    if len(idx) < TSNE_MIN_IMAGES:
        return pd.DataFrame(), (f"skipped: the test images mix sizes and the most common one, {size}, "
                                f"has {len(idx)} images (a t-SNE embeds images of one size; it needs "
                                f"{TSNE_MIN_IMAGES})")
    points = tsne_points(batches.stack(images, idx), labels[idx],
                         {c: batches.stack(d, idx) for c, d in decoded.items()},
                         cache_dir=cache_dir, log=log)
    points["index"] = idx[points["index"].to_numpy()]  # back to test-split positions
    return points, (f"restricted to the {len(idx):,} test images of {size}, the most common size: "
                    f"the test images mix sizes ({batches.describe(images)}), and a t-SNE embeds "
                    "images of one size")


def _throughput(codec: Codec, spec: Spec, device: str, batch: np.ndarray, rounds: int,
                warmup: int) -> list[dict]:
    """One timed call codes every shape group of the batch, each as one uniform batch."""
    warmup = max(warmup, 0)
    groups = [x for _, x in shape_groups(batch)]
    n, pixels = len(batch), int(batches.pixels(batch).sum())
    heads = [x[:WARMUP_IMAGES] for x in groups]  # what the warm-up calls code

    def encode(images: list[np.ndarray]) -> list:
        return [codec.encode(x) for x in images]

    def decode(payloads: list, images: list[np.ndarray]) -> list[np.ndarray]:
        return [decode_checked(codec, p, x.shape) for p, x in zip(payloads, images)]

    enc, payloads = measure(lambda: encode(groups), n, rounds, warmup, device, lambda: encode(heads))
    head_payloads = [Payloads.coerce(p).part(0, len(x)) for p, x in zip(payloads, heads)]
    dec, decoded = measure(lambda: decode(payloads, groups), n, rounds, warmup, device,
                           lambda: decode(head_payloads, heads))
    mse = np.concatenate([metrics.mse(x, d) for x, d in zip(groups, decoded)])
    psnr = float(metrics.psnr_from_mse(mse.mean()))
    mpx = pixels / n / 1e6  # megapixels per image
    return [{
        "codec": spec.canonical, "device": device, "device_name": device_name(device),
        "direction": direction, "batch": n, "rounds": len(t.seconds),
        "median_img_s": t.median_img_s, "min_img_s": t.min_img_s, "max_img_s": t.max_img_s,
        "psnr_db": psnr, "precision": codec.precision, "library": codec.library,
        "batch_pixels": pixels, "median_mpx_s": t.median_img_s * mpx,
        "min_mpx_s": t.min_img_s * mpx, "max_mpx_s": t.max_img_s * mpx,
    } for direction, t in (("encode", enc), ("decode", dec))]


