"""The AE on CUDA: skipped cleanly without a device (CI has none); scripts/gpu_check.sh runs these
and the CUDA cases of test_nvjpeg.py."""

import numpy as np
import pytest
import torch

from bench.metrics import mse, psnr_from_mse
from bench.registry import get_codec
from conftest import training

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def ae_pair(mnist5k, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gpu-cache")
    data = training(mnist5k.train.images, cache, mnist5k.validation.images)
    cpu = get_codec("ae95:epochs=2").fit(data)
    gpu = get_codec("ae95:epochs=2", device="cuda").fit(data)  # trained on data.train_device
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

