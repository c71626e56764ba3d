"""A learned lossless codec (`ar`) and its lossy form (`ar-lossy`, pixels quantised to a few levels):
a small autoregressive model over each pixel's causal neighbourhood, run as an integer network,
and a real range-coded bitstream per image (constriction).

Model. Pixels are coded in raster order. The context of pixel (r, c) is the 2 rows above, columns
c-3..c+3, and the 3 pixels to its left (17 values, 0 outside the image). An MLP 17 -> W -> W
(activations clamped to [0, 4], learned per-row, per-column and per-level biases at layer 1) feeds
two heads: a coarse one with 17 logits (lossless: the pixel is 0, or lies in one of 16 groups of
16 values; lossy with L levels: the L bins directly) and, lossless only, a fine one with 16 logits
per group (the value inside the group). A pixel costs one coarse symbol, plus one fine symbol when
it is not 0 (81 % of MNIST pixels are 0).

Why an integer network. The decoder must rebuild bit for bit the probability tables the encoder
used, and float network outputs differ across batch sizes, thread counts and devices. Training ends
with an epoch of quantisation in the loop; the export then gives int8 weights (per output channel),
uint8 activations and integer biases. Matmuls run in float32 on those integers, and every partial
sum is bounded by sum|w| * 255 + |b| < 2**24 (checked at export and whenever a network is loaded),
so every float32 addition is exact in any order: BLAS blocking, threads, batch splits. On CUDA they
run in float64 (exact below 2**53, and immune to TF32 settings). Re-quantisation multiplies in
float64 by a dyadic constant k / 2**20 (exact), then floor(x + 0.5) and clamp. Integer logits (1/16
nat) become integer weights through a fixed table EXP[d] = round(2**20 exp(-d/16)); constriction
gets C-contiguous float64 arrays of exact integers, identical on both sides.

Payload: one header byte, then the range coder's stream. The header's high nibble is the level
count's index in LEVELS (so a payload of another level count is refused by name), its low nibble
four bits of a hash of the decoder's network (so a payload of another model is refused, 15 times
in 16). The stream's last 32-bit word is cut to whole bytes where the decoder still decodes it
(checked by decoding at encode time): 0.4 B of coding overhead per image instead of 2.
"""

from __future__ import annotations

import decimal
import hashlib
import math
import struct
from collections.abc import Sequence
from contextlib import contextmanager
from importlib.metadata import version

import constriction
import numpy as np
import torch
from torch import nn

from bench.codec import CodecError, PayloadError, Payloads, TrainingData, check_images, payloads_to_decode
from bench.learned import LearnedCodec, torch_threads
from bench_codecs.host import host_tensor

ARCH_VERSION = 1
# The recipe of the research prototype (issue 12): context size, widths and epochs were chosen on
# the validation split there.
RECIPE = {"version": 1, "batch": 2048, "lr": 3e-3, "pct_start": 0.15, "qat_epochs": 1,
          "act_max": 4.0, "l1_init_gain": 3.0}
# Training runs on one PyTorch thread, whatever the caller's setting: on this project's shared
# 2-core machine two threads trained 2.3-6.7x slower (threads wait for a core other tenants hold),
# and a fixed count makes the weights independent of the caller. The cache key uses this count.
TRAIN_THREADS = 1
# Inference on the CPU also runs on one thread: per-pixel matmuls are tiny, and waking a second
# thread costs more than it saves (decode at 2 BLAS threads was 18x slower in the prototype).
INFERENCE_THREADS = 1

H = W = 28  # the image size the position biases are learned for
ROWS, HALF = 2, 3  # the context: ROWS rows above, columns c-HALF..c+HALF, HALF pixels to the left
PAD_W = W + 2 * HALF
PAD_SIZE = (H + ROWS) * PAD_W
P = H * W
# Offsets of the 17 context pixels in a padded image (pixel (r, c) sits at (r + ROWS, c + HALF)),
# relative to the flat index r * PAD_W + c: one definition for training, encoder and decoder.
CONTEXT = np.array([dr * PAD_W + dc for dr in range(ROWS) for dc in range(2 * HALF + 1)]
                   + [ROWS * PAD_W + dc for dc in range(HALF)])
N_CTX = len(CONTEXT)
PIXEL_BASE = np.array([r * PAD_W + c for r in range(H) for c in range(W)])  # + CONTEXT: its context
PIXEL_AT = PIXEL_BASE + ROWS * PAD_W + HALF  # where each pixel itself sits in the padded image

NC = 17  # coarse symbols
NG = NF = 16  # lossless: groups of values, values per group
LEVELS = (256, 16, 12, 10, 8, 6, 5, 4, 3)  # level counts a model can be conditioned on (256: lossless)
LOSSY_LEVELS = LEVELS[1:]
T_LOGIT = 16  # integer logit units per nat
EXP_BITS = 20
D_MAX = int(math.floor(T_LOGIT * math.log(2 ** (EXP_BITS + 1))))  # EXP[D_MAX] = 1


def _exp_table() -> np.ndarray:
    """EXP[d] = round(2**EXP_BITS * exp(-d / T_LOGIT)), d = 0..D_MAX, in decimal arithmetic: its exp
    is correctly rounded, so every machine builds the same table (libm's exp need not be)."""
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        scale = decimal.Decimal(2**EXP_BITS)
        return np.array([float((scale * (decimal.Decimal(-d) / T_LOGIT).exp())
                               .to_integral_value(decimal.ROUND_HALF_UP)) for d in range(D_MAX + 1)])


EXP_TABLE = _exp_table()
MULT_BITS = 20
EXACT_LIMIT = 2**24  # float32 represents every integer below it
MAX_WIDTH = 256  # 256 * 127 * 255 < 2**23: the weights alone stay well inside EXACT_LIMIT
# Images per pass of the encoder: on the CPU, 8 images keep its float64 intermediates in cache
# (2,300 img/s against 1,600 with 64 per pass, on this project's 2-core machine).
CHUNK = {"cpu": 8, "cuda": 4096}


def quantiser(levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbol of each 8-bit value, reconstruction of each symbol), in integer arithmetic so that
    every machine agrees: a uniform quantiser whose first and last levels are 0 and 255."""
    v = np.arange(256)
    if levels == 256:
        return v, v.astype(np.uint8)
    q = (2 * v * (levels - 1) + 255) // 510
    k = np.arange(levels)
    return q, ((2 * k * 255 + levels - 1) // (2 * (levels - 1))).astype(np.uint8)


def padded(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, PAD_SIZE) flat images with the context's zero border."""
    out = images.new_zeros((len(images), H + ROWS, PAD_W))
    out[:, ROWS:, HALF:HALF + W] = images
    return out.view(len(images), -1)


# --- the float model and its training ---------------------------------------------------------

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
        self.row = nn.Parameter(torch.zeros(H, width))
        self.col = nn.Parameter(torch.zeros(W, width))
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

    def hidden(self, ctx: torch.Tensor, pos: torch.Tensor, lvl: torch.Tensor) -> torch.Tensor:
        """ctx (B, 17) pixels / 255, pos (B,) 0..783, lvl (B,) index into self.levels."""
        h = ctx @ self._w(self.l1).t() + self.row[pos // W] + self.col[pos % W] + self.lvl[lvl] + self.b1
        return self._act(self._act(h) @ self._w(self.l2).t() + self.l2.bias)

    def bits(self, ctx, pos, lvl, sym) -> torch.Tensor:
        """Code length in bits of each pixel's symbol (its value, or its bin when lossy)."""
        f = nn.functional
        h = self.hidden(ctx, pos, lvl)
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


def train_arnet(model: ARNet, images: np.ndarray, epochs: int, seed: int,
                progress: bool = True) -> list[float]:
    """Seeded training in place on the model's device; returns the training bits/pixel per epoch.
    Every pixel of every image once per epoch, in random order; with several level counts each
    image draws one count per epoch."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x = host_tensor(images)
    n = len(x)
    # uint8 throughout (1 byte per pixel and copy): the full MNIST training split fits easily.
    tables = [tuple(torch.from_numpy(t.astype(np.uint8)) for t in quantiser(v)) for v in model.levels]
    batch = RECIPE["batch"]
    steps = n * P // batch
    opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=RECIPE["lr"], total_steps=steps * epochs,
                                                pct_start=RECIPE["pct_start"])
    context = torch.from_numpy(CONTEXT).to(device)
    base = torch.from_numpy(PIXEL_BASE).to(device)
    losses = []
    bar = tqdm(range(epochs), desc=f"train ar width={model.width}", unit="epoch",
               disable=None if progress else True, leave=False)
    model.train()
    for epoch in bar:
        model.quant = epoch >= epochs - RECIPE["qat_epochs"]
        lvl = torch.randint(len(model.levels), (n,), generator=gen)
        sym = torch.empty_like(x)
        rec = torch.empty_like(x)
        for i, (q, r) in enumerate(tables):
            sel = lvl == i
            bins = q[x[sel].long()]
            sym[sel] = bins
            rec[sel] = r[bins.long()]
        flat = padded(rec).reshape(-1).to(device)
        sym, lvl = sym.reshape(-1).to(device), lvl.to(device)
        order = torch.randperm(n * P, generator=gen).to(device)
        total = 0.0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            img, pos = idx // P, idx % P
            ctx = flat[(img * PAD_SIZE + base[pos])[:, None] + context].float() / 255.0
            loss = model.bits(ctx, pos, lvl[img], sym[idx].long()).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        losses.append(total / steps)
        bar.set_postfix(bpp=f"{losses[-1]:.4f}")
    model.eval()
    return losses


# --- the integer network ----------------------------------------------------------------------

def _dyadic(m: np.ndarray) -> np.ndarray:
    """Multipliers as integer numerators k of k / 2**MULT_BITS."""
    return np.floor(np.asarray(m, np.float64) * 2.0**MULT_BITS + 0.5).astype(np.int64)


class IntNet:
    """The decoder's network, all integers: what the side information carries.

    Arrays (int64 numpy): w1 (17, W), pos (H + W + 1, W) row, column and constant biases of layer
    1, lvl (levels, W), w2 (W, W), b2, wc (W, 17), bc, wf (16, W, 16), bf (16, 16) and the dyadic
    numerators k1, k2, kc, kf. `to(device)` makes the tensors that inference uses.
    """

    FIELDS = ("w1", "pos", "lvl", "k1", "w2", "b2", "k2", "wc", "bc", "kc", "wf", "bf", "kf")
    WEIGHTS = {"w1", "w2", "wc", "wf"}  # int8; the rest int32
    MAGIC = b"ARN1"

    def __init__(self, levels: tuple[int, ...], arrays: dict[str, np.ndarray]):
        self.levels = tuple(levels)
        self.a = {k: np.asarray(arrays[k], np.int64) for k in self.FIELDS if k in arrays}
        self.lossless = "wf" in self.a
        self.width = self.a["w1"].shape[1]
        self.check_exact()

    # -- export and the side information ----------------------------------------------------

    @classmethod
    def from_model(cls, model: ARNet) -> IntNet:
        """Quantise the (quantisation-aware trained) float model."""
        s_in, s_a = 1.0 / 255.0, RECIPE["act_max"] / 255.0

        def weight(layer):
            w = layer.weight.detach().cpu().double().numpy()
            d = np.maximum(np.abs(w).max(axis=1), 1e-8) / 127.0
            return np.clip(np.floor(w / d[:, None] + 0.5), -127, 127).T, d

        def bias(t, scale):
            return np.floor(t.detach().cpu().double().numpy() / scale + 0.5)

        w1, d1 = weight(model.l1)
        w2, d2 = weight(model.l2)
        wc, dc = weight(model.coarse)
        a = {"w1": w1, "k1": _dyadic(d1 * s_in / s_a), "w2": w2, "k2": _dyadic(d2),
             "b2": bias(model.l2.bias, d2 * s_a), "wc": wc, "bc": bias(model.coarse.bias, dc * s_a),
             "kc": _dyadic(dc * s_a * T_LOGIT)}
        # Each bias table is rounded on its own and shipped as is; inference adds them exactly.
        scale = d1 * s_in
        a["pos"] = np.concatenate([bias(model.row, scale), bias(model.col, scale),
                                   bias(model.b1, scale)[None]])
        a["lvl"] = bias(model.lvl, scale)
        if model.fine is not None:
            wf, df = weight(model.fine)
            a["wf"] = wf.reshape(-1, NG, NF).transpose(1, 0, 2)
            a["bf"] = bias(model.fine.bias, df * s_a).reshape(NG, NF)
            a["kf"] = _dyadic(df * s_a * T_LOGIT).reshape(NG, NF)
        return cls(model.levels, a)

    def to_bytes(self) -> bytes:
        """The side information: a small header, int8 weights, int32 biases and multipliers."""
        head = struct.pack("<4sHB", self.MAGIC, self.width, len(self.levels))
        head += bytes(LEVELS.index(v) for v in self.levels)
        body = [self.a[k].astype(np.int8 if k in self.WEIGHTS else "<i4").tobytes()
                for k in self.FIELDS if k in self.a]
        return head + b"".join(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> IntNet:
        """The inverse of to_bytes; anything malformed is a CodecError."""
        try:
            magic, width, n_levels = struct.unpack_from("<4sHB", data)
            levels = tuple(LEVELS[i] for i in data[7:7 + n_levels])
        except (struct.error, IndexError):
            raise CodecError("ar side information is malformed (bad header)") from None
        if (magic != cls.MAGIC or not 1 <= width <= MAX_WIDTH or not levels
                or len(set(levels)) != n_levels):
            raise CodecError("ar side information is malformed (bad header)")
        shapes = cls.shapes(width, n_levels, 256 in levels)
        at, arrays = 7 + n_levels, {}
        for k, shape in shapes.items():
            dtype = np.dtype(np.int8 if k in cls.WEIGHTS else "<i4")
            size = math.prod(shape) * dtype.itemsize
            if at + size > len(data):
                raise CodecError(f"ar side information is truncated ({len(data)} bytes)")
            arrays[k] = np.frombuffer(data, dtype, math.prod(shape), at).reshape(shape)
            at += size
        if at != len(data):
            raise CodecError(f"ar side information has {len(data) - at} bytes too many")
        return cls(levels, arrays)

    @staticmethod
    def shapes(width: int, n_levels: int, lossless: bool) -> dict[str, tuple[int, ...]]:
        s = {"w1": (N_CTX, width), "pos": (H + W + 1, width), "lvl": (n_levels, width), "k1": (width,),
             "w2": (width, width), "b2": (width,), "k2": (width,), "wc": (width, NC), "bc": (NC,),
             "kc": (NC,)}
        if lossless:
            s.update({"wf": (NG, width, NF), "bf": (NG, NF), "kf": (NG, NF)})
        return s

    def check_exact(self) -> int:
        """The largest |partial sum| any matmul can reach; over EXACT_LIMIT is a CodecError."""
        a = self.a
        for k, shape in self.shapes(self.width, len(self.levels), self.lossless).items():
            if a.get(k) is None or a[k].shape != shape:
                raise CodecError(f"ar network: {k} has shape {getattr(a.get(k), 'shape', None)}, "
                                 f"expected {shape}")
        if any(np.abs(a[k]).max() > 127 for k in self.WEIGHTS if k in a):
            raise CodecError("ar network: a weight is outside the int8 range -127..127")
        kmult = np.concatenate([a[k].ravel() for k in ("k1", "k2", "kc", "kf") if k in a])
        if kmult.min() < 0 or kmult.max() >= 2**28:  # k * |acc| < 2**52: exact in float64
            raise CodecError("ar network: a multiplier is outside 0 .. 2**28 - 1")
        b1 = (np.abs(a["pos"][:H])[:, None] + np.abs(a["pos"][H:H + W])[None]).max(axis=(0, 1))
        b1 = b1 + np.abs(a["pos"][H + W]) + np.abs(a["lvl"]).max(axis=0)
        bounds = [np.abs(a["w1"]).sum(0) * 255 + b1, np.abs(a["w2"]).sum(0) * 255 + np.abs(a["b2"]),
                  np.abs(a["wc"]).sum(0) * 255 + np.abs(a["bc"])]
        if self.lossless:
            bounds.append(np.abs(a["wf"]).sum(1) * 255 + np.abs(a["bf"]))
        worst = int(max(b.max() for b in bounds))
        if worst >= EXACT_LIMIT:
            raise CodecError(f"ar network: a partial sum can reach {worst:,}, and float32 is exact "
                             f"only below 2**24 = {EXACT_LIMIT:,}")
        return worst

    @property
    def tag(self) -> int:
        """Four bits of a hash of the network, in every payload's header."""
        return hashlib.sha256(self.to_bytes()).digest()[0] & 0x0F

    def to(self, device: str, dtype: torch.dtype | None = None) -> _Tensors:
        return _Tensors(self, device, dtype)


class _Tensors:
    """The integer network as tensors on one device, and the integer inference.

    Matmuls run in float32 on the CPU and float64 on CUDA (`dtype` overrides: tests run the CUDA
    arithmetic on the CPU): both are exact for these integers (see the module docstring), so both
    give the same integers and the same tables.
    """

    def __init__(self, net: IntNet, device: str, dtype: torch.dtype | None = None):
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float64 if self.device.type == "cuda" else torch.float32)
        a = {k: torch.from_numpy(v).to(self.device) for k, v in net.a.items()}
        f = {k: v.to(self.dtype) for k, v in a.items() if not k.startswith("k")}
        self.m = {k: v.double() / 2.0**MULT_BITS for k, v in a.items() if k.startswith("k")}
        self.w1, self.w2, self.b2, self.wc, self.bc = f["w1"], f["w2"], f["b2"], f["wc"], f["bc"]
        pos = a["pos"]  # row + column + constant, then + level: (levels, P, W) exact integers
        b1 = (pos[:H, None] + pos[None, H:H + W]).reshape(P, -1) + pos[H + W]
        self.b1 = (b1[None] + a["lvl"][:, None]).to(self.dtype)
        if net.lossless:
            self.wf, self.bf = f["wf"], f["bf"]
            self.wf_all = f["wf"].permute(1, 0, 2).reshape(net.width, NG * NF)  # every group at once
        self.exp = torch.from_numpy(EXP_TABLE).to(self.device)
        self.zero = {}  # level index -> activations and coarse weights of all-zero contexts

    def _requant(self, acc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        a = acc.double() * m  # exact: |acc| < 2**24 and m = k / 2**20 with k < 2**28
        return a.add_(0.5).floor_().clamp_(0.0, 255.0).to(self.dtype)

    def hidden(self, ctx: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        """Contexts (n, 17) and layer-1 biases (n or 1, W) -> activations (n, W), integers 0..255."""
        a1 = self._requant(ctx @ self.w1 + b1, self.m["k1"])
        return self._requant(a1 @ self.w2 + self.b2, self.m["k2"])

    def _weights(self, acc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Accumulators -> integer logits (1/16 nat) -> integer weights EXP[max - logit]."""
        logits = (acc.double() * m).add_(0.5).floor_()
        d = (logits.amax(dim=1, keepdim=True) - logits).clamp_(max=D_MAX)
        return self.exp[d.long()]

    def coarse(self, a2: torch.Tensor, k: int) -> torch.Tensor:
        """(n, k) float64 weights of the coarse symbols."""
        return self._weights((a2 @ self.wc + self.bc)[:, :k], self.m["kc"][:k])

    def fine(self, a2: torch.Tensor, g: torch.Tensor, grouped: bool) -> torch.Tensor:
        """(n, 17) float64 weights of the value inside coarse group g (0..15) of each row; the 17th
        column (padding, so that coarse and fine rows share one table) and the value 256 get 0.
        `grouped`: one matmul per group (many rows) or one for every group at once (few rows);
        the same integers either way."""
        n = len(g)
        acc = torch.empty((n, NF), dtype=self.dtype, device=self.device)
        if grouped:
            for k in torch.unique(g).tolist():
                sel = torch.nonzero(g == k).squeeze(1)
                acc[sel] = a2[sel] @ self.wf[k] + self.bf[k]
        else:
            acc = (a2 @ self.wf_all).view(n, NG, NF)[torch.arange(n, device=self.device), g] + self.bf[g]
        logits = (acc.double() * self.m["kf"][g]).add_(0.5).floor_()
        last = g == NG - 1
        logits[last, NF - 1] = -1e9
        out = torch.zeros((n, NC), dtype=torch.float64, device=self.device)
        d = (logits.amax(dim=1, keepdim=True) - logits).clamp_(max=D_MAX)
        out[:, :NF] = self.exp[d.long()]
        out[last, NF - 1] = 0.0
        return out

    def zero_context(self, mi: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Activations and coarse weights at every position when the whole context is 0 (57 % of
        MNIST pixels), at the model's level index mi: computed once by the same network, then
        looked up."""
        if mi not in self.zero:
            a2 = self.hidden(torch.zeros((P, N_CTX), dtype=self.dtype, device=self.device), self.b1[mi])
            self.zero[mi] = a2, self.coarse(a2, k)
        return self.zero[mi]


def _coarse_width(levels: int) -> int:
    return NC if levels == 256 else levels


# --- coding ----------------------------------------------------------------------------------

_FAMILY = constriction.stream.model.Categorical(perfect=False)
_DECODE = constriction.stream.queue.RangeDecoder.decode  # called through map(): a C-level loop


def _words(stream: bytes) -> np.ndarray:
    """Payload bytes -> the coder's 32-bit words; missing trailing bytes are zeros."""
    return np.frombuffer(stream + b"\0" * (-len(stream) % 4), ">u4").astype(np.uint32)


def _decodes(stream: bytes, symbols: np.ndarray, probs: np.ndarray) -> bool:
    decoder = constriction.stream.queue.RangeDecoder(_words(stream))
    try:
        return np.array_equal(decoder.decode(_FAMILY, probs), symbols)
    except AssertionError:  # constriction: data invalid for the model
        return False


def _stream(symbols: np.ndarray, probs: np.ndarray) -> bytes:
    """One image's range-coder stream, cut to whole bytes.

    constriction seals a stream with the smallest last word w whose point lies in the final
    interval; a larger w in the interval decodes alike, and missing trailing bytes decode as zeros.
    So w is rounded up to 1, 2 or 3 significant bytes (shortest first) and the first form that
    decodes to the same symbols is kept."""
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(symbols, _FAMILY, probs)
    words = encoder.get_compressed()
    full = words.astype(">u4").tobytes()
    if len(words) == 0:
        return full
    head, last = full[:-4], int(words[-1])
    for keep in (1, 2, 3):
        step = 1 << (8 * (4 - keep))
        cand = -(-last // step) * step
        if cand < 1 << 32:
            trial = (head + cand.to_bytes(4, "big")[:keep]).rstrip(b"\0")
            if _decodes(trial, symbols, probs):
                return trial
    return full


class ARCodec(LearnedCodec):
    """`ar`: lossless. `ARLossyCodec` below is the same model family at a few levels per pixel."""

    family = "ar"
    code_modules = (__name__,)
    lossless = True
    allow_bf16 = False  # the coding needs the exact integer network
    train_threads = TRAIN_THREADS
    precision = "integer (int8 weights, uint8 activations; exact)"
    trained_levels: tuple[int, ...] = (256,)

    def __init__(self, width: int = 64, epochs: int = 4, seed: int = 0, device: str = "cpu"):
        super().__init__(epochs, seed, device)
        if not 1 <= width <= MAX_WIDTH:
            raise CodecError(f"ar: width={width} is outside 1..{MAX_WIDTH}")
        self.name = "ar"
        self.width = width
        self.levels = 256
        self.net: IntNet | None = None
        self.side_info = b""
        self.threads = INFERENCE_THREADS  # on the CPU; tests change it to show it does not matter
        self.library = f"torch {torch.__version__}, constriction {version('constriction')}"
        self._tensors: _Tensors | None = None

    def hyperparameters(self) -> dict:
        return {"arch": ARCH_VERSION, "recipe": RECIPE, "width": self.width,
                "levels": list(self.trained_levels), "context": [ROWS, HALF]}

    def build_model(self, shape) -> ARNet:
        if tuple(shape) != (H, W):
            raise CodecError(f"{self.name} models {H}x{W} images (its position biases); "
                             f"the training images are {shape[0]}x{shape[1]}")
        return ARNet(self.width, self.trained_levels)

    def train_model(self, model: ARNet, data: TrainingData) -> list[float]:
        return train_arnet(model, data.train, self.epochs, self.seed, data.progress)

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
        self.header = (LEVELS.index(self.levels) << 4) | self.net.tag

    @property
    def side_info_bytes(self) -> int:
        self._require_net()
        return len(self.side_info)

    def header_bytes(self, shape: tuple[int, int]) -> int:
        return 1

    def _require_net(self) -> _Tensors:
        if self._tensors is None:
            raise CodecError(f"{self.name} is not trained: call .fit(training_data) first")
        return self._tensors

    @contextmanager
    def _inference(self):
        with torch.inference_mode(), torch_threads(self.threads):
            yield

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
        header = bytes([self.header])
        out = []
        with self._inference():
            for _, tab, sym, off in self._tables(images):
                for i in range(len(off) - 1):
                    out.append(header + _stream(sym[off[i]:off[i + 1]], tab[off[i]:off[i + 1]]))
        return Payloads.from_list(out)

    def model_bits(self, images: np.ndarray) -> np.ndarray:
        """The integer model's code length per image (bits), the header byte not included."""
        self._require_net()
        images = check_images(images, trained=(H, W), codec=self.name)
        bits = np.empty(len(images))
        with self._inference():
            for s, tab, sym, off in self._tables(images):
                per_row = -np.log2(tab[np.arange(len(sym)), sym] / tab.sum(axis=1))
                bits[s:s + len(off) - 1] = np.add.reduceat(per_row, off[:-1])
        return bits

    # -- the decoder side ----------------------------------------------------------------

    def _streams(self, payloads: Payloads | Sequence[bytes]) -> list[np.ndarray]:
        payloads = payloads_to_decode(payloads, self.name)
        streams = []
        for i, p in enumerate(payloads):
            if not p:
                raise PayloadError(f"{self.name}: payload {i} is empty; it needs at least its "
                                   "1-byte header")
            if p[0] != self.header:
                raise PayloadError(f"{self.name}: payload {i} {self._whose(p[0])}")
            streams.append(_words(p[1:]))
        return streams

    def _whose(self, header: int) -> str:
        li = header >> 4
        if li >= len(LEVELS):
            return f"is not an ar payload (header byte {header:#04x})"
        if LEVELS[li] != self.levels:
            made = "lossless" if LEVELS[li] == 256 else f"with levels={LEVELS[li]}"
            this = "lossless" if self.levels == 256 else f"levels={self.levels}"
            return f"was encoded {made}; this codec decodes {this}"
        return (f"was encoded by another ar model (model tag {header & 15}, this model's "
                f"{self.header & 15}) or is corrupt")

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        t = self._require_net()
        streams = self._streams(payloads)
        with self._inference():
            return self._decode(t, streams)

    def _decode(self, t: _Tensors, streams: list[np.ndarray]) -> np.ndarray:
        """Every image of the batch together, pixel by pixel: each step runs the network on all
        images' contexts, then makes one constriction call per image (a C-level loop over
        pre-bound methods and pre-made one-row views of one buffer), and, lossless, one more
        per pixel that is not 0."""
        n, dev, mi = len(streams), t.device, self.net.levels.index(self.levels)
        k = _coarse_width(self.levels)
        decoders = [constriction.stream.queue.RangeDecoder(w) for w in streams]
        fams = [_FAMILY] * n
        cbuf, fbuf = np.zeros((n, k)), np.zeros((n, NC))  # C-contiguous, as constriction needs
        cviews, fviews = [cbuf[i:i + 1] for i in range(n)], [fbuf[i:i + 1] for i in range(n)]
        cbuf_t, fbuf_t = torch.from_numpy(cbuf), torch.from_numpy(fbuf)
        rec_of = torch.from_numpy(quantiser(self.levels)[1]).to(dev, t.dtype)
        x = torch.zeros((n, PAD_SIZE), dtype=t.dtype, device=dev)
        where = torch.from_numpy(PIXEL_BASE[:, None] + CONTEXT).to(dev)  # (P, 17)
        for p in range(P):
            a2 = t.hidden(x[:, where[p]], t.b1[mi, p])
            cbuf_t.copy_(t.coarse(a2, k))
            sym = self._symbols(decoders, fams, cviews, range(n))
            at = int(PIXEL_AT[p])
            if self.levels != 256:
                x[:, at] = rec_of[torch.from_numpy(sym).to(dev).long()]
                continue
            nzi = np.flatnonzero(sym)
            if len(nzi) == 0:
                continue
            g = torch.from_numpy(sym[nzi] - 1).to(dev).long()
            fbuf_t[:len(nzi)].copy_(t.fine(a2[torch.from_numpy(nzi).to(dev)], g, grouped=False))
            lo = self._symbols([decoders[j] for j in nzi], fams, fviews, nzi)
            value = 1 + NF * (sym[nzi] - 1) + lo
            bad = np.flatnonzero((lo >= NF) | (value > 255))
            if len(bad):  # symbols of probability 0: only a corrupt stream decodes to them
                raise PayloadError(f"{self.name}: payload {nzi[bad[0]]} is corrupt (pixel {p} "
                                   "decodes to no 8-bit value)")
            x[torch.from_numpy(nzi).to(dev), at] = torch.from_numpy(value).to(dev, t.dtype)
        out = x.view(n, H + ROWS, PAD_W)[:, ROWS:, HALF:HALF + W]
        return out.to(torch.uint8).cpu().numpy()

    def _symbols(self, decoders, fams, views, index) -> np.ndarray:
        got: list[np.ndarray] = []
        try:
            got.extend(map(_DECODE, decoders, fams, views))
        except AssertionError as exc:  # constriction: the data is invalid for the model
            raise PayloadError(f"{self.name}: payload {index[len(got)]} is corrupt or truncated "
                               f"({exc})") from None
        return np.concatenate(got)


class ARLossyCodec(ARCodec):
    """`ar-lossy:levels=L`: each pixel quantised to L levels (0 and 255 exact), the bins coded by
    one model trained on a mixture of every level count, conditioned on the count."""

    family = "ar-lossy"
    lossless = False
    trained_levels = LOSSY_LEVELS

    def __init__(self, levels: int = 8, width: int = 64, epochs: int = 6, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(width, epochs, seed, device)
        if levels not in LOSSY_LEVELS:
            raise CodecError(f"ar-lossy: levels={levels} is not one of "
                             f"{', '.join(map(str, LOSSY_LEVELS))}")
        self.name = "ar-lossy"
        self.levels = levels
