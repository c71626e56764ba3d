"""The nvjpeg codec: on CUDA through nvJPEG (skipped without a device), and the same code on the
CPU through torchvision's libjpeg, so that everything but nvJPEG itself is checked everywhere."""

import imagecodecs
import numpy as np
import pytest
import torch

from bench.codec import CodecError, PayloadError
from bench.metrics import mse, psnr_from_mse
from bench_codecs.nvjpeg import NvJpeg

DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.fixture(params=DEVICES)
def codec(request):
    return NvJpeg(device=request.param)


def test_round_trip_quality_matches_libjpeg_at_the_same_quality(codec, mnist5k):
    x = mnist5k.test.images
    payloads = codec.encode(x)
    decoded = codec.decode(payloads)
    assert decoded.shape == x.shape and decoded.dtype == np.uint8
    # libjpeg's grayscale JPEG at quality 75 measures 33.54 dB on these images.
    assert abs(psnr_from_mse(mse(x, decoded).mean()) - 33.54) < 0.5


def test_payloads_are_standard_colour_jpegs_with_grey_pixels(codec, mnist5k):
    x = mnist5k.test.images[:200]
    payloads = codec.encode(x)
    rgb = np.stack([imagecodecs.jpeg8_decode(p) for p in payloads])  # an independent decoder
    assert rgb.shape == (*x.shape, 3)
    assert np.ptp(rgb.astype(int), axis=3).max() <= 1  # R = G = B: no colour was invented
    assert np.abs(rgb[..., 0].astype(int) - codec.decode(payloads).astype(int)).max() <= 2


def test_garbage_is_a_payload_error(codec, mnist5k):
    good = codec.encode(mnist5k.test.images[:2])
    with pytest.raises(PayloadError, match="nvjpeg"):
        codec.decode([b"\xff\xd8 not a jpeg"])
    with pytest.raises(PayloadError, match="nvjpeg"):
        codec.decode([good[0][: len(good[0]) // 2]])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_a_device_is_refused_by_name():
    with pytest.raises(CodecError, match="nvjpeg needs a CUDA device"):
        NvJpeg(device="cuda")
