"""What every learned codec on PyTorch shares: fitting on the training split with its choices made
on the validation split, the one training loop, the one thread policy, a model cache keyed by
everything that changes the weights and verified by a digest of its tensors, device placement and
the bf16 decision. A learned family is a model plus its coding: it subclasses `LearnedCodec` and
fills in the hooks marked below (docs/writing-a-learned-codec.md lists them).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.cache import atomic_write, default_cache_dir, digest
from bench.codec import Codec, CodecError, TrainingData, check_images
from bench.executor import cores, worker_pool

CACHE_FORMAT = 3  # the checkpoint layout; bump when it changes
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


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of every tensor's name, dtype, shape and bytes: a checkpoint carries it, and a
    model is used only when its tensors still match it."""

    def parts():
        for name in sorted(state):
            t = state[name].detach().cpu().contiguous()
            yield f"{name} {t.dtype} {tuple(t.shape)}".encode()
            yield t.reshape(-1).view(torch.uint8).numpy().tobytes()

    return digest(parts())


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A numpy array as a CPU tensor, sharing memory when it can; a read-only array (payloads from
    bytes) is copied once."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


MIN_PART = 128  # images per worker process below which splitting a batch costs more than it saves


def in_processes(fn: Callable, parts: list[tuple]) -> list:
    """[fn(*part) for part in parts], each part in a worker process, concurrently: the run's pool
    (bench.executor.worker_pool), whose processes ran the jobs and start once per run. Submitted
    to the pool directly: joblib.Parallel polls for results every 10 ms, which cost 8-9 ms a call
    here."""
    if len(parts) == 1:
        return [fn(*parts[0])]
    pool = worker_pool(max(cores(), len(parts)))
    return [future.result() for future in [pool.submit(fn, *part) for part in parts]]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """PyTorch's CPU thread count set to n inside, the caller's restored after; None: unchanged.
    The only place that sets it: float results (hence weights and pixels) depend on it, so every
    caller says which count it runs with."""
    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


# -- the one training loop ------------------------------------------------------------------------

@dataclass
class History:
    """The loss per epoch: mean over the epoch's training steps, and on the validation split
    (deterministic: no noise, no dropout) when the family measures it; `kept` says what the
    model's weights are when they are not the last epoch's (the report reads it beside the loss)."""

    train: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    kept: str = ""


def train_loop(model: nn.Module, *, loss: Callable[[torch.Tensor], torch.Tensor], items: int,
               batch: int, epochs: int, seed: int, optimizer: torch.optim.Optimizer,
               scheduler=None, clip: float | None = None, drop_last: bool = False,
               before_epoch: Callable[[int, torch.Generator], int] | None = None,
               validate: Callable[[], float] | None = None, desc: str = "train",
               progress: bool = True) -> History:
    """Seeded minibatch training in place, on the model's device; on the CPU the same call gives
    the same weights. Each epoch draws a permutation of the `items` (images, pixels ...) from one
    generator seeded with `seed`; `loss(indices)` is the batch's loss. `before_epoch(epoch, gen)`
    may draw from the same generator first (per-epoch data) and returns the epoch's item count.
    `scheduler` (a torch LR scheduler) steps after every optimiser step; `validate()` runs in
    eval mode without gradients after every epoch."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    history = History()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=None if progress else True, leave=False)
    model.train()
    for epoch in bar:
        n = before_epoch(epoch, gen) if before_epoch else items
        order = torch.randperm(n, generator=gen).to(device)
        steps = max(n // batch if drop_last else math.ceil(n / batch), 1)
        total = 0.0
        for i in range(steps):
            value = loss(order[i * batch : (i + 1) * batch])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += value.item()
        history.train.append(total / steps)
        postfix = {"loss": f"{history.train[-1]:.4f}"}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                history.validation.append(float(validate()))
            model.train()
            postfix["validation"] = f"{history.validation[-1]:.4f}"
        bar.set_postfix(postfix)
    model.eval()
    return history


# -- the learned-codec base -----------------------------------------------------------------------

class LearnedCodec(Codec):
    """A codec whose model is trained on the training split and cached.

    Subclasses set `family` (the checkpoint's file prefix) and `code_modules` (the modules whose
    source builds and trains the model), and implement `hyperparameters`, `build_model`,
    `train_model`, `decoder_modules` and `encode`/`decode`. `prepare` may add what inference needs
    (tables, faster layer forms) after a model is trained or loaded.
    """

    family = ""
    code_modules: tuple[str, ...] = ()
    allow_bf16 = True  # False where the coding needs exact float32 outputs
    # PyTorch CPU threads, part of the recipe: training's are in the cache key (float sums, hence
    # weights, depend on them). None: the run's count (--threads).
    train_threads: int | None = None
    inference_threads: int | None = None
    # CPU worker processes that encode and decode split a large batch between (`in_processes`); a
    # codec that supports it sets this to None (one per core), a test to 1. Within a worker
    # process (a parallel run's job) it is always 1.
    inference_processes: int | None = 1
    # What `prepare` builds from the model (coders, inference forms): left out when the codec is
    # pickled (a parallel run's job returns it to the main process), rebuilt by `restore`.
    derived: tuple[str, ...] = ()

    def __init__(self, epochs: int, seed: int = 0, device: str = "cpu"):
        self.epochs, self.seed, self.device = epochs, seed, device
        self.model: nn.Module | None = None
        self.autocast = False  # bf16 autocast, decided by calibrate_bf16 (CUDA)
        self.bf16_psnr_delta: float | None = None
        self.trained_now = False
        self.history = History()
        self.checkpoint: Path | None = None
        self.weights_digest = ""  # tensors_digest of the fitted model's weights
        self.run_threads: int | None = None  # the run's thread count, from fit
        self.library = f"torch {torch.__version__}"

    # -- hooks -------------------------------------------------------------------------------

    def hyperparameters(self) -> dict:
        """What distinguishes the models of one family (sizes, λ, ...), JSON-serialisable."""
        return {}

    def build_model(self, shape: tuple[int, int]) -> nn.Module:
        raise NotImplementedError

    def train_model(self, model: nn.Module, data: TrainingData) -> History:
        """Train `model` (already on `data.train_device`) in place, usually through `train_loop`."""
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

    # -- threads -----------------------------------------------------------------------------

    def threads(self, training: bool = False) -> int | None:
        fixed = self.train_threads if training else self.inference_threads
        return fixed or self.run_threads

    def processes(self, images: int) -> int:
        """How many processes code a batch of `images` on the CPU."""
        if self.device != "cpu" or multiprocessing.parent_process() is not None:
            return 1
        return max(1, min(self.inference_processes or cores(), images // MIN_PART))

    @contextmanager
    def inference(self) -> Iterator[None]:
        """Where encode and decode run their networks: no autograd, the inference thread count."""
        with torch.inference_mode(), torch_threads(self.threads()):
            yield

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
            "threads": self.train_threads or data.threads or torch.get_num_threads(),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]

    def fit(self, data: TrainingData) -> LearnedCodec:
        """Load the cached model for this training data, or train and cache it."""
        check_images(data.train)
        shape = data.train.shape[1:]
        self.run_threads = data.threads
        key = self.cache_key(data)
        path = Path(data.cache_dir or default_cache_dir()) / f"{self.checkpoint_prefix}-{key}.pt"
        self.checkpoint = path
        self.model = self._load(path, key, shape, data) if path.exists() else None
        self.trained_now = self.model is None
        if self.model is None:
            torch.manual_seed(self.seed)
            self.model = self.build_model(shape).to(data.train_device)
            with torch_threads(self.threads(training=True)):
                self.history = self.train_model(self.model, data)
            weights = self.model.state_dict()
            self.weights_digest = tensors_digest(weights)
            state = {"key": key, "model": weights, "digest": self.weights_digest,
                     "history": asdict(self.history)}
            try:
                atomic_write(path, lambda f: torch.save(state, f))
            except OSError as exc:
                data.log(f"cannot write the model cache {path.parent} ({exc.strerror or exc}); "
                         "the trained model is used for this run only (set --cache-dir)")
            self.prepare(data)
        return self

    def _load(self, path: Path, key: str, shape, data: TrainingData) -> nn.Module | None:
        """The cached model, prepared, or None (and one line saying why) when the file is
        unreadable, damaged, foreign, or holds a model that `prepare` refuses."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("key") != key:
                raise ValueError("its key does not match its file name")
            if state.get("digest") != tensors_digest(state["model"]):
                raise ValueError("its tensors do not match their digest: the file was damaged")
            self.model = self.build_model(shape)
            self.model.load_state_dict(state["model"])
            self.history, self.weights_digest = History(**state["history"]), state["digest"]
            self.prepare(data)
        except Exception as exc:  # any unreadable file is retrained, never trusted
            data.log(f"checkpoint {path} is corrupt or incompatible ({str(exc)[:120]}); retraining")
            return None
        return self.model

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in self.derived}
        state["unprepared"] = True
        return state

    def restore(self, data: TrainingData) -> LearnedCodec:
        """After unpickling: prepare the fitted model again (no training, no cache read)."""
        if self.__dict__.pop("unprepared", False):
            self.prepare(data)
        return self

    def require_model(self) -> nn.Module:
        if self.model is None:
            raise CodecError(f"{self.name} is not trained: call .fit(training_data) first")
        return self.model

    @property
    def side_info_bytes(self) -> int:
        """What a decoder needs besides the payloads: every tensor of the `decoder_modules`
        (parameters and buffers, integer tables included) at its stored size; BatchNorm's
        training counter excepted. A codec that sends another form (compacted tables, an
        exported network) overrides this."""
        self.require_model()
        return sum(t.numel() * t.element_size() for m in self.decoder_modules()
                   for name, t in m.state_dict().items() if not name.endswith("num_batches_tracked"))

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
