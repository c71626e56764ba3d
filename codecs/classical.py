"""Classical codecs: imagecodecs (libjpeg-turbo, libpng, libwebp, libjxl) and the stdlib's zlib/lzma."""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Sequence

import imagecodecs
import numpy as np

from bench.codec import (
    MAX_SIDE,
    Codec,
    PayloadError,
    Payloads,
    check_images,
    fixed_rate_rows,
    payloads_to_decode,
    smallest_file_bytes,
)


class ImageCodec(Codec):
    """One library call per image: the formats themselves are per-image."""

    format = ""
    library_id = ""  # imagecodecs' name for the underlying library

    @property
    def library(self) -> str:
        if not self.library_id:
            return f"Python {self.format}"
        version = getattr(imagecodecs, f"{self.library_id}_version")()
        return f"{version} (imagecodecs {imagecodecs.__version__})"

    def header_bytes(self, shape: tuple[int, int]) -> int:
        return smallest_file_bytes(self, shape)

    def encode(self, images: np.ndarray) -> Payloads:
        images = check_images(images)
        return Payloads.from_list([self._encode_one(im) for im in images])

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        payloads = payloads_to_decode(payloads, self.name)
        out = None
        for i, data in enumerate(payloads):
            try:
                image = self._decode_one(data)
            except PayloadError as exc:
                raise PayloadError(f"{self.name}: payload {i} ({len(data)} bytes): {exc}") from None
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:  # the libraries raise their own error types
                raise PayloadError(
                    f"{self.name}: payload {i} ({len(data)} bytes) is not a valid {self.format} "
                    f"stream: {exc}"
                ) from None
            if image.ndim == 2 and max(image.shape) > MAX_SIDE:
                raise PayloadError(f"{self.name}: payload {i} decodes to {image.shape[0]}x"
                                   f"{image.shape[1]}, larger than {MAX_SIDE}x{MAX_SIDE}")
            if image.dtype != np.uint8 or image.ndim != 2:
                raise PayloadError(
                    f"{self.name}: payload {i} decodes to a {image.dtype} array of shape "
                    f"{image.shape}, not an 8-bit grayscale image"
                )
            if out is None:
                out = np.empty((len(payloads), *image.shape), np.uint8)
            elif image.shape != out.shape[1:]:
                raise PayloadError(
                    f"{self.name}: payload {i} decodes to {image.shape[0]}x{image.shape[1]}, "
                    f"payload 0 to {out.shape[1]}x{out.shape[2]}; a batch shares one size"
                )
            out[i] = image
        return out

    def _encode_one(self, image: np.ndarray) -> bytes:
        raise NotImplementedError

    def _decode_one(self, data: bytes) -> np.ndarray:
        raise NotImplementedError


class Raw(ImageCodec):
    """The uncompressed reference: H*W bytes, no header.

    The size is side information: taken from `fit` (or the last encode); without it,
    payloads are decoded as square images.
    """

    lossless = True
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

    def __init__(self, quality: int = 75, optimize: bool = False):
        self.quality, self.optimize = quality, optimize

    def _encode_one(self, image):
        return imagecodecs.jpeg8_encode(image, level=self.quality, optimize=self.optimize)

    def _decode_one(self, data):
        h, w = jpeg_size(data)
        if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            raise PayloadError(f"JPEG header claims {w}x{h}, outside 1..{MAX_SIDE}")
        return imagecodecs.jpeg8_decode(data)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the first start-of-frame marker, before libjpeg allocates for it."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            raise PayloadError("not a JPEG marker sequence")
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return struct.unpack(">HH", data[i + 5 : i + 9])
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    raise PayloadError("no JPEG frame header")


class Png(ImageCodec):
    lossless = True
    format = "PNG"
    library_id = "png"

    def __init__(self, level: int = 9):
        self.level = level

    def _encode_one(self, image):
        return imagecodecs.png_encode(image, level=self.level)

    def _decode_one(self, data):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            # Refuse a hostile header before libpng allocates for it.
            w, h = struct.unpack(">II", data[16:24])
            if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
                raise PayloadError(f"PNG header claims {w}x{h}, outside 1..{MAX_SIDE}")
        return imagecodecs.png_decode(data)


class WebP(ImageCodec):
    """libwebp has no grayscale mode: images travel as R=G=B, decoding averages the channels."""

    format = "WebP"
    library_id = "webp"

    def __init__(self, quality: int = 75, method: int = 4, lossless: bool = False):
        self.quality, self.method, self.lossless = quality, method, lossless

    def encode(self, images: np.ndarray) -> Payloads:
        rgb = np.repeat(check_images(images)[..., None], 3, axis=3)
        return Payloads.from_list([
            imagecodecs.webp_encode(im, level=self.quality, method=self.method,
                                    lossless=self.lossless)
            for im in rgb
        ])

    def _decode_one(self, data):
        rgb = imagecodecs.webp_decode(data)
        if rgb.ndim != 3:
            return rgb
        if self.lossless:
            return np.ascontiguousarray(rgb[:, :, 0])
        return ((rgb[:, :, :3].astype(np.uint16).sum(axis=2) + 1) // 3).astype(np.uint8)


class WebPLossless(WebP):
    lossless = True

    def __init__(self, method: int = 4):
        super().__init__(quality=100, method=method, lossless=True)


class JpegXL(ImageCodec):
    format = "JPEG XL"
    library_id = "jpegxl"

    def __init__(self, quality: int = 75, effort: int = 7):
        self.quality, self.effort = quality, effort

    def _encode_one(self, image):
        return imagecodecs.jpegxl_encode(image, level=self.quality, effort=self.effort)

    def _decode_one(self, data):
        return imagecodecs.jpegxl_decode(data)


class JpegXLLossless(JpegXL):
    lossless = True

    def __init__(self, effort: int = 7):
        self.effort = effort

    def _encode_one(self, image):
        return imagecodecs.jpegxl_encode(image, lossless=True, effort=self.effort)


class _Stream(ImageCodec):
    """A general-purpose compressor over the pixels, behind a 4-byte size header (H, W)."""

    lossless = True
    header = struct.Struct("<HH")

    def _encode_one(self, image):
        return self.header.pack(*image.shape) + self._compress(image.tobytes())

    def _decode_one(self, data):
        if len(data) < self.header.size:
            raise PayloadError(f"shorter than the {self.header.size}-byte size header")
        h, w = self.header.unpack_from(data)
        if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            raise PayloadError(f"header claims {h}x{w}, outside 1..{MAX_SIDE}")
        # Bounded, so a hostile stream cannot expand without limit.
        stream = self._decompressor()
        pixels = stream.decompress(data[self.header.size :], h * w + 1)
        if not stream.eof:
            raise PayloadError(f"the {self.format} stream is truncated or longer than its image")
        if len(pixels) != h * w:
            raise PayloadError(f"holds {len(pixels)} pixels, its header says {h}x{w}")
        return np.frombuffer(pixels, np.uint8).reshape(h, w)


class Zlib(_Stream):
    format = "zlib"

    def __init__(self, level: int = 9):
        self.level = level

    def _compress(self, data):
        return zlib.compress(data, self.level)

    def _decompressor(self):
        return zlib.decompressobj()


class Lzma(_Stream):
    format = "LZMA"

    def __init__(self, preset: int = 6):
        self.preset = preset

    def _compress(self, data):
        # The .lzma container: a 13-byte header where .xz would spend about 60.
        return lzma.compress(data, format=lzma.FORMAT_ALONE, preset=self.preset)

    def _decompressor(self):
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE, memlimit=1 << 26)
