"""The network of the `factorized` codec and its training: Ballé et al., "End-to-end optimized image
compression" (ICLR 2017), with the non-parametric factorized density of Ballé et al., "Variational
image compression with a scale hyperprior" (ICLR 2018, appendix 6.1), sized for 28x28 digits. One
network per rate point (`quality` picks λ from FACTORIZED_LAMBDAS):

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

Training minimises bits per pixel + λ * 255² * MSE (pixels in [0, 1]), see RECIPE. At its end each
density is tabulated once into integer frequencies (`build_tables`), stored in the model's buffers
and so in the checkpoint: the codec's entropy coder reads only these integers.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.codec import CodecError
from bench.entropy import Tables
from bench.learned import History, host_tensor, train_loop

ARCH = {"version": 1, "hidden": 48, "latent": 16, "density_filters": (3, 3, 3)}
# At λ = 0.15 and about the same bytes, batch 8 gave 41.4 dB where batch 32 gave 37.5 (34.5 at
# lr 2e-3); without clipping 40.3, with gains started at 1 39.3; the 10x density learning rate
# saves 4-7 % of the bytes (docs/learned-codecs.md). One thread: at batch 8 a second one is no
# faster and much slower on a busy machine; it also makes the weights independent of the caller's.
RECIPE = {"version": 1, "batch": 8, "lr": 5e-3, "warmup": 0.03, "schedule": "cosine",
          "clip": 1.0, "prior_lr_factor": 10.0, "gain_ref": 0.01, "threads": 1}
TABLES = {"version": 1, "precision": 16, "tail_mass": 1e-5, "search": 128}


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

    @property
    def tables(self) -> Tables:
        return Tables(*(t.cpu().numpy() for t in (self.table_lo, self.table_size, self.table_freq)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The tables' width is known only from the checkpoint.
        freq = state_dict.get(prefix + "table_freq")
        if isinstance(freq, torch.Tensor) and freq.ndim == 2:
            self.table_freq = torch.empty_like(freq, dtype=torch.int32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def train(model: FactorizedPrior, images: np.ndarray, validation: np.ndarray, lam: float,
          epochs: int, seed: int, progress: bool = True) -> History:
    """Rate + λ·distortion with additive uniform noise for rounding (seeded), warm-up then cosine
    learning rate, the density at RECIPE["prior_lr_factor"] times it; then the integer tables."""
    device = next(model.parameters()).device
    noise_gen = torch.Generator(device=device).manual_seed(seed)

    def tensor(a):
        return host_tensor(a).to(device).float().div_(255).unsqueeze(1)

    x, xv = tensor(images), tensor(validation)
    pixels = x.shape[2] * x.shape[3]
    steps = max(len(x) // RECIPE["batch"], 1)
    total, lr = steps * epochs, RECIPE["lr"]
    warm = max(1, int(RECIPE["warmup"] * total))
    prior = list(model.density.parameters())
    ids = {id(p) for p in prior}
    # Learning rates are set whole by the schedule (a group's lr 1.0 times lr_at): the same
    # floats, step for step, as the recipe's lr_at(step) * factor.
    opt = torch.optim.Adam([{"params": [p for p in model.parameters() if id(p) not in ids]},
                            {"params": prior}], lr=1.0)

    def lr_at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return lr * 0.5 * (1 + math.cos(math.pi * t))

    factors = (1.0, RECIPE["prior_lr_factor"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s, f=f: lr_at(s) * f for f in factors])

    def loss(idx: torch.Tensor) -> torch.Tensor:
        xb = x[idx]
        y = model.analysis(xb)
        noisy = y + torch.empty(y.shape, device=device).uniform_(-0.5, 0.5, generator=noise_gen)
        mse = ((model.synthesis(noisy) - xb) ** 2).mean()
        return model.bits(noisy).mean() / pixels + lam * 255**2 * mse

    def validate() -> float:
        q = torch.round(model.analysis(xv))
        mse = ((model.synthesis(q).clamp(0, 1) - xv) ** 2).mean()
        return float(model.bits(q).mean() / pixels + lam * 255**2 * mse)

    history = train_loop(model, loss=loss, items=len(x), batch=RECIPE["batch"], epochs=epochs,
                         seed=seed, optimizer=opt, scheduler=sched, clip=RECIPE["clip"],
                         drop_last=True, validate=validate if len(xv) else None,
                         desc=f"train factorized λ={lam:g}", progress=progress)
    build_tables(model)
    return history


@torch.no_grad()
def build_tables(model: FactorizedPrior) -> None:
    """Tabulate each row's density on the integers -search .. search (in float64, once) into
    integer frequencies (bench.entropy.Tables), stored in the model's table buffers."""
    search = TABLES["search"]
    density = copy.deepcopy(model.density).cpu().double()
    grid = torch.arange(-search, search + 1, dtype=torch.float64)
    edges = torch.cat([grid - 0.5, grid[-1:] + 0.5])
    cdf = density.cdf(edges[None].repeat(model.rows, 1)).numpy()
    tables = Tables.from_cdf(cdf, -search, TABLES["tail_mass"], TABLES["precision"])
    device = model.table_lo.device
    model.table_lo = torch.tensor(tables.lo, dtype=torch.int32, device=device)
    model.table_size = torch.tensor(tables.size, dtype=torch.int32, device=device)
    model.table_freq = torch.tensor(tables.freq, dtype=torch.int32, device=device)


# -- inference forms ------------------------------------------------------------------------------

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
