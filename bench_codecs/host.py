"""numpy arrays as host tensors, for the codecs that run on PyTorch."""

from __future__ import annotations

import numpy as np
import torch


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """Shares memory when it can; a read-only array (payloads from bytes) is copied once."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())
