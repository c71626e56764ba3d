"""A learned lossy codec trained for rate and distortion, with real entropy-coded payloads.

The model of Ballé et al., "End-to-end optimized image compression" (ICLR 2017), with the
non-parametric factorized density of Ballé et al., "Variational image compression with a scale
hyperprior" (ICLR 2018, appendix 6.1), sized for 28x28 digits. One network per rate point
(`quality` 1..8 picks λ from LAMBDAS):

    analysis   x -> conv 5x5/2 (48) -> ReLU -> conv 5x5/2 -> y (16 x H/4 x W/4)
               + a linear path: 4x4 space-to-depth -> conv 3x3
    gain       y * exp(log_gain) (16 values), started at sqrt(λ / 0.01): the quantisation step
               of a rate point scales like 1/sqrt(λ), so training starts near its rate
    quantise   q = round(y): integers, the symbols (training: y + uniform noise)
    density    one univariate non-parametric density per latent (channel and position: the
               image size is fixed, so each of the 16x7x7 latents gets its own)
    synthesis  q * exp(log_inv_gain) -> conv 3x3 (4*48) -> pixel shuffle -> ReLU -> conv 3x3 (4)
               -> pixel shuffle, + a linear path: conv 3x3 -> 4x4 depth-to-space;
               clamped to [0, 1], rounded to 8 bits

Training minimises bits per pixel + λ * 255² * MSE (pixels in [0, 1]), see RECIPE.

**Entropy coding.** At the end of training each density is tabulated once into integer
frequencies (`build_tables`) and the tables are stored in the model's buffers, hence in the
checkpoint: encoder and decoder build their constriction models from exactly these integers,
never from a float network output, so the decoder rebuilds the encoder's probabilities bit for
bit. Each table covers the integers [lo, hi] outside of which its density has at most
TABLES["tail_mass"], plus one escape symbol. A payload is one constriction range-coder stream
(big-endian 32-bit words): one symbol per latent in a fixed order, then the value of every
escaped latent (side bit, bit length, raw bits: any int32 is representable, nothing is
clipped). It ends at the point of the final interval with the most trailing zero bits, whose
trailing zero bytes are dropped (the decoder pads with zeros). The image size is the model's,
so there is no header. Like JPEG's entropy-coded data a range-coder stream has no end marker:
bytes appended to a payload, and most bit flips, still decode to some image; what constriction
or the escape code can tell is corrupt is a PayloadError.

**Identical pixels whatever the batch.** Float convolutions on the CPU can give different low
bits for different batch sizes (another kernel blocking). Analysis and synthesis therefore
always run on zero-padded chunks of exactly CHUNK images copied into one buffer, so an image's
latents and pixels are the same alone and in any split. On the CPU they run with
CPU_INFERENCE_THREADS threads whatever the caller set (with the caller's count instead, 1 and 2
threads gave the same pixels too, since PyTorch's CPU convolutions split work over output
elements, not over the sums: tested, not promised). The limit: pixels decoded on another
device or CPU type can differ in the last rounding step (on CUDA, cuDNN may use TF32);
bit-exact pixels everywhere would need integer synthesis. The payloads are exact everywhere.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from importlib.metadata import version

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.codec import CodecError, PayloadError, Payloads, TrainingData, check_images, payloads_to_decode
from bench.learned import LearnedCodec, torch_threads
from bench_codecs.host import host_tensor

# quality -> λ (distortion weight). 1: 9 B per digit at 18.5 dB, 8: 237 B at 41.3 dB (mnist-5k).
LAMBDAS = {1: 0.0001, 2: 0.0003, 3: 0.001, 4: 0.003, 5: 0.008, 6: 0.02, 7: 0.05, 8: 0.15}
ARCH = {"version": 1, "hidden": 48, "latent": 16, "density_filters": (3, 3, 3)}
# At λ = 0.15 and about the same bytes, batch 8 gave 41.4 dB where batch 32 gave 37.5 (34.5 at
# lr 2e-3); without clipping 40.3, with gains started at 1 39.3; the 10x density learning rate
# saves 4-7 % of the bytes (README). One thread: at batch 8 a second one is no faster and much
# slower on a busy machine; it also makes the weights independent of the caller's setting.
RECIPE = {"version": 1, "batch": 8, "lr": 5e-3, "warmup": 0.03, "schedule": "cosine",
          "clip": 1.0, "prior_lr_factor": 10.0, "gain_ref": 0.01, "threads": 1}
TABLES = {"version": 1, "precision": 16, "tail_mass": 1e-5, "search": 128}
# Images per analysis/synthesis call, always this many (zero-padded): see the module docstring.
CHUNK = {"cpu": 64, "cuda": 4096}
# PyTorch threads for analysis and synthesis on the CPU, whatever the caller set (restored after);
# None: the caller's. Chunks of 64 are too small to split well: a second thread gained 10-25 % on
# an idle 2-core machine, and when another process holds a core every parallel region waits for
# the descheduled thread: 600 img/s instead of 11,000-29,000 (load 5 on 2 cores). The entropy
# coder is single-threaded anyway. It also makes the pixels independent of the thread count.
CPU_INFERENCE_THREADS = 1
SHARED_MIN = 16  # rows with byte-identical tables (dead latents) share one constriction model
MAX_ESCAPE_BITS = 32  # escape codes carry d + 1 in at most this many bits

_model = None  # constriction.stream.model, imported with the first codec


def _constriction():
    global _model
    if _model is None:
        import constriction

        _model = constriction.stream
    return _model


# -- the network ---------------------------------------------------------------------------------

class Density(nn.Module):
    """Ballé et al. 2018's non-parametric univariate density, one per row: a monotone map of v
    through 1-3-3-3-1 layers (softplus weights, tanh "factors") is the logit of its CDF."""

    def __init__(self, rows: int, filters=(3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        f = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices, self.biases, self.factors = (nn.ParameterList() for _ in range(3))
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / f[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((rows, f[i + 1], f[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(rows, f[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(rows, f[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v (rows, 1, M) -> the CDF's logits at v, (rows, 1, M)."""
        x = v
        for i, m in enumerate(self.matrices):
            x = torch.matmul(F.softplus(m), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, v: torch.Tensor) -> torch.Tensor:
        """v (rows, M) -> the mass of [v - 1/2, v + 1/2] under each row's density."""
        v = v.unsqueeze(1)
        lower, upper = self.logits_cdf(torch.cat([v - 0.5, v + 0.5], 2)).chunk(2, 2)
        # Subtract on the side of the median, where the sigmoids are not saturated.
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).squeeze(1)

    def cdf(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits_cdf(v.unsqueeze(1))).squeeze(1)


class FactorizedPrior(nn.Module):
    """Analysis, gains, density and synthesis of one rate point, plus its integer tables."""

    def __init__(self, shape: tuple[int, int], lam: float):
        super().__init__()
        h, w = shape
        if h % 4 or w % 4:
            raise CodecError(f"the factorized codec needs image sides divisible by 4, got {h}x{w}")
        n, c = ARCH["hidden"], ARCH["latent"]
        self.shape, self.latent_shape = (h, w), (c, h // 4, w // 4)
        self.rows = c * (h // 4) * (w // 4)
        self.analysis_conv = nn.Sequential(nn.Conv2d(1, n, 5, 2, 2), nn.ReLU(), nn.Conv2d(n, c, 5, 2, 2))
        self.analysis_linear = nn.Sequential(nn.PixelUnshuffle(4), nn.Conv2d(16, c, 3, 1, 1))
        self.synthesis_conv = nn.Sequential(nn.Conv2d(c, 4 * n, 3, 1, 1), nn.PixelShuffle(2), nn.ReLU(),
                                            nn.Conv2d(n, 4, 3, 1, 1), nn.PixelShuffle(2))
        self.synthesis_linear = nn.Sequential(nn.Conv2d(c, 16, 3, 1, 1), nn.PixelShuffle(4))
        log_gain = 0.5 * math.log(lam / RECIPE["gain_ref"])
        self.log_gain = nn.Parameter(torch.full((c,), log_gain))
        self.log_inv_gain = nn.Parameter(torch.full((c,), -log_gain))
        self.density = Density(self.rows, ARCH["density_filters"])
        # The integer tables, one row per latent (channel-major); filled by build_tables.
        self.register_buffer("table_lo", torch.zeros(self.rows, dtype=torch.int32))
        self.register_buffer("table_size", torch.zeros(self.rows, dtype=torch.int32))
        self.register_buffer("table_freq", torch.zeros(self.rows, 0, dtype=torch.int32))

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, H, W) in [0, 1] -> latents before rounding, gain applied."""
        y = self.analysis_conv(x) + self.analysis_linear(x)
        return y * torch.exp(self.log_gain)[:, None, None]

    def synthesis(self, q: torch.Tensor) -> torch.Tensor:
        """(Noisy or rounded) latents -> images (N, 1, H, W), not clamped."""
        z = q * torch.exp(self.log_inv_gain)[:, None, None]
        return self.synthesis_conv(z) + self.synthesis_linear(z)

    def rows_of(self, q: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (rows, N): each latent beside its own density."""
        return q.reshape(len(q), self.rows).T

    def bits(self, q: torch.Tensor) -> torch.Tensor:
        """-log2 of the density's mass of each image's latents, (N,)."""
        return -torch.log2(self.density.likelihood(self.rows_of(q)).clamp_min(1e-9)).sum(0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The tables' width is known only from the checkpoint.
        freq = state_dict.get(prefix + "table_freq")
        if isinstance(freq, torch.Tensor) and freq.ndim == 2:
            self.table_freq = torch.empty_like(freq, dtype=torch.int32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict, assign)
        self.check_tables()  # raises: LearnedCodec then retrains instead of trusting the file
        return result

    def check_tables(self) -> None:
        """Refuse tables a decoder could not use (a damaged or foreign checkpoint)."""
        lo, size, freq = self.table_lo, self.table_size, self.table_freq
        width = freq.shape[1]
        if width < 2 or bool((size < 2).any()) or bool((size > width).any()):
            raise ValueError("its entropy tables are missing or malformed")
        used = torch.arange(width)[None] < size[:, None].cpu()
        if bool((freq.cpu()[used] < 1).any()) or bool((lo.abs() > TABLES["search"]).any()):
            raise ValueError("its entropy tables hold impossible values")


def train_factorized(model: FactorizedPrior, images: np.ndarray, lam: float, epochs: int, seed: int,
                     progress: bool = True) -> list[float]:
    """Seeded training in place on the model's device (on the CPU the same call gives the same
    weights); returns the loss per epoch."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed)
    x = host_tensor(images).to(device).float().div_(255).unsqueeze(1)
    batch, pixels = RECIPE["batch"], x.shape[2] * x.shape[3]
    steps = max(len(x) // batch, 1)
    total = steps * epochs
    warm = max(1, int(RECIPE["warmup"] * total))
    prior = list(model.density.parameters())
    ids = {id(p) for p in prior}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "factor": 1.0},
              {"params": prior, "factor": RECIPE["prior_lr_factor"]}]
    opt = torch.optim.Adam(groups, lr=RECIPE["lr"])

    def lr_at(step: int) -> float:
        if step < warm:
            return RECIPE["lr"] * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return RECIPE["lr"] * 0.5 * (1 + math.cos(math.pi * t))

    losses, step = [], 0
    bar = tqdm(range(epochs), desc=f"train factorized λ={lam:g}", unit="epoch",
               disable=None if progress else True, leave=False)
    model.train()
    for _ in bar:
        order = torch.randperm(len(x), generator=gen).to(device)
        total_loss = 0.0
        for i in range(steps):
            xb = x[order[i * batch : (i + 1) * batch]]
            for g in opt.param_groups:
                g["lr"] = lr_at(step) * g["factor"]
            y = model.analysis(xb)
            noisy = y + torch.empty(y.shape, device=device).uniform_(-0.5, 0.5, generator=noise_gen)
            mse = ((model.synthesis(noisy) - xb) ** 2).mean()
            loss = model.bits(noisy).mean() / pixels + lam * 255**2 * mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), RECIPE["clip"])
            opt.step()
            step += 1
            total_loss += loss.item()
        losses.append(total_loss / steps)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


@torch.no_grad()
def build_tables(model: FactorizedPrior) -> None:
    """Tabulate each row's density on the integers into frequencies summing to about
    2**precision (every symbol at least 1), on [lo, hi] plus an escape symbol that carries the
    mass outside; stores them in the model's table buffers. Runs once, in float64."""
    search, half_tail = TABLES["search"], TABLES["tail_mass"] / 2
    density = copy.deepcopy(model.density).cpu().double()
    grid = torch.arange(-search, search + 1, dtype=torch.float64)
    edges = torch.cat([grid - 0.5, grid[-1:] + 0.5])
    cdf = density.cdf(edges[None].repeat(model.rows, 1)).numpy()
    pmf = np.diff(cdf, axis=1).clip(min=0)
    below, above = cdf[:, 0], 1 - cdf[:, -1]
    # Mass strictly below / above each grid point.
    left = below[:, None] + np.concatenate([np.zeros((model.rows, 1)), np.cumsum(pmf, 1)[:, :-1]], 1)
    right = above[:, None] + np.concatenate(
        [np.cumsum(pmf[:, ::-1], 1)[:, ::-1][:, 1:], np.zeros((model.rows, 1))], 1)
    los, his = [], []
    for r in range(model.rows):
        ok_lo, ok_hi = np.flatnonzero(left[r] <= half_tail), np.flatnonzero(right[r] <= half_tail)
        lo = int(ok_lo.max()) if len(ok_lo) else 0
        hi = int(ok_hi.min()) if len(ok_hi) else len(grid) - 1
        if hi < lo:
            lo = hi = int(np.argmax(pmf[r]))
        los.append(lo)
        his.append(hi)
    sizes = np.array(his) - np.array(los) + 2
    freq = np.zeros((model.rows, int(sizes.max())), np.int64)
    for r, (lo, hi) in enumerate(zip(los, his)):
        outside = pmf[r, :lo].sum() + pmf[r, hi + 1 :].sum() + below[r] + above[r]
        p = np.concatenate([pmf[r, lo : hi + 1], [outside]])
        freq[r, : len(p)] = np.maximum(1, np.round(p / p.sum() * (1 << TABLES["precision"])))
    device = model.table_lo.device
    model.table_lo = torch.tensor(np.array(los) - search, dtype=torch.int32, device=device)
    model.table_size = torch.tensor(sizes, dtype=torch.int32, device=device)
    model.table_freq = torch.tensor(freq, dtype=torch.int32, device=device)


# -- the entropy coder -----------------------------------------------------------------------------

class RangeCoder:
    """Codes (N, rows) int32 latents with fixed integer tables: one constriction range-coder
    stream per image. Every probability it uses comes from the integer tables."""

    def __init__(self, lo: np.ndarray, size: np.ndarray, freq: np.ndarray):
        stream = _constriction()
        self.queue, models = stream.queue, stream.model
        self.lo, self.size = lo.astype(np.int64), size.astype(np.int64)
        self.hi = self.lo + self.size - 2  # the last regular value; symbol size-1 is the escape
        self.escape = self.size - 1
        # constriction reads the float64 copies of the integers; it misreads arrays that are not
        # C-contiguous, hence every ascontiguousarray below.
        probs = np.ascontiguousarray(freq, dtype=np.float64)
        rows = len(size)
        keys = [self.lo[r].tobytes() + probs[r, : self.size[r]].tobytes() for r in range(rows)]
        _, which, counts = np.unique(np.array(keys, dtype=object), return_inverse=True,
                                     return_counts=True)
        shared = counts[which] >= SHARED_MIN
        # Symbols are sent grouped: first the rows that share a table (one concrete model each),
        # then the others by table width rounded up to a power of two (one family call each, with
        # a narrow probability array).
        self.groups, order, start = [], [], 0
        for u in np.flatnonzero(counts >= SHARED_MIN):
            members = np.flatnonzero(which == u)
            r = members[0]
            model = models.Categorical(np.ascontiguousarray(probs[r, : self.size[r]]), perfect=False)
            self.groups.append((start, start + len(members), model, None))
            order.append(members)
            start += len(members)
        family = models.Categorical(perfect=False)
        bucket = np.maximum(2, 2 ** np.ceil(np.log2(self.size))).astype(np.int64)
        for b in np.unique(bucket[~shared]):
            members = np.flatnonzero((bucket == b) & ~shared)
            table = np.zeros((len(members), int(b)))
            w = min(int(b), probs.shape[1])
            table[:, :w] = probs[members, :w]
            self.groups.append((start, start + len(members), family, np.ascontiguousarray(table)))
            order.append(members)
            start += len(members)
        self.order = np.concatenate(order)
        self.side = models.Uniform(2)
        self.bit_length = models.Uniform(MAX_ESCAPE_BITS + 1)
        self.raw = {k: models.Uniform(1 << k) for k in range(1, 17)}

    # escape values: side bit, bit length of d + 1 (d = distance beyond [lo, hi]), its low bits

    def _escape_symbols(self, v: int, r: int) -> list:
        side, d = (0, self.lo[r] - 1 - v) if v < self.lo[r] else (1, v - self.hi[r] - 1)
        m = int(d) + 1
        nb = m.bit_length()
        out = [(side, self.side), (nb - 1, self.bit_length)]
        rest, k = m - (1 << (nb - 1)), nb - 1
        while k > 0:
            take = min(16, k)
            out.append(((rest >> (k - take)) & ((1 << take) - 1), self.raw[take]))
            k -= take
        return out

    def _decode_escape(self, dec, r: int) -> int:
        side = int(dec.decode(self.side))
        nb = int(dec.decode(self.bit_length)) + 1
        if nb > MAX_ESCAPE_BITS:
            raise PayloadError(f"escape code with {nb} bits (at most {MAX_ESCAPE_BITS})")
        rest, k = 0, nb - 1
        while k > 0:
            take = min(16, k)
            rest = (rest << take) | int(dec.decode(self.raw[take]))
            k -= take
        d = (1 << (nb - 1)) + rest - 1
        v = int(self.lo[r]) - 1 - d if side == 0 else int(self.hi[r]) + 1 + d
        if not -(2**31) <= v < 2**31:
            raise PayloadError(f"escaped latent {v} outside int32")
        return v

    def encode(self, q: np.ndarray) -> list[bytes]:
        sym = q - self.lo
        escaped = (sym < 0) | (sym > self.hi - self.lo)
        sym = np.where(escaped, self.escape, sym).astype(np.int32)
        flat = np.ascontiguousarray(sym[:, self.order])
        with_escapes = set(np.flatnonzero(escaped.any(1)).tolist())
        out = []
        for i in range(len(q)):
            row, enc = flat[i], self.queue.RangeEncoder()
            for a, b, model, probs in self.groups:
                if probs is None:
                    enc.encode(row[a:b], model)
                else:
                    enc.encode(row[a:b], model, probs)
            if i in with_escapes:
                for r in np.flatnonzero(escaped[i]):
                    for s, model in self._escape_symbols(int(q[i, r]), r):
                        enc.encode(s, model)
            out.append(self._terminate(enc))
        return out

    @staticmethod
    def _terminate(enc) -> bytes:
        """The shortest stream that decodes. Read as one big number (the decoder pads it with
        zero bytes), any value in the final interval decodes the same symbols; constriction's
        seal writes about lower + 2**32. Take instead the value with the most trailing zero
        bits and drop its trailing zero bytes: about 1.7 bytes less per image.

        The interval, from the coder's state: the `pos` words before the 64-bit `lower` (some
        of them held back while a carry may still come: when the interval wraps past 2**64,
        constriction writes them at the seal, carried if its own point wrapped), then `lower`;
        it spans `range` from there."""
        pos, (lower, rng) = enc.pos()
        words = enc.get_compressed()
        prefix = int.from_bytes(words[:pos].astype(">u4").tobytes(), "big")
        if lower + rng >= 1 << 64 and lower + (1 << 32) - 1 >= 1 << 64:
            prefix -= 1  # undo the seal's carry: the carry is part of the interval below
        low = prefix << 64 | lower
        high = low + rng - 1
        # The number in [low, high] with the most trailing zeros: high with every bit below the
        # highest bit where low - 1 and high differ cleared.
        top = ((low - 1) ^ high).bit_length() - 1 if low else high.bit_length()
        point = high >> top << top
        data = point.to_bytes(4 * pos + 8, "big").rstrip(b"\0")
        return data or b"\0"  # never empty: an empty payload means a missing one

    def decode(self, payloads: Payloads, codec: str) -> np.ndarray:
        n, rows = len(payloads), len(self.size)
        sorted_sym = np.empty((n, rows), np.int32)
        decoders = []
        buffer, offsets = payloads.buffer, payloads.offsets
        for i in range(n):
            data = buffer[offsets[i] : offsets[i + 1]]
            if len(data) == 0:
                raise PayloadError(f"{codec}: payload {i} is empty")
            padded = np.zeros(-(-len(data) // 4) * 4, np.uint8)
            padded[: len(data)] = data
            dec = self.queue.RangeDecoder(padded.view(">u4").astype(np.uint32))
            row = sorted_sym[i]
            try:
                for a, b, model, probs in self.groups:
                    row[a:b] = dec.decode(model, b - a) if probs is None else dec.decode(model, probs)
            except Exception as exc:  # constriction refuses some corrupt streams
                raise PayloadError(f"{codec}: payload {i} is corrupt ({exc})") from None
            decoders.append(dec)
        sym = np.empty_like(sorted_sym)
        sym[:, self.order] = sorted_sym
        # Padding symbols of a width bucket decode only from a corrupt stream.
        bad = sym > self.escape
        if bad.any():
            raise PayloadError(f"{codec}: payload {int(np.flatnonzero(bad.any(1))[0])} is corrupt "
                               "(a symbol outside its table)")
        q = sym + self.lo.astype(np.int32)
        hits = sym == self.escape
        for i in np.flatnonzero(hits.any(1)):
            try:
                for r in np.flatnonzero(hits[i]):  # escape values follow the regular symbols
                    q[i, r] = self._decode_escape(decoders[i], r)
            except Exception as exc:  # ours (escape out of range) or constriction's
                raise PayloadError(f"{codec}: payload {i} is corrupt ({exc})") from None
        return q


# -- the codec -------------------------------------------------------------------------------------

def _fold_conv(conv: nn.Conv2d, out_scale=None, in_scale=None) -> nn.Conv2d:
    """conv(x * in_scale) * out_scale as one convolution."""
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        if out_scale is not None:
            folded.weight.mul_(out_scale[:, None, None, None])
            folded.bias.mul_(out_scale)
        if in_scale is not None:
            folded.weight.mul_(in_scale[None, :, None, None])
    return folded


class _Sum(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def inference_forms(model: FactorizedPrior) -> tuple[nn.Module, nn.Module]:
    """Analysis and synthesis with the gains folded into the adjacent convolutions: the same
    functions with fewer operations, channels-last for the CPU's convolution kernels."""
    g, ig = torch.exp(model.log_gain.detach()), torch.exp(model.log_inv_gain.detach())
    conv, lin = model.analysis_conv, model.analysis_linear
    analysis = _Sum(nn.Sequential(conv[0], conv[1], _fold_conv(conv[2], out_scale=g)),
                    nn.Sequential(lin[0], _fold_conv(lin[1], out_scale=g)))
    conv, lin = model.synthesis_conv, model.synthesis_linear
    synthesis = _Sum(nn.Sequential(_fold_conv(conv[0], in_scale=ig), *conv[1:]),
                     nn.Sequential(_fold_conv(lin[0], in_scale=ig), lin[1]))
    return (analysis.eval().to(memory_format=torch.channels_last),
            synthesis.eval().to(memory_format=torch.channels_last))


class FactorizedCodec(LearnedCodec):
    family = "factorized"
    code_modules = (__name__,)
    allow_bf16 = False  # the decoder must compute what the encoder's device computes
    train_threads = RECIPE["threads"]

    def __init__(self, quality: int = 6, epochs: int = 12, seed: int = 0, device: str = "cpu"):
        super().__init__(epochs, seed, device)
        if quality not in LAMBDAS:
            raise CodecError(f"factorized: quality must be one of {', '.join(map(str, LAMBDAS))}")
        self.name = f"factorized:quality={quality}"
        self.quality, self.lam = quality, LAMBDAS[quality]
        self.library = f"torch {torch.__version__} + constriction {version('constriction')}"
        self.coder: RangeCoder | None = None

    def hyperparameters(self) -> dict:
        return {"arch": ARCH, "recipe": RECIPE, "tables": TABLES, "lambda": self.lam}

    @property
    def checkpoint_prefix(self) -> str:
        return f"factorized-q{self.quality}"

    def build_model(self, shape) -> FactorizedPrior:
        return FactorizedPrior(tuple(shape), self.lam)

    def train_model(self, model: FactorizedPrior, data: TrainingData) -> list[float]:
        losses = train_factorized(model, data.train, self.lam, self.epochs, self.seed, data.progress)
        build_tables(model)
        return losses

    def decoder_modules(self) -> list[nn.Module]:
        model = self.require_model()
        return [model.synthesis_conv, model.synthesis_linear]

    @property
    def side_info_bytes(self) -> int:
        """The synthesis weights as float32 (the inverse gains folded in) and the tables as a
        decoder would receive them: per row lo and length (int16), each frequency minus one
        (uint16; frequencies are 1 .. 2**16). The zero padding of the stored array is not sent."""
        weights = super().side_info_bytes
        model = self.require_model()
        return weights + 4 * model.rows + 2 * int(model.table_size.sum())

    def prepare(self, data: TrainingData) -> None:
        super().prepare(data)
        model = self.require_model()
        self.analysis, self.synthesis = inference_forms(model)
        self.coder = RangeCoder(*(t.cpu().numpy() for t in (model.table_lo, model.table_size,
                                                               model.table_freq)))

    # -- coding ----------------------------------------------------------------------------------

    def _chunked(self, fn: nn.Module, x: torch.Tensor, out_shape: tuple) -> torch.Tensor:
        """fn over x in chunks of exactly CHUNK images: each one copied into the same zeroed
        buffer, so an image's result does not depend on the batch it came in."""
        device = torch.device(self.device).type
        chunk = CHUNK[device]
        out = torch.empty((len(x), *out_shape))
        buf = torch.zeros((chunk, *x.shape[1:]), device=self.device).contiguous(
            memory_format=torch.channels_last)
        with torch_threads(CPU_INFERENCE_THREADS if device == "cpu" else None), torch.inference_mode():
            for s in range(0, len(x), chunk):
                part = x[s : s + chunk]
                buf[: len(part)].copy_(part, non_blocking=True)
                if len(part) < chunk:
                    buf[len(part) :].zero_()
                out[s : s + len(part)] = fn(buf)[: len(part)].float().cpu()
        return out

    def latents(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) -> the quantised latents, (N, rows) int32."""
        model = self.require_model()
        x = host_tensor(images).unsqueeze(1).float().div_(255)
        y = self._chunked(self.analysis, x, model.latent_shape).round_()
        if not bool(torch.isfinite(y).all()) or float(y.abs().max()) >= 2**30:
            raise CodecError(f"{self.name}: the analysis transform gave latents beyond any table")
        return y.to(torch.int32).reshape(len(images), model.rows).numpy()

    def encode(self, images: np.ndarray) -> Payloads:
        model = self.require_model()
        images = check_images(images, trained=model.shape, codec=self.name)
        return Payloads.from_list(self.coder.encode(self.latents(images)))

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        model = self.require_model()
        q = self.coder.decode(payloads_to_decode(payloads, self.name), self.name)
        z = torch.from_numpy(q).float().reshape(len(q), *model.latent_shape)
        x = self._chunked(self.synthesis, z, (1, *model.shape))
        return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8).squeeze(1).numpy()

    def model_bits(self, images: np.ndarray) -> np.ndarray:
        """-log2 of the learned density's mass of each image's quantised latents: the code length
        the model predicts (the real payload adds table rounding, escapes and the ending)."""
        model = self.require_model()
        images = check_images(images, trained=model.shape, codec=self.name)
        q = torch.from_numpy(self.latents(images)).float()
        out = []
        with torch.inference_mode():
            for s in range(0, len(q), 4096):
                part = q[s : s + 4096].to(self.device).reshape(-1, *model.latent_shape)
                out.append(model.bits(part).double().cpu())
        return torch.cat(out).numpy()
