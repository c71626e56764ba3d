"""The published experiment's conv autoencoder as a codec: one byte per latent value, on a canvas
of the training size, a side longer than 64 pixels cut in tiles of 32; images of every size are
coded in tiles of it (bench_codecs.tiles).

Encoder: two stride-2 convolutions and a linear layer, beside a linear path from the pixels,
to `latent` values clamped to [0, 1]; each value is sent as round(255 * z), one byte. Decoder:
the mirror image with transposed convolutions. Training minimises MSE with that rounding in the
loop (straight-through gradient), so what is trained is what is sent.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from bench.codec import CodecError, Payloads, TrainingData, check_images
from bench.learned import History, LearnedCodec, host_tensor, train_loop
from bench_codecs import pca, tiles

ARCH_VERSION = 1
RECIPE = {"version": 1, "batch": 32, "lr": 3e-3, "linear_lr_factor": 0.1, "schedule": "onecycle",
          "width": 32}
# Images per forward pass. On the CPU, a chunk whose activations stay in cache is faster than one
# pass over the whole batch: about 1.1x at a batch of 1,024 and 2-2.5x at 8,192 (2 cores); on CUDA the
# chunk only bounds memory on huge batches.
CHUNK = {"cpu": 256, "cuda": 65536}


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
    the same one-byte latents; where training ends worse than that start on the validation split
    (a few odd images), `train` keeps the start.
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


def train(model: Autoencoder, images: np.ndarray, validation: np.ndarray, epochs: int, seed: int,
          progress: bool = True, log: Callable[[str], None] | None = None) -> History:
    """MSE with the one-byte rounding in the loop; the PCA-initialised linear paths are already
    good, so they move slowly (RECIPE["linear_lr_factor"]) and the conv paths fast. A model whose
    validation MSE ends above its PCA start's goes back to the start (and says so through `log`)."""
    device = next(model.parameters()).device

    def tensor(a):
        return host_tensor(a).to(device).float().div_(255).unsqueeze(1)

    x, xv = tensor(images), tensor(validation)
    steps = math.ceil(len(x) / RECIPE["batch"])
    linear = [*model.enc_linear.parameters(), *model.dec_linear.parameters()]
    conv = [*model.enc_conv.parameters(), *model.dec_conv.parameters()]
    lrs = [RECIPE["lr"] * RECIPE["linear_lr_factor"], RECIPE["lr"]]
    opt = torch.optim.Adam([{"params": linear, "lr": lrs[0]}, {"params": conv, "lr": lrs[1]}])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lrs, total_steps=epochs * steps)

    def loss(idx: torch.Tensor) -> torch.Tensor:
        xb = x[idx]
        return nn.functional.mse_loss(model(xb), xb)

    def validate() -> float:
        return float(nn.functional.mse_loss(model(xv), xv))

    start = copy.deepcopy(model.state_dict())
    model.eval()  # as train_loop validates: BatchNorm on its running statistics
    with torch.no_grad():
        start_mse = validate() if len(xv) else None
    history = train_loop(model, loss=loss, items=len(x), batch=RECIPE["batch"], epochs=epochs, seed=seed,
                         optimizer=opt, scheduler=sched, validate=validate if len(xv) else None,
                         desc=f"train ae latent={model.latent}", progress=progress)
    if start_mse is not None and history.validation[-1] > start_mse:
        model.load_state_dict(start)
        history.kept = (f"the PCA start (validation MSE {start_mse:.4g}): training ended above it, "
                        f"at {history.validation[-1]:.4g}")
        if log is not None:
            log(f"ae latent={model.latent}: kept {history.kept}")
    return history


class AutoencoderCodec(LearnedCodec):
    family = "ae"
    code_modules = (__name__, "bench_codecs.pca")

    def __init__(self, latent: int, epochs: int = 8, seed: int = 0, device: str = "cpu"):
        super().__init__(epochs, seed, device)
        self.latent = latent

    def hyperparameters(self) -> dict:
        # The PCA initialisation's constant is read at run time: it belongs in the key.
        return {"arch": ARCH_VERSION, "recipe": RECIPE, "latent": self.latent, "pca_span": pca.SPAN}

    @property
    def checkpoint_prefix(self) -> str:
        return f"ae{self.latent}"

    def build_model(self, shape) -> Autoencoder:
        return Autoencoder(self.latent, tiles.canvas(tiles.tile_for(shape), 4), RECIPE["width"])

    def train_model(self, model: Autoencoder, data: TrainingData) -> History:
        train_images, validation = (tiles.split(a, model.shape) for a in (data.train, data.validation))
        model.init_from_pca(pca.fit_pca(train_images, self.latent))
        return train(model, train_images, validation, self.epochs, self.seed, data.progress, data.log)

    def decoder_modules(self) -> list[nn.Module]:
        model = self.require_model()
        return [model.dec_linear, model.dec_conv]

    def prepare(self, data: TrainingData) -> None:
        self.model = self.require_model().for_inference()
        self.trained = data.train.shape[1:]  # its canvases, no size header
        super().prepare(data)

    def header_bytes(self, shape: tuple[int, int]) -> int:
        return 0 if tuple(shape) == tuple(self.trained) else tiles.HEADER

    # -- coding --------------------------------------------------------------------------

    @property
    def _chunk(self) -> int:
        return CHUNK[torch.device(self.device).type]

    def encode(self, images: np.ndarray) -> Payloads:
        model = self.require_model()
        images = check_images(images, codec=self.name)
        canvases = tiles.split(images, model.shape)
        host, chunk = host_tensor(canvases), self._chunk
        out = torch.empty((len(canvases), self.latent), dtype=torch.uint8)
        with self.inference(), self.autocast_context():
            for i in range(0, len(canvases), chunk):
                x = host[i : i + chunk].to(self.device, non_blocking=True).unsqueeze(1)
                x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
                z = model.encoder(x)
                out[i : i + chunk] = z.float().mul_(255).round_().to(torch.uint8).cpu()
        return tiles.pack(out.numpy(), images.shape[1:], self.trained, model.shape)

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        model = self.require_model()
        rows, shape = tiles.unpack(payloads, self.latent, self.trained, model.shape, self.name)
        host, chunk = host_tensor(rows), self._chunk
        out = torch.empty((len(host), *model.shape), dtype=torch.uint8)
        with self.inference(), self.autocast_context():
            for i in range(0, len(host), chunk):
                z = host[i : i + chunk].to(self.device, non_blocking=True).float().div_(255)
                y = model.decoder(z)
                out[i : i + chunk] = y.float().mul_(255).round_().to(torch.uint8).squeeze(1).cpu()
        return tiles.join(out.numpy(), shape)
