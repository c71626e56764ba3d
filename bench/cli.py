"""`python -m bench {list,run,train,report}`: user mistakes are one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bench.codec import BenchError, stderr_line
from bench.executor import JOB_THREADS
from bench.timing import MIN_ROUNDS

DEFAULT_CODECS = ("ae*,pca*,factorized,ar,ar-lossy,jpeg,jpeg:shared_header=1,webp,"
                  "jpegls-near:shared_header=1,png,zlib")
REPORTS = Path("reports")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=(
        "Benchmark learned autoencoder codecs against classical image codecs: bytes, quality "
        "per class, encode/decode speed on CPU and GPU."))
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,run,train,report,fuzz}")

    sub.add_parser("list", help="list every codec: lossless or lossy, devices, parameters")

    def data_args(q):
        q.add_argument("--dataset", default=None, help="mnist, mnist-5k, fashion-mnist, "
                       "photo-crops or folder:PATH (default: mnist when its files are present or "
                       "downloadable, else the offline mnist-5k)")
        q.add_argument("--data-dir", type=Path, default=None,
                       help="where IDX files are looked for and downloaded (default: the user "
                       "data dir, or $BENCH_DATA_DIR)")
        q.add_argument("--cache-dir", type=Path, default=None,
                       help="where trained models are cached (default: the user cache dir, or "
                       "$BENCH_CACHE_DIR)")
        q.add_argument("--threads", type=int, default=None, help="PyTorch threads for training "
                       "and coding in every job (default 1: the jobs run one per core); part of the models' "
                       "cache key, since float results depend on it")
        q.add_argument("--epochs", type=int, default=None,
                       help="training epochs for every learned codec (overrides :epochs=)")

    r = sub.add_parser("run", help="measure codecs on a dataset and write a report")
    r.add_argument("--codecs", default=DEFAULT_CODECS,
                   help=f"comma-separated specs with wildcards (default: {DEFAULT_CODECS})")
    r.add_argument("--sweep", default="auto", help="quality sweeps for rate-distortion curves, "
                   "e.g. 'jpeg:quality=10..95,webp:quality=10/50/90'; 'auto' (default) runs the "
                   "default sweep of every selected codec that has one (see `bench list`), also "
                   "as one item of a list, e.g. 'auto,factorized:quality=1..8'; 'none' for none")
    r.add_argument("--device", default="auto", help="cpu, cuda or cpu,cuda (default auto: cpu, "
                   "plus cuda when present)")
    r.add_argument("--out", type=Path, default=None,
                   help="output folder (default: a new folder under reports/)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the --out folder of an earlier run (one with meta.json and summary.csv)")
    r.add_argument("--rounds", type=int, default=5, help=f"timed rounds per measurement at most, "
                   f"at least {MIN_ROUNDS} (default 5; past {MIN_ROUNDS}, none starts after a "
                   "second of timed rounds)")
    r.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls (default 1)")
    r.add_argument("--batch", type=int, default=None,
                   help="images per timed call (default: the whole test split)")
    r.add_argument("--no-tsne", action="store_true", help="skip the t-SNE analysis")
    r.add_argument("--psnr-targets", default="20,25,30,35,40",
                   help="PSNR targets (dB) the verdict answers for (default 20,25,30,35,40)")
    r.add_argument("--ssim-targets", default="0.90,0.95,0.99",
                   help="SSIM targets the verdict answers for (default 0.90,0.95,0.99)")
    r.add_argument("--amortize", default="1000000", help="N images over which the at-scale "
                   "verdict spreads each codec's side information (default 1000000)")
    r.add_argument("--bd-method", default="pchip", help="BD-rate interpolation: pchip (default, "
                   "as in the JVET common test conditions), cubic or akima")
    r.add_argument("--jobs", default="auto", help="parallel worker processes for the fit-and-quality "
                   "jobs (joblib): a number, -1 or auto for one per core (default auto), 1 for "
                   "none; speed is always timed afterwards, one codec at a time")
    r.add_argument("--backend", default=None, help="joblib (local processes, the default with "
                   "--jobs) or ray (tasks on a Ray cluster: pip install 'aecodec-bench[ray]')")
    r.add_argument("--ray-address", default=None, help="the Ray cluster's HOST:PORT (default: "
                   "$RAY_ADDRESS, else a local Ray instance)")
    r.add_argument("--train-device", default=None, help="where models not in the cache yet are "
                   "trained (default: the first --device); part of the model's cache key")
    data_args(r)

    t = sub.add_parser("train", help="train and cache learned codecs (run does this on demand)")
    t.add_argument("--codecs", default="ae*", help="learned codec specs, e.g. 'ae*,factorized:quality=3' "
                   "(default: ae*)")
    t.add_argument("--device", default="auto", help="cpu or cuda (default auto: cuda when present)")
    data_args(t)

    rep = sub.add_parser("report", help="re-render report.md and plots from a run folder")
    rep.add_argument("run_dir", type=Path)

    fz = sub.add_parser("fuzz", help="decode hostile payloads with each codec (plugins too) and "
                        "count what it refuses and what it lets through")
    fz.add_argument("--codecs", required=True, help="comma-separated specs, e.g. 'linear,jpeg'")
    fz.add_argument("--payloads", type=int, default=2000, help="hostile payloads per codec "
                    "(default 2000)")
    fz.add_argument("--seed", type=int, default=0, help="the payloads' seed (default 0)")
    data_args(fz)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return {"list": cmd_list, "run": cmd_run, "train": cmd_train, "report": cmd_report,
                "fuzz": cmd_fuzz}[args.command](args, argv)
    except BenchError as exc:
        stderr_line(f"bench: error: {exc}")
        return 2
    except KeyboardInterrupt:
        stderr_line("bench: interrupted; no partial output or checkpoint was left behind")
        return 130


def cmd_list(args, argv) -> int:
    import warnings

    from bench.registry import default_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = default_registry()
        codecs = reg.codecs  # plugins imported: their facts are on their classes
    rows = []
    for name, info in sorted(codecs.items()):
        params = " ".join(f"{p.name}={_show(p.default)}" for p in info.params if p.name != "latent")
        rows.append((name, "lossless" if info.lossless else "lossy", ",".join(info.devices),
                     params, info.description + ("" if info.origin == "built-in" else f" [{info.origin}]"),
                     info.sweep))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
        if row[5]:
            print(" " * (widths[0] + 2) + f"default sweep (--sweep auto): {row[5]}")
    for problem in reg.problems.values():
        stderr_line(f"warning: {problem}")
    return 0


def _show(v) -> str:
    return str(int(v)) if isinstance(v, bool) else str(v)


def _devices(text: str, specs) -> list[str]:
    """--device: 'auto' is cpu, plus cuda when a selected codec can use it and PyTorch sees one."""
    from bench.timing import available_devices

    if text == "auto" and not any("cuda" in s.info.devices for s in specs):
        return ["cpu"]  # no need to import PyTorch just to look for a GPU
    here = available_devices()
    if text == "auto":
        return here
    wanted = [d.strip() for d in text.split(",") if d.strip()]
    for d in wanted:
        if d not in ("cpu", "cuda"):
            raise BenchError(f"unknown device {d!r} (valid: cpu, cuda, auto)")
        if d not in here:
            raise BenchError(f"device {d!r} requested but PyTorch sees no CUDA device here "
                             f"(available: {', '.join(here)})")
    if not wanted:
        raise BenchError("no device given (valid: cpu, cuda, auto)")
    return wanted


def _specs(args):
    from bench.registry import default_registry, with_param

    specs = default_registry().parse(args.codecs)
    if args.epochs is not None:
        specs = [with_param(s, "epochs", args.epochs) for s in specs]
    return specs


def _sweeps(args, specs):
    from bench.registry import default_registry, with_param

    items = [item.strip() for item in args.sweep.split(",")]
    if "none" in items:
        if items != ["none"]:
            raise BenchError(f"--sweep 'none' cannot be combined with other items, got {args.sweep!r}")
        return []
    auto = ",".join(dict.fromkeys(filter(None, (_auto_sweep(s) for s in specs))))
    sweeps = default_registry().sweep(",".join(auto if item == "auto" else item for item in items))
    epochs = getattr(args, "epochs", None)
    if epochs is not None:  # as for --codecs: every learned codec trains that long
        sweeps = list({s.canonical: s for s in (with_param(s, "epochs", epochs) for s in sweeps)}.values())
    return sweeps


def _auto_sweep(spec) -> str:
    """A bare codec name gets its default sweep (e.g. jpeg: optimize=1, 13 qualities); a spec
    with parameters gets its own curve, swept over the default sweep's values."""
    info = spec.info
    if not info.sweep:
        return ""
    if spec.canonical == info.name:
        return f"{info.name}:{info.sweep}"
    swept = [p for p in info.sweep.split(":") if p.startswith(f"{info.rate_param}=")]
    return ":".join([spec.fixed, *swept])


def _positive(name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise BenchError(f"--{name} must be at least {minimum}, got {value}")


def _numbers(option: str, text: str, low: float, high: float) -> tuple[float, ...]:
    """A comma-separated list of numbers in [low, high]: the bad item is named."""
    values = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            value = float("nan")
        if not (low <= value <= high and np.isfinite(value)):
            valid = f"from {low:g} to {high:g}" if np.isfinite(high) else f"{low:g} or more, finite"
            raise BenchError(f"{option}: bad value {item!r}; each target must be a number {valid}")
        values.append(value)
    return tuple(values)


def _verdict_options(args):
    from bench.analysis import BD_METHODS
    from bench.results import VerdictOptions

    try:
        amortize = int(args.amortize)
    except ValueError:
        amortize = 0
    if amortize < 1:
        raise BenchError(f"--amortize: bad value {args.amortize!r}; it must be a whole number of "
                         "images, 1 or more")
    if args.bd_method not in BD_METHODS:
        raise BenchError(f"--bd-method: unknown method {args.bd_method!r} (valid: "
                         f"{', '.join(BD_METHODS)})")
    return VerdictOptions(_numbers("--psnr-targets", args.psnr_targets, 0, np.inf),
                          _numbers("--ssim-targets", args.ssim_targets, 0, 1),
                          amortize, args.bd_method)


def _backend(args):
    from bench.executor import BACKENDS, Backend, check_reachable, cores, ray_address, require_ray

    try:
        jobs = -1 if args.jobs == "auto" else int(args.jobs)
    except ValueError:
        jobs = 0
    if jobs == 0 or jobs < -1:
        raise BenchError(f"--jobs: bad value {args.jobs!r}; it must be a whole number of worker "
                         "processes, 1 or more, or -1 or auto for one per core")
    if jobs == -1 and cores() == 1:
        jobs = 1
    name = args.backend or ("joblib" if jobs != 1 else "serial")
    if name not in BACKENDS:
        raise BenchError(f"--backend: unknown backend {name!r} (valid: {', '.join(BACKENDS[1:])})")
    if name == "ray":
        require_ray()
        address = ray_address(args.ray_address)
        if address:
            check_reachable(address)  # before any work: an unreachable cluster fails in seconds
    elif args.ray_address:
        raise BenchError("--ray-address needs --backend ray")
    return Backend(name, jobs, args.ray_address)


def _train_device(text: str | None, devices: list[str]) -> str:
    if text is None:
        return devices[0]
    if text not in devices:
        raise BenchError(f"--train-device {text!r} is not one of the run's devices "
                         f"({', '.join(devices)})")
    return text


def cmd_run(args, argv) -> int:
    from bench import results
    from bench.data import load_dataset

    for name, minimum in (("rounds", MIN_ROUNDS), ("warmup", 0), ("batch", 1), ("epochs", 1),
                          ("threads", 1)):
        _positive(name, getattr(args, name), minimum)
    from bench.runner import runnable

    verdict = _verdict_options(args)
    backend = _backend(args)
    specs = _specs(args)
    devices = _devices(args.device, specs)
    train_device = _train_device(args.train_device, devices)
    specs = runnable(specs, devices, stderr_line)  # before loading data: a device mistake fails fast
    sweeps = _sweeps(args, specs)
    if args.out is not None:
        results.check_out_dir(args.out, args.overwrite)
    start = time.perf_counter()
    dataset = load_dataset(args.dataset, args.data_dir)
    if dataset.why:
        stderr_line(f"dataset: {dataset.why}")
    from bench.report import render
    from bench.runner import run

    result = run(specs, dataset, devices, sweeps=sweeps, rounds=args.rounds, warmup=args.warmup,
                 batch=args.batch, cache_dir=args.cache_dir, train_device=train_device,
                 verdict=verdict, backend=backend, threads=args.threads,
                 tsne_families=() if args.no_tsne else ("ae",), log=stderr_line)
    result.meta["command"] = "python -m bench " + shlex.join(argv)
    result.meta["environment"] = results.environment()
    result.meta["seconds"] = round(time.perf_counter() - start, 1)
    out = args.out or results.new_run_dir(REPORTS, dataset.name)
    # Rendered from what was saved, so that `bench report` later gives the very same report.
    results.save(result, out, render=lambda d: render(results.load(d), d), overwrite=args.overwrite)
    print(f"report: {out / 'report.md'}")
    failed = result.meta["failed_jobs"]
    if failed:
        stderr_line(f"{len(failed)} job(s) failed: {', '.join(f['codec'] for f in failed)} "
                    "(listed in the report)")
    return 1 if failed else 0


def cmd_train(args, argv) -> int:
    from bench.codec import TrainingData
    from bench.data import load_dataset
    from bench.metrics import mse, psnr_from_mse

    _positive("epochs", args.epochs, 1)
    _positive("threads", args.threads, 1)
    specs = _specs(args)
    devices = _devices(args.device, specs)
    devices = devices[-1:] if args.device == "auto" else devices
    if len(devices) != 1:
        raise BenchError(f"train runs on one device, got {', '.join(devices)}")
    trainable = [s for s in specs if s.info.learned and "epochs" in dict(s.values)]
    if not trainable:
        raise BenchError(f"none of {', '.join(s.canonical for s in specs)} is trained; train takes "
                         "the specs of learned codecs, such as ae95 or 'ae*'")
    dataset = load_dataset(args.dataset, args.data_dir)
    # The thread count `run` uses, so that `run` finds these models.
    train, validation = dataset.training  # of one size, as `run` fits them
    data = TrainingData(train, validation, args.cache_dir, devices[0], log=stderr_line,
                        threads=args.threads or JOB_THREADS)
    for spec in trainable:
        codec = spec.build(devices[0])
        start = time.perf_counter()
        codec.fit(data)
        took = time.perf_counter() - start
        test = validation
        psnr = float(psnr_from_mse(mse(test, codec.decode(codec.encode(test))).mean()))
        how = f"trained in {took:.1f} s" if codec.trained_now else "cached"
        history = codec.history
        loss = f"final loss {history.train[-1]:.5f} (training)"
        if history.validation:
            loss += f", {history.validation[-1]:.5f} (validation)"
        print(f"{spec.canonical}: {how}, {loss}, validation PSNR {psnr:.2f} dB -> {codec.checkpoint}")
    return 0


def cmd_report(args, argv) -> int:
    from bench import results
    from bench.report import render

    result = results.load(args.run_dir)
    print(f"report: {render(result, args.run_dir)}")
    return 0


def cmd_fuzz(args, argv) -> int:
    """Each codec fitted on the training split (learned ones from the cache), four test images
    encoded, then hostile payloads made from them and from the other codecs' (bench.fuzz)."""
    from bench.codec import TrainingData
    from bench.data import load_dataset
    from bench.fuzz import fuzz_decoder, markdown_table

    for name, minimum in (("payloads", 1), ("epochs", 1), ("threads", 1)):
        _positive(name, getattr(args, name), minimum)
    specs = _specs(args)
    dataset = load_dataset(args.dataset, args.data_dir)
    train, validation = dataset.training
    data = TrainingData(train, validation, args.cache_dir, log=stderr_line,
                        threads=args.threads or JOB_THREADS)
    sample = validation[:4]  # one size, as a decode batch must be
    codecs = {s.canonical: s.build().fit(data) for s in specs}
    valid = {name: list(codec.encode(sample)) for name, codec in codecs.items()}
    reports = [fuzz_decoder(codec, valid[name], [p for o, ps in valid.items() if o != name for p in ps],
                            sample.shape[1:], count=args.payloads, seed=args.seed)
               for name, codec in codecs.items()]
    print(markdown_table(reports))
    broken = [r.codec for r in reports if r.crashes or r.hangs or r.wrong_shape]
    if broken:
        stderr_line(f"bench: {', '.join(broken)} crashed, hung or returned another shape (see the table)")
    return 1 if broken else 0
