"""`factorized`: a learned lossy codec trained for rate and distortion (the network, its training and
its tables: bench_codecs.factorized_model), with real range-coded payloads (the coder:
bench_codecs.factorized_coder). One model serves every quality: `factorized:quality=q` for every q
loads the same cached checkpoint. Any image size from 1x1 to MAX_SIDE: images are padded to sides
divisible by 4 (edge replication) and cropped after decoding; a batch holds images of one size.

**Payload.** One range-coder stream (bench.entropy): the image size (`entropy.encode_size`: one bit
at the trained size; at any other, its two sides and SIZE_CHECK_BITS of a hash of this model,
quality and size, so that a damaged or foreign stream is seldom read as an image of another size),
the latents (bench_codecs.factorized_coder: two flags, the symbols, escaped values), then the 4-bit
check symbol of the model and quality (each quality its own). Latents are coded under the
integer tables in the checkpoint, never under a float network output, so the decoder rebuilds the
encoder's probabilities bit for bit: quality q's table per latent at a trained size of at most 64
latent positions (32x32 images; factorized_model.ARCH), its table per channel at every other size.

**Identical pixels whatever the batch.** Float convolutions on the CPU can give different low
bits for different batch sizes (another kernel blocking). Analysis and synthesis therefore
always run on zero-padded chunks of exactly the same number of images for a given size (CHUNK
images of 28x28, as many pixels at other sizes), copied into one buffer, so an image's latents and
pixels are the same alone, in any split, and in any worker process (a large batch is split
between one per core). On the CPU they run on one thread whatever the caller set. The limit:
pixels decoded on another device or CPU type can differ in the last rounding step (on CUDA, cuDNN
may use TF32); bit-exact pixels everywhere would need integer synthesis. The payloads are exact
everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import entropy
from bench.codec import (
    MAX_SIDE,
    CodecError,
    PayloadError,
    Payloads,
    TrainingData,
    check_images,
    payloads_to_decode,
)
from bench.learned import History, LearnedCodec, host_tensor, in_processes
from bench_codecs import FACTORIZED_LAMBDAS
from bench_codecs.factorized_coder import LatentCoder
from bench_codecs.factorized_model import ARCH, RECIPE, TABLES, FactorizedPrior, inference_forms, pad4, train

# Images of 28x28 per analysis/synthesis call, always this many (zero-padded; at other sizes as
# many pixels): see the module docstring.
CHUNK = {"cpu": 64, "cuda": 4096}
SIZE_CHECK_BITS = 8
DECODER_PARTS = ("s1.", "s2.", "synthesis_linear.", "log_inv_gain", "log_hidden_gain", "hidden_bias",
                 "table_", "channel_")
MAX_CODERS = 8  # latent grids whose coders are kept


class FactorizedCodec(LearnedCodec):
    family = "factorized"
    code_modules = (__name__, "bench_codecs.factorized_model", "bench.entropy")
    allow_bf16 = False  # the decoder must compute what the encoder's device computes
    train_threads = RECIPE["threads"]
    # Chunks of 64 are too small to split between threads: a second thread gained 10-25 % on an
    # idle 2-core machine, and when another process holds a core every parallel region waits for
    # the descheduled thread (600 img/s instead of 11,000-29,000 at load 5 on 2 cores); and the
    # range coder holds the GIL. Processes pay (bench.learned.in_processes, 2.5 ms a call here):
    # 1,000 digits at quality 6 in two of them, 39-42k img/s encode and 30-32k decode against
    # 24k and 17k in one. A worker process loads the model from its checkpoint.
    inference_threads = 1
    inference_processes = None
    derived = ("analysis", "synthesis", "coders", "buffers")  # what `prepare` builds

    def __init__(self, quality: int = 6, epochs: int = RECIPE["epochs"], seed: int = 0, device: str = "cpu"):
        super().__init__(epochs, seed, device)
        self.quality, self.lam = quality, FACTORIZED_LAMBDAS[quality]
        self.lambdas = [FACTORIZED_LAMBDAS[q] for q in sorted(FACTORIZED_LAMBDAS)]
        self.q = sorted(FACTORIZED_LAMBDAS).index(quality)  # the model's index of this quality
        self.library = f"torch {torch.__version__} + {entropy.version()}"
        self.coders: dict[tuple[int, int], LatentCoder] = {}
        self.buffers: dict[tuple[bool, int], torch.Tensor] = {}

    def hyperparameters(self) -> dict:
        # Not the quality: every quality is served by the same model.
        return {"arch": ARCH, "recipe": RECIPE, "tables": TABLES, "lambdas": self.lambdas}

    def build_model(self, shape) -> FactorizedPrior:
        return FactorizedPrior(tuple(shape), tuple(self.lambdas))

    def train_model(self, model: FactorizedPrior, data: TrainingData) -> History:
        return train(model, data.train, data.validation, self.lambdas, self.epochs, self.seed, data.progress)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.synthesis]

    @property
    def side_info_bytes(self) -> int:
        """What a decoder of this quality needs: the synthesis weights as float32 (its gains folded
        in) and its tables as a decoder would receive them: per row lo and length (int16), each
        frequency minus one (uint16; frequencies are 1 .. 2**16); the zero padding of the stored
        arrays is not sent."""
        sizes = (self.require_model().table_size, self.require_model().channel_size)
        return super().side_info_bytes + sum(4 * t.shape[1] + 2 * int(t[self.q].sum()) for t in sizes)

    def prepare(self, data: TrainingData) -> None:
        super().prepare(data)
        model = self.require_model()
        for q in range(model.qualities):  # raises for unusable tables: the model is retrained
            if model.per_latent:
                model.tables(q).check(TABLES["search"])
            model.channel_tables(q, 1).check(TABLES["search"])
        self.analysis, self.synthesis = inference_forms(model, self.q)
        # Bound to what the decoders of all qualities receive; each quality its own tag.
        sent = [t for name, t in model.state_dict().items() if name.startswith(DECODER_PARTS)]
        base = entropy.model_tag(*(t.detach().cpu().contiguous().numpy().tobytes() for t in sent))
        self.tag = (base + self.q) % (1 << entropy.TAG_BITS)
        self.coders, self.buffers = {}, {}

    def coder(self, shape: tuple[int, int]) -> LatentCoder:
        """The coder of images of `shape`: quality q's per-latent tables at the trained size (if
        the model has them), its per-channel tables at any other; built once per size."""
        shape = tuple(int(s) for s in shape)
        if shape not in self.coders:
            if len(self.coders) >= MAX_CODERS:
                self.coders.clear()
            model = self.require_model()
            c, positions = model.latent_shape[0], -(-shape[0] // 4) * -(-shape[1] // 4)
            if shape == model.shape and model.per_latent:
                tables, kinds = model.tables(self.q), np.arange(model.rows)
            else:
                tables, kinds = model.channel_tables(self.q, 1), np.repeat(np.arange(c), positions)
            # Latents travel position-major (channels-last), tables are channel-major.
            layout = np.arange(c * positions).reshape(positions, c).T.reshape(-1)
            self.coders[shape] = LatentCoder(tables, kinds, layout)
        return self.coders[shape]

    def size_check(self, shape: tuple[int, int]) -> int:
        sides = b"".join(int(side).to_bytes(2, "big") for side in shape)
        return hashlib.sha256(bytes([self.tag]) + sides).digest()[0] & ((1 << SIZE_CHECK_BITS) - 1)

    # -- transforms ------------------------------------------------------------------------------

    def _chunked(self, fn, inputs: list[torch.Tensor], out: np.ndarray, pixels: int, post) -> None:
        """out[s:e] = post(fn(*inputs[s:e])) on chunks of exactly as many images as fill CHUNK
        images of 28x28 with `pixels` pixels each (zero-padded), copied into buffers kept between
        calls (one allocated per call cost 10 µs per image here: fresh pages)."""
        chunk = max(1, CHUNK[torch.device(self.device).type] * 784 // pixels)
        buffers = []
        for i, t in enumerate(inputs):
            key, shape = (fn is self.analysis, i), (chunk, *t.shape[1:])
            if tuple(getattr(self.buffers.get(key), "shape", ())) != shape:
                zeros = torch.zeros(shape, device=self.device)
                self.buffers[key] = zeros.contiguous(memory_format=torch.channels_last)
            buffers.append(self.buffers[key])
        with self.inference():
            for s in range(0, len(out), chunk):
                k = min(chunk, len(out) - s)
                for buffer, t in zip(buffers, inputs):
                    buffer[:k].copy_(t[s : s + k], non_blocking=True)
                    buffer[k:].zero_()
                out[s : s + k] = post(fn(*buffers)[:k]).permute(0, 2, 3, 1).cpu().numpy()

    def latents(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) -> the quantised latents, (N, H'/4, W'/4, C) int32 (H', W': padded)."""
        images = pad4(images)
        n, h, w = images.shape
        out = np.empty((n, h // 4, w // 4, self.require_model().latent_shape[0]), np.int32)
        # The linear path's 4x4 space-to-depth, on the bytes: channel 4 * dy + dx.
        blocks = images.reshape(n, h // 4, 4, w // 4, 4).transpose(0, 1, 3, 2, 4).reshape(*out.shape[:3], 16)
        inputs = [host_tensor(images).unsqueeze(1), host_tensor(blocks).permute(0, 3, 1, 2)]
        self._chunked(self.analysis, inputs, out, h * w, lambda y: y.round_().to(torch.int32))
        if len(out) and (out.max() >= 2**30 or out.min() <= -(2**30)):  # NaN: the least int32
            raise CodecError(f"{self.name}: the analysis transform gave latents beyond any table")
        return out

    def pixels(self, q: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Latents (N, h, w, C) int32 -> uint8 images (N, H, W) of `shape` (the padding cropped)."""
        n, h, w, c = q.shape
        out = np.empty((n, h, w, 16), np.uint8)
        self._chunked(self.synthesis, [host_tensor(q).permute(0, 3, 1, 2)], out, 16 * h * w,
                      lambda x: x.clamp_(0, 255).round_().to(torch.uint8))
        # 4x4 depth-to-space on the bytes: channel 4 * dy + dx is pixel (4i + dy, 4j + dx).
        images = out.reshape(n, h, w, 4, 4).transpose(0, 1, 3, 2, 4).reshape(n, 4 * h, 4 * w)
        return np.ascontiguousarray(images[:, : shape[0], : shape[1]])

    # -- coding ----------------------------------------------------------------------------------

    def encode_latents(self, q: np.ndarray, shape: tuple[int, int]) -> Payloads:
        """Latents (N, h, w, C) of images of `shape` -> payloads."""
        model, shape = self.require_model(), tuple(int(side) for side in shape)
        check = None if shape == model.shape else self.size_check(shape)

        def begin(enc) -> None:
            entropy.encode_size(enc, shape, model.shape)
            if check is not None:
                enc.encode(check, entropy.uniform(1 << SIZE_CHECK_BITS))

        return Payloads.from_list(self.coder(shape).encode(
            q.reshape(len(q), -1), begin, lambda enc: entropy.end_stream(enc, self.tag)))

    def encode(self, images: np.ndarray) -> Payloads:
        images = check_images(images, codec=self.name)
        parts = np.array_split(images, self._processes(len(images)))
        if len(parts) > 1:
            return Payloads.concat(in_processes(_encode_part, [(*self._receiver_args(), part)
                                                               for part in parts]))
        return self.encode_latents(self.latents(images), images.shape[1:])

    def _declared(self, payloads: Payloads) -> tuple[tuple[int, int], int | None]:
        """The image size payload 0 declares (every other must declare it too), and the check of
        this model that follows a size other than the trained one."""
        model = self.require_model()
        with entropy.refusing(self.name, 0):
            if not len(payloads[0]):
                raise PayloadError(f"{self.name}: payload 0 is empty")
            dec = entropy.decoder(payloads[0])
            shape = entropy.decode_size(dec, model.shape)
            check = None if shape == model.shape else self.size_check(shape)
            if not all(1 <= side <= MAX_SIDE for side in shape):
                raise PayloadError(f"{self.name}: payload 0 declares an impossible {shape} image")
            self._read_size_check(dec, shape, check, 0)
        return shape, check

    def _read_size_check(self, dec, shape: tuple[int, int], check: int | None, i: int) -> None:
        """After a size other than the trained one: the check of this model, quality and size."""
        if check is not None and dec.decode(entropy.uniform(1 << SIZE_CHECK_BITS)) != check:
            raise PayloadError(f"{self.name}: payload {i} declares a {shape[0]}x{shape[1]} image but "
                               "was made by another model or setting, or is corrupt")

    def decode_latents(self, payloads: Payloads | Sequence[bytes], declared=None,
                       first: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
        """Payloads -> the latents they carry, (N, h, w, C) int32, and the images' size (`declared`:
        the size and check that payload 0 of the batch declared; payload i is named first + i)."""
        model = self.require_model()
        payloads = payloads_to_decode(payloads, self.name)
        shape, check = declared or self._declared(payloads)

        def begin(dec, i: int) -> None:
            if entropy.decode_size(dec, model.shape) != shape:
                raise PayloadError(f"{self.name}: payload {i} declares another image size than payload 0 "
                                   f"({shape[0]}x{shape[1]}): a batch holds images of one size")
            self._read_size_check(dec, shape, check, i)

        rows = self.coder(shape).decode(payloads, begin, self.tag, self.name, first)
        return rows.reshape(len(rows), -(-shape[0] // 4), -(-shape[1] // 4), model.latent_shape[0]), shape

    def decode(self, payloads: Payloads | Sequence[bytes], declared=None, first: int = 0) -> np.ndarray:
        payloads = payloads_to_decode(payloads, self.name)
        parts = np.array_split(np.arange(len(payloads)), self._processes(len(payloads)))
        if len(parts) > 1:
            declared = self._declared(payloads)
            return np.concatenate(in_processes(_decode_part, [
                (*self._receiver_args(), payloads.part(p[0], p[-1] + 1), declared, int(p[0]))
                for p in parts]))
        q, shape = self.decode_latents(payloads, declared, first)
        return self.pixels(q, shape)

    def _processes(self, images: int) -> int:
        """Worker processes load the model from its checkpoint: none without one."""
        return self.processes(images) if self.checkpoint is not None and self.checkpoint.exists() else 1

    def _receiver_args(self) -> tuple:
        """What a worker process needs to code as this codec does (see _receiver)."""
        stat = self.checkpoint.stat()
        return (type(self), self.name, self.quality, str(self.checkpoint),
                (stat.st_mtime_ns, stat.st_size, self.weights_digest), self.require_model().shape)

    def model_bits(self, images: np.ndarray) -> np.ndarray:
        """The code length of each image's latents under the integer tables it is coded with
        (-log2 of their probabilities; the payload adds the size, flags, escapes and ending)."""
        images = check_images(images, codec=self.name)
        return self.coder(images.shape[1:]).bits(self.latents(images).reshape(len(images), -1))


# -- worker processes: a receiver per checkpoint and quality, loaded from the cache --------------

_RECEIVERS: dict[tuple, dict] = {}  # one checkpoint at a time: its codec per quality and name


def _receiver(cls: type, name: str, quality: int, checkpoint: str, stamp: tuple, shape: tuple):
    key, path = (cls, checkpoint, stamp, shape), Path(checkpoint)
    empty, errors = np.zeros((0, *shape), np.uint8), []
    data = TrainingData(empty, empty, log=errors.append)
    codec = cls(quality=quality)
    codec.name, codec.checkpoint = name, path
    if key not in _RECEIVERS:
        if codec._load(path, path.stem.rsplit("-", 1)[-1], shape, data) is None:
            raise CodecError(f"{name}: a worker process could not load {checkpoint}: {errors}")
        if codec.weights_digest != stamp[-1]:  # the file was rewritten since this run loaded it
            raise CodecError(f"{name}: {checkpoint} holds other weights than this run's model; "
                             "run again")
        _RECEIVERS.clear()
        _RECEIVERS[key] = {(quality, name): codec}
    codecs = _RECEIVERS[key]
    if (quality, name) not in codecs:  # the same model, prepared for another quality
        codec.model = next(iter(codecs.values())).model
        codec.prepare(data)
        codecs[quality, name] = codec
    return codecs[quality, name]


def _encode_part(*args) -> Payloads:
    return _receiver(*args[:-1]).encode(args[-1])


def _decode_part(*args) -> np.ndarray:
    return _receiver(*args[:-3]).decode(*args[-3:])
