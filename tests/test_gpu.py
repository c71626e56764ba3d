"""GPU checks: skipped cleanly without CUDA (CI has none); scripts/gpu_check.sh runs them."""

import numpy as np
import pytest
import torch

from bench.metrics import mse, psnr_from_mse
from bench.registry import get_codec

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def ae_pair(mnist5k, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gpu-cache")
    cpu = get_codec("ae95:epochs=2").fit(mnist5k.train.images, cache, progress=False)
    gpu = get_codec("ae95:epochs=2", device="cuda").fit(mnist5k.train.images, cache,
                                                        progress=False)
    return cpu, gpu


def test_gpu_loads_the_cpu_trained_model_and_decodes_alike(ae_pair, mnist5k):
    cpu, gpu = ae_pair
    assert not gpu.trained_now
    x = mnist5k.test.images
    p_cpu, p_gpu = cpu.decode(cpu.encode(x)), gpu.decode(gpu.encode(x))
    delta = psnr_from_mse(mse(x, p_gpu).mean()) - psnr_from_mse(mse(x, p_cpu).mean())
    assert abs(delta) <= 0.05 + 1e-9
    assert gpu.bf16_psnr_delta is not None


def test_gpu_batch_has_no_per_image_python_loop(ae_pair, mnist5k):
    _, gpu = ae_pair
    big = np.concatenate([mnist5k.test.images] * 131)  # 131,000 images in one call
    payloads = gpu.encode(big)
    assert payloads.as_array().shape == (len(big), 39)
    assert gpu.decode(payloads).shape == big.shape


def test_nvjpeg_round_trip_quality(mnist5k):
    codec = get_codec("nvjpeg", device="cuda")
    x = mnist5k.test.images
    payloads = codec.encode(x)
    decoded = codec.decode(payloads)
    assert decoded.shape == x.shape and decoded.dtype == np.uint8
    assert psnr_from_mse(mse(x, decoded).mean()) > 30
    cpu_jpeg = get_codec("jpeg").decode(payloads)  # standard JPEG files: libjpeg reads them too
    assert np.abs(cpu_jpeg.astype(int) - decoded.astype(int)).max() <= 2


def test_nvjpeg_refuses_garbage():
    from bench.codec import PayloadError

    with pytest.raises(PayloadError):
        get_codec("nvjpeg", device="cuda").decode([b"\xff\xd8 not a jpeg"])
