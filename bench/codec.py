"""The codec contract: a batch of 8-bit grayscale images in, one byte string per image out."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_SIDE = 1024


class BenchError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with status 2."""


class CodecError(BenchError):
    """Anything a codec refuses: bad parameters, bad images, bad payloads."""


class UnknownCodecError(CodecError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ParameterError(CodecError, ValueError):
    """A spec parameter that is unknown or out of range."""


class ImageError(CodecError, ValueError):
    """Images that no codec can take: wrong dtype, rank, size, or an empty batch."""


class PayloadError(CodecError):
    """A payload that is corrupt, truncated or from another codec."""


def stderr_line(msg: str) -> None:
    """The default log of notices: one line on stderr."""
    print(msg, file=sys.stderr, flush=True)


class Payloads:
    """Per-image byte strings packed in one buffer with offsets.

    ``payloads[i]`` is image i's self-contained byte string and ``sizes[i]`` its honest cost.
    Fixed-rate codecs build this from one (N, k) array without a Python object per image.
    """

    __slots__ = ("buffer", "offsets")

    def __init__(self, buffer: bytes | np.ndarray, offsets: np.ndarray):
        self.buffer = np.frombuffer(buffer, dtype=np.uint8) if isinstance(buffer, bytes) else buffer
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if self.offsets[-1] != len(self.buffer) or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing and end at the buffer length")

    @classmethod
    def from_list(cls, items: Sequence[bytes]) -> Payloads:
        sizes = np.fromiter((len(b) for b in items), dtype=np.int64, count=len(items))
        return cls(b"".join(items), np.concatenate([[0], np.cumsum(sizes)]))

    @classmethod
    def from_array(cls, rows: np.ndarray) -> Payloads:
        """Equal-length payloads from an (N, k) uint8 array, zero-copy."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        n, k = rows.shape
        return cls(rows.reshape(-1), np.arange(n + 1, dtype=np.int64) * k)

    @classmethod
    def concat(cls, parts: Sequence[Payloads]) -> Payloads:
        """Batches of payloads, one after another, as one."""
        starts = np.cumsum([0] + [len(p.buffer) for p in parts])
        return cls(np.concatenate([p.buffer for p in parts]) if parts else b"",
                   np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts)]))

    def part(self, start: int, stop: int) -> Payloads:
        """Payloads start .. stop - 1, sharing this buffer."""
        o = self.offsets
        return Payloads(self.buffer[o[start] : o[stop]], o[start : stop + 1] - o[start])

    @classmethod
    def coerce(cls, payloads: Payloads | Sequence[bytes]) -> Payloads:
        if isinstance(payloads, Payloads):
            return payloads
        if isinstance(payloads, (bytes, bytearray, str)):
            raise PayloadError("decode takes a sequence of per-image byte strings, not one bytes")
        items = list(payloads)
        for i, item in enumerate(items):
            if not isinstance(item, (bytes, bytearray, memoryview)):
                raise PayloadError(f"payload {i} is {type(item).__name__}, expected bytes")
        return cls.from_list([bytes(b) for b in items])

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        return (self[i] for i in range(len(self)))

    def as_array(self) -> np.ndarray | None:
        """The (N, k) view when every payload has the same length k, else None."""
        sizes = self.sizes
        if len(sizes) == 0 or np.any(sizes != sizes[0]):
            return None
        return self.buffer.reshape(len(sizes), int(sizes[0]))


def payloads_to_decode(payloads: Payloads | Sequence[bytes], codec: str) -> Payloads:
    """What every decode starts with: Payloads, and at least one of them."""
    payloads = Payloads.coerce(payloads)
    if len(payloads) == 0:
        raise PayloadError(f"{codec}: no payloads to decode")
    return payloads


def fixed_rate_rows(payloads: Payloads | Sequence[bytes], k: int, codec: str) -> np.ndarray:
    """The (N, k) array of a fixed-rate codec's payloads; any other length is an error."""
    payloads = payloads_to_decode(payloads, codec)
    bad = np.flatnonzero(payloads.sizes != k)
    if len(bad):
        i = int(bad[0])
        raise PayloadError(f"{codec}: payload {i} has {payloads.sizes[i]} bytes; "
                           f"its payloads have exactly {k}")
    return payloads.as_array()


def decode_checked(codec: Codec, payloads: Payloads | Sequence[bytes],
                   shape: tuple[int, ...]) -> np.ndarray:
    """codec.decode, held to the batch shape (N, H, W) and dtype uint8 the caller expects: any
    other result is a PayloadError, never a silently different image."""
    decoded = codec.decode(payloads)
    if not isinstance(decoded, np.ndarray) or decoded.dtype != np.uint8 or decoded.shape != tuple(shape):
        got = (f"{decoded.dtype} {decoded.shape}" if isinstance(decoded, np.ndarray)
               else type(decoded).__name__)
        raise PayloadError(f"{codec.name}: decoded to {got}, expected uint8 {tuple(shape)}")
    return decoded


@dataclass(frozen=True)
class TrainingData:
    """What `Codec.fit` gets: the training split to fit on, and a validation subset held out of
    it for every choice a codec makes (calibration, epochs, precision). The test split is never
    passed to fit."""

    train: np.ndarray  # (N, H, W) uint8
    validation: np.ndarray  # (M, H, W) uint8, disjoint from train
    cache_dir: Path | None = None  # where trained models are cached (None: the default)
    train_device: str = "cpu"  # where a model that is not cached yet is trained
    progress: bool = True  # show training progress bars
    log: Callable[[str], None] = field(default=stderr_line, compare=False)  # one-line notices
    threads: int | None = None  # the run's PyTorch CPU threads (None: PyTorch's current count)


class Codec:
    """The codec contract, in one place. Subclass it: `encode` and `decode` are required, every
    other member has a default that suits a codec with nothing to fit and nothing sent once.

    A codec turns a batch of 8-bit grayscale images (N, H, W) into one self-contained byte string
    per image (`Payloads`) and back. `sizes[i]` is the honest cost of image i; what a decoder
    needs besides the payloads and shares across images is `side_info_bytes`, never hidden.
    """

    # Set by the registry from the codec's entry (CodecInfo), the one place these facts are
    # stated; a plugin's entry is read from these class attributes.
    name: str = ""  # canonical spec string, e.g. "jpeg:quality=50"
    lossless: bool = False
    learned: bool = False  # fitted on training images (its side information is what it learned)
    devices: tuple[str, ...] = ("cpu",)  # where it runs; when more than ("cpu",), the registry
    # constructs it with a `device=` keyword argument naming one of them
    description: str = ""  # one line for `bench list`
    params: tuple[Param, ...] = ()  # spec parameters, parsed and validated by the registry
    rate_param: str = ""  # the parameter that moves along its rate–distortion curve, e.g. quality
    sweep: str = ""  # its default sweep for `--sweep auto`, e.g. "quality=10..95"
    library: str = ""  # what does the work, for the throughput table
    precision: str = "–"  # the arithmetic, for the throughput table ("–": integer libraries)

    def fit(self, data: TrainingData) -> Codec:
        """Fit on `data.train`, choose on `data.validation`; called once before encoding."""
        return self

    def restore(self, data: TrainingData) -> Codec:
        """A fitted codec just unpickled (a parallel run's job returns it) makes itself ready to
        code again, without fitting again; `data` is what it was fitted on."""
        return self

    @property
    def side_info_bytes(self) -> int:
        """Bytes a decoder needs once for all images (weights, shared tables)."""
        return 0

    def header_bytes(self, shape: tuple[int, int]) -> int:
        """The part of each payload that carries no image content (container, headers, tables)
        for images of `shape`: for file formats, the size of the smallest valid file. 0 for
        codecs that send content only."""
        return 0

    def model_bits(self, images: np.ndarray) -> np.ndarray | None:
        """The code length per image (bits) that the codec's probability model predicts, for
        entropy-coded learned codecs; None for codecs without one."""
        return None

    def encode(self, images: np.ndarray) -> Payloads:
        raise NotImplementedError

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class CodecInfo:
    """What `bench list` shows and how to build the codec; `factory` imports on first use."""

    name: str
    factory: str | Callable[..., Codec]  # "module:attribute" for lazy built-ins
    lossless: bool
    description: str
    params: tuple[Param, ...] = ()
    devices: tuple[str, ...] = ("cpu",)
    origin: str = "built-in"
    family: str = field(default="", compare=False)  # names shared by one curve, e.g. "ae", "pca"
    rate_param: str = ""  # the parameter that moves along the family's rate–distortion curve
    learned: bool = False  # fitted on the training split
    sweep: str = ""  # the default sweep of `--sweep auto`, e.g. "quality=10..95"

    def load(self) -> Callable[..., Codec]:
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)

    def param(self, key: str) -> Param:
        for p in self.params:
            if p.name == key:
                return p
        valid = ", ".join(p.name for p in self.params) or "none"
        raise ParameterError(f"{self.name}: unknown parameter {key!r}; valid parameters: {valid}")


@dataclass(frozen=True)
class Param:
    """One spec parameter: its type, default and valid range, so bad values are named."""

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    help: str = ""

    def valid(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind is bool:
            return "0 or 1"
        rng = f"from {self.low} to {self.high}" if self.low is not None else ""
        return f"{'an integer' if self.kind is int else 'a number'} {rng}".strip()

    def parse(self, codec: str, text: Any) -> Any:
        bad = ParameterError(
            f"{codec}: bad value {self.name}={text!r}; {self.name} must be {self.valid()}"
        )
        try:
            if self.kind is bool:
                value = {"0": False, "1": True, "false": False, "true": True}[str(text).lower()]
            elif self.kind is int:
                value = int(str(text))
            elif self.kind is float:
                value = float(str(text))
                if not np.isfinite(value):
                    raise bad
            else:
                value = str(text)
        except (KeyError, ValueError):
            raise bad from None
        if self.choices is not None and value not in self.choices:
            raise bad
        if self.low is not None and not (self.low <= value <= self.high):
            raise bad
        return value


def check_images(images: Any, max_side: int = MAX_SIDE, trained: tuple | None = None,
                 codec: str = "") -> np.ndarray:
    """Validate an encoder's input before any work starts; returns a C-contiguous uint8 array.

    `trained` is the (H, W) a learned codec was fitted on, when it takes no other size.
    """
    if not isinstance(images, np.ndarray):
        raise ImageError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        hint = " (contains NaN)" if images.dtype.kind == "f" and np.isnan(images).any() else ""
        raise ImageError(
            f"images must be uint8 (8-bit grayscale), got dtype {images.dtype}{hint}; "
            "convert with np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if images.ndim != 3:
        raise ImageError(f"images must have shape (N, H, W), got rank {images.ndim} {images.shape}")
    n, h, w = images.shape
    if n == 0:
        raise ImageError("empty batch: images has 0 images")
    if h == 0 or w == 0 or h > max_side or w > max_side:
        raise ImageError(f"image size {h}x{w} is outside 1x1 .. {max_side}x{max_side}")
    if trained is not None and (h, w) != tuple(trained):
        raise ImageError(f"{codec} was trained on {trained[0]}x{trained[1]} images, got {h}x{w}")
    return np.ascontiguousarray(images)


def smallest_file_bytes(codec: Codec, shape: tuple[int, int]) -> int:
    """A file format's header size: its smallest valid file of this size, taken as the smallest
    encoding of a constant image (black, gray, white)."""
    constant = np.repeat(np.array([0, 128, 255], np.uint8), shape[0] * shape[1])
    return int(codec.encode(constant.reshape(3, *shape)).sizes.min())
