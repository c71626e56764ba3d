"""The AE and the factorized codec on CUDA: skipped cleanly without a device (CI has none);
scripts/gpu_check.sh runs these and the CUDA cases of test_nvjpeg.py."""

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



@pytest.fixture(scope="module")
def factorized_pair(mnist5k, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gpu-factorized-cache")
    data = training(mnist5k.train.images[:600], cache)
    cpu = get_codec("factorized:epochs=1").fit(data)
    gpu = get_codec("factorized:epochs=1", device="cuda").fit(data)  # the CPU-trained model
    return cpu, gpu


def test_factorized_payloads_are_exact_across_devices(factorized_pair, mnist5k):
    cpu, gpu = factorized_pair
    assert not gpu.trained_now
    x = mnist5k.test.images
    payloads = gpu.encode(x)
    # The latents travel exactly whichever device coded them; pixels may differ by a rounding.
    assert np.array_equal(cpu.decode_latents(payloads)[0], gpu.latents(x))
    diff = np.abs(gpu.decode(payloads).astype(int) - cpu.decode(payloads))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # At another size than the trained one too (per-channel tables, padding, cropping).
    other = np.zeros((200, 40, 24), np.uint8)
    other[:, 6:34, :] = x[:200, :, 2:26]
    payloads = gpu.encode(other)
    assert np.array_equal(cpu.decode_latents(payloads)[0], gpu.latents(other))
    diff = np.abs(gpu.decode(payloads).astype(int) - cpu.decode(payloads))
    assert gpu.decode(payloads).shape == other.shape and diff.max() <= 1


def test_factorized_pixels_on_cuda_do_not_depend_on_the_batch(factorized_pair, mnist5k):
    _, gpu = factorized_pair
    payloads = list(gpu.encode(mnist5k.test.images))
    whole = gpu.decode(payloads)
    alone = np.concatenate([gpu.decode([p]) for p in payloads[:20]])
    split = np.concatenate([gpu.decode(payloads[s : s + 333]) for s in range(0, len(payloads), 333)])
    assert np.array_equal(alone, whole[:20]) and np.array_equal(split, whole)


def test_factorized_above_32x32_trains_on_cuda_crops(mnist5k, tmp_path):
    images = np.tile(mnist5k.train.images[:200], (1, 4, 4))[:, :96, :96]
    data = training(images, tmp_path, train_device="cuda")
    codec = get_codec("factorized:epochs=1", device="cuda").fit(data)
    assert codec.trained_now and not codec.model.per_latent
    x = np.ascontiguousarray(images[:20])
    assert np.array_equal(codec.decode_latents(codec.encode(x))[0], codec.latents(x))


def test_factorized_trains_on_cuda(mnist5k, tmp_path):
    data = training(mnist5k.train.images[:600], tmp_path, train_device="cuda")
    codec = get_codec("factorized:epochs=1", device="cuda").fit(data)
    assert codec.trained_now and int(codec.model.table_size.min()) >= 2
    x = mnist5k.test.images[:200]
    assert np.array_equal(codec.decode_latents(codec.encode(x))[0], codec.latents(x))
