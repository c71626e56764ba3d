"""Fuzz a codec's decoder with hostile payloads, for plugin authors and the test suite.

    report = fuzz_decoder(codec, codec.encode(images[:4]), other_codec_payloads, shape=(28, 28))
    print(report)
    assert_decoder_robust(report)

The codec contract (docs/writing-a-codec.md): a payload that is corrupt, truncated or from another
codec raises a `CodecError` subclass with a clear message; it never crashes the process and never
returns garbage silently. Payloads are generated from a seeded numpy Generator, so a failure
reproduces from its seed alone. Each payload is decoded alone, and its outcome is one of:

- refused: a `CodecError` with a message;
- accepted: one uint8 image of the expected shape. Of these, `altered` counts the payloads made
  from a valid one (truncated, bit-flipped, extended) that decode to other pixels than it: silent
  wrong answers, what a format without a checksum returns for most flips in its coded data;
- resized: one uint8 image of another size, which a format without a checksum on its size header
  returns for a bit flip there (a valid file of another size);
- wrong_shape: anything else the decoder returns (dtype, rank, number of images);
- crashed: any other exception, or a `CodecError` without a message.

A decode slower than `time_limit` also counts as a hang (measured when it returns: one that never
returns blocks the fuzz, and a test runner's timeout is what catches it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.codec import Codec, CodecError

KINDS = ("random", "truncated", "bitflip", "empty", "foreign", "extended")
OUTCOMES = ("refused", "accepted", "resized", "wrong_shape", "crashed")
MAX_RANDOM_BYTES = 2048
MAX_FLIPS = 8
MAX_APPENDED = 64
FAILURES_KEPT = 5


@dataclass
class FuzzReport:
    codec: str
    shape: tuple[int, int]
    seed: int
    by_kind: dict[str, Counter] = field(default_factory=dict)  # kind -> outcome -> count
    hangs: int = 0
    slowest: float = 0.0  # seconds, the slowest decode
    failures: list[str] = field(default_factory=list)  # the first few crashes, shapes and hangs

    def count(self, outcome: str, kind: str | None = None) -> int:
        kinds = [kind] if kind is not None else list(self.by_kind)
        return sum(self.by_kind.get(k, Counter())[outcome] for k in kinds)

    def tried(self, kind: str | None = None) -> int:
        return sum(self.count(outcome, kind) for outcome in OUTCOMES)

    @property
    def refused(self) -> int:
        return self.count("refused")

    @property
    def accepted(self) -> int:
        return self.count("accepted")

    @property
    def resized(self) -> int:
        return self.count("resized")

    @property
    def wrong_shape(self) -> int:
        return self.count("wrong_shape")

    @property
    def crashes(self) -> int:
        return self.count("crashed")

    @property
    def altered(self) -> int:
        return self.count("altered")

    def __str__(self) -> str:
        accepted = ", ".join(f"{k} {self.count('accepted', k)}/{self.tried(k)}"
                             + (f" ({self.count('altered', k)} altered)" if self.count("altered", k) else "")
                             for k in self.by_kind if self.count("accepted", k))
        return (f"{self.codec}: {self.tried()} payloads (seed {self.seed}): {self.refused} refused, "
                f"{self.accepted} accepted ({accepted or 'none'}), {self.resized} resized, "
                f"{self.wrong_shape} wrong shape, {self.crashes} crashes, {self.hangs} hangs "
                f"(slowest {self.slowest * 1000:.0f} ms)")


def hostile_payloads(valid: Sequence[bytes], foreign: Sequence[bytes], count: int,
                     rng: np.random.Generator):
    """(kind, payload, index of the valid payload it was made from or None), the kinds taken in
    turn so that each gets its share."""
    kinds = [k for k in KINDS if k != "foreign" or foreign]
    for n in range(count):
        kind = kinds[n % len(kinds)]
        source = int(rng.integers(len(valid)))
        base = valid[source]
        if kind == "random":
            payload = _random_bytes(rng, rng.integers(0, MAX_RANDOM_BYTES + 1))
        elif kind == "truncated":
            payload = base[: rng.integers(0, len(base))]
        elif kind == "bitflip":
            bits = rng.choice(8 * len(base), size=min(rng.integers(1, MAX_FLIPS + 1), 8 * len(base)),
                              replace=False)
            flipped = np.frombuffer(base, np.uint8).copy()
            np.bitwise_xor.at(flipped, bits // 8, (1 << (bits % 8)).astype(np.uint8))
            payload = flipped.tobytes()
        elif kind == "empty":
            payload = b""
        elif kind == "foreign":
            payload = foreign[rng.integers(len(foreign))]
        else:
            payload = base + _random_bytes(rng, rng.integers(1, MAX_APPENDED + 1))
        yield kind, payload, source if kind in ("truncated", "bitflip", "extended") else None


def _random_bytes(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def fuzz_decoder(codec: Codec, valid: Sequence[bytes], foreign: Sequence[bytes],
                 shape: tuple[int, int], count: int = 2000, seed: int = 0,
                 time_limit: float = 5.0) -> FuzzReport:
    """Decode `count` hostile payloads made from a fitted codec's `valid` payloads (images of
    `shape`) and other codecs' `foreign` ones, one at a time, and count what comes back."""
    valid = [bytes(p) for p in valid]
    if not valid or not all(valid):
        raise ValueError("fuzz_decoder needs at least one valid, non-empty payload")
    expected = (1, *shape)
    originals = [codec.decode([payload]) for payload in valid]
    for i, out in enumerate(originals):
        if not _is_image(out, expected):
            raise ValueError(f"valid payload {i} of {codec.name} decodes to {_describe(out)}, "
                             f"not {expected}")
    report = FuzzReport(codec.name, tuple(shape), seed, {k: Counter() for k in KINDS})
    for kind, payload, source in hostile_payloads(valid, [bytes(p) for p in foreign], count,
                                                  np.random.default_rng(seed)):
        start = time.perf_counter()
        outcome, detail, out = _decode_one(codec, payload, expected)
        elapsed = time.perf_counter() - start
        report.by_kind[kind][outcome] += 1
        if outcome == "accepted" and source is not None and not np.array_equal(out, originals[source]):
            report.by_kind[kind]["altered"] += 1
        report.slowest = max(report.slowest, elapsed)
        if elapsed > time_limit:
            report.hangs += 1
            detail = f"took {elapsed:.1f} s (limit {time_limit} s); {detail}"
        elif outcome in ("refused", "accepted"):
            continue
        if len(report.failures) < FAILURES_KEPT:
            report.failures.append(f"{kind} payload of {len(payload)} bytes "
                                   f"({payload[:16].hex()}...): {outcome}: {detail}")
    report.by_kind = {k: c for k, c in report.by_kind.items() if c}
    return report


def _decode_one(codec: Codec, payload: bytes, expected: tuple[int, ...]):
    """(outcome, what went wrong, the decoded array or None)."""
    try:
        out = codec.decode([payload])
    except CodecError as exc:
        if not str(exc):
            return "crashed", f"{type(exc).__name__} without a message", None
        return "refused", str(exc), None
    except Exception as exc:  # what the fuzz is for: the decoder let one through
        return "crashed", f"{type(exc).__name__}: {exc}", None
    if _is_image(out, expected):
        return "accepted", "", out
    one_image = isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and len(out) == 1
    outcome = "resized" if one_image else "wrong_shape"
    return outcome, f"decoded to {_describe(out)}, expected {expected}", out


def _is_image(out, shape: tuple[int, ...]) -> bool:
    return isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == shape


def _describe(out) -> str:
    if isinstance(out, np.ndarray):
        return f"a {out.dtype} array of shape {out.shape}"
    return f"a {type(out).__name__}"


def assert_decoder_robust(report: FuzzReport, size_flips_ok: bool = False) -> None:
    """Fail, with the first offending payloads, if a decode crashed, hung or returned another
    shape. `size_flips_ok` tolerates bit flips that come back resized, and only those: for formats
    whose size header has no checksum (JPEG, WebP, JPEG XL) such a flip is a valid file of
    another size, which no decoder can tell from one."""
    resized = report.resized - (report.count("resized", "bitflip") if size_flips_ok else 0)
    problems = {"crashes": report.crashes, "hangs": report.hangs,
                "wrong shapes": report.wrong_shape, "resized images": resized}
    bad = {name: n for name, n in problems.items() if n}
    if bad:
        listed = "\n  ".join(report.failures)
        raise AssertionError(f"{report.codec}: " + ", ".join(f"{n} {name}" for name, n in bad.items())
                             + f" in {report.tried()} hostile payloads (seed {report.seed})\n  {listed}"
                             + f"\n{report}")


def markdown_table(reports: Sequence[FuzzReport]) -> str:
    """What each decoder refused and accepted, per kind of hostile payload, as a Markdown table."""
    columns = [("truncated", "accepted"), ("truncated", "altered"), ("bitflip", "accepted"),
               ("bitflip", "altered"), ("extended", "accepted"), ("extended", "altered"),
               ("random", "accepted"), ("foreign", "accepted")]
    header = ("| codec | payloads | refused | truncations accepted | of them other pixels | "
              "bit flips accepted | of them other pixels | appended junk accepted | "
              "of them other pixels | random accepted | foreign accepted | resized |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in reports:
        cells = [(f"{r.count(outcome, kind)}" if outcome == "altered" else
                  f"{r.count(outcome, kind)}/{r.tried(kind)}") if r.tried(kind) else "–"
                 for kind, outcome in columns]
        rows.append(f"| {r.codec} | {r.tried()} | {r.refused} | " + " | ".join(cells)
                    + f" | {r.resized} |")
    return "\n".join(rows)
