"""What every learned codec on PyTorch shares: fitting on the training split with its choices made
on the validation split, a model cache keyed by everything that changes the weights, device
placement and the bf16 decision. A learned family is a model plus its coding: it subclasses
`LearnedCodec` and fills in the hooks marked below.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.cache import atomic_write, default_cache_dir
from bench.codec import Codec, CodecError, TrainingData, check_images

CACHE_FORMAT = 2  # the checkpoint layout; bump when it changes
BF16_MAX_PSNR_DELTA_DB = 0.05  # bf16 inference is used only when it moves PSNR by at most this


def source_fingerprint(modules: Iterable[str]) -> str:
    """A hash of the source files of the modules that define a model and train it: editing the
    training code invalidates the models it trained."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        h.update(name.encode())
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


def images_fingerprint(images: np.ndarray) -> str:
    h = hashlib.sha256(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """PyTorch's CPU thread count set to n inside, the caller's restored after; None: unchanged."""
    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


class LearnedCodec(Codec):
    """A codec whose model is trained on the training split and cached.

    Subclasses set `family` (the checkpoint's file prefix) and `code_modules` (the modules whose
    source builds and trains the model), and implement `hyperparameters`, `build_model`,
    `train_model`, `decoder_modules` and `encode`/`decode`. `prepare` may add what inference needs
    (tables, faster layer forms) after a model is trained or loaded.
    """

    learned = True
    devices = ("cpu", "cuda")
    family = ""
    code_modules: tuple[str, ...] = ()
    allow_bf16 = True  # False where the coding needs exact float32 outputs
    # PyTorch threads that training runs with, part of the recipe (the caller's setting is
    # restored afterwards); None: the caller's. Float sums, hence weights, depend on it.
    train_threads: int | None = None

    def __init__(self, epochs: int, seed: int = 0, device: str = "cpu"):
        self.epochs, self.seed, self.device = epochs, seed, device
        self.model: nn.Module | None = None
        self.autocast = False  # bf16 autocast, decided by calibrate_bf16 (CUDA)
        self.bf16_psnr_delta: float | None = None
        self.trained_now = False
        self.losses: list[float] = []
        self.checkpoint: Path | None = None
        self.library = f"torch {torch.__version__}"

    # -- hooks -------------------------------------------------------------------------------

    def hyperparameters(self) -> dict:
        """What distinguishes the models of one family (sizes, λ, ...), JSON-serialisable."""
        return {}

    def build_model(self, shape: tuple[int, int]) -> nn.Module:
        raise NotImplementedError

    def train_model(self, model: nn.Module, data: TrainingData) -> list[float]:
        """Train `model` (already on `data.train_device`) in place; return the loss per epoch."""
        raise NotImplementedError

    def decoder_modules(self) -> list[nn.Module]:
        """The modules a receiver needs: their float parameters are the side information."""
        raise NotImplementedError

    @property
    def checkpoint_prefix(self) -> str:
        """The start of the checkpoint's file name, so a reader of the cache can tell models apart."""
        return self.family

    def prepare(self, data: TrainingData) -> None:
        """After training or loading: inference form, on the codec's device; bf16 is decided on
        the validation split."""
        self.model = self.model.eval().to(self.device)
        if self.allow_bf16 and self.device.startswith("cuda"):
            self.calibrate_bf16(data.validation if len(data.validation) else data.train[:1000])

    # -- fitting and the cache ---------------------------------------------------------------

    def cache_key(self, data: TrainingData) -> str:
        """Covers every input that changes the weights."""
        parts = {
            "format": CACHE_FORMAT,
            "codec": f"{type(self).__module__}.{type(self).__qualname__}",
            "hyperparameters": self.hyperparameters(),
            "epochs": self.epochs,
            "seed": self.seed,
            "train": images_fingerprint(data.train),
            "validation": images_fingerprint(data.validation),
            "code": source_fingerprint((*self.code_modules, __name__)),
            "torch": torch.__version__,
            "train_device": torch.device(data.train_device).type,
            "threads": self.train_threads or torch.get_num_threads(),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]

    def fit(self, data: TrainingData) -> LearnedCodec:
        """Load the cached model for this training data, or train and cache it."""
        check_images(data.train)
        shape = data.train.shape[1:]
        key = self.cache_key(data)
        path = Path(data.cache_dir or default_cache_dir()) / f"{self.checkpoint_prefix}-{key}.pt"
        self.checkpoint = path
        self.model = self._load(path, key, shape, data.log) if path.exists() else None
        self.trained_now = self.model is None
        if self.model is None:
            torch.manual_seed(self.seed)
            self.model = self.build_model(shape).to(data.train_device)
            self.losses = self._train(data)
            state = {"key": key, "model": self.model.state_dict(), "losses": self.losses}
            try:
                atomic_write(path, lambda f: torch.save(state, f))
            except OSError as exc:
                data.log(f"cannot write the model cache {path.parent} ({exc.strerror or exc}); "
                         "the trained model is used for this run only (set --cache-dir)")
        self.prepare(data)
        return self

    def _train(self, data: TrainingData) -> list[float]:
        with torch_threads(self.train_threads):
            return self.train_model(self.model, data)

    def _load(self, path: Path, key: str, shape, log) -> nn.Module | None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("key") != key:
                raise ValueError("its key does not match its file name")
            model = self.build_model(shape)
            model.load_state_dict(state["model"])
            self.losses = list(state["losses"])
        except Exception as exc:  # any unreadable file is retrained, never trusted
            log(f"checkpoint {path} is corrupt or incompatible ({str(exc)[:120]}); retraining")
            return None
        return model

    def require_model(self) -> nn.Module:
        if self.model is None:
            raise CodecError(f"{self.name} is not trained: call .fit(training_data) first")
        return self.model

    @property
    def side_info_bytes(self) -> int:
        """The decoder's float weights as float32."""
        self.require_model()
        tensors = [t for m in self.decoder_modules() for t in m.state_dict().values()]
        return 4 * sum(t.numel() for t in tensors if t.is_floating_point())

    # -- precision ---------------------------------------------------------------------------

    @property
    def precision(self) -> str:
        if self.bf16_psnr_delta is None:
            return "fp32"
        return f"{'bf16' if self.autocast else 'fp32'} (bf16 {self.bf16_psnr_delta:+.3f} dB vs fp32)"

    def autocast_context(self):
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16,
                              enabled=self.autocast)

    def calibrate_bf16(self, images: np.ndarray) -> None:
        """Use bf16 autocast only when the decoded images' PSNR moves by at most
        BF16_MAX_PSNR_DELTA_DB. Runs on CUDA in `prepare`; on the CPU when called (tests)."""
        from bench.metrics import mse, psnr_from_mse

        self.autocast = False
        fp32 = self.decode(self.encode(images))
        self.autocast = True
        bf16 = self.decode(self.encode(images))
        delta = float(psnr_from_mse(mse(images, bf16).mean()) - psnr_from_mse(mse(images, fp32).mean()))
        self.bf16_psnr_delta = delta
        self.autocast = abs(delta) <= BF16_MAX_PSNR_DELTA_DB
