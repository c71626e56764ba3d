"""The network of the `factorized` codec, its training and its integer tables: Ballé et al.,
"End-to-end optimized image compression" (ICLR 2017), with the non-parametric factorized density of
Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018, appendix 6.1),
sized for 28x28 digits. One model serves every quality q (λ from FACTORIZED_LAMBDAS) through gain
units (Cui et al., "Asymmetric gained deep image compression with continuous rate adaptation",
CVPR 2021): per-quality vectors on the latent channels, trained jointly.

    pad        edge replication to sides divisible by 4 (`pad4`; the codec crops after decoding)
    analysis   x -> conv 5x5/2 (24) -> ReLU -> conv 3x3/2 -> y (16 x H/4 x W/4)
               + a linear path: 4x4 space-to-depth -> conv 3x3
    gain       y * gain[q] (16 values per quality)
    quantise   round(y): integers, the symbols (training: y + uniform noise)
    density    per quality, one univariate non-parametric density per latent of the trained size
               (channel and position) up to 64 latent positions (32x32 images), one per
               channel above
    synthesis  q * inverse_gain[q] -> conv 3x3 (64) -> ReLU -> conv 1x1 (16), + a linear path
               conv 3x3 (16); summed, 4x4 depth-to-space; clamped to [0, 1], rounded to 8 bits

The linear paths start as the principal components of the training split's 4x4 patches (and their
transpose), the nonlinear paths' last layers at zero: training starts from an invertible transform,
which the top qualities need (trained from a random start, one model for all eight λ stopped at
33.5 dB however fine its quantisation). The synthesis works on the grid of latent positions only
(its last layer gives each position's 4x4 pixels), where PyTorch's CPU convolutions are fast.

Training minimises bits per pixel + λ_q * 255² * MSE (pixels in [0, 1]) with one quality drawn per
batch (RECIPE). At its end, `build_tables` tabulates each quality's code once, in float64, into
integer frequencies stored in the model's buffers (so in the checkpoint): per latent of the
trained size (where the densities are), and per channel, for every other size (and the trained
size too above 64 latent positions). The codec codes with these integers only.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.entropy import Tables
from bench.learned import History, host_tensor, train_loop

# Widths 24 and 64: the 8-point curve's BD-rate against the per-λ models was -2.5 %, with 32 and
# 128 -5.5 % for 1.5x the synthesis time; 12 latent channels (an incomplete basis of the 4x4
# patches) stopped the top quality at 36.7 dB.
# A density (and a table) per latent while the trained size has at most `per_latent_positions`
# latent positions (32x32 images, or 8x128), one per channel, shared by every position, above it,
# where per-latent parameters and tables grow with the image (a model trained on 512x512 images
# had 110 MB of tables a quality and took 15 GB to train). Per latent, mnist-5k's 8-point curve
# was 25 % cheaper in BD-rate than per channel (digits keep to their places); on photo-crops per
# channel was 1.1 % cheaper, with 38 % less side information.
ARCH = {"version": 2, "hidden": 24, "synthesis_hidden": 64, "latent": 16, "density_filters": (3, 3, 3),
        "pca_scale": 8.0, "per_latent_positions": 64}
# Batch 32, 36 epochs (about a minute on one core): at equal time batch 16 was 0.6 % worse in
# BD-rate; a learning rate of 8e-3 9 % worse than 5e-3; qualities drawn uniformly (favouring the
# low ones cost 1.4-4 % and capped the top at 39.4 dB). One thread: at these sizes a second one is
# no faster and much slower on a busy machine; it also makes the weights independent of the caller's.
RECIPE = {"version": 2, "batch": 32, "epochs": 36, "lr": 5e-3, "warmup": 0.03, "schedule": "cosine",
          "clip": 1.0, "prior_lr_factor": 10.0, "gain_ref": 0.01, "threads": 1, "validation_images": 64,
          "crop": 64}
# Tables: each latent's histogram on the training split plus `smoothing` images' worth of the
# learned density (2.5-5.5 % fewer bytes than the density alone, on the test split), cut where the
# tail mass is below `tail_mass`, frequencies summing to about 2**precision.
TABLES = {"version": 2, "precision": 16, "tail_mass": 1e-5, "search": 128, "smoothing": 64.0}
# Pixels per pass of the no-grad passes over whole images (validation, tables): bounds memory.
PASS_PIXELS = 1024 * 28 * 28


def pad4(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H', W') with H', W' the next multiples of 4, by edge replication. The
    padding is paid for in bytes: on digits it cost what zeros cost (within 0.4 %) at 0.01-0.06 dB
    more, on white-ground digits 0.4-0.6 dB more than zeros; a reflection cost up to 13 % more."""
    h, w = images.shape[1:]
    ph, pw = -h % 4, -w % 4
    return np.pad(images, ((0, 0), (0, ph), (0, pw)), mode="edge") if ph or pw else images


def softplus(x: torch.Tensor) -> torch.Tensor:
    # torch's softplus, log1p and tanh are unvectorised in this CPU build (4-15 ns a value); exp,
    # log and sigmoid are not.
    return torch.log(1 + torch.exp(x.clamp(max=30)))


def tanh(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sigmoid(2 * x) - 1


class Density(nn.Module):
    """Ballé et al. 2018's non-parametric univariate density, one per (quality, row): a monotone
    map of v through 1-3-3-3-1 layers (softplus weights, tanh "factors") is the logit of its CDF."""

    def __init__(self, qualities: int, rows: int, filters=(3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        f = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices, self.biases, self.factors = (nn.ParameterList() for _ in range(3))
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / f[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((qualities, rows, f[i + 1], f[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(qualities, rows, f[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(qualities, rows, f[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor, q: int) -> torch.Tensor:
        """v (rows, M) -> the CDF's logits at v under quality q's densities, (rows, M)."""
        x = v.unsqueeze(1)
        for i, m in enumerate(self.matrices):
            w = softplus(m[q])
            y = self.biases[i][q]
            for j in range(w.shape[2]):
                y = torch.addcmul(y, w[:, :, j : j + 1], x[:, j : j + 1])
            x = y if i == len(self.factors) else torch.addcmul(y, tanh(self.factors[i][q]), tanh(y))
        return x.squeeze(1)

    def likelihood(self, v: torch.Tensor, q: int) -> torch.Tensor:
        """v (N, rows) -> the mass of [v - 1/2, v + 1/2] under each row's density, (N, rows)."""
        lower, upper = self.logits_cdf(torch.cat([v - 0.5, v + 0.5]).T, q).T.chunk(2)
        # Subtract on the side of the median, where the sigmoids are not saturated.
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))


class FactorizedPrior(nn.Module):
    """Analysis, per-quality gains, densities and synthesis, plus the integer tables."""

    def __init__(self, shape: tuple[int, int], lambdas: tuple[float, ...]):
        super().__init__()
        n, ns, c = ARCH["hidden"], ARCH["synthesis_hidden"], ARCH["latent"]
        self.shape = tuple(int(s) for s in shape)
        self.latent_shape = (c, -(-self.shape[0] // 4), -(-self.shape[1] // 4))
        self.rows = int(np.prod(self.latent_shape))
        self.positions = self.rows // c
        self.per_latent = self.positions <= ARCH["per_latent_positions"]
        self.qualities = len(lambdas)
        self.a1, self.a2 = nn.Conv2d(1, n, 5, 2, 2), nn.Conv2d(n, c, 3, 2, 1)
        self.analysis_linear = nn.Conv2d(16, c, 3, 1, 1)  # on the 4x4 space-to-depth image
        self.s1, self.s2 = nn.Conv2d(c, ns, 3, 1, 1), nn.Conv2d(ns, 16, 1)
        self.synthesis_linear = nn.Conv2d(c, 16, 3, 1, 1)
        # The quantisation step of a rate point scales like 1/sqrt(λ): start each quality there.
        log_gain = torch.tensor([0.5 * math.log(lam / RECIPE["gain_ref"]) for lam in lambdas])
        self.log_gain = nn.Parameter(log_gain[:, None].repeat(1, c))
        self.log_inv_gain = nn.Parameter(-log_gain[:, None].repeat(1, c))
        # Per quality, the weight of the nonlinear paths (analysis: per latent channel; synthesis:
        # per hidden channel, and a bias there): without them the top qualities saturated at
        # 39.7 dB (246 B/digit), with them they reach 43 dB; the curve's BD-rate gained 4 % and
        # the bias another 1.2 %.
        self.log_branch_gain = nn.Parameter(torch.zeros(self.qualities, c))
        self.log_hidden_gain = nn.Parameter(torch.zeros(self.qualities, ns))
        self.hidden_bias = nn.Parameter(torch.zeros(self.qualities, ns))
        self.density = Density(self.qualities, self.rows if self.per_latent else c, ARCH["density_filters"])
        # The integer tables (bench.entropy.Tables), filled by build_tables: per quality, one row
        # per latent of the trained size (channel-major; none without per-latent densities), and
        # one per channel for other sizes.
        for name, rows in (("table", self.rows if self.per_latent else 0), ("channel", c)):
            self.register_buffer(f"{name}_lo", torch.zeros(self.qualities, rows, dtype=torch.int32))
            self.register_buffer(f"{name}_size", torch.zeros(self.qualities, rows, dtype=torch.int32))
            self.register_buffer(f"{name}_freq", torch.zeros(self.qualities, rows, 0, dtype=torch.int32))

    def analysis(self, x: torch.Tensor, q: int) -> torch.Tensor:
        """Padded images (N, 1, H, W) in [0, 1] -> latents before rounding, quality q's gain applied."""
        branch = self.a2(F.relu(self.a1(x))) * torch.exp(self.log_branch_gain[q])[:, None, None]
        y = branch + self.analysis_linear(F.pixel_unshuffle(x, 4))
        return y * torch.exp(self.log_gain[q])[:, None, None]

    def synthesis(self, v: torch.Tensor, q: int) -> torch.Tensor:
        """(Noisy or rounded) latents -> padded images (N, 1, H, W), not clamped."""
        z = v * torch.exp(self.log_inv_gain[q])[:, None, None]
        hidden = F.relu(self.s1(z) + self.hidden_bias[q][:, None, None])
        hidden = hidden * torch.exp(self.log_hidden_gain[q])[:, None, None]
        return F.pixel_shuffle(self.s2(hidden) + self.synthesis_linear(z), 4)

    def density_samples(self, v: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, H', W') as the densities' samples: (N, rows) per latent (trained size),
        else (N * H' * W', C)."""
        if self.per_latent:
            return v.reshape(len(v), self.rows)
        return v.permute(0, 2, 3, 1).reshape(-1, v.shape[1])

    def bits(self, v: torch.Tensor, q: int) -> torch.Tensor:
        """-log2 of quality q's density mass of each image's latents, (N,)."""
        likelihood = self.density.likelihood(self.density_samples(v), q)
        return -torch.log(likelihood.clamp_min(1e-9)).reshape(len(v), -1).sum(1) / math.log(2)

    def tables(self, q: int) -> Tables:
        """Quality q's tables for the trained size: one row per latent."""
        return Tables(*(getattr(self, f"table_{k}")[q].cpu().numpy() for k in ("lo", "size", "freq")))

    def channel_tables(self, q: int, positions: int) -> Tables:
        """Quality q's tables for a latent grid of `positions` positions: each channel's row
        repeated over them (channel-major, as latents are flattened)."""
        lo, size, freq = (getattr(self, f"channel_{k}")[q].cpu().numpy() for k in ("lo", "size", "freq"))
        return Tables(np.repeat(lo, positions), np.repeat(size, positions), np.repeat(freq, positions, 0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The tables' width is known only from the checkpoint.
        for name in ("table_freq", "channel_freq"):
            freq = state_dict.get(prefix + name)
            if isinstance(freq, torch.Tensor) and freq.ndim == 3:
                setattr(self, name, torch.empty_like(freq, dtype=torch.int32))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@torch.no_grad()
def pca_init(model: FactorizedPrior, x: torch.Tensor) -> None:
    """The linear paths as the principal directions of the 4x4 patches (second moments, the
    strongest first) and their transpose, the nonlinear paths' last layers at zero."""
    patches = F.pixel_unshuffle(x, 4).permute(0, 2, 3, 1).reshape(-1, 16).double()
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    basis = vectors[:, torch.argsort(values, descending=True)[: model.latent_shape[0]]].float()
    scale = ARCH["pca_scale"]
    for conv in (model.analysis_linear, model.synthesis_linear, model.a2, model.s2):
        conv.weight.zero_()
        conv.bias.zero_()
    model.analysis_linear.weight[:, :, 1, 1] = basis.T * scale
    model.synthesis_linear.weight[:, :, 1, 1] = basis / scale


def train(model: FactorizedPrior, images: np.ndarray, validation: np.ndarray, lambdas, epochs: int,
          seed: int, progress: bool = True) -> History:
    """Rate + λ·distortion with additive uniform noise for rounding, one quality per batch (both
    seeded), warm-up then cosine learning rate, the density at RECIPE["prior_lr_factor"] times
    it; then the integer tables."""
    device = next(model.parameters()).device
    noise_gen = torch.Generator(device=device).manual_seed(seed)
    quality_gen = torch.Generator().manual_seed(seed + 1)
    h, w = images.shape[1:]

    def tensor(a):
        return host_tensor(pad4(a)).to(device).float().div_(255).unsqueeze(1)

    x, xv = tensor(images), tensor(validation[: RECIPE["validation_images"]])
    pca_init(model, x)
    # Per-channel densities fit any size, so such a model trains on random crops: large images
    # then give many small steps instead of a few huge ones, an epoch as many crops as the
    # images' 64x64 tiles (rounded up: at least their pixels).
    crop = tuple(min(RECIPE["crop"], side) for side in x.shape[2:])
    cropping = not model.per_latent and crop != tuple(x.shape[2:])
    per_image = math.ceil(x.shape[2] / crop[0]) * math.ceil(x.shape[3] / crop[1]) if cropping else 1
    crop_gen = torch.Generator().manual_seed(seed + 2)
    steps = max(len(x) * per_image // RECIPE["batch"], 1)
    total, lr = steps * epochs, RECIPE["lr"]
    warm = max(1, int(RECIPE["warmup"] * total))
    prior = list(model.density.parameters())
    ids = {id(p) for p in prior}
    # Learning rates are set whole by the schedule (a group's lr 1.0 times lr_at).
    opt = torch.optim.Adam([{"params": [p for p in model.parameters() if id(p) not in ids]},
                            {"params": prior}], lr=1.0, fused=device.type == "cpu" or None)

    def lr_at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return lr * 0.5 * (1 + math.cos(math.pi * t))

    factors = (1.0, RECIPE["prior_lr_factor"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s, f=f: lr_at(s) * f for f in factors])

    def rd_loss(xb: torch.Tensor, v: torch.Tensor, q: int, extent: tuple[int, int]) -> torch.Tensor:
        eh, ew = extent  # the images' own pixels, without the padding
        mse = ((model.synthesis(v, q)[..., :eh, :ew] - xb[..., :eh, :ew]) ** 2).mean()
        return model.bits(v, q).mean() / (eh * ew) + lambdas[q] * 255**2 * mse

    def crops(idx: torch.Tensor) -> torch.Tensor:
        top = torch.randint(x.shape[2] - crop[0] + 1, (len(idx),), generator=crop_gen).tolist()
        left = torch.randint(x.shape[3] - crop[1] + 1, (len(idx),), generator=crop_gen).tolist()
        return torch.stack([x[i, :, t : t + crop[0], u : u + crop[1]]
                            for i, t, u in zip((idx // per_image).tolist(), top, left)])

    def loss(idx: torch.Tensor) -> torch.Tensor:
        q = int(torch.randint(model.qualities, (1,), generator=quality_gen))
        xb = crops(idx) if cropping else x[idx]
        y = model.analysis(xb, q)
        noise = torch.empty(y.shape, device=device).uniform_(-0.5, 0.5, generator=noise_gen)
        return rd_loss(xb, y + noise, q, crop if cropping else (h, w))

    part = max(1, PASS_PIXELS // (xv.shape[2] * xv.shape[3]))  # one pass: the 64 images at 28x28 or 32x32

    def validate() -> float:
        summed = 0.0
        for s in range(0, len(xv), part):
            xp = xv[s : s + part]
            summed += sum(float(rd_loss(xp, torch.round(model.analysis(xp, q)), q, (h, w)))
                          for q in range(model.qualities)) * len(xp)
        return summed / (len(xv) * model.qualities)

    history = train_loop(model, loss=loss, items=len(x) * per_image, batch=RECIPE["batch"], epochs=epochs,
                         seed=seed, optimizer=opt, scheduler=sched, clip=RECIPE["clip"],
                         drop_last=True, validate=validate if len(xv) else None,
                         desc=f"train factorized ({model.qualities} qualities)", progress=progress)
    build_tables(model, x)
    return history


@torch.no_grad()
def build_tables(model: FactorizedPrior, x: torch.Tensor | None = None) -> None:
    """Each quality's tables, once, in float64: per density (a latent, or a channel), its
    histogram over the padded training images `x` (None: no histogram) plus TABLES["smoothing"]
    images' worth of the density on the integers -search .. search; per channel, the mixture of
    its latents' over positions (or its density's). Stored in the model's table buffers as
    integers (bench.entropy.Tables)."""
    search, c = TABLES["search"], model.latent_shape[0]
    k = TABLES["smoothing"] * (1 if model.per_latent else model.positions)
    density = copy.deepcopy(model.density).cpu().double()
    edges = torch.arange(-search, search + 2, dtype=torch.float64) - 0.5
    grid = edges[None].repeat(model.rows if model.per_latent else c, 1)
    # Per-latent models: 1,024 images a pass, as ever (batch-dependent low bits would move their
    # tables); per-channel ones: PASS_PIXELS.
    chunk = 1024 if model.per_latent or x is None else max(1, PASS_PIXELS // (x.shape[2] * x.shape[3]))
    out = {name: [] for name in ("table", "channel")}
    for q in range(model.qualities):
        pmf = torch.diff(torch.sigmoid(density.logits_cdf(grid, q)), dim=1).clamp_min(0)
        pmf = pmf / pmf.sum(1, keepdim=True)
        counts = torch.zeros_like(pmf)
        if x is not None:
            for s in range(0, len(x), chunk):
                v = model.density_samples(torch.round(model.analysis(x[s : s + chunk], q))).cpu()
                inside = v.abs() <= search
                idx = (v.clamp(-search, search) + search).long().T
                counts.scatter_add_(1, idx, inside.T.double())
        n = counts.sum(1, keepdim=True)
        pmf = (counts + k * pmf) / (n + k)
        if model.per_latent:
            parts = (("table", pmf), ("channel", pmf.reshape(c, model.positions, -1).mean(1)))
        else:
            parts = (("channel", pmf),)
            none = np.zeros(0, np.int64)
            out["table"].append(Tables(none, none, none.reshape(0, 0)))
        for name, p in parts:
            cdf = torch.cat([torch.zeros(len(p), 1, dtype=p.dtype), p.cumsum(1)], 1).clamp(max=1)
            out[name].append(Tables.from_cdf(cdf.numpy(), -search, TABLES["tail_mass"], TABLES["precision"]))
    device = model.table_lo.device
    for name, tables in out.items():
        width = max(t.freq.shape[1] for t in tables)
        freq = np.zeros((len(tables), len(tables[0].lo), width), np.int64)
        for q, t in enumerate(tables):
            freq[q, :, : t.freq.shape[1]] = t.freq
        lo, size = np.stack([t.lo for t in tables]), np.stack([t.size for t in tables])
        for key, value in (("lo", lo), ("size", size), ("freq", freq)):
            setattr(model, f"{name}_{key}", torch.tensor(value, dtype=torch.int32, device=device))


# -- inference forms ------------------------------------------------------------------------------

def _fold(conv: nn.Conv2d, out_scale=None, in_scale=None) -> nn.Conv2d:
    """conv(x * in_scale) * out_scale as one convolution."""
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        if out_scale is not None:
            folded.weight.mul_(out_scale.to(folded.weight.device).reshape(-1, 1, 1, 1))
            folded.bias.mul_(out_scale.to(folded.weight.device))
        if in_scale is not None:
            folded.weight.mul_(in_scale.to(folded.weight.device).reshape(1, -1, 1, 1))
    return folded


class Analysis(nn.Module):
    """Quality q's analysis with its gains folded in: pixel values 0..255 (padded, (N, 1, H, W)),
    and the same images 4x4 space-to-depth ((N, 16, H/4, W/4)) -> latents before rounding."""

    def __init__(self, model: FactorizedPrior, q: int):
        super().__init__()
        g = torch.exp(model.log_gain[q].detach())
        self.a1 = _fold(model.a1, in_scale=torch.tensor([1 / 255]))
        self.a2 = _fold(model.a2, out_scale=g * torch.exp(model.log_branch_gain[q].detach()))
        self.linear = _fold(model.analysis_linear, out_scale=g, in_scale=torch.full((16,), 1 / 255))

    def forward(self, x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        return self.a2(F.relu_(self.a1(x))).add_(self.linear(blocks))


class Synthesis(nn.Module):
    """Quality q's synthesis with its gains folded in: latents -> pixel values 0..255 before
    rounding, 4x4 space-to-depth ((N, 16, H/4, W/4)): the caller rounds and rearranges bytes."""

    def __init__(self, model: FactorizedPrior, q: int):
        super().__init__()
        ig, full = torch.exp(model.log_inv_gain[q].detach()), torch.full((16,), 255.0)
        self.s1 = _fold(model.s1, in_scale=ig)
        with torch.no_grad():
            self.s1.bias.add_(model.hidden_bias[q])
        self.s2 = _fold(model.s2, out_scale=full, in_scale=torch.exp(model.log_hidden_gain[q].detach()))
        self.linear = _fold(model.synthesis_linear, out_scale=full, in_scale=ig)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.s2(F.relu_(self.s1(z))).add_(self.linear(z))


def inference_forms(model: FactorizedPrior, q: int) -> tuple[nn.Module, nn.Module]:
    """Quality q's analysis and synthesis, the same functions with fewer operations, channels-last
    for the CPU's convolution kernels."""
    return tuple(m.eval().to(next(model.parameters()).device, memory_format=torch.channels_last)
                 for m in (Analysis(model, q), Synthesis(model, q)))
