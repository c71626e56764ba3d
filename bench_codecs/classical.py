"""The classical image formats, through imagecodecs: JPEG (libjpeg-turbo), JPEG-LS (CharLS),
JPEG 2000 (OpenJPEG), AVIF (libavif/libaom), PNG (libpng), WebP (libwebp), JPEG XL (libjxl), and
raw pixels."""

from __future__ import annotations

from collections.abc import Sequence

import imagecodecs
import numpy as np

from bench.codec import CodecError, Payloads, check_images, fixed_rate_rows, payloads_to_decode
from bench_codecs.avif_container import avif_layout
from bench_codecs.containers import (
    J2K_MAGIC,
    PNG_MAGIC,
    drop_j2k_comments,
    drop_segments,
    j2k_layout,
    jpeg_layout,
    jxl_layout,
    png_layout,
    webp_layout,
)
from bench_codecs.image_codec import ImageCodec


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2)


class Raw(ImageCodec):
    """The uncompressed reference: H*W bytes, no header.

    The size is side information: taken from `fit` (or the first encode); without it, payloads
    are decoded as square images. Since no payload says its size, one codec codes one size.
    """

    format = "raw"

    def header_bytes(self, shape: tuple[int, int]) -> int:
        return 0

    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None

    def fit(self, data) -> Raw:
        self.shape = check_images(data.train).shape[1:]
        return self

    def encode(self, images: np.ndarray) -> Payloads:
        images = check_images(images)
        if self.shape is not None and images.shape[1:] != self.shape:
            raise CodecError(f"{self.name} sends pixels only, so it codes the one size it was fitted "
                             f"on ({self.shape[0]}x{self.shape[1]}), not {images.shape[1]}x"
                             f"{images.shape[2]}; png or zlib code each image at its own size")
        self.shape = images.shape[1:]
        return Payloads.from_array(images.reshape(len(images), -1))

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        payloads = payloads_to_decode(payloads, self.name)
        shape = self.shape
        if shape is None:
            side = int(round(np.sqrt(payloads.sizes[0])))
            shape = (side, side)
        rows = fixed_rate_rows(payloads, shape[0] * shape[1], f"{self.name} ({shape[0]}x{shape[1]})")
        return rows.reshape(len(rows), *shape).copy()


class Jpeg(ImageCodec):
    format = "JPEG"
    library_id = "jpeg8"
    magic = b"\xff\xd8"

    def __init__(self, quality: int = 75, optimize: bool = False, shared_header: bool = False):
        self.quality, self.optimize, self.shared_header = quality, optimize, shared_header

    def _encode_one(self, image):
        return imagecodecs.jpeg8_encode(image, level=self.quality, optimize=self.optimize)

    def _layout(self, data):
        return jpeg_layout(data)

    def _decode_one(self, data):
        return imagecodecs.jpeg8_decode(data)


class JpegLS(ImageCodec):
    """CharLS. Its SPIFF header (two APP8 segments, 44 bytes) is optional metadata that no
    JPEG-LS decoder needs, so it is dropped (tested: the same pixels)."""

    format = "JPEG-LS"
    library_id = "jpegls"
    magic = b"\xff\xd8"

    def __init__(self, near: int = 0, shared_header: bool = False):
        self.near, self.shared_header = near, shared_header

    def _encode_one(self, image):
        return drop_segments(imagecodecs.jpegls_encode(image, level=self.near), {0xE8})

    def _layout(self, data):
        return jpeg_layout(data, ls=True)

    def _decode_one(self, data):
        return imagecodecs.jpegls_decode(data)


class JpegLSNear(JpegLS):
    """Near-lossless JPEG-LS: every pixel within `near` of the original."""


    def __init__(self, near: int = 4, shared_header: bool = False):
        super().__init__(near, shared_header)


class Jpeg2000(ImageCodec):
    """OpenJPEG, raw J2K codestream (no JP2 boxes). Its comment segment ("Created by OpenJPEG
    version ...", 39 bytes with 2.5.4) carries no image data and is dropped."""

    format = "JPEG 2000"
    library_id = "jpeg2k"
    magic = J2K_MAGIC

    def __init__(self, psnr: int = 40, resolutions: int = 6, shared_header: bool = False):
        self.psnr, self.resolutions, self.shared_header = psnr, resolutions, shared_header

    def _encode_one(self, image):
        return drop_j2k_comments(imagecodecs.jpeg2k_encode(
            image, level=self.psnr, codecformat="J2K", resolutions=self.resolutions))

    def _layout(self, data):
        return j2k_layout(data)

    def _decode_one(self, data):
        return imagecodecs.jpeg2k_decode(data, numthreads=1)


class Jpeg2000Lossless(Jpeg2000):

    def __init__(self, resolutions: int = 6, shared_header: bool = False):
        super().__init__(0, resolutions, shared_header)

    def _encode_one(self, image):
        return drop_j2k_comments(imagecodecs.jpeg2k_encode(
            image, codecformat="J2K", reversible=True, resolutions=self.resolutions))


class Avif(ImageCodec):
    """libavif (AV1 by libaom, the only AV1 encoder in imagecodecs' build). Gray images go in as
    R=G=B and libavif keeps the luma plane only (YUV 4:0:0, a monochrome AV1 stream): imagecodecs
    codes a 2-D array only as monochrome lossless."""

    format = "AVIF"
    library_id = "avif"
    magic, magic_at = b"ftyp", 4

    def __init__(self, quality: int = 60, speed: int = 6, shared_header: bool = False):
        self.quality, self.speed, self.shared_header = quality, speed, shared_header

    def _encode_one(self, image):
        return imagecodecs.avif_encode(_rgb(image), level=self.quality, speed=self.speed,
                                       pixelformat="yuv400", numthreads=1)

    def _layout(self, data):
        return avif_layout(data)

    def _decode_one(self, data):
        return imagecodecs.avif_decode(data, numthreads=1)


class AvifLossless(Avif):

    def __init__(self, speed: int = 6, shared_header: bool = False):
        super().__init__(100, speed, shared_header)

    def _encode_one(self, image):
        return imagecodecs.avif_encode(image, level=100, speed=self.speed, numthreads=1)


class Png(ImageCodec):
    format = "PNG"
    library_id = "png"
    magic = PNG_MAGIC

    def __init__(self, level: int = 9, shared_header: bool = False):
        self.level, self.shared_header = level, shared_header

    def _encode_one(self, image):
        return imagecodecs.png_encode(image, level=self.level)

    def _layout(self, data):
        return png_layout(data)

    def _decode_one(self, data):
        return imagecodecs.png_decode(data)


class WebP(ImageCodec):
    """libwebp has no grayscale mode: images travel as R=G=B, decoding averages the channels."""

    format = "WebP"
    library_id = "webp"

    def __init__(self, quality: int = 75, method: int = 4, lossless: bool = False):
        self.quality, self.method, self.lossless_mode = quality, method, lossless

    def _encode_one(self, image):
        return imagecodecs.webp_encode(_rgb(image), level=self.quality, method=self.method,
                                       lossless=self.lossless_mode)

    def _layout(self, data):
        return webp_layout(data)

    def _decode_one(self, data):
        rgb = imagecodecs.webp_decode(data)
        if rgb.ndim != 3:
            return rgb
        if self.lossless_mode:
            return np.ascontiguousarray(rgb[:, :, 0])
        return ((rgb[:, :, :3].astype(np.uint16).sum(axis=2) + 1) // 3).astype(np.uint8)


class WebPLossless(WebP):

    def __init__(self, method: int = 4):
        super().__init__(quality=100, method=method, lossless=True)


class JpegXL(ImageCodec):
    format = "JPEG XL"
    library_id = "jpegxl"

    def __init__(self, quality: int = 75, effort: int = 7):
        self.quality, self.effort = quality, effort

    def _encode_one(self, image):
        return imagecodecs.jpegxl_encode(image, level=self.quality, effort=self.effort)

    def _layout(self, data):
        return jxl_layout(data)

    def _decode_one(self, data):
        return imagecodecs.jpegxl_decode(data)


class JpegXLLossless(JpegXL):

    def __init__(self, effort: int = 7):
        self.effort = effort

    def _encode_one(self, image):
        return imagecodecs.jpegxl_encode(image, lossless=True, effort=self.effort)


