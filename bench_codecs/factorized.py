"""`factorized`: a learned lossy codec trained for rate and distortion (the network and its training:
bench_codecs.factorized_model), with real range-coded payloads.

**Payload.** One range-coder stream (bench.entropy.TableCoder over the model's integer tables): one
symbol per latent in a fixed order, then the value of every escaped latent, then the 4-bit check
symbol of the model (bench.entropy), so that another quality's or model's payload is refused. The
image size is the model's, so there is no header. Encoder and decoder build their constriction
models from exactly the integers in the checkpoint, never from a float network output, so the
decoder rebuilds the encoder's probabilities bit for bit.

**Identical pixels whatever the batch.** Float convolutions on the CPU can give different low
bits for different batch sizes (another kernel blocking). Analysis and synthesis therefore
always run on zero-padded chunks of exactly CHUNK images copied into one buffer, so an image's
latents and pixels are the same alone and in any split. On the CPU they run on one thread
whatever the caller set (with the caller's count instead, 1 and 2 threads gave the same pixels
too, since PyTorch's CPU convolutions split work over output elements, not over the sums: tested,
not promised). The limit: pixels decoded on another device or CPU type can differ in the last
rounding step (on CUDA, cuDNN may use TF32); bit-exact pixels everywhere would need integer
synthesis. The payloads are exact everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bench import entropy
from bench.codec import CodecError, PayloadError, Payloads, TrainingData, check_images, payloads_to_decode
from bench.learned import History, LearnedCodec, host_tensor
from bench_codecs import FACTORIZED_LAMBDAS
from bench_codecs.factorized_model import (
    ARCH,
    RECIPE,
    TABLES,
    FactorizedPrior,
    inference_forms,
    train,
)

# Images per analysis/synthesis call, always this many (zero-padded): see the module docstring.
CHUNK = {"cpu": 64, "cuda": 4096}


class FactorizedCodec(LearnedCodec):
    family = "factorized"
    code_modules = (__name__, "bench_codecs.factorized_model", "bench.entropy")
    allow_bf16 = False  # the decoder must compute what the encoder's device computes
    train_threads = RECIPE["threads"]
    # Chunks of 64 are too small to split well: a second thread gained 10-25 % on an idle 2-core
    # machine, and when another process holds a core every parallel region waits for the
    # descheduled thread (600 img/s instead of 11,000-29,000 at load 5 on 2 cores). The entropy
    # coder is single-threaded anyway.
    inference_threads = 1

    def __init__(self, quality: int = 6, epochs: int = 12, seed: int = 0, device: str = "cpu"):
        super().__init__(epochs, seed, device)
        self.quality, self.lam = quality, FACTORIZED_LAMBDAS[quality]
        self.library = f"torch {torch.__version__} + {entropy.version()}"
        self.coder: entropy.TableCoder | None = None

    def hyperparameters(self) -> dict:
        return {"arch": ARCH, "recipe": RECIPE, "tables": TABLES, "lambda": self.lam}

    @property
    def checkpoint_prefix(self) -> str:
        return f"factorized-q{self.quality}"

    def build_model(self, shape) -> FactorizedPrior:
        return FactorizedPrior(tuple(shape), self.lam)

    def train_model(self, model: FactorizedPrior, data: TrainingData) -> History:
        return train(model, data.train, data.validation, self.lam, self.epochs, self.seed,
                     data.progress)

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
        model.tables.check(TABLES["search"])  # raises for unusable tables: the model is retrained
        self.analysis, self.synthesis = inference_forms(model)
        # Bound to what a decoder receives: the synthesis weights and the tables.
        sent = [t for m in self.decoder_modules() for t in m.state_dict().values()]
        sent += [model.table_lo, model.table_size, model.table_freq]
        self.tag = entropy.model_tag(*(t.detach().cpu().contiguous().numpy().tobytes() for t in sent))
        self.coder = entropy.TableCoder(model.tables)

    # -- coding ----------------------------------------------------------------------------------

    def _chunked(self, fn: nn.Module, x: torch.Tensor, out_shape: tuple) -> torch.Tensor:
        """fn over x in chunks of exactly CHUNK images: each one copied into the same zeroed
        buffer, so an image's result does not depend on the batch it came in."""
        chunk = CHUNK[torch.device(self.device).type]
        out = torch.empty((len(x), *out_shape))
        buf = torch.zeros((chunk, *x.shape[1:]), device=self.device).contiguous(
            memory_format=torch.channels_last)
        with self.inference():
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
        return Payloads.from_list(self.coder.encode(
            self.latents(images), end=lambda enc: entropy.end_stream(enc, self.tag),
            begin=lambda enc: entropy.encode_size(enc, model.shape, model.shape)))

    def decode_latents(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        """Payloads -> the quantised latents they carry, (N, rows) int32."""
        model = self.require_model()

        def read(dec) -> np.ndarray:
            shape = entropy.decode_size(dec, model.shape)
            if shape != model.shape:
                raise PayloadError(f"a {shape[0]}x{shape[1]} image; this model codes "
                                   f"{model.shape[0]}x{model.shape[1]}")
            return self.coder.read(dec)

        rows = entropy.read_streams(payloads_to_decode(payloads, self.name), self.name, self.tag, read)
        return np.stack(rows)

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        model = self.require_model()
        q = self.decode_latents(payloads)
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
