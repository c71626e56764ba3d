"""The published experiment's conv autoencoder as a codec: one byte per latent value.

Encoder: two stride-2 convolutions and a linear layer, beside a linear path from the pixels,
to `latent` values clamped to [0, 1]; each value is sent as round(255 * z), one byte. Decoder:
the mirror image with transposed convolutions. Training minimises MSE with that rounding in the
loop (straight-through gradient), so what is trained is what is sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.cache import atomic_write, default_cache_dir
from bench.codec import CodecError, Payloads, check_images, fixed_rate_rows
from bench_codecs.host import host_tensor
from bench_codecs.pca import fit_pca

ARCH_VERSION = 1
RECIPE = {"version": 1, "batch": 32, "lr": 3e-3, "linear_lr_factor": 0.1, "schedule": "onecycle",
          "width": 32}
# Images per forward pass. On the CPU, a chunk whose activations stay in cache is faster than one
# pass over the whole batch: about 1.1x at a batch of 1,024 and 2-2.5x at 8,192 (2 cores); on CUDA the
# chunk only bounds memory on huge batches.
CHUNK = {"cpu": 256, "cuda": 65536}
BF16_MAX_PSNR_DELTA_DB = 0.05  # bf16 inference is used only when it moves PSNR by at most this


class SubPixelConvTranspose(nn.Module):
    """A stride-2, 3x3, padding-1, output-padding-1 ConvTranspose2d computed as a 2x2
    convolution into four phase channels and a pixel shuffle: the same function, and about
    twice as fast on the CPU for the decoder's last, single-channel layer.

    Output pixel (2m + a, 2n + b) sees inputs (m + di, n + dj), di, dj in {0, 1}, through the
    transposed kernel's tap PHASE_TAP[a, di] x PHASE_TAP[b, dj] (absent pairs contribute 0).
    """

    PHASE_TAP = {(0, 0): 1, (1, 0): 2, (1, 1): 0}

    def __init__(self, source: nn.ConvTranspose2d):
        super().__init__()
        assert source.kernel_size == (3, 3) and source.stride == (2, 2)
        assert source.padding == (1, 1) and source.output_padding == (1, 1)
        self.source = source  # kept so that state_dict() is still the trained layer's
        w = source.weight.detach()  # (in, out, 3, 3)
        cin, cout = w.shape[:2]
        weight = w.new_zeros(cout, 2, 2, cin, 2, 2)
        for (a, di), ka in self.PHASE_TAP.items():
            for (b, dj), kb in self.PHASE_TAP.items():
                weight[:, a, b, :, di, dj] = w[:, :, ka, kb].T
        self.register_buffer("weight", weight.reshape(cout * 4, cin, 2, 2), persistent=False)
        self.register_buffer("bias", source.bias.detach().repeat_interleave(4), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), self.weight, self.bias)
        return nn.functional.pixel_shuffle(y, 2)


class Autoencoder(nn.Module):
    """Conv encoder and transposed-conv decoder, each beside a linear path initialised from PCA.

    The conv paths' last layers start at zero, so training starts from the PCA solution with
    the same one-byte latents and can only improve on it.
    """

    def __init__(self, latent: int, shape: tuple[int, int] = (28, 28), width: int = 32):
        super().__init__()
        h, w = shape
        if h % 4 or w % 4:
            raise CodecError(f"the autoencoder needs image sides divisible by 4, got {h}x{w}")
        self.shape, self.latent = (h, w), latent
        inner = (h // 4, w // 4)
        flat = width * inner[0] * inner[1]
        self.enc_linear = nn.Linear(h * w, latent)
        self.enc_conv = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, stride=2, padding=1), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Flatten(), nn.Linear(flat, latent),
        )
        self.dec_linear = nn.Linear(latent, h * w)
        self.dec_conv = nn.Sequential(
            nn.Linear(latent, flat), nn.ReLU(), nn.Unflatten(1, (width, *inner)),
            nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.ConvTranspose2d(width // 2, 1, 3, stride=2, padding=1, output_padding=1),
        )
        for last in (self.enc_conv[-1], self.dec_conv[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def init_from_pca(self, basis) -> None:
        """Linear paths = the PCA control's encoder and decoder (see bench_codecs.pca)."""
        comp, mean, scale = (torch.from_numpy(a) for a in (basis.components, basis.mean, basis.scale))
        with torch.no_grad():
            self.enc_linear.weight.copy_(comp / scale[:, None])
            self.enc_linear.bias.copy_(0.5 - comp @ mean / scale)
            self.dec_linear.weight.copy_(comp.T * scale)
            self.dec_linear.bias.copy_(mean - 0.5 * (comp.T * scale).sum(dim=1))

    def for_inference(self) -> Autoencoder:
        """Eval mode, channels-last, and the last layer in its faster, equivalent form."""
        if isinstance(self.dec_conv[-1], nn.ConvTranspose2d):
            self.dec_conv[-1] = SubPixelConvTranspose(self.dec_conv[-1])
        return self.eval().to(memory_format=torch.channels_last)

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, H, W) in [0, 1] -> latents in [0, 1]."""
        return (self.enc_linear(x.flatten(1)) + self.enc_conv(x)).clamp(0, 1)

    def decoder(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, k) in [0, 1] -> images (N, 1, H, W) in [0, 1]."""
        y = self.dec_linear(z).view(-1, 1, *self.shape) + self.dec_conv(z)
        return y.clamp(0, 1)

    @staticmethod
    def quantize(z: torch.Tensor) -> torch.Tensor:
        """Round to the 256 levels that are sent; the gradient passes straight through."""
        return z + ((z * 255).round() / 255 - z).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantize(self.encoder(x)))


def train_autoencoder(images: np.ndarray, latent: int, epochs: int, seed: int,
                      device: str = "cpu", progress: bool = True) -> tuple[Autoencoder, list]:
    """Seeded training; on the CPU the same call gives the same weights."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Autoencoder(latent, images.shape[1:], RECIPE["width"])
    model.init_from_pca(fit_pca(images, latent))
    model = model.to(device)
    x = torch.from_numpy(images).to(device).float().div_(255).unsqueeze(1)
    batch = RECIPE["batch"]
    steps = math.ceil(len(x) / batch)
    # The PCA-initialised linear paths are already good: they move slowly, the conv paths fast.
    linear = [*model.enc_linear.parameters(), *model.dec_linear.parameters()]
    conv = [*model.enc_conv.parameters(), *model.dec_conv.parameters()]
    lrs = [RECIPE["lr"] * RECIPE["linear_lr_factor"], RECIPE["lr"]]
    opt = torch.optim.Adam([{"params": linear, "lr": lrs[0]}, {"params": conv, "lr": lrs[1]}])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lrs, total_steps=epochs * steps)
    losses = []
    bar = tqdm(range(epochs), desc=f"train ae latent={latent}", unit="epoch",
               disable=None if progress else True, leave=False)
    for _ in bar:
        order = torch.randperm(len(x), generator=gen).to(device)
        total = 0.0
        for i in range(steps):
            xb = x[order[i * batch : (i + 1) * batch]]
            loss = nn.functional.mse_loss(model(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(xb)
        losses.append(total / len(x))
        bar.set_postfix(mse=f"{losses[-1]:.5f}")
    return model.eval(), losses


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


class AutoencoderCodec:
    lossless = False
    precision = "fp32"  # until calibrate_bf16 measures bf16 (CUDA)

    def __init__(self, latent: int, epochs: int = 8, seed: int = 0, device: str = "cpu"):
        self.name = f"ae(latent={latent})"
        self.latent, self.epochs, self.seed, self.device = latent, epochs, seed, device
        self.model: Autoencoder | None = None
        self.autocast = False  # bf16 on CUDA, within BF16_MAX_PSNR_DELTA_DB (see calibrate_bf16)
        self.bf16_psnr_delta: float | None = None
        self.trained_now = False
        self.losses: list[float] = []
        self.checkpoint: Path | None = None
        self.library = f"torch {torch.__version__}"

    # -- training and the cache ----------------------------------------------------------

    def cache_key(self, images: np.ndarray) -> str:
        fingerprint = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
        spec = {"arch": ARCH_VERSION, "recipe": RECIPE, "latent": self.latent,
                "shape": list(images.shape[1:]), "data": fingerprint,
                "epochs": self.epochs, "seed": self.seed}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]

    def fit(self, images: np.ndarray, cache_dir: Path | None = None,
            progress: bool = True, log=None) -> AutoencoderCodec:
        """Load the cached model for these training images, or train and cache it."""
        log = log or (lambda msg: print(msg, file=sys.stderr))
        images = check_images(images)
        key = self.cache_key(images)
        path = Path(cache_dir or default_cache_dir()) / f"ae{self.latent}-{key}.pt"
        self.checkpoint = path
        self.model = self._load(path, key, images.shape[1:], log) if path.exists() else None
        if self.model is None:
            self.model, self.losses = train_autoencoder(
                images, self.latent, self.epochs, self.seed, self.device, progress)
            self.trained_now = True
            try:
                atomic_torch_save({"key": key, "model": self.model.state_dict(),
                                   "losses": self.losses}, path)
            except OSError as exc:
                log(f"cannot write the model cache {path.parent} ({exc.strerror or exc}); "
                    "the trained model is used for this run only (set --cache-dir)")
        self._after_load(images)
        return self

    def _load(self, path: Path, key: str, shape, log) -> Autoencoder | None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("key") != key:
                raise ValueError("its key does not match its file name")
            model = Autoencoder(self.latent, shape, RECIPE["width"])
            model.load_state_dict(state["model"])
            self.losses = list(state["losses"])
        except Exception as exc:  # any unreadable file is retrained, never trusted
            log(f"checkpoint {path} is corrupt or incompatible ({str(exc)[:120]}); retraining")
            return None
        return model  # _after_load puts it on the device, in inference form

    def _after_load(self, images: np.ndarray) -> None:
        self.model = self.model.for_inference().to(self.device)
        if self.device.startswith("cuda"):
            self.calibrate_bf16(images[:4096])

    def calibrate_bf16(self, images: np.ndarray) -> None:
        """Use bf16 autocast only when the decoded images' PSNR moves by BF16_MAX_PSNR_DELTA_DB or less.

        Runs on CUDA after loading; on the CPU only when called (the tests check the decision there).
        """
        from bench.metrics import mse, psnr_from_mse

        self.autocast = False
        fp32 = self.decode(self.encode(images))
        self.autocast = True
        bf16 = self.decode(self.encode(images))
        delta = float(psnr_from_mse(mse(images, bf16).mean()) - psnr_from_mse(mse(images, fp32).mean()))
        self.bf16_psnr_delta = delta
        self.autocast = abs(delta) <= BF16_MAX_PSNR_DELTA_DB

    @property
    def side_info_bytes(self) -> int:
        """The decoder's weights as float32: what a receiver needs besides the payloads."""
        model = self._require_model()
        tensors = [*model.dec_linear.state_dict().values(), *model.dec_conv.state_dict().values()]
        return 4 * sum(t.numel() for t in tensors if t.is_floating_point())

    def _require_model(self) -> Autoencoder:
        if self.model is None:
            raise CodecError(f"{self.name} is not trained: call .fit(train_images) first")
        return self.model

    # -- coding --------------------------------------------------------------------------

    @property
    def _chunk(self) -> int:
        return CHUNK[torch.device(self.device).type]

    def _context(self):
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.autocast)

    def encode(self, images: np.ndarray) -> Payloads:
        model = self._require_model()
        images = check_images(images, trained=model.shape, codec=self.name)
        host, chunk = host_tensor(images), self._chunk
        out = torch.empty((len(images), self.latent), dtype=torch.uint8)
        with torch.inference_mode(), self._context():
            for i in range(0, len(images), chunk):
                x = host[i : i + chunk].to(self.device, non_blocking=True).unsqueeze(1)
                x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
                z = model.encoder(x)
                out[i : i + chunk] = z.float().mul_(255).round_().to(torch.uint8).cpu()
        return Payloads.from_array(out.numpy())

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        model = self._require_model()
        host, chunk = host_tensor(fixed_rate_rows(payloads, self.latent, self.name)), self._chunk
        out = torch.empty((len(host), *model.shape), dtype=torch.uint8)
        with torch.inference_mode(), self._context():
            for i in range(0, len(host), chunk):
                z = host[i : i + chunk].to(self.device, non_blocking=True).float().div_(255)
                y = model.decoder(z)
                out[i : i + chunk] = y.float().mul_(255).round_().to(torch.uint8).squeeze(1).cpu()
        return out.numpy()
