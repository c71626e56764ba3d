"""The `ar` codecs' network on the CPU: one wavefront step of every image of a batch (or every
pixel of a few images, for the encoder) as a few numba kernels around three float32 GEMMs, the
same integers as bench_codecs.ar_integer's tensors.

Why. Decoding runs the network once per wavefront step (136 steps for a 28x28 image) on a few
thousand rows. In eager PyTorch most of a step went to gathers and the elementwise requantisation,
each a separate pass with its own dispatch; here each is one compiled loop, and the GEMMs (the
same float32 matmuls, through numpy's BLAS) are all that is left of the network's cost.

Exactness. The GEMMs sum integers whose every partial sum IntNet.check_exact bounds below 2**24,
so float32 gives the exact integers in any order, and the bias is added after the sum (an exact
integer too). The kernels then apply the requantisation's IEEE-754 float32 operations one by one,
as IntInference does: multiply by the float32 multiplier, add 0.5, floor, then clamp to 0..255
(activations) or take differences (logits, through the same EXP table). numba compiles without
fast-math, so no two operations are fused.
"""

from __future__ import annotations

import numba
import numpy as np

from bench_codecs.ar_integer import IntInference
from bench_codecs.ar_model import NC, Geometry

# Compiled once per machine and cached. The kernels take every constant as an argument or an
# array's shape: numba's cache does not notice an edit to another module's constants.
_JIT = {"nogil": True, "cache": True, "error_model": "numpy"}


@numba.njit(**_JIT)
def _gather(x, where, bins, b1, zero_cw, out, ctx, bias, live):
    """Contexts of step pixels `where` (k, 17) of every image of x (n, pad) float32. Rows whose
    context is all 0 get zero_cw[bin] in out (n, k, K) at once; the others (L of them, returned)
    go to ctx[:L] with their layer-1 bias row in bias[:L] and their row i * k + p in live[:L]."""
    n, (k, m), width, K = x.shape[0], where.shape, b1.shape[1], out.shape[2]
    rows = 0
    for i in range(n):
        for p in range(k):
            total = np.float32(0)
            for j in range(m):
                value = x[i, where[p, j]]
                ctx[rows, j] = value
                total += value
            b = bins[p]
            if total == 0:  # contexts are >= 0
                for q in range(K):
                    out[i, p, q] = zero_cw[b, q]
            else:
                for o in range(width):
                    bias[rows, o] = b1[b, o]
                live[rows] = i * k + p
                rows += 1
    return rows


@numba.njit(**_JIT)
def _half_up(acc, bias, m):
    """floor((acc + bias) * m + 0.5), each operation in float32: IntInference's sequence."""
    return np.floor(np.float32(acc + bias) * m + np.float32(0.5))


@numba.njit(**_JIT)
def _requant(acc, bias, m):
    """acc (L, W) <- clamp(floor((acc + bias) * m + 0.5), 0, 255), in place; bias is (L, W), or
    (1, W) for every row."""
    rows, width = acc.shape
    for r in range(rows):
        b = bias[r if len(bias) > 1 else 0]
        for o in range(width):
            acc[r, o] = min(max(_half_up(acc[r, o], b[o], m[o]), np.float32(0)), np.float32(255))


@numba.njit(**_JIT)
def _coarse_weights(acc, bc, mc, exp, live, k, out):
    """Coarse accumulators (L, K) of the live rows -> their integer weights in out (n, k, K)."""
    rows, K = acc.shape
    logits = np.empty(K, np.float32)
    for r in range(rows):
        top = np.float32(-np.inf)
        for q in range(K):
            logits[q] = _half_up(acc[r, q], bc[q], mc[q])
            top = max(top, logits[q])
        i, p = live[r] // k, live[r] % k
        for q in range(K):
            out[i, p, q] = exp[int(min(top - logits[q], len(exp) - 1))]


@numba.njit(**_JIT)
def _fine_weights(a2, slot, zero_a2, bins, k, rows, groups, wf, bf, mf, exp, out):
    """Into out (len(rows), NF + 1), zeroed: the weights of the value inside coarse group
    groups[j] of step row rows[j] (= i * k + p), whose activations are a2[slot[row]], or
    zero_a2[bin] when its context was all 0. The last group has NF - 1 values; the last column
    (padding, so that coarse and fine rows share one table) stays 0."""
    n_groups, width, n_fine = wf.shape
    acc = np.empty(n_fine, np.float32)
    logits = np.empty(n_fine, np.float32)
    for j in range(len(rows)):
        g, s = groups[j], slot[rows[j]]
        act = a2[s] if s >= 0 else zero_a2[bins[rows[j] % k]]
        acc[:] = 0
        for c in range(width):
            a = act[c]
            if a != 0:
                for q in range(n_fine):
                    acc[q] += a * wf[g, c, q]
        values = n_fine - 1 if g == n_groups - 1 else n_fine  # the value 256 does not exist
        top = np.float32(-np.inf)
        for q in range(values):
            logits[q] = _half_up(acc[q], bf[g, q], mf[g, q])
            top = max(top, logits[q])
        for q in range(values):
            out[j, q] = exp[int(min(top - logits[q], len(exp) - 1))]


class StepNetwork:
    """The integer network of one level count (`t`: the CPU's float32 IntInference), for a step
    of at most k_max pixels of n images (`fine`: lossless, whose fine symbols need the coarse
    step's activations)."""

    def __init__(self, t: IntInference, level_index: int, coarse_width: int, fine: bool, n: int,
                 k_max: int):
        def host(v):
            return np.ascontiguousarray(v.numpy())

        a2_zero, cw_zero = t.zero_context(level_index, coarse_width)
        self.w1, self.b1, self.m1 = host(t.w1), host(t.b1[level_index]), host(t.m["k1"])
        self.w2, self.b2, self.m2 = host(t.w2), host(t.b2[None]), host(t.m["k2"])
        self.wc = host(t.wc[:, :coarse_width])
        self.bc, self.mc = host(t.bc[:coarse_width]), host(t.m["kc"][:coarse_width])
        self.exp, self.cw_zero, self.a2_zero = host(t.exp), host(cw_zero), host(a2_zero)
        self.lossless = fine
        if fine:
            self.wf, self.bf, self.mf = host(t.wf), host(t.bf), host(t.m["kf"])
        width = self.w1.shape[1]
        self.ctx = np.empty((n * k_max, self.w1.shape[0]), np.float32)
        self.bias = np.empty((n * k_max, width), np.float32)
        self.live = np.empty(n * k_max, np.int64)
        self.slot = np.empty(n * k_max, np.int64)
        self.a2 = np.empty((0, width), np.float32)

    def coarse(self, x: np.ndarray, where: np.ndarray, bins: np.ndarray, out: np.ndarray) -> None:
        """Coarse weights of step pixels `where` of every image of x (n, pad) float32 into
        out[:, :k] (n, k, K), keeping the live rows' activations for `fine`."""
        k = len(where)
        rows = _gather(x, where, bins, self.b1, self.cw_zero, out, self.ctx, self.bias, self.live)
        a1 = self.ctx[:rows] @ self.w1
        _requant(a1, self.bias[:rows], self.m1)
        a2 = a1 @ self.w2
        _requant(a2, self.b2, self.m2)
        _coarse_weights(a2 @ self.wc, self.bc, self.mc, self.exp, self.live[:rows], k, out)
        if self.lossless:
            self.a2, self.bins, self.k = a2, bins, k
            self.slot[: len(x) * k] = -1
            self.slot[self.live[:rows]] = np.arange(rows)

    def fine(self, rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """(len(rows), NC) float64 weights of the fine symbols of the last step's rows (i * k + p)
        in coarse groups `groups` (0..15)."""
        out = np.zeros((len(rows), NC))
        # One integer type whoever calls: one compiled version of the kernel.
        rows, groups = (np.asarray(a, np.int64) for a in (rows, groups))
        _fine_weights(self.a2, self.slot, self.a2_zero, self.bins, self.k, rows, groups, self.wf,
                      self.bf, self.mf, self.exp, out)
        return out


class HostSteps:
    """bench_codecs.ar_integer.TensorSteps on the CPU, through the kernels: the same integers.
    `steps`: ar_integer.step_tensors on the CPU."""

    def __init__(self, t: IntInference, level_index: int, fine: bool, g: Geometry,
                 coarse: np.ndarray, steps: list):
        self.g, self.n, self.out = g, len(coarse), coarse
        self.net = StepNetwork(t, level_index, coarse.shape[2], fine, len(coarse), coarse.shape[1])
        self.steps = [tuple(a.numpy() for a in step) for step in steps]
        self.x = np.zeros((self.n, g.pad_size), np.float32)

    def coarse(self, s: int) -> None:
        where, bins, _ = self.steps[s]
        self.net.coarse(self.x, where, bins, self.out)

    def fine(self, rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
        return self.net.fine(rows, groups)

    def put(self, s: int, values: np.ndarray) -> None:
        self.x[:, self.steps[s][2]] = values.reshape(self.n, -1)

    def images(self) -> np.ndarray:
        return self.g.unpadded(self.x).astype(np.uint8)
