"""`ar` (lossless) and `ar-lossy` (pixels quantised to a few levels): a small autoregressive
model over each pixel's causal neighbourhood (bench_codecs.ar_model), run as an integer network
(bench_codecs.ar_integer), and a real range-coded stream per image (bench.entropy).

Payload: the range coder's stream alone, ended as bench.entropy ends every stream: with the 4-bit
check symbol of the decoder's network and level count, so that a payload of another model or
level count is refused 15 times in 16, and so is most damage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bench import entropy
from bench.codec import CodecError, PayloadError, Payloads, TrainingData, check_images, payloads_to_decode
from bench.learned import History, LearnedCodec, host_tensor
from bench_codecs import AR_LOSSY_LEVELS
from bench_codecs.ar_integer import IntInference, IntNet
from bench_codecs.ar_model import (
    ARCH_VERSION,
    CONTEXT,
    HALF,
    LEVELS,
    N_CTX,
    NC,
    NF,
    PAD_SIZE,
    PAD_W,
    PIXEL_AT,
    PIXEL_BASE,
    RECIPE,
    ROWS,
    ARNet,
    H,
    P,
    W,
    padded,
    quantiser,
    train,
)

# Images per pass of the encoder: on the CPU, 8 images keep its float64 intermediates in cache
# (2,300 img/s against 1,600 with 64 per pass, on this project's 2-core machine).
CHUNK = {"cpu": 8, "cuda": 4096}


def _coarse_width(levels: int) -> int:
    return NC if levels == 256 else levels



class ARCodec(LearnedCodec):
    """`ar`: lossless. `ARLossyCodec` below is the same model family at a few levels per pixel."""

    family = "ar"
    code_modules = (__name__, "bench_codecs.ar_model", "bench_codecs.ar_integer", "bench.entropy")
    allow_bf16 = False  # the coding needs the exact integer network
    # Training on one thread: on this project's shared 2-core machine two threads trained 2.3-6.7x
    # slower (threads wait for a core other tenants hold). Inference too: per-pixel matmuls are
    # tiny, and waking a second thread costs more than it saves (decode at 2 BLAS threads was 18x
    # slower in the prototype).
    train_threads = 1
    inference_threads = 1
    precision = "integer (int8 weights, uint8 activations; exact)"
    trained_levels: tuple[int, ...] = (256,)

    def __init__(self, width: int = 64, epochs: int = 4, seed: int = 0, device: str = "cpu"):
        super().__init__(epochs, seed, device)
        self.width = width
        self.levels = 256
        self.net: IntNet | None = None
        self.side_info = b""
        self.library = f"torch {torch.__version__}, {entropy.version()}"
        self._tensors: IntInference | None = None

    def hyperparameters(self) -> dict:
        return {"arch": ARCH_VERSION, "recipe": RECIPE, "width": self.width,
                "levels": list(self.trained_levels), "context": [ROWS, HALF]}

    def build_model(self, shape) -> ARNet:
        if tuple(shape) != (H, W):
            raise CodecError(f"{self.name} models {H}x{W} images (its position biases); "
                             f"the training images are {shape[0]}x{shape[1]}")
        return ARNet(self.width, self.trained_levels)

    def train_model(self, model: ARNet, data: TrainingData) -> History:
        return train(model, data.train, data.validation, self.epochs, self.seed, data.progress)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.require_model()]  # exported to the integer network that is sent

    def prepare(self, data: TrainingData) -> None:
        super().prepare(data)
        self.set_network(IntNet.from_model(self.model).to_bytes())

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

    def _require_net(self) -> IntInference:
        if self._tensors is None:
            raise CodecError(f"{self.name} is not trained: call .fit(training_data) first")
        return self._tensors

    # -- the encoder side ----------------------------------------------------------------

    def _tables(self, images: np.ndarray):
        """Per chunk of images: (first image, probability weights (rows, K) float64, symbols
        (rows,) int32, row offsets per image), rows in coding order: each pixel's coarse symbol,
        then (lossless, pixel not 0) its fine symbol."""
        t = self._require_net()
        dev, mi, lossless = t.device, self.net.levels.index(self.levels), self.levels == 256
        q_of, rec_of = (torch.from_numpy(a).to(dev) for a in quantiser(self.levels))
        a2_zero, cw_zero = t.zero_context(mi, _coarse_width(self.levels))
        context, base = torch.from_numpy(CONTEXT).to(dev), torch.from_numpy(PIXEL_BASE).to(dev)
        chunk = CHUNK[dev.type]
        for s in range(0, len(images), chunk):
            x = host_tensor(images[s:s + chunk]).to(dev).long()
            n = len(x)
            q = q_of[x].reshape(-1)
            flat = padded(rec_of[q.view(n, H, W)].to(t.dtype))
            ctx = flat[:, base[:, None] + context].reshape(n * P, N_CTX)
            pos = torch.arange(P, device=dev).repeat(n)
            live = torch.nonzero(ctx.any(dim=1)).squeeze(1)
            a2 = a2_zero[pos]
            a2[live] = t.hidden(ctx[live], t.b1[mi, pos[live]])
            cw = cw_zero[pos]
            cw[live] = t.coarse(a2[live], cw.shape[1])
            # Fresh tensors, so C-contiguous: constriction silently misreads any other layout.
            if not lossless:
                offsets = np.arange(n + 1) * P
                yield s, cw.cpu().numpy(), q.int().cpu().numpy(), offsets
                continue
            nz = q != 0
            nzi = torch.nonzero(nz).squeeze(1)
            g = (q[nzi] - 1) // NF
            row = torch.arange(n * P, device=dev) + torch.cumsum(nz, 0) - nz.long()  # coarse rows
            tab = torch.empty((n * P + len(nzi), NC), dtype=torch.float64, device=dev)
            sym = torch.empty(len(tab), dtype=torch.int32, device=dev)
            tab[row] = cw
            tab[row[nzi] + 1] = t.fine(a2[nzi], g, grouped=True)
            sym[row] = torch.where(nz, 1 + (q - 1) // NF, 0).int()
            sym[row[nzi] + 1] = ((q[nzi] - 1) % NF).int()
            offsets = np.concatenate([[0], np.cumsum(P + nz.view(n, P).sum(1).cpu().numpy())])
            yield s, tab.cpu().numpy(), sym.cpu().numpy(), offsets

    def encode(self, images: np.ndarray) -> Payloads:
        self._require_net()
        images = check_images(images, trained=(H, W), codec=self.name)
        out = []
        with self.inference():
            for _, tab, sym, off in self._tables(images):
                for i in range(len(off) - 1):
                    a, b = off[i], off[i + 1]
                    out.append(entropy.encode_categorical(sym[a:b], tab[a:b], self.tag))
        return Payloads.from_list(out)

    def model_bits(self, images: np.ndarray) -> np.ndarray:
        """The integer model's code length per image (bits), the check symbol not included."""
        self._require_net()
        images = check_images(images, trained=(H, W), codec=self.name)
        bits = np.empty(len(images))
        with self.inference():
            for s, tab, sym, off in self._tables(images):
                per_row = -np.log2(tab[np.arange(len(sym)), sym] / tab.sum(axis=1))
                bits[s:s + len(off) - 1] = np.add.reduceat(per_row, off[:-1])
        return bits

    # -- the decoder side ----------------------------------------------------------------

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        t = self._require_net()
        streams = list(payloads_to_decode(payloads, self.name))
        for i, stream in enumerate(streams):
            if not stream:
                raise PayloadError(f"{self.name}: payload {i} is empty")
        with self.inference():
            return self._decode(t, streams)

    def _decode(self, t: IntInference, streams: list[bytes]) -> np.ndarray:
        """Every image of the batch together, pixel by pixel: each step runs the network on all
        images' contexts, then makes one constriction call per image (a C-level loop over
        pre-bound methods and pre-made one-row views of one buffer), and, lossless, one more
        per pixel that is not 0."""
        n, dev, mi = len(streams), t.device, self.net.levels.index(self.levels)
        k = _coarse_width(self.levels)
        decoders = [entropy.decoder(s) for s in streams]
        cbuf, fbuf = np.zeros((n, k)), np.zeros((n, NC))  # C-contiguous, as constriction needs
        cviews, fviews = [cbuf[i:i + 1] for i in range(n)], [fbuf[i:i + 1] for i in range(n)]
        cbuf_t, fbuf_t = torch.from_numpy(cbuf), torch.from_numpy(fbuf)
        rec_of = torch.from_numpy(quantiser(self.levels)[1]).to(dev, t.dtype)
        x = torch.zeros((n, PAD_SIZE), dtype=t.dtype, device=dev)
        where = torch.from_numpy(PIXEL_BASE[:, None] + CONTEXT).to(dev)  # (P, 17)
        for p in range(P):
            a2 = t.hidden(x[:, where[p]], t.b1[mi, p])
            cbuf_t.copy_(t.coarse(a2, k))
            sym = entropy.decode_each(decoders, cviews, self.name, range(n))
            at = int(PIXEL_AT[p])
            if self.levels != 256:
                x[:, at] = rec_of[torch.from_numpy(sym).to(dev).long()]
                continue
            nzi = np.flatnonzero(sym)
            if len(nzi) == 0:
                continue
            g = torch.from_numpy(sym[nzi] - 1).to(dev).long()
            fbuf_t[:len(nzi)].copy_(t.fine(a2[torch.from_numpy(nzi).to(dev)], g, grouped=False))
            lo = entropy.decode_each([decoders[j] for j in nzi], fviews, self.name, nzi)
            value = 1 + NF * (sym[nzi] - 1) + lo
            bad = np.flatnonzero((lo >= NF) | (value > 255))
            if len(bad):  # symbols of probability 0: only a corrupt stream decodes to them
                raise PayloadError(f"{self.name}: payload {nzi[bad[0]]} is corrupt (pixel {p} "
                                   "decodes to no 8-bit value)")
            x[torch.from_numpy(nzi).to(dev), at] = torch.from_numpy(value).to(dev, t.dtype)
        for i, (dec, stream) in enumerate(zip(decoders, streams)):
            entropy.check_end(dec, stream, self.tag, self.name, i)
        out = x.view(n, H + ROWS, PAD_W)[:, ROWS:, HALF:HALF + W]
        return out.to(torch.uint8).cpu().numpy()


class ARLossyCodec(ARCodec):
    """`ar-lossy:levels=L`: each pixel quantised to L levels (0 and 255 exact), the bins coded by
    one model trained on a mixture of every level count, conditioned on the count."""

    family = "ar-lossy"
    trained_levels = AR_LOSSY_LEVELS

    def __init__(self, levels: int = 8, width: int = 64, epochs: int = 6, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(width, epochs, seed, device)
        self.levels = levels
