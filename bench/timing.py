"""Throughput: warm-up, then the median of timed rounds; CUDA work is synchronised around each."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Throughput:
    images: int  # per round (the batch size)
    seconds: tuple[float, ...]  # one per timed round

    @property
    def median_img_s(self) -> float:
        return self.images / float(np.median(self.seconds))

    @property
    def min_img_s(self) -> float:
        return self.images / max(self.seconds)

    @property
    def max_img_s(self) -> float:
        return self.images / min(self.seconds)


MIN_ROUNDS = 3  # a median needs three
ROUNDS_BUDGET_S = 1.0  # past MIN_ROUNDS, no new round starts once the timed rounds took this long
# A warm-up call codes at most this many images of each size: enough to start what a codec starts
# on first use (worker processes take batches of 256 and more), a quarter of a slow codec's
# call on a 1,000-image batch. A first-call cost that a larger batch still pays lands in one timed
# round, which the median of at least three leaves out.
WARMUP_IMAGES = 256


def measure(fn: Callable[[], object], images: int, rounds: int = 5, warmup: int = 1,
            device: str = "cpu", warm: Callable[[], object] | None = None) -> tuple[Throughput, object]:
    """Time `fn` (which must do the whole user-visible job) and return its last result too: at
    most `rounds` rounds, and no more than MIN_ROUNDS once they took ROUNDS_BUDGET_S (a slow
    codec's rounds vary little relative to their length; a fast one's get every round). The
    `warmup` untimed calls are of `warm` (the same job on part of the batch) where given."""
    sync = _synchronizer(device)
    result = None
    for _ in range(warmup):
        (warm or fn)()
    seconds = []
    for _ in range(max(rounds, 1)):
        if len(seconds) >= MIN_ROUNDS and sum(seconds) >= ROUNDS_BUDGET_S:
            break
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return Throughput(images, tuple(seconds)), result


def _synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    import platform

    return f"{cpu_name()} ({platform.machine()})"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def available_devices() -> list[str]:
    """cpu, plus cuda when PyTorch sees a GPU."""
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
