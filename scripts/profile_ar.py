"""Where `ar` and `ar-lossy` spend their decoding time, per image, beside JPEG-LS near-lossless
(shared header) timed in the same process.

    .venv/bin/python scripts/profile_ar.py                       # 1 epoch, a temporary cache
    .venv/bin/python scripts/profile_ar.py --cache ~/.cache/aecodec-bench --epochs 0

Fits (or loads from --cache; --epochs 0: each codec's default) `ar` and `ar-lossy` on the
mnist-5k training split, then decodes --images test digits in this process (one process: the
codec splits a batch of 256 or more between two when it runs in the harness). Stages, per image:
`decode` the whole decode; `range coder` the same constriction calls on tables made beforehand
by the encoder (one per image and wavefront step, and, lossless, one more per image and step with
pixels that are not 0), which is the part no faster network can remove; the rest is the
network and the gathers around it. Every measurement is interleaved round by round with the
others and is the median over --rounds rounds.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from profile_factorized import interleaved

from bench import entropy


def coder_calls(codec, images: np.ndarray) -> list[list[np.ndarray]]:
    """Per image, the probability tables of each range-coder call its decode makes, in order."""
    from bench_codecs.ar_model import geometry

    g = geometry(*images.shape[1:])
    widths = np.diff(g.bounds)
    calls = []
    with codec.inference():
        for _, tab, sym, off in codec._tables(images):
            for i in range(len(off) - 1):
                rows, s, at = tab[off[i]:off[i + 1]], sym[off[i]:off[i + 1]], 0
                mine = []
                for k in widths:
                    mine.append(rows[at:at + k])
                    nonzero = int(np.count_nonzero(s[at:at + k])) if codec.levels == 256 else 0
                    if nonzero:
                        mine.append(rows[at + k:at + k + nonzero])
                    at += k + nonzero
                calls.append(mine)
    return calls


def range_coder_only(codec, payloads, calls) -> list[list[np.ndarray]]:
    """The decoder's range-coder calls alone, image by image: the symbols each call decodes."""
    out = []
    for data, mine in zip(payloads, calls):
        dec = entropy.decoder(data)
        entropy.decode_size(dec, codec.net.shape)
        out.append([dec.decode(entropy.categorical(), probs) for probs in mine])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (0: the default)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cache", default=None, help="model cache dir (default: a temporary one)")
    parser.add_argument("--images", type=int, default=500, help="test digits per batch")
    args = parser.parse_args()

    from bench.codec import TrainingData
    from bench.data import load_mnist_5k
    from bench.registry import get_codec

    torch.set_num_threads(1)
    data = load_mnist_5k()
    training = TrainingData(data.train.images, data.validation.images,
                            args.cache or tempfile.mkdtemp(prefix="profile-ar-"), progress=False, threads=1)
    images = data.test.images[: args.images]
    jpegls = get_codec("jpegls-near:shared_header=1").fit(training)
    jpegls_payloads = jpegls.encode(images)
    jobs = {"jpegls decode": lambda: jpegls.decode(jpegls_payloads)}
    epochs = f":epochs={args.epochs}" if args.epochs else ""
    for name in ("ar", "ar-lossy"):
        codec = get_codec(name + epochs).fit(training)
        payloads = list(codec._encode(images))
        calls = coder_calls(codec, images)
        jobs[f"{name} decode"] = lambda c=codec, p=payloads: c._decode_streams(p, 0)
        jobs[f"{name} range coder"] = lambda c=codec, p=payloads, k=calls: range_coder_only(c, p, k)
        print(f"{name}: {np.mean([len(p) for p in payloads]):.2f} B/image, "
              f"{np.mean([len(k) for k in calls]):.0f} range-coder calls per image")
    median = interleaved(jobs, args.rounds)
    n = len(images)
    print(f"\n{n} mnist-5k test digits in one process, median of {args.rounds} interleaved rounds; "
          f"JPEG-LS near-lossless (shared header) decodes {n / median['jpegls decode']:,.0f} img/s")
    print("\n| codec | decode µs/image | range coder µs/image | network and the rest µs/image "
          "| decode / JPEG-LS |")
    print("|---|---:|---:|---:|---:|")
    for name in ("ar", "ar-lossy"):
        whole, coder = (median[f"{name} {k}"] / n * 1e6 for k in ("decode", "range coder"))
        print(f"| `{name}` | {whole:.0f} | {coder:.0f} | {whole - coder:.0f} "
              f"| {median['jpegls decode'] / median[f'{name} decode']:.1%} |")


if __name__ == "__main__":
    main()
