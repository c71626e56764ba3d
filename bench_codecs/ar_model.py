"""The model of the `ar` and `ar-lossy` codecs: the context geometry of an image of any size, the
pixel quantiser, and the float network with its training. bench_codecs.ar_integer exports it to
the integer network that codes; bench_codecs.ar is the codec.

The context of pixel (r, c) is the 2 rows above, columns c-3..c+3, and the 3 pixels to its left
(17 values, 0 outside the image). An MLP 17 -> W -> W (activations clamped to [0, 4]; layer 1 adds
learned biases for the pixel's level count and its position relative to the image size, in BINS
bins per axis, so that one model serves every image size) feeds two heads: a coarse one with 17
logits (lossless: the pixel is 0, or lies in one of 16 groups of 16 values; lossy with L levels:
the L bins directly) and, lossless only, a fine one with 16 logits per group (the value inside the
group). A pixel costs one coarse symbol, plus one fine symbol when it is not 0 (81 % of MNIST
pixels are 0). Training ends with an epoch of quantisation in the loop, so that the integer export
codes what was trained.

Coding order. Pixel (r, c) needs (r - 1, c + 3) and (r, c - 1), so every pixel with the same
t = c + 4r can be decoded at once, given those of smaller t: a wavefront of h + 3 (h - 1) + w - 3
steps instead of h x w (136 instead of 784 at 28x28), each one call of the range decoder per image.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from bench.learned import History, host_tensor, train_loop
from bench_codecs import AR_LOSSY_LEVELS

# The recipe of the research prototype: context size, widths and epochs were chosen on the
# validation split there.
RECIPE = {"version": 1, "batch": 2048, "lr": 3e-3, "pct_start": 0.15, "qat_epochs": 1,
          "act_max": 4.0, "l1_init_gain": 3.0}
ARCH_VERSION = 2
ROWS, HALF, RIGHT = 2, 3, 3  # the context: ROWS rows above, columns c-HALF..c+RIGHT, HALF pixels
N_CTX = ROWS * (HALF + 1 + RIGHT) + HALF  # to the left
# Position bins per axis. On mnist-5k (4 epochs) 8 relative bins cost 0.2 % of the bytes that a
# bias per row and per column of 28x28 images saved, and none cost 1.4 %.
BINS = 8
WAVE = RIGHT + 1  # the wavefront's slope: pixel (r, c) is decoded at step c + WAVE * r

NC = 17  # coarse symbols
NG = NF = 16  # lossless: groups of values, values per group
LEVELS = (256, *AR_LOSSY_LEVELS)  # level counts a model can be conditioned on (256: lossless)
T_LOGIT = 16  # integer logit units per nat


class Geometry:
    """Where the pixels of an h x w image and their contexts sit in its flat, zero-bordered copy
    (pixel (r, c) at (r + ROWS, c + HALF) of a (h + ROWS) x (w + 2 HALF) array), their position
    bins, and the wavefront: the pixels in coding order, cut into steps."""

    def __init__(self, h: int, w: int):
        self.shape, self.pixels = (h, w), h * w
        self.pad_w = w + 2 * HALF
        self.pad_size = (h + ROWS) * self.pad_w
        self.context = np.array([dr * self.pad_w + dc for dr in range(ROWS) for dc in range(HALF + 1 + RIGHT)]
                                + [ROWS * self.pad_w + dc for dc in range(HALF)])
        r, c = np.divmod(np.arange(h * w), w)
        self.base = r * self.pad_w + c  # + context: the pixel's context
        self.at = self.base + ROWS * self.pad_w + HALF  # the pixel itself
        self.bins = (r * BINS // h) * BINS + c * BINS // w  # row bin * BINS + column bin
        step = c + WAVE * r
        self.order = np.lexsort((r, step))  # pixels in coding order
        self.bounds = np.flatnonzero(np.diff(step[self.order], prepend=-1, append=step.max() + 1))

    @property
    def steps(self) -> list[np.ndarray]:
        """The pixels of each wavefront step, in coding order."""
        return [self.order[a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def padded(self, images: torch.Tensor) -> torch.Tensor:
        """(N, h, w) -> (N, pad_size) flat images with the context's zero border."""
        h, w = self.shape
        out = images.new_zeros((len(images), h + ROWS, self.pad_w))
        out[:, ROWS:, HALF:HALF + w] = images
        return out.view(len(images), -1)

    def unpadded(self, flat):
        """`padded` undone: (N, pad_size) flat images, a tensor or an array -> (N, h, w) views."""
        h, w = self.shape
        return flat.reshape(len(flat), h + ROWS, self.pad_w)[:, ROWS:, HALF:HALF + w]


@lru_cache(maxsize=32)
def geometry(h: int, w: int) -> Geometry:
    return Geometry(h, w)


def quantiser(levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbol of each 8-bit value, reconstruction of each symbol), in integer arithmetic so that
    every machine agrees: a uniform quantiser whose first and last levels are 0 and 255."""
    v = np.arange(256)
    if levels == 256:
        return v, v.astype(np.uint8)
    q = (2 * v * (levels - 1) + 255) // 510
    k = np.arange(levels)
    return q, ((2 * k * 255 + levels - 1) // (2 * (levels - 1))).astype(np.uint8)


# -- the float model and its training ----------------------------------------------------------

class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.floor(x + 0.5)

    @staticmethod
    def backward(ctx, g):
        return g


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """int8 per output channel, as the export will do it; the gradient passes straight through."""
    d = w.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
    return _RoundSTE.apply(w / d) * d


class ARNet(nn.Module):
    """The float model that is trained; `IntNet.from_model` turns it into the integer network."""

    def __init__(self, width: int, levels: tuple[int, ...]):
        super().__init__()
        self.width, self.levels = width, tuple(levels)
        self.l1 = nn.Linear(N_CTX, width, bias=False)
        self.pos = nn.Parameter(torch.zeros(BINS * BINS, width))  # by position bin
        self.lvl = nn.Parameter(torch.zeros(len(self.levels), width))
        self.b1 = nn.Parameter(torch.zeros(width))
        self.l2 = nn.Linear(width, width)
        self.coarse = nn.Linear(width, NC)
        # Only a lossless model needs the fine head.
        self.fine = nn.Linear(width, NG * NF) if 256 in self.levels else None
        self.quant = False  # integer quantisation in the loop (the last epochs)
        with torch.no_grad():
            self.l1.weight.mul_(RECIPE["l1_init_gain"])

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        h = h.clamp(0.0, RECIPE["act_max"])
        if self.quant:
            s = RECIPE["act_max"] / 255.0
            h = _RoundSTE.apply(h / s) * s
        return h

    def _w(self, layer: nn.Linear) -> torch.Tensor:
        return _fake_quant_weight(layer.weight) if self.quant else layer.weight

    def _logits(self, h: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
        out = h @ self._w(layer).t() + layer.bias
        return _RoundSTE.apply(out * T_LOGIT) / T_LOGIT if self.quant else out

    def hidden(self, ctx: torch.Tensor, bins: torch.Tensor, lvl: torch.Tensor) -> torch.Tensor:
        """ctx (B, 17) pixels / 255, bins (B,) position bins, lvl (B,) index into self.levels."""
        h = (ctx @ self._w(self.l1).t() + self.pos.index_select(0, bins) + self.lvl.index_select(0, lvl)
             + self.b1)
        return self._act(self._act(h) @ self._w(self.l2).t() + self.l2.bias)

    def bits(self, ctx, bins, lvl, sym) -> torch.Tensor:
        """Code length in bits of each pixel's symbol (its value, or its bin when lossy)."""
        f = nn.functional
        h = self.hidden(ctx, bins, lvl)
        counts = torch.tensor([NC if v == 256 else v for v in self.levels], device=ctx.device)
        k = counts[lvl]
        lossless = k == NC
        cl = self._logits(h, self.coarse)
        cl = cl.masked_fill(torch.arange(NC, device=ctx.device) >= k[:, None], float("-inf"))
        target = torch.where(lossless, torch.where(sym == 0, 0, 1 + (sym - 1) // NF), sym)
        nats = f.cross_entropy(cl, target, reduction="none")
        sel = torch.nonzero(lossless & (sym != 0)).squeeze(1)
        if self.fine is not None and len(sel):
            # Only the pixels that need a fine symbol go through the fine head (a fifth of them).
            g, lo = (sym[sel] - 1) // NF, (sym[sel] - 1) % NF
            rows = torch.arange(len(sel), device=ctx.device)
            fl = self._logits(h[sel], self.fine).view(-1, NG, NF)[rows, g]
            impossible = (g[:, None] == NG - 1) & (torch.arange(NF, device=ctx.device) == NF - 1)
            fl = fl.masked_fill(impossible, float("-inf"))  # 1 + 16 * 15 + 15 = 256 is no pixel
            nats = nats.index_add(0, sel, f.cross_entropy(fl, lo, reduction="none"))
        return nats / math.log(2)


def train(model: ARNet, images: np.ndarray, validation: np.ndarray, epochs: int, seed: int,
          progress: bool = True) -> History:
    """Every pixel of every image once per epoch, in random order (bits per pixel is the loss);
    with several level counts each image draws one count per epoch. The validation split is
    measured with image i at level count i mod the counts."""
    device = next(model.parameters()).device
    x = host_tensor(images)
    n, g = len(x), geometry(*images.shape[1:])
    P = g.pixels
    # uint8 throughout (1 byte per pixel and copy): the full MNIST training split fits easily.
    tables = [tuple(torch.from_numpy(t.astype(np.uint8)) for t in quantiser(v)) for v in model.levels]
    steps = max(1, n * P // RECIPE["batch"])  # as train_loop counts them: a small split is one step
    opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=RECIPE["lr"], total_steps=steps * epochs,
                                                pct_start=RECIPE["pct_start"])
    context, base, pixel_bins = (torch.from_numpy(a).to(device) for a in (g.context, g.base, g.bins))
    epoch_data = {}

    def quantised(images: torch.Tensor, lvl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's symbols at its level count, and its padded reconstruction (on device)."""
        sym, rec = torch.empty_like(images), torch.empty_like(images)
        for i, (q, r) in enumerate(tables):
            sel = lvl == i
            bins = q[images[sel].long()]
            sym[sel] = bins
            rec[sel] = r[bins.long()]
        return sym.reshape(-1).to(device), g.padded(rec).reshape(-1).to(device)

    def before_epoch(epoch: int, gen: torch.Generator) -> int:
        model.quant = epoch >= epochs - RECIPE["qat_epochs"]
        lvl = torch.randint(len(model.levels), (n,), generator=gen)
        epoch_data["sym"], epoch_data["flat"] = quantised(x, lvl)
        epoch_data["lvl"] = lvl.to(device)
        return n * P

    def bits(idx: torch.Tensor, flat, sym, lvl) -> torch.Tensor:
        img, pos = idx // P, idx % P
        # index_select rather than advanced indexing: the same values, faster on the CPU.
        where = (img * g.pad_size + base.index_select(0, pos))[:, None] + context
        ctx = flat.index_select(0, where.view(-1)).view(where.shape).float() / 255.0
        return model.bits(ctx, pixel_bins.index_select(0, pos), lvl.index_select(0, img),
                          sym.index_select(0, idx).long())

    def loss(idx: torch.Tensor) -> torch.Tensor:
        return bits(idx, epoch_data["flat"], epoch_data["sym"], epoch_data["lvl"]).mean()

    xv = host_tensor(validation.reshape(-1, *images.shape[1:]))
    lvl_v = torch.arange(len(xv)) % len(model.levels)
    if len(xv):  # a split of one image has no validation images
        sym_v, flat_v = quantised(xv, lvl_v)
        lvl_v = lvl_v.to(device)

    def validate() -> float:
        total = 0.0
        for s in range(0, len(xv) * P, 8 * RECIPE["batch"]):
            idx = torch.arange(s, min(s + 8 * RECIPE["batch"], len(xv) * P), device=device)
            total += float(bits(idx, flat_v, sym_v, lvl_v).sum())
        return total / (len(xv) * P)

    return train_loop(model, loss=loss, items=n * P, batch=RECIPE["batch"], epochs=epochs, seed=seed,
                      optimizer=opt, scheduler=sched, drop_last=True, before_epoch=before_epoch,
                      validate=validate if len(xv) else None, desc=f"train ar width={model.width}",
                      progress=progress)
