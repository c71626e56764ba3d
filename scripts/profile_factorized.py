"""Where the `factorized` codec spends its time, per image, beside JPEG timed in the same process.

    .venv/bin/python scripts/profile_factorized.py                 # qualities 2 and 6, 1 epoch
    .venv/bin/python scripts/profile_factorized.py --epochs 36 --rounds 15 --cache /tmp/fcache
    .venv/bin/python scripts/profile_factorized.py --cache ~/.cache/aecodec-bench --epochs 0

Fits (or loads from --cache; --epochs 0: the default recipe) the model on the mnist-5k training
split, then codes the 1,000 test digits. Every measurement is interleaved round by round with the
others (so a burst of load on this shared machine hits them alike) and reported as the median over
--rounds rounds, with JPEG's encode and decode of the same images in the same rounds: compare
ratios, not raw numbers.

Stages (in this process): analysis (uint8 images -> integer latents), coder encode (latents ->
payload bytes), coder decode (bytes -> latents), synthesis (latents -> uint8 images). Encode and
decode are the codec's whole `encode`/`decode`, which split a batch between worker processes
where the codec does (one per core). PyTorch is set to --threads threads, as the runner sets it
(the codec pins its own inference thread count). Works on older versions of the codec too (it falls
back to their internals), so a before/after comparison runs the same script: put the old tree
first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch


def stages(codec, images: np.ndarray) -> dict:
    """name -> a callable doing that stage on `images` (inputs prepared once, outside the timing)."""
    from bench import entropy

    q = codec.latents(images)
    shape = images.shape[1:]
    payloads = codec.encode(images)
    if hasattr(codec, "encode_latents"):
        coder_encode = lambda: codec.encode_latents(q, shape)  # noqa: E731
        synthesis = lambda: codec.pixels(q, shape)  # noqa: E731
    else:  # the codec before the variable-rate model
        model = codec.model

        def coder_encode():
            return codec.coder.encode(q, end=lambda enc: entropy.end_stream(enc, codec.tag),
                                      begin=lambda enc: entropy.encode_size(enc, model.shape, model.shape))

        def synthesis():
            z = torch.from_numpy(q).float().reshape(len(q), *model.latent_shape)
            x = codec._chunked(codec.synthesis, z, (1, *model.shape))
            return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8).squeeze(1).numpy()

    return {"analysis": lambda: codec.latents(images), "coder encode": coder_encode,
            "coder decode": lambda: codec.decode_latents(payloads), "synthesis": synthesis,
            "encode": lambda: codec.encode(images), "decode": lambda: codec.decode(payloads)}


def interleaved(jobs: dict, rounds: int) -> dict:
    """name -> median seconds of one call, the calls taken in turn each round after a warm-up."""
    for fn in jobs.values():
        fn()
    seconds = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, fn in jobs.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qualities", default="2,6")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (0: the default)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (the runner sets 1 per job)")
    parser.add_argument("--cache", default=None, help="model cache dir (default: a temporary one)")
    parser.add_argument("--images", type=int, default=1000, help="test digits per batch")
    args = parser.parse_args()

    from bench.codec import TrainingData
    from bench.data import load_mnist_5k
    from bench.registry import get_codec

    torch.set_num_threads(args.threads)
    data = load_mnist_5k()
    cache = args.cache or tempfile.mkdtemp(prefix="profile-factorized-")
    training = TrainingData(data.train.images, data.validation.images, cache, progress=False,
                            threads=args.threads)
    images = data.test.images[: args.images]
    jpeg = get_codec("jpeg").fit(training)
    jpeg_payloads = jpeg.encode(images)
    jobs = {"jpeg encode": lambda: jpeg.encode(images), "jpeg decode": lambda: jpeg.decode(jpeg_payloads)}
    codecs = {}
    for quality in map(int, args.qualities.split(",")):
        start = time.perf_counter()
        epochs = f":epochs={args.epochs}" if args.epochs else ""
        codec = get_codec(f"factorized:quality={quality}{epochs}").fit(training)
        fit = time.perf_counter() - start
        codecs[quality] = codec
        for name, fn in stages(codec, images).items():
            jobs[f"q{quality} {name}"] = fn
        sizes = codec.encode(images).sizes
        print(f"quality {quality}: fitted in {fit:.1f} s ({'trained' if codec.trained_now else 'cached'}), "
              f"{sizes.mean():.2f} B/image")
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[0]
    median = interleaved(jobs, args.rounds)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[0]
    n = len(images)
    print(f"\n{n} mnist-5k test digits, median of {args.rounds} interleaved rounds, torch threads "
          f"{args.threads}, load average {load_before} -> {load_after}")
    print(f"JPEG: encode {n / median['jpeg encode']:,.0f} img/s, "
          f"decode {n / median['jpeg decode']:,.0f} img/s")
    print("\n| quality | analysis µs | coder encode µs | coder decode µs | synthesis µs "
          "| encode img/s | decode img/s | encode / JPEG | decode / JPEG |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for quality in codecs:
        us = {k: median[f"q{quality} {k}"] / n * 1e6 for k in ("analysis", "coder encode",
                                                            "coder decode", "synthesis")}
        enc, dec = n / median[f"q{quality} encode"], n / median[f"q{quality} decode"]
        print(f"| {quality} | {us['analysis']:.1f} | {us['coder encode']:.1f} | {us['coder decode']:.1f} "
              f"| {us['synthesis']:.1f} | {enc:,.0f} | {dec:,.0f} "
              f"| {median['jpeg encode'] / median[f'q{quality} encode']:.1%} "
              f"| {median['jpeg decode'] / median[f'q{quality} decode']:.1%} |")


if __name__ == "__main__":
    main()
