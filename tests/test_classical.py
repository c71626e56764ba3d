"""Classical codecs: lossless ones bit-exact on every mnist-5k image, lossy ones within the
quality bounds measured on the mnist-5k test split (see the README's table); shared headers that
decode to exactly the full files' pixels; container checks before any library call."""

import io

import imagecodecs
import numpy as np
import pytest

from bench.codec import CodecError, ImageError, ParameterError, PayloadError
from bench.metrics import mse, psnr_from_mse, ssim
from bench.registry import get_codec
from bench_codecs import avif_container, classical, compressors, containers
from bench_codecs.image_codec import ImageCodec
from conftest import training

LOSSLESS = ["raw", "png", "webp-lossless", "jpegxl-lossless", "avif-lossless",
            "jpeg2000-lossless", "jpegls", "zlib", "lzma", "zstd", "brotli",
            "png:shared_header=1", "jpegls:shared_header=1"]
# Every classical codec but raw, whose payloads are any H*W bytes.
FORMATS = ["jpeg", "png", "webp", "webp-lossless", "jpegxl", "jpegxl-lossless", "avif",
           "avif-lossless", "jpeg2000", "jpeg2000-lossless", "jpegls", "jpegls-near", "zlib",
           "lzma", "zstd", "brotli"]
SHAREABLE = ["jpeg", "jpeg:optimize=1", "png", "avif", "avif-lossless", "jpeg2000",
             "jpeg2000-lossless", "jpegls", "jpegls-near"]

# Measured on the 1,000 mnist-5k test images (PSNR of the mean MSE, mean SSIM); the bounds
# leave about 0.5 dB and 0.01 of room below the measurement for library updates.
# measured: jpeg 33.54 dB / 0.9386, jpeg:quality=30 26.76 / 0.8811, webp 39.27 / 0.9806,
# webp:quality=30 33.26 / 0.9386, jpegxl 39.02 / 0.9948, avif 43.55 / 0.9987,
# avif:quality=0 31.31 / 0.9647, jpeg2000 40.72 / 0.9300, jpeg2000:psnr=25:resolutions=1
# 33.62 / 0.9957, jpegls-near 45.93 / 0.9879, jpegls-near:near=32 31.96 / 0.9852.
LOSSY_BOUNDS = {
    "jpeg": (33.0, 0.93),
    "jpeg:quality=30": (26.2, 0.87),
    "webp": (38.7, 0.97),
    "webp:quality=30": (32.7, 0.93),
    "jpegxl": (38.5, 0.985),
    "avif": (43.0, 0.99),
    "avif:quality=0": (30.8, 0.955),
    "jpeg2000": (40.2, 0.92),
    "jpeg2000:psnr=25:resolutions=1": (33.1, 0.985),
    "jpegls-near": (45.4, 0.978),
    "jpegls-near:near=32": (31.4, 0.975),
}


def fitted(spec, images):
    return get_codec(spec).fit(training(images))


@pytest.mark.parametrize("spec", LOSSLESS)
def test_lossless_is_bit_exact_on_all_of_mnist_5k(spec, mnist5k):
    images = np.concatenate([mnist5k.train.images, mnist5k.validation.images, mnist5k.test.images])
    codec = fitted(spec, mnist5k.train.images)
    payloads = codec.encode(images)
    assert len(payloads) == 5000
    assert np.array_equal(codec.decode(payloads), images)
    assert payloads.sizes.min() > 0


@pytest.mark.parametrize("spec", LOSSLESS)
def test_lossless_keeps_other_shapes_and_extremes(spec, digits):
    rng = np.random.default_rng(1)
    for images in (rng.integers(0, 256, (3, 17, 40), dtype=np.uint8),
                   np.zeros((2, 28, 28), np.uint8), np.full((2, 28, 28), 255, np.uint8)):
        codec = fitted(spec, images if spec == "raw" else digits)
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


@pytest.mark.parametrize("near", [1, 4, 32, 127])
def test_near_lossless_jpegls_keeps_every_pixel_within_near(near, digits):
    codec = get_codec(f"jpegls-near:near={near}")
    error = np.abs(codec.decode(codec.encode(digits)).astype(int) - digits)
    assert 0 < error.max() <= near


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


def test_dropped_metadata_changes_no_pixel(digits):
    # JPEG-LS without CharLS's SPIFF header, JPEG 2000 without OpenJPEG's comment: both
    # libraries decode the files they wrote to exactly the same pixels.
    for spec, library_file, marker in (
        ("jpegls", lambda im: imagecodecs.jpegls_encode(im), b"\xff\xe8"),
        ("jpegls-near:near=8", lambda im: imagecodecs.jpegls_encode(im, level=8), b"\xff\xe8"),
        ("jpeg2000", lambda im: imagecodecs.jpeg2k_encode(im, level=40, codecformat="J2K"),
         b"\xff\x64"),
    ):
        codec = get_codec(spec)
        ours = codec.encode(digits[:20])
        for i, image in enumerate(digits[:20]):
            theirs = library_file(image)
            at = theirs.index(marker)
            segments = 2 + int.from_bytes(theirs[at + 2 : at + 4], "big")
            if marker == b"\xff\xe8":  # SPIFF: its header and its end-of-directory entry
                segments += 2 + int.from_bytes(theirs[at + segments + 2 : at + segments + 4], "big")
            assert len(ours[i]) == len(theirs) - segments
            assert np.array_equal(codec.decode([ours[i]])[0], codec._decode_one(theirs))


def test_fixed_overhead_of_an_all_black_image():
    zero = np.zeros((1, 28, 28), np.uint8)
    sizes = {s: len(get_codec(s).encode(zero)[0]) for s in ("raw", "jpeg", "png", "zlib")}
    assert sizes["raw"] == 784
    assert 300 < sizes["jpeg"] < 400  # tables and headers dominate a 28x28 JPEG
    assert sizes["zlib"] < 40


def test_jpeg_header_bytes_are_its_marker_segments(digits):
    # SOI 2 + APP0 (JFIF) 18 + DQT 69 + SOF0 13 + DHT 33 + DHT 183 + SOS 10 + EOI 2: everything
    # but the entropy-coded scan, the same for every 28x28 image at fixed tables.
    codec = get_codec("jpeg")
    assert codec.header_bytes((28, 28)) == 330
    for payload in codec.encode(digits[:20]):
        assert len(payload) - containers.jpeg_layout(payload).content == 330


@pytest.mark.parametrize("spec", FORMATS)
def test_header_bytes_are_a_part_of_the_smallest_payload(spec, digits):
    codec = fitted(spec, digits)
    header = codec.header_bytes((28, 28))
    assert 0 < header <= codec.encode(np.zeros((1, 28, 28), np.uint8)).sizes[0]
    assert header < codec.encode(digits).sizes.mean()


# --- shared headers --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SHAREABLE)
def test_shared_header_decodes_exactly_like_the_full_files(spec, mnist5k):
    full = get_codec(spec)
    shared = fitted(f"{spec}:shared_header=1", mnist5k.train.images)
    images = mnist5k.test.images[:300]
    whole, cut = full.encode(images), shared.encode(images)
    assert np.array_equal(shared.decode(cut), full.decode(whole))
    # The decoder rebuilds the very files the library wrote; each payload is its file less
    # the side information.
    assert [shared._file(p) for p in cut] == list(whole)
    assert shared.side_info_bytes > 0
    assert np.array_equal(whole.sizes - cut.sizes, np.full(len(images), shared.side_info_bytes))


def test_shared_jpeg_header_holds_tables_and_leaves_the_scan(mnist5k):
    codec = fitted("jpeg:shared_header=1", mnist5k.train.images)
    assert codec.side_info_bytes == 328  # every marker segment up to the scan, EOI stays
    assert codec.header_bytes((28, 28)) == 2
    # Optimized Huffman tables differ per image: only the segments before them are shared.
    opt = fitted("jpeg:optimize=1:shared_header=1", mnist5k.train.images)
    assert opt.side_info_bytes == 2 + 18 + 69 + 13
    assert all(p.startswith(b"\xff\xc4") for p in opt.encode(mnist5k.test.images[:50]))


@pytest.mark.parametrize("spec", ["jpeg", "png", "avif", "jpeg2000", "jpegls"])
def test_a_file_that_does_not_share_the_header_is_sent_whole(spec, mnist5k):
    codec = fitted(f"{spec}:shared_header=1", mnist5k.train.images)  # 28x28 headers
    images = np.random.default_rng(2).integers(0, 256, (3, 20, 33), dtype=np.uint8)
    payloads = codec.encode(images)
    assert list(payloads) == list(get_codec(spec).encode(images))
    decoded = codec.decode(payloads)
    if codec.lossless:
        assert np.array_equal(decoded, images)
    assert np.array_equal(decoded, get_codec(spec).decode(payloads))


def test_shared_header_comes_from_the_data_given_to_fit(mnist5k):
    codec = fitted("jpeg:shared_header=1", mnist5k.train.images[:, :20, :20])
    payloads = codec.encode(mnist5k.test.images[:5])  # 28x28: not the fitted size
    assert all(p.startswith(b"\xff\xd8") for p in payloads)


def test_shared_header_needs_fit():
    codec = get_codec("png:shared_header=1")
    with pytest.raises(CodecError, match="call fit"):
        codec.encode(np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(PayloadError, match="shared header"):
        codec.decode([b"\x00\x00\x00\x10IDAT"])
    whole = get_codec("png").encode(np.zeros((1, 28, 28), np.uint8))
    assert codec.decode(whole).shape == (1, 28, 28)  # whole files need no shared header


# --- hostile payloads: trailing bytes, oversized headers ---------------------------------------


@pytest.mark.parametrize("spec", [*FORMATS, "jpeg:shared_header=1", "png:shared_header=1",
                                  "avif:shared_header=1", "jpeg2000:shared_header=1"])
def test_bytes_after_the_stream_are_refused(spec, digits):
    codec = fitted(spec, digits)
    payload = codec.encode(digits[:1])[0]
    for junk in (b"\x00", b"junk", b"\xff\xd9", bytes(40)):
        if spec.startswith("jpegxl"):
            # A JPEG XL codestream's end is known only to a full parse of its frames; libjxl
            # stops where the image is complete. Documented in the README (Robustness).
            assert np.array_equal(codec.decode([payload + junk]), codec.decode([payload]))
            continue
        with pytest.raises(PayloadError, match="after the end|AV1 OBU|fails its CRC"):
            codec.decode([payload + junk])


def _patched(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def _oversized(spec: str, image: np.ndarray) -> bytes:
    """A valid file whose header claims a size of about 60000 pixels a side."""
    data = get_codec(spec).encode(image[None])[0]
    big = (60000).to_bytes(2, "big")
    if spec == "jpeg":
        return _patched(data, data.index(b"\xff\xc0") + 5, big + big)
    if spec == "jpegls":
        return _patched(data, data.index(b"\xff\xf7") + 5, big + big)
    if spec == "png":
        data = _patched(data, 16, bytes(2) + big + bytes(2) + big)
        return _patched(data, 29, __import__("zlib").crc32(data[12:29]).to_bytes(4, "big"))
    if spec == "jpeg2000":
        return _patched(data, 8, bytes(2) + big + bytes(2) + big)
    if spec == "avif":
        return _patched(data, data.index(b"ispe") + 8, bytes(2) + big + bytes(2) + big)
    if spec == "webp":
        return _patched(data, 26, (16000).to_bytes(2, "little") * 2)
    if spec == "jpegxl":  # SizeHeader: not small, ysize 30-bit selector, ratio 1 (square)
        bits = 0 | (3 << 1) | ((59999) << 3) | (1 << 33)
        return b"\xff\x0a" + bits.to_bytes(8, "little") + data[10:]
    if spec in ("zlib", "zstd", "brotli"):
        return (60000).to_bytes(2, "little") * 2 + data[4:]
    raise AssertionError(spec)


@pytest.mark.parametrize("spec", ["jpeg", "jpegls", "png", "jpeg2000", "avif", "webp", "jpegxl",
                                  "zlib", "zstd", "brotli"])
def test_oversized_headers_are_refused_before_the_library_runs(spec, digits, monkeypatch):
    codec = get_codec(spec)
    data = _oversized(spec, digits[0])

    def refuse(*args, **kwargs):
        raise AssertionError("the library was called")

    monkeypatch.setattr(codec, "_decode_one" if spec not in ("zlib", "zstd", "brotli")
                        else "_decompress", refuse)
    with pytest.raises(PayloadError, match="60000|outside 1..1024"):
        codec.decode([data])


def test_av1_sequence_header_is_checked_whatever_ispe_says(digits):
    data = get_codec("avif").encode(digits[:1])[0]
    assert avif_container.avif_layout(data).height == 28
    # A reduced still-picture sequence header with 16-bit frame sizes of 65536.
    bits = "000" "1" "1" "00000" "1111" "1111" + "1" * 16 + "1" * 16
    bits += "0" * (-len(bits) % 8)
    obu = int(bits, 2).to_bytes(len(bits) // 8, "big")
    stream = bytes([0x0A, len(obu)]) + obu
    with pytest.raises(PayloadError, match="65536x65536"):
        avif_container._check_av1(stream, 0, len(stream))


def _size_bits(spec: str, data: bytes) -> list[tuple[int, int]]:
    """(byte, bit) of every bit of the image size that the file's header declares."""
    if spec.startswith("jpeg2000"):  # SIZ: Xsiz, Ysiz
        return [(at, bit) for at in range(8, 16) for bit in range(8)]
    if spec.startswith("avif"):  # ispe: width, height
        at = data.index(b"ispe") + 8
        return [(i, bit) for i in range(at, at + 8) for bit in range(8)]
    raise AssertionError(spec)


@pytest.mark.parametrize("spec", ["jpeg2000", "jpeg2000-lossless", "avif", "avif-lossless"])
def test_a_bit_flip_in_the_declared_size_is_refused(spec, digits):
    # Both formats state the size twice, image and tile, ispe and AV1 sequence header; without
    # comparing them, a flip in either is a valid file of another size that the library decodes.
    codec = get_codec(spec)
    data = codec.encode(digits[:1])[0]
    for at, bit in _size_bits(spec, data):
        flipped = _patched(data, at, bytes([data[at] ^ 1 << bit]))
        with pytest.raises(PayloadError, match="payload 0 .*(not one tile|ispe says|outside 1..1024)"):
            codec.decode([flipped])


def test_a_bit_flip_in_a_jpeg_size_is_a_valid_file_of_that_size(digits):
    # The limit of what a decoder can tell: JPEG states the size once, with no checksum.
    data = get_codec("jpeg").encode(digits[:1])[0]
    at = data.index(b"\xff\xc0") + 6  # the low byte of the height
    flipped = _patched(data, at, bytes([data[at] ^ 16]))
    assert containers.jpeg_layout(flipped).height == 12
    assert get_codec("jpeg").decode([flipped]).shape == (1, 12, 28)


@pytest.mark.parametrize("spec", [*FORMATS, "jpeg:shared_header=1", "png:shared_header=1"])
@pytest.mark.parametrize("change", ["crop", "rgb", "uint16"])
def test_an_image_other_than_the_declared_one_is_refused(spec, change, digits, monkeypatch):
    codec = fitted(spec, digits)
    payloads = codec.encode(digits[:2])
    library = codec._decode_one

    def wrong(data):
        image = library(data)
        if change == "crop":
            return image[:-1]
        return np.dstack([image] * 3) if change == "rgb" else image.astype(np.uint16)

    monkeypatch.setattr(codec, "_decode_one", wrong)
    got = {"crop": "27x28", "rgb": r"a uint8 array of shape \(28, 28, 3\)",
           "uint16": r"a uint16 array of shape \(28, 28\)"}[change]
    with pytest.raises(PayloadError, match=f"payload 0 .*decodes to {got}, not the 8-bit grayscale "
                                           "28x28 image its header declares"):
        codec.decode(payloads)


def _zstd_without_checksum(payload: bytes) -> bytes:
    return payload[:8] + bytes([payload[8] & ~4]) + payload[9:-4]


def test_zstd_payloads_carry_the_content_checksum(digits):
    codec = get_codec("zstd")
    for payload in codec.encode(digits[:20]):
        assert payload[8] & 4  # the frame header descriptor's checksum flag
    # Every length class of the hash (stripes of 32 bytes, then 8, 4 and 1): libzstd checks it.
    rng = np.random.default_rng(0)
    for n in range(80):
        image = rng.integers(0, 4, (1, 1, n + 1), dtype=np.uint8)
        assert np.array_equal(codec.decode(codec.encode(image)), image)


def test_zstd_refuses_a_bit_flip_in_its_content_and_a_frame_without_checksum(digits):
    codec = get_codec("zstd")
    payload = codec.encode(digits[:1])[0]
    silent, refusals = 0, []
    for at in range(9, len(payload) - 4):  # after the frame header descriptor, before the checksum
        flipped = _patched(payload, at, bytes([payload[at] ^ 0x10]))
        try:  # what the same flip does to the frame without its checksum
            pixels = imagecodecs.zstd_decode(_zstd_without_checksum(flipped)[4:], out=785)
            silent += len(pixels) == 784 and pixels != digits[0].tobytes()
        except Exception:
            pass
        try:
            decoded = codec.decode([flipped])
        except PayloadError as exc:
            refusals.append(str(exc))
            continue
        assert np.array_equal(decoded, digits[:1])  # a bit that the decoder never reads
    assert silent > 0 and sum("checksum" in m for m in refusals) >= silent
    with pytest.raises(PayloadError, match="payload 0 .*no content checksum"):
        codec.decode([_zstd_without_checksum(payload)])


def test_zstd_header_bytes_count_the_checksum():
    constant = [np.full(784, v, np.uint8).tobytes() for v in (0, 128, 255)]
    frames = min(len(imagecodecs.zstd_encode(c, level=19)) for c in constant)
    assert get_codec("zstd").header_bytes((28, 28)) == 4 + frames + 4  # size header, frame, checksum


@pytest.mark.parametrize("spec", [*FORMATS, "raw"])
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


@pytest.mark.parametrize("spec, message", [
    ("jpegls-near:near=300", "near must be an integer from 1 to 127"),
    ("jpegls-near:near=0", "near must be an integer from 1 to 127"),
    ("avif:quality=-1", "quality must be an integer from 0 to 99"),
    ("avif:speed=11", "speed must be an integer from 0 to 10"),
    ("jpeg2000:psnr=0", "psnr must be an integer from 1 to 100"),
    ("zstd:level=23", "level must be an integer from 1 to 22"),
    ("brotli:level=12", "level must be an integer from 0 to 11"),
    ("jpeg:shared_header=yes", "shared_header must be 0 or 1"),
    ("jpegls:near=3", "unknown parameter 'near'"),
])
def test_bad_parameters_are_one_clear_line(spec, message):
    with pytest.raises(ParameterError, match=message):
        get_codec(spec)


def test_every_classical_class_has_a_registry_entry():
    from bench_codecs import BUILTINS

    factories = {info.factory.partition(":")[2] for info in BUILTINS if isinstance(info.factory, str)}
    for module in (classical, compressors):
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, ImageCodec) and not name.startswith("_"):
                assert name in factories or name == "ImageCodec", name


def test_default_sweeps_run_tuned_settings_over_many_points():
    from bench.registry import default_registry

    reg = default_registry()
    tuned = {"jpeg": ("optimize", True), "webp": ("method", 6), "jpegxl": ("effort", 9),
             "avif": ("speed", 4), "jpeg2000": ("resolutions", 1)}
    for name in ("jpeg", "webp", "jpegxl", "avif", "jpeg2000", "jpegls-near"):
        points = reg.sweep(f"{name}:{reg.codecs[name].sweep}")
        assert len(points) >= 7, name
        if name in tuned:
            key, value = tuned[name]
            assert all(dict(p.values)[key] == value for p in points), name
