"""`linear`: a learned linear transform code, the worked example of docs/writing-a-learned-codec.md.

An image of P pixels is mapped by a learned linear analysis to `features` numbers, each divided by
the quality's step and rounded to an integer; the integers are range-coded under one learned
integer table per feature (bench.entropy), and a learned linear synthesis maps them back. Training
(bench.learned.train_loop) starts from the principal components and minimises the MSE with uniform
noise standing in for the rounding; the tables are then counted from the training split's rounded
features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bench import entropy
from bench.codec import Param, Payloads, TrainingData, check_images, payloads_to_decode
from bench.learned import History, LearnedCodec, host_tensor, train_loop

# quality -> step. On mnist-5k, 4 epochs: quality 1 is 18 B at 19.5 dB, 8 is 40 B at 20.7 dB.
STEPS = {1: 1.0, 2: 0.7, 3: 0.5, 4: 0.35, 5: 0.25, 6: 0.18, 7: 0.12, 8: 0.08}
RECIPE = {"version": 1, "batch": 64, "lr": 3e-3}
TABLES = {"search": 64, "tail_mass": 1e-4, "precision": 16}


class LinearTransform(nn.Module):
    def __init__(self, shape: tuple[int, int], features: int):
        super().__init__()
        self.shape, pixels = tuple(shape), shape[0] * shape[1]
        self.analysis = nn.Linear(pixels, features)
        self.synthesis = nn.Linear(features, pixels)
        # The integer tables, in a module of their own: a decoder needs them and the synthesis.
        self.tables = nn.Module()
        self.tables.register_buffer("lo", torch.zeros(features, dtype=torch.int32))
        self.tables.register_buffer("size", torch.zeros(features, dtype=torch.int32))
        self.tables.register_buffer("freq", torch.zeros(features, 0, dtype=torch.int32))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        freq = state_dict.get(prefix + "tables.freq")
        if isinstance(freq, torch.Tensor):  # its width is known only from the checkpoint
            self.tables.freq = torch.empty_like(freq)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def integer_tables(self) -> entropy.Tables:
        return entropy.Tables(*(getattr(self.tables, n).numpy() for n in ("lo", "size", "freq")))


class LinearCodec(LearnedCodec):
    # What the registry reads for `bench list` and the run (a plugin states it on its class).
    description = "example plugin: a learned linear transform code, range-coded (bench.entropy)"
    devices = ("cpu",)
    params = (Param("quality", int, 4, choices=tuple(STEPS), help="1 (smallest) .. 8 (best)"),
              Param("features", int, 64, 1, 256, help="learned linear features per image"),
              Param("epochs", int, 4, 1, 10_000, help="training epochs"),
              Param("seed", int, 0, 0, 2**31 - 1, help="training seed"))
    rate_param = "quality"
    sweep = "quality=2/4/6/8"
    learned = True
    # What the learned-codec base needs.
    family = "linear"
    code_modules = (__name__,)
    derived = ("coder",)  # built by prepare; constriction's models do not pickle

    def __init__(self, quality: int = 4, features: int = 64, epochs: int = 4, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(epochs, seed, device)
        self.step, self.features = STEPS[quality], features
        self.library = f"torch {torch.__version__} + {entropy.version()}"

    def hyperparameters(self) -> dict:
        return {"recipe": RECIPE, "tables": TABLES, "step": self.step, "features": self.features}

    def build_model(self, shape) -> LinearTransform:
        return LinearTransform(shape, self.features)

    def train_model(self, model: LinearTransform, data: TrainingData) -> History:
        x = host_tensor(data.train).float().div(255).flatten(1)
        xv = host_tensor(data.validation).float().div(255).flatten(1)
        noise = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():  # start from the principal components: training refines them
            mean = x.mean(0)
            basis = torch.linalg.eigh(torch.cov((x - mean).T)).eigenvectors[:, -self.features:].T
            model.analysis.weight.copy_(basis)
            model.analysis.bias.copy_(-basis @ mean)
            model.synthesis.weight.copy_(basis.T)
            model.synthesis.bias.copy_(mean)

        def loss(idx):
            y = model.analysis(x[idx]) / self.step
            noisy = y + torch.empty(y.shape).uniform_(-0.5, 0.5, generator=noise)
            return ((model.synthesis(noisy * self.step) - x[idx]) ** 2).mean()

        def validate():
            q = torch.round(model.analysis(xv) / self.step)
            return float(((model.synthesis(q * self.step) - xv) ** 2).mean())

        opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
        history = train_loop(model, loss=loss, items=len(x), batch=RECIPE["batch"], epochs=self.epochs,
                             seed=self.seed, optimizer=opt, validate=validate, desc="train linear",
                             progress=data.progress)
        with torch.no_grad():  # tables from the training split's rounded features
            q = torch.round(model.analysis(x) / self.step).numpy().astype(np.int64)
        search = TABLES["search"]
        counts = np.stack([np.bincount(np.clip(f, -search, search) + search, minlength=2 * search + 1)
                           for f in q.T]) + 0.01  # every integer keeps a little mass
        cdf = np.concatenate([np.zeros((len(counts), 1)), np.cumsum(counts, 1)], 1) / counts.sum(1)[:, None]
        tables = entropy.Tables.from_cdf(cdf, -search, TABLES["tail_mass"], TABLES["precision"])
        for name in ("lo", "size", "freq"):
            setattr(model.tables, name, torch.tensor(getattr(tables, name), dtype=torch.int32))
        return history

    def decoder_modules(self) -> list[nn.Module]:
        model = self.require_model()
        return [model.synthesis, model.tables]

    def prepare(self, data: TrainingData) -> None:
        super().prepare(data)
        model = self.require_model()
        model.integer_tables().check(TABLES["search"])  # raises for unusable tables: retrained
        sent = [t.numpy().tobytes() for m in self.decoder_modules() for t in m.state_dict().values()]
        self.tag = entropy.model_tag(*sent)  # so that another model's payloads are refused
        self.coder = entropy.TableCoder(model.integer_tables())

    def latents(self, images: np.ndarray) -> np.ndarray:
        model = self.require_model()
        images = check_images(images, trained=model.shape, codec=self.name)
        with self.inference():
            y = model.analysis(host_tensor(images).float().div(255).flatten(1)) / self.step
        return torch.round(y).clamp(-2**30, 2**30).to(torch.int32).numpy()

    def encode(self, images: np.ndarray) -> Payloads:
        return Payloads.from_list(self.coder.encode(
            self.latents(images), end=lambda enc: entropy.end_stream(enc, self.tag)))

    def decode(self, payloads) -> np.ndarray:
        model = self.require_model()
        q = np.stack(entropy.read_streams(payloads_to_decode(payloads, self.name), self.name,
                                          self.tag, self.coder.read))
        with self.inference():
            x = model.synthesis(torch.from_numpy(q).float() * self.step)
        return x.clamp(0, 1).mul(255).round().to(torch.uint8).reshape(len(q), *model.shape).numpy()

    def model_bits(self, images: np.ndarray) -> np.ndarray:
        """-log2 of each feature's table probability (escapes counted at the escape symbol)."""
        q, c = self.latents(images), self.coder
        sym = np.clip(q - c.lo, 0, c.size - 1)
        sym = np.where((q < c.lo) | (q > c.hi), c.escape, sym)
        freq = self.require_model().tables.freq.numpy().astype(np.float64)
        p = freq[np.arange(len(c.size)), sym] / freq.sum(1)
        return -np.log2(p).sum(1)
