"""Classical codecs: lossless ones bit-exact on every mnist-5k image, lossy ones within the
quality bounds measured on the mnist-5k test split (see the README's table)."""

import io

import numpy as np
import pytest

from bench.codec import ImageError, PayloadError
from bench.metrics import mse, psnr_from_mse, ssim
from bench.registry import get_codec
from conftest import training

LOSSLESS = ["raw", "png", "webp-lossless", "jpegxl-lossless", "zlib", "lzma"]

# Measured on the 1,000 mnist-5k test images (PSNR of the mean MSE, mean SSIM); the bounds
# leave about 0.5 dB and 0.01 of room below the measurement for library updates.
# measured: jpeg 33.54 dB / 0.9386, jpeg:quality=30 26.76 / 0.8811, webp 39.27 / 0.9806,
# webp:quality=30 33.26 / 0.9386, jpegxl 39.02 / 0.9948.
LOSSY_BOUNDS = {
    "jpeg": (33.0, 0.93),
    "jpeg:quality=30": (26.2, 0.87),
    "webp": (38.7, 0.97),
    "webp:quality=30": (32.7, 0.93),
    "jpegxl": (38.5, 0.985),
}


@pytest.mark.parametrize("spec", LOSSLESS)
def test_lossless_is_bit_exact_on_all_of_mnist_5k(spec, mnist5k):
    images = np.concatenate([mnist5k.train.images, mnist5k.validation.images, mnist5k.test.images])
    codec = get_codec(spec)
    payloads = codec.encode(images)
    assert len(payloads) == 5000
    assert np.array_equal(codec.decode(payloads), images)
    assert payloads.sizes.min() > 0


@pytest.mark.parametrize("spec", LOSSLESS)
def test_lossless_keeps_other_shapes_and_extremes(spec):
    rng = np.random.default_rng(1)
    for images in (rng.integers(0, 256, (3, 17, 40), dtype=np.uint8),
                   np.zeros((2, 28, 28), np.uint8), np.full((2, 28, 28), 255, np.uint8)):
        codec = get_codec(spec)
        if spec == "raw":
            codec.fit(training(images))
        assert np.array_equal(codec.decode(codec.encode(images)), images)


@pytest.mark.parametrize("spec", sorted(LOSSY_BOUNDS))
def test_lossy_stays_within_measured_quality(spec, mnist5k):
    images = mnist5k.test.images
    codec = get_codec(spec)
    payloads = codec.encode(images)
    decoded = codec.decode(payloads)
    assert decoded.shape == images.shape and decoded.dtype == np.uint8
    min_psnr, min_ssim = LOSSY_BOUNDS[spec]
    assert psnr_from_mse(mse(images, decoded).mean()) >= min_psnr
    assert ssim(images, decoded).mean() >= min_ssim
    assert not np.array_equal(decoded, images)  # it really is lossy
    assert payloads.sizes.mean() < 784


def test_jpeg_quality_orders_bytes_and_error(digits):
    low, high = get_codec("jpeg:quality=20"), get_codec("jpeg:quality=90")
    pl, ph = low.encode(digits), high.encode(digits)
    assert pl.sizes.mean() < ph.sizes.mean()
    assert mse(digits, low.decode(pl)).mean() > mse(digits, high.decode(ph)).mean()


def test_jpeg_bytes_identical_to_pillow(digits):
    from PIL import Image

    codec = get_codec("jpeg:quality=60")
    ours = codec.encode(digits[:20])
    for i, image in enumerate(digits[:20]):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=60)
        theirs = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        # Same library (libjpeg-turbo), same settings: the same pixels come back.
        assert np.array_equal(codec.decode([ours[i]])[0], theirs)


def test_optimized_huffman_saves_bytes_without_changing_pixels(digits):
    plain, opt = get_codec("jpeg"), get_codec("jpeg:optimize=1")
    a, b = plain.encode(digits), opt.encode(digits)
    assert b.sizes.mean() < a.sizes.mean() - 100
    assert np.array_equal(plain.decode(a), opt.decode(b))


def test_fixed_overhead_of_an_all_black_image():
    zero = np.zeros((1, 28, 28), np.uint8)
    sizes = {s: len(get_codec(s).encode(zero)[0]) for s in ("raw", "jpeg", "png", "zlib")}
    assert sizes["raw"] == 784
    assert 300 < sizes["jpeg"] < 400  # tables and headers dominate a 28x28 JPEG
    assert sizes["zlib"] < 40


@pytest.mark.parametrize("spec", ["jpeg", "png", "webp", "jpegxl", "zlib", "lzma", "raw"])
def test_garbage_payload_is_a_clear_codec_error(spec):
    codec = get_codec(spec)
    with pytest.raises(PayloadError, match="payload 0"):
        codec.decode([b"\x00\x01not an image"])


def test_mixed_sizes_in_one_batch_are_refused():
    codec = get_codec("png")
    a = codec.encode(np.zeros((1, 28, 28), np.uint8))[0]
    b = codec.encode(np.zeros((1, 10, 10), np.uint8))[0]
    with pytest.raises(PayloadError, match="a batch shares one size"):
        codec.decode([a, b])


def test_bad_images_fail_before_any_work():
    with pytest.raises(ImageError, match="uint8"):
        get_codec("jpeg").encode(np.zeros((2, 28, 28), np.float64))
