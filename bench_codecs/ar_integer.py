"""The integer network of the `ar` codecs: the float model (bench_codecs.ar_model) exported to
int8 weights (per output channel), uint8 activations and integer biases, its serialisation (the
side information a receiver needs), and its inference as tensors (CUDA; the CPU runs the same
integers in bench_codecs.ar_cpu), with the decoder's per-step runner.

Why integers. The decoder must rebuild bit for bit the probability tables the encoder used, and
float network outputs differ across batch sizes, thread counts and devices. Matmuls run in float32
on these integers, and every partial sum is bounded by sum|w| * 255 + |b| < 2**24 (checked at
export and whenever a network is loaded), so every float32 addition is exact in any order: BLAS
blocking, threads, batch splits. On CUDA they run in float64 (exact below 2**53, and immune to TF32
settings). Re-quantisation multiplies each accumulator (an integer below 2**24, so exact in
float32) by a float32 constant made once from k / 2**20, then takes floor(x + 0.5) and clamps: a
fixed sequence of elementwise IEEE-754 float32 operations, each correctly rounded, which every
machine and device computes alike whatever the batch or thread count (no sums are involved, and
no two operations are fused). Integer logits (1/16 nat) become integer weights through a fixed
table EXP[d] = round(2**20 exp(-d/16)); constriction gets C-contiguous float64 arrays of exact
integers, identical on both sides.
"""

from __future__ import annotations

import decimal
import math
import struct
from functools import lru_cache

import numpy as np
import torch

from bench.codec import MAX_SIDE, CodecError
from bench_codecs.ar_model import (
    BINS,
    LEVELS,
    N_CTX,
    NC,
    NF,
    NG,
    RECIPE,
    T_LOGIT,
    ARNet,
    Geometry,
    geometry,
)

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
HEADER = "<4sHHHB"  # magic, width, the trained size (h, w), level count
MAX_WIDTH = 256  # 256 * 127 * 255 < 2**23: the weights alone stay well inside EXACT_LIMIT


def _dyadic(m: np.ndarray) -> np.ndarray:
    """Multipliers as integer numerators k of k / 2**MULT_BITS."""
    return np.floor(np.asarray(m, np.float64) * 2.0**MULT_BITS + 0.5).astype(np.int64)


class IntNet:
    """The decoder's network, all integers: what the side information carries.

    Arrays (int64 numpy): w1 (17, W), pos (BINS**2 + 1, W) position-bin and constant biases of
    layer 1, lvl (levels, W), w2 (W, W), b2, wc (W, 17), bc, wf (16, W, 16), bf (16, 16) and the dyadic
    numerators k1, k2, kc, kf. `to(device)` makes the tensors that inference uses.
    """

    FIELDS = ("w1", "pos", "lvl", "k1", "w2", "b2", "k2", "wc", "bc", "kc", "wf", "bf", "kf")
    WEIGHTS = {"w1", "w2", "wc", "wf"}  # int8; the rest int32
    MAGIC = b"ARN2"

    def __init__(self, levels: tuple[int, ...], arrays: dict[str, np.ndarray],
                 shape: tuple[int, int]):
        self.levels, self.shape = tuple(levels), tuple(shape)  # shape: the size trained on
        self.a = {k: np.asarray(arrays[k], np.int64) for k in self.FIELDS if k in arrays}
        self.lossless = "wf" in self.a
        self.width = self.a["w1"].shape[1]
        self.check_exact()

    # -- export and the side information ----------------------------------------------------

    @classmethod
    def from_model(cls, model: ARNet, shape: tuple[int, int]) -> IntNet:
        """Quantise the (quantisation-aware trained) float model, trained on images of `shape`."""
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
        a["pos"] = np.concatenate([bias(model.pos, scale), bias(model.b1, scale)[None]])
        a["lvl"] = bias(model.lvl, scale)
        if model.fine is not None:
            wf, df = weight(model.fine)
            a["wf"] = wf.reshape(-1, NG, NF).transpose(1, 0, 2)
            a["bf"] = bias(model.fine.bias, df * s_a).reshape(NG, NF)
            a["kf"] = _dyadic(df * s_a * T_LOGIT).reshape(NG, NF)
        return cls(model.levels, a, shape)

    def to_bytes(self) -> bytes:
        """The side information: a small header (the size trained on: a payload codes it in one
        bit), int8 weights, int32 biases and multipliers."""
        head = struct.pack(HEADER, self.MAGIC, self.width, *self.shape, len(self.levels))
        head += bytes(LEVELS.index(v) for v in self.levels)
        body = [self.a[k].astype(np.int8 if k in self.WEIGHTS else "<i4").tobytes()
                for k in self.FIELDS if k in self.a]
        return head + b"".join(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> IntNet:
        """The inverse of to_bytes; anything malformed is a CodecError."""
        try:
            magic, width, h, w, n_levels = struct.unpack_from(HEADER, data)
            levels = tuple(LEVELS[i] for i in data[struct.calcsize(HEADER):][:n_levels])
        except (struct.error, IndexError):
            raise CodecError("ar side information is malformed (bad header)") from None
        if (magic != cls.MAGIC or not 1 <= width <= MAX_WIDTH or not levels
                or len(set(levels)) != n_levels or not 1 <= min(h, w) <= max(h, w) <= MAX_SIDE):
            raise CodecError("ar side information is malformed (bad header)")
        shapes = cls.shapes(width, n_levels, 256 in levels)
        at, arrays = struct.calcsize(HEADER) + n_levels, {}
        for k, shape in shapes.items():
            dtype = np.dtype(np.int8 if k in cls.WEIGHTS else "<i4")
            size = math.prod(shape) * dtype.itemsize
            if at + size > len(data):
                raise CodecError(f"ar side information is truncated ({len(data)} bytes)")
            arrays[k] = np.frombuffer(data, dtype, math.prod(shape), at).reshape(shape)
            at += size
        if at != len(data):
            raise CodecError(f"ar side information has {len(data) - at} bytes too many")
        return cls(levels, arrays, (h, w))

    @staticmethod
    def shapes(width: int, n_levels: int, lossless: bool) -> dict[str, tuple[int, ...]]:
        s = {"w1": (N_CTX, width), "pos": (BINS * BINS + 1, width), "lvl": (n_levels, width),
             "k1": (width,),
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
        b1 = np.abs(a["pos"][:-1]).max(axis=0) + np.abs(a["pos"][-1]) + np.abs(a["lvl"]).max(axis=0)
        bounds = [np.abs(a["w1"]).sum(0) * 255 + b1, np.abs(a["w2"]).sum(0) * 255 + np.abs(a["b2"]),
                  np.abs(a["wc"]).sum(0) * 255 + np.abs(a["bc"])]
        if self.lossless:
            bounds.append(np.abs(a["wf"]).sum(1) * 255 + np.abs(a["bf"]))
        worst = int(max(b.max() for b in bounds))
        if worst >= EXACT_LIMIT:
            raise CodecError(f"ar network: a partial sum can reach {worst:,}, and float32 is exact "
                             f"only below 2**24 = {EXACT_LIMIT:,}")
        return worst

    def to(self, device: str, dtype: torch.dtype | None = None) -> IntInference:
        return IntInference(self, device, dtype)


class IntInference:
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
        # The multipliers as float32 (from the exact float64 quotient, rounded once, on the CPU):
        # the requantisation below is then the same sequence of IEEE-754 float32 operations on
        # every device, elementwise, so every machine computes the same integers.
        self.m = {k: (torch.from_numpy(v).double() / 2.0**MULT_BITS).float().to(self.device)
                  for k, v in net.a.items() if k.startswith("k")}
        self.w1, self.w2, self.b2, self.wc, self.bc = f["w1"], f["w2"], f["b2"], f["wc"], f["bc"]
        pos = a["pos"]  # position bin + constant + level: (levels, BINS**2, W) exact integers
        self.b1 = (pos[None, :-1] + pos[-1] + a["lvl"][:, None]).to(self.dtype)
        if net.lossless:
            self.wf, self.bf = f["wf"], f["bf"]
            self.wf_all = f["wf"].permute(1, 0, 2).reshape(net.width, NG * NF)  # every group at once
        self.exp = torch.from_numpy(EXP_TABLE).to(self.device)
        self.wc_t: dict[int, torch.Tensor] = {}
        self.zero = {}  # level index -> activations and coarse weights of all-zero contexts

    def _requant(self, acc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Accumulators (a fresh tensor, overwritten on the CPU) -> activations 0..255."""
        a = acc.float().mul_(m)  # |acc| < 2**24: exact in float32, whatever the matmul's dtype
        return a.add_(0.5).floor_().clamp_(0.0, 255.0).to(self.dtype)

    def hidden(self, ctx: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        """Contexts (n, 17) and layer-1 biases (n, W) -> activations (n, W), integers 0..255.
        addmm starts each sum at the bias: every partial sum is still within the bound that
        check_exact proves, so the integers are those of the matmul plus the bias."""
        a1 = self._requant(torch.addmm(b1, ctx, self.w1), self.m["k1"])
        return self._requant(torch.addmm(self.b2, a1, self.w2), self.m["k2"])

    def _weights(self, acc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Accumulators -> integer logits (1/16 nat) -> integer weights EXP[max - logit]."""
        logits = acc.float().mul_(m).add_(0.5).floor_()  # acc: fresh, overwritten on the CPU
        d = (logits.amax(dim=1, keepdim=True) - logits).clamp_(max=D_MAX).long()
        return self.exp.index_select(0, d.view(-1)).view(d.shape)  # a gather, many times faster

    def coarse(self, a2: torch.Tensor, k: int) -> torch.Tensor:
        """(n, k) float64 weights of the coarse symbols."""
        if k not in self.wc_t:  # the first k outputs, transposed: MKL is faster on (k, W) than (W, k)
            self.wc_t[k] = self.wc[:, :k].t().contiguous()
        return self._weights(torch.addmm(self.bc[:k], a2, self.wc_t[k].t()), self.m["kc"][:k])

    def fine(self, a2: torch.Tensor, g: torch.Tensor, grouped: bool) -> torch.Tensor:
        """(n, 17) float64 weights of the value inside coarse group g (0..15) of each row; the 17th
        column (padding, so that coarse and fine rows share one table) and the value 256 get 0.
        `grouped`: one matmul per group (many rows) or one for every group at once (few rows);
        the same integers either way."""
        n = len(g)
        acc = torch.empty((n, NF), dtype=self.dtype, device=self.device)
        if grouped:
            by_group = torch.argsort(g, stable=True)
            ends = torch.bincount(g, minlength=NG).cumsum(0).tolist()
            for k, (lo, hi) in enumerate(zip([0, *ends[:-1]], ends)):
                if hi > lo:
                    sel = by_group[lo:hi]
                    acc.index_copy_(0, sel, a2.index_select(0, sel) @ self.wf[k] + self.bf[k])
        else:
            rows = torch.arange(n, device=self.device) * NG + g
            acc = (a2 @ self.wf_all).view(n * NG, NF).index_select(0, rows) + self.bf.index_select(0, g)
        logits = (acc.float() * self.m["kf"].index_select(0, g)).add_(0.5).floor_()
        last = g == NG - 1
        logits[last, NF - 1] = -math.inf  # the value 256: below any logit
        out = torch.zeros((n, NC), dtype=torch.float64, device=self.device)
        d = (logits.amax(dim=1, keepdim=True) - logits).clamp_(max=D_MAX).long()
        out[:, :NF] = self.exp.index_select(0, d.view(-1)).view(d.shape)
        out[last, NF - 1] = 0.0
        return out

    def network(self, ctx: torch.Tensor, bins: torch.Tensor, mi: int, k: int, activations: bool):
        """Coarse weights (n, k) of each pixel at level index mi (and its activations, when asked
        for), from its context (n, 17) and position bin: the network for live contexts, the
        lookup for all-zero ones."""
        a2_zero, cw_zero = self.zero_context(mi, k)
        # index_select / index_copy_ rather than advanced indexing: the same values, several
        # times faster on the CPU. Contexts are >= 0, so a row is live when its sum is not 0.
        live = torch.nonzero(ctx.sum(dim=1)).squeeze(1)
        live_bins = bins.index_select(0, live)
        a2_live = self.hidden(ctx.index_select(0, live), self.b1[mi].index_select(0, live_bins))
        cw = cw_zero.index_select(0, bins)
        cw.index_copy_(0, live, self.coarse(a2_live, k))
        if not activations:
            return None, cw
        return a2_zero.index_select(0, bins).index_copy_(0, live, a2_live), cw

    def zero_context(self, mi: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Activations and coarse weights of each position bin when the whole context is 0 (57 %
        of MNIST pixels), at the model's level index mi: computed once by the same network, then
        looked up."""
        if mi not in self.zero:
            zeros = torch.zeros((BINS * BINS, N_CTX), dtype=self.dtype, device=self.device)
            a2 = self.hidden(zeros, self.b1[mi])
            self.zero[mi] = a2, self.coarse(a2, k)
        return self.zero[mi]


@lru_cache(maxsize=8)
def step_tensors(h: int, w: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per wavefront step of an h x w image, on `device`: where its pixels' contexts are in the
    padded image (k, 17), their position bins and where the pixels themselves are."""
    g = geometry(h, w)
    return [tuple(torch.from_numpy(a).to(device) for a in (g.base[idx, None] + g.context, g.bins[idx],
                                                           g.at[idx])) for idx in g.steps]


class TensorSteps:
    """What bench_codecs.ar's decoder runs with tensors (CUDA, or the CPU without numba; the CPU
    otherwise runs bench_codecs.ar_cpu.HostSteps, the same integers): the network at level index
    mi and the image buffer of the batch of images of geometry g; per wavefront step (`steps`:
    step_tensors), coarse weights into the shared buffer `coarse` (n, k_max, K), fine weights,
    and the decoded pixels."""

    def __init__(self, t: IntInference, mi: int, fine: bool, g: Geometry, coarse: np.ndarray,
                 steps: list):
        self.t, self.mi, self.activations, self.g, self.out = t, mi, fine, g, coarse
        self.n, self.steps = len(coarse), steps
        self.x = torch.zeros((self.n, g.pad_size), dtype=t.dtype, device=t.device)

    def coarse(self, s: int) -> None:
        where, bins, at = self.steps[s]
        k = len(at)
        ctx = self.x.index_select(1, where.view(-1)).view(self.n * k, -1)
        self.a2, cw = self.t.network(ctx, bins.repeat(self.n), self.mi, self.out.shape[2],
                                         self.activations)
        self.out[:, :k] = cw.view(self.n, k, -1).cpu().numpy()

    def fine(self, rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
        dev = self.t.device
        return self.t.fine(self.a2.index_select(0, torch.from_numpy(rows).to(dev)),
                           torch.from_numpy(groups).to(dev).long(), grouped=False).cpu().numpy()

    def put(self, s: int, values: np.ndarray) -> None:
        at = self.steps[s][2]
        self.x.index_copy_(1, at, torch.from_numpy(values).to(self.x).view(self.n, len(at)))

    def images(self) -> np.ndarray:
        return self.g.unpadded(self.x).to(torch.uint8).cpu().numpy()
