"""JPEG on the GPU through torchvision.io (nvJPEG), batched.

nvJPEG's encoder takes 3-channel images only: each gray image is sent as R=G=B, so the payload
is a standard colour JPEG. On 28x28 digits its chroma planes cost about 300 B per image (863 B
against libjpeg's 562 B for a grayscale JPEG at the same quality, measured on the mnist-5k test
split); decoding asks nvJPEG for the grayscale (luma) plane.

With device="cpu" the same code runs through torchvision's libjpeg. The registry offers nvjpeg on
CUDA only; the CPU form lets the tests check everything here except nvJPEG itself on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bench.codec import (
    Codec,
    CodecError,
    PayloadError,
    Payloads,
    check_images,
    payloads_to_decode,
    smallest_file_bytes,
)
from bench.learned import host_tensor


class NvJpeg(Codec):

    def __init__(self, quality: int = 75, device: str = "cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CodecError("nvjpeg needs a CUDA device; PyTorch sees none here")
        self.name = "nvjpeg"
        self.quality, self.device = quality, device
        import torchvision

        backend = "nvJPEG" if device.startswith("cuda") else "libjpeg"
        self.library = f"torchvision {torchvision.__version__} {backend}"

    def header_bytes(self, shape: tuple[int, int]) -> int:
        return smallest_file_bytes(self, shape)

    def encode(self, images: np.ndarray) -> Payloads:
        from torchvision.io import encode_jpeg

        images = check_images(images)
        gpu = torch.from_numpy(images).to(self.device).unsqueeze(1).expand(-1, 3, -1, -1)
        encoded = encode_jpeg(list(gpu.contiguous()), quality=self.quality)
        sizes = [e.numel() for e in encoded]
        return Payloads(torch.cat(encoded).cpu().numpy(), np.concatenate([[0], np.cumsum(sizes)]))

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        from torchvision.io import ImageReadMode, decode_jpeg

        payloads = payloads_to_decode(payloads, self.name)
        chunks = torch.split(host_tensor(payloads.buffer), payloads.sizes.tolist())
        try:
            decoded = decode_jpeg(list(chunks), mode=ImageReadMode.GRAY, device=self.device)
        except RuntimeError as exc:
            raise PayloadError(f"{self.name}: a payload is not a valid JPEG stream: {exc}") from None
        shapes = {tuple(d.shape) for d in decoded}
        if len(shapes) != 1:
            raise PayloadError(f"{self.name}: payloads decode to different sizes {sorted(shapes)}")
        return torch.stack(decoded).squeeze(1).cpu().numpy()
