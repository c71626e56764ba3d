"""`ar` (lossless) and `ar-lossy` (pixels quantised to a few levels): a small autoregressive
model over each pixel's causal neighbourhood (bench_codecs.ar_model), run as an integer network
(bench_codecs.ar_integer), and a real range-coded stream per image (bench.entropy), for images of
any size.

Payload: one range-coder stream. It begins with the image size (one bit at the size the model was
trained on), then each wavefront step's symbols (bench_codecs.ar_model: every pixel's coarse symbol,
then, lossless, the fine symbols of the step's pixels that are not 0), and ends as bench.entropy
ends every stream: with the 4-bit check symbol of the decoder's network and level count, so that a
payload of another model or level count is refused 15 times in 16, and so is most damage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import version

import numpy as np
import torch
from threadpoolctl import ThreadpoolController
from torch import nn

from bench import entropy
from bench.codec import CodecError, PayloadError, Payloads, TrainingData, check_images, payloads_to_decode
from bench.learned import History, LearnedCodec, host_tensor, in_processes
from bench_codecs import AR_LOSSY_LEVELS
from bench_codecs.ar_integer import IntInference, IntNet, TensorSteps, step_tensors
from bench_codecs.ar_model import (
    ARCH_VERSION,
    BINS,
    HALF,
    LEVELS,
    NC,
    NF,
    RECIPE,
    ROWS,
    ARNet,
    Geometry,
    geometry,
    quantiser,
    train,
)

try:
    from bench_codecs.ar_cpu import HostSteps, StepNetwork
except ImportError:  # no numba (a GPU image, a Python it has no wheel for): the CPU runs the tensors
    HostSteps = StepNetwork = None

# The encoder's pass, in 28x28 images' worth of pixels: on the CPU, a few images keep its
# intermediates in cache.
CHUNK = {"cpu": 8, "cuda": 4096}


def _coarse_width(levels: int) -> int:
    return NC if levels == 256 else levels


class ARCodec(LearnedCodec):
    """`ar`: lossless. `ARLossyCodec` below is the same model family at a few levels per pixel."""

    family = "ar"
    # What builds and trains the float model (the checkpoint holds its weights only): the integer
    # export and the coding run after every load, so editing them keeps the cached models.
    code_modules = (__name__, "bench_codecs.ar_model")
    derived = ("net", "_tensors")
    allow_bf16 = False  # the coding needs the exact integer network
    # Training on one thread: on this project's shared 2-core machine two threads trained 2.3-6.7x
    # slower (threads wait for a core other tenants hold). Inference too: per-pixel matmuls are
    # tiny, and waking a second thread costs more than it saves (decode at 2 BLAS threads was 18x
    # slower in the prototype).
    train_threads = 1
    inference_threads = 1
    # Each process codes its part of a large batch with its own range coders: the coder's calls
    # (one per image and wavefront step) hold Python's lock, so threads cannot share them.
    inference_processes = None
    precision = "integer (int8 weights, uint8 activations; exact)"
    trained_levels: tuple[int, ...] = (256,)

    def __init__(self, width: int = 64, epochs: int = 4, seed: int = 0, device: str = "cpu"):
        super().__init__(epochs, seed, device)
        self.width = width
        self.levels = 256
        self.net: IntNet | None = None
        self.side_info = b""
        # On the CPU the network runs in bench_codecs.ar_cpu's numba kernels, where numba is.
        kernels = (f", numba {version('numba')}"
                   if torch.device(device).type == "cpu" and StepNetwork is not None else "")
        self.library = f"torch {torch.__version__}{kernels}, {entropy.version()}"
        self._tensors: IntInference | None = None

    def hyperparameters(self) -> dict:
        return {"arch": ARCH_VERSION, "recipe": RECIPE, "width": self.width, "bins": BINS,
                "levels": list(self.trained_levels), "context": [ROWS, HALF]}

    def build_model(self, shape) -> ARNet:
        return ARNet(self.width, self.trained_levels)

    def train_model(self, model: ARNet, data: TrainingData) -> History:
        return train(model, data.train, data.validation, self.epochs, self.seed, data.progress)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.require_model()]  # exported to the integer network that is sent

    def prepare(self, data: TrainingData) -> None:
        super().prepare(data)
        self.set_network(IntNet.from_model(self.model, data.train.shape[1:]).to_bytes())

    def set_network(self, side_info: bytes) -> None:
        """Run on the network that the side information carries, as a receiver would."""
        net = IntNet.from_bytes(side_info)
        if self.levels not in net.levels:
            raise CodecError(f"{self.name}: this side information is a network for levels "
                             f"{', '.join(map(str, net.levels))}, not for {self.levels}")
        self.net, self.side_info = net, side_info
        self._tensors = self.net.to(self.device)
        self.tag = entropy.model_tag(side_info, bytes([LEVELS.index(self.levels)]))

    @property
    def side_info_bytes(self) -> int:
        self._require_net()
        return len(self.side_info)

    @contextmanager
    def inference(self) -> Iterator[None]:
        """Also numpy's BLAS at the inference thread count: the CPU decoder's GEMMs run there, and
        its default, a thread per core in each of two worker processes, oversubscribes the cores."""
        with super().inference(), _blas().limit(limits=self.threads(), user_api="blas"):
            yield

    def _level_index(self) -> int:
        """Which of the network's level counts this codec codes with."""
        return self.net.levels.index(self.levels)

    def _require_net(self) -> IntInference:
        if self._tensors is None:
            raise CodecError(f"{self.name} is not trained: call .fit(training_data) first")
        return self._tensors

    # -- the encoder side ----------------------------------------------------------------

    def _tables(self, images: np.ndarray):
        """Per chunk of images: (first image, probability weights (rows, K) float64, symbols
        (rows,) int32, row offsets per image), rows in coding order: each wavefront step's coarse
        symbols, then (lossless) the fine symbols of its pixels that are not 0."""
        t = self._require_net()
        dev, lossless = t.device, self.levels == 256
        g = geometry(*images.shape[1:])
        q_of, rec_of = (torch.from_numpy(a).to(dev) for a in quantiser(self.levels))
        where = torch.from_numpy(g.base[g.order, None] + g.context).to(dev)  # coding order
        bins = torch.from_numpy(g.bins[g.order]).to(dev)
        step = torch.from_numpy(np.repeat(np.arange(len(g.bounds) - 1), np.diff(g.bounds))).to(dev)
        chunk = max(1, CHUNK[dev.type] * 784 // g.pixels)  # as many pixels whatever the size
        for s in range(0, len(images), chunk):
            x = host_tensor(images[s:s + chunk]).to(dev).long()
            n, P = len(x), g.pixels
            q = q_of[x].reshape(n, P)[:, g.order].reshape(-1)
            flat = g.padded(rec_of[q_of[x]].to(t.dtype))
            nzi = groups = None
            if lossless:  # the pixels that are not 0 have a fine symbol, in their coarse group
                nzi = torch.nonzero(q).squeeze(1)
                q_nz = q.index_select(0, nzi)
                groups = (q_nz - 1) // NF
            cw, fine = self._all_weights(t, flat, where, bins, groups, nzi)
            # Fresh arrays, so C-contiguous: constriction silently misreads any other layout.
            if not lossless:
                yield s, cw.cpu().numpy(), q.int().cpu().numpy(), np.arange(n + 1) * P
                continue
            # Each row's place: by image, step, coarse before fine, then pixel.
            image = torch.arange(n * P, device=dev) // P
            key = torch.cat([(image * len(g.bounds) + step.repeat(n)) * 2,
                             (image[nzi] * len(g.bounds) + step.repeat(n)[nzi]) * 2 + 1])
            order = torch.argsort(key * (n * P) + torch.cat([torch.arange(n * P, device=dev), nzi]),
                                  stable=True)
            tab = torch.cat([cw, fine])
            sym = torch.cat([torch.where(q != 0, 1 + (q - 1) // NF, 0), (q_nz - 1) % NF])
            tab, sym = tab.index_select(0, order), sym.index_select(0, order)
            counts = P + (q != 0).view(n, P).sum(1).cpu().numpy()
            yield s, tab.cpu().numpy(), sym.int().cpu().numpy(), np.concatenate([[0], np.cumsum(counts)])

    def _all_weights(self, t: IntInference, flat: torch.Tensor, where: torch.Tensor, bins: torch.Tensor,
                     groups: torch.Tensor | None, rows: torch.Tensor | None):
        """Coarse weights of every pixel of the images `flat` (n, pad), pixels in coding order
        (`where`: their contexts, `bins`), and (lossless) the fine weights of pixels `rows` (of
        n * pixels) in coarse groups `groups`: the CPU's kernels, or tensors (CUDA)."""
        n, (P, width) = len(flat), (len(where), _coarse_width(self.levels))
        if not _on_host(t):
            ctx = flat.index_select(1, where.view(-1)).view(n * P, -1)
            a2, cw = t.network(ctx, bins.repeat(n), self._level_index(), width, groups is not None)
            return cw, None if groups is None else t.fine(a2.index_select(0, rows), groups, grouped=True)
        net = StepNetwork(t, self._level_index(), width, groups is not None, n, P)
        coarse = np.empty((n, P, width))
        net.coarse(flat.numpy(), where.numpy(), bins.numpy(), coarse)
        cw = torch.from_numpy(coarse.reshape(n * P, width))
        return cw, None if groups is None else torch.from_numpy(net.fine(rows.numpy(), groups.numpy()))

    def encode(self, images: np.ndarray) -> Payloads:
        self._require_net()
        images = check_images(images, codec=self.name)
        parts = np.array_split(images, self.processes(len(images)))
        if len(parts) > 1:
            done = in_processes(_encode_part, [(*self._receiver_args(), part) for part in parts])
            return Payloads.from_list([p for part in done for p in part])
        return Payloads.from_list(self._encode(images))

    def _encode(self, images: np.ndarray) -> list[bytes]:
        shape = images.shape[1:]
        out = []
        with self.inference():
            for _, tab, sym, off in self._tables(images):
                for i in range(len(off) - 1):
                    a, b = off[i], off[i + 1]
                    enc = entropy.encoder()
                    entropy.encode_size(enc, shape, self.net.shape)
                    enc.encode(sym[a:b], entropy.categorical(), tab[a:b])
                    out.append(entropy.end_stream(enc, self.tag))
        return out

    def model_bits(self, images: np.ndarray) -> np.ndarray:
        """The integer model's code length per image (bits), size and check symbol not included."""
        self._require_net()
        images = check_images(images, codec=self.name)
        bits = np.empty(len(images))
        with self.inference():
            for s, tab, sym, off in self._tables(images):
                per_row = -np.log2(tab[np.arange(len(sym)), sym] / tab.sum(axis=1))
                bits[s:s + len(off) - 1] = np.add.reduceat(per_row, off[:-1])
        return bits

    # -- the decoder side ----------------------------------------------------------------

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        self._require_net()
        streams = list(payloads_to_decode(payloads, self.name))
        parts = np.array_split(np.arange(len(streams)), self.processes(len(streams)))
        if len(parts) == 1:
            return self._decode_streams(streams, 0)
        done = in_processes(_decode_part, [(*self._receiver_args(), [streams[i] for i in part],
                                            int(part[0])) for part in parts])
        shapes = {d.shape[1:] for d in done}
        if len(shapes) > 1:
            raise PayloadError(f"{self.name}: the payloads decode to images of different sizes "
                               f"{sorted(shapes)}; a batch shares one size")
        return np.concatenate(done)

    def _decode_streams(self, streams: list[bytes], first: int) -> np.ndarray:
        """Decode here; payload i is named first + i in errors."""
        t = self._require_net()
        decoders, shape = [], None
        for i, data in enumerate(streams, first):
            if not data:
                raise PayloadError(f"{self.name}: payload {i} is empty")
            decoders.append(entropy.decoder(data))
            with entropy.refusing(self.name, i):
                size = entropy.decode_size(decoders[-1], self.net.shape)
            if shape is not None and size != shape:
                raise PayloadError(f"{self.name}: payload {i} is a {size[0]}x{size[1]} image, payload "
                                   f"{first} a {shape[0]}x{shape[1]} one; a batch shares one size")
            shape = size
        with self.inference():
            out = self._decode(t, decoders, geometry(*shape), first)
        for i, (dec, data) in enumerate(zip(decoders, streams), first):
            with entropy.refusing(self.name, i):
                entropy.check_end(dec, data, self.tag, self.name, i)
        return out

    def _receiver_args(self) -> tuple:
        """What a worker process needs to code as this codec does (see _receiver)."""
        return type(self), self.name, self.width, self.levels, self.side_info

    def _decode(self, t: IntInference, decoders: list, g: Geometry, first: int) -> np.ndarray:
        """Every image of the batch together, wavefront step by step: each step runs the network
        on all images' contexts of the step's pixels, then makes one constriction call per image
        for their coarse symbols (a C-level loop over pre-made views of one buffer), and,
        lossless, one more per image for the fine symbols of its pixels that are not 0."""
        n, widths = len(decoders), np.diff(g.bounds)
        # C-contiguous, for constriction
        coarse = np.zeros((n, int(widths.max()), _coarse_width(self.levels)))
        views = {k: [coarse[i, :k] for i in range(n)] for k in np.unique(widths)}
        rec_of = quantiser(self.levels)[1].astype(np.int64)
        runner = HostSteps if _on_host(t) else TensorSteps
        steps = runner(t, self._level_index(), self.levels == 256, g, coarse,
                       step_tensors(*g.shape, str(t.device)))
        for s, k in enumerate(widths):
            steps.coarse(s)
            sym = entropy.decode_each(decoders, views[k], self.name, range(first, first + n))
            if self.levels != 256:
                steps.put(s, rec_of[sym])
                continue
            nz = np.flatnonzero(sym)
            value = np.zeros(n * k, np.int64)
            if len(nz):
                fine = steps.fine(nz, sym[nz] - 1)
                who = nz // k  # the images with fine symbols in this step, rows contiguous per image
                starts = np.searchsorted(who, np.arange(n + 1))
                has = np.flatnonzero(np.diff(starts))
                # Built by map, not by Python loops: up to one view per image and step.
                views_of = map(fine.__getitem__, map(slice, starts[has].tolist(), starts[has + 1].tolist()))
                lo = entropy.decode_each(list(map(decoders.__getitem__, has.tolist())), list(views_of),
                                         self.name, has + first)
                value[nz] = 1 + NF * (sym[nz] - 1) + lo
                bad = np.flatnonzero((lo >= NF) | (value[nz] > 255))
                if len(bad):  # symbols of probability 0: only a corrupt stream decodes to them
                    raise PayloadError(f"{self.name}: payload {first + who[bad[0]]} is corrupt (a pixel "
                                       "decodes to no 8-bit value)")
            steps.put(s, value)
        return steps.images()


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    """numpy's BLAS, found once (threadpool_limits looks for it again at every call)."""
    return ThreadpoolController()


def _on_host(t: IntInference) -> bool:
    """The compiled kernels run the CPU's float32 arithmetic; tensors run any other (CUDA's), and
    the CPU's without numba: the same integers either way."""
    return StepNetwork is not None and t.device.type == "cpu" and t.dtype == torch.float32


class ARLossyCodec(ARCodec):
    """`ar-lossy:levels=L`: each pixel quantised to L levels (0 and 255 exact), the bins coded by
    one model trained on a mixture of every level count, conditioned on the count."""

    family = "ar-lossy"
    trained_levels = AR_LOSSY_LEVELS

    def __init__(self, levels: int = 8, width: int = 64, epochs: int = 6, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(width, epochs, seed, device)
        self.levels = levels


# -- worker processes: a receiver per network, built from the side information -------------------

_RECEIVERS: dict[tuple, ARCodec] = {}


def _receiver(cls: type, name: str, width: int, levels: int, side_info: bytes) -> ARCodec:
    key = (cls, name, width, levels, hashlib.sha256(side_info).digest())
    if key not in _RECEIVERS:
        codec = cls(width=width) if cls is ARCodec else cls(levels=levels, width=width)
        codec.name = name
        codec.set_network(side_info)
        _RECEIVERS.clear()  # one network at a time: a run times one codec after another
        _RECEIVERS[key] = codec
    return _RECEIVERS[key]


def _encode_part(cls, name, width, levels, side_info, images: np.ndarray) -> list[bytes]:
    return _receiver(cls, name, width, levels, side_info)._encode(images)


def _decode_part(cls, name, width, levels, side_info, streams: list[bytes], first: int) -> np.ndarray:
    return _receiver(cls, name, width, levels, side_info)._decode_streams(streams, first)
