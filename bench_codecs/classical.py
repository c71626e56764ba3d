"""Classical codecs: imagecodecs (libjpeg-turbo, libpng, libwebp, libjxl, libavif, OpenJPEG,
CharLS, zstd, Brotli) and the standard library's zlib and lzma."""

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
    CodecError,
    PayloadError,
    Payloads,
    check_images,
    fixed_rate_rows,
    payloads_to_decode,
)
from bench_codecs.containers import (
    J2K_MAGIC,
    PNG_MAGIC,
    Field,
    Layout,
    avif_layout,
    drop_j2k_comments,
    drop_segments,
    j2k_layout,
    jpeg_layout,
    jxl_layout,
    png_layout,
    trailing,
    webp_layout,
)

# Training images encoded to find a run's shared header: its bytes depend on the settings and the
# image size, not on the content, so a sample is as good as the whole split.
SHARED_HEADER_SAMPLE = 256


class SharedHeader:
    """The bytes every file of a run shares, sent once as side information: the leading header
    segments (with their length fields blanked: the decoder recomputes them from the file's
    length) and a fixed trailer. A file that does not share them is sent whole."""

    def __init__(self, head: bytes, fields: tuple[tuple[Field, int], ...], trailer: bytes):
        self.head, self.fields, self.trailer = head, fields, trailer

    @classmethod
    def common(cls, files: list[bytes], layouts: list[Layout]) -> SharedHeader:
        """The longest header (ending at a segment boundary) that every file has, byte for byte."""
        first, lay = files[0], layouts[0]
        trailer = first[len(first) - lay.trailer :] if lay.trailer else b""
        if not all(f.endswith(trailer) for f in files):
            trailer = b""
        for cut in sorted(lay.cuts, reverse=True):
            inside = [f for f in lay.fields if f.offset + f.size <= cut]
            if any(f.offset + f.size > cut > f.offset for f in lay.fields):
                continue
            fields = tuple((f, len(first) - f.read(first)) for f in inside)
            if any(k <= 0 for _, k in fields):
                continue
            shared = cls(cls._blank(first[:cut], fields), fields, trailer)
            if all(cut in la.cuts and shared.strip(f) is not None for f, la in zip(files, layouts)):
                return shared
        return cls(b"", (), trailer)

    @staticmethod
    def _blank(head: bytes, fields) -> bytes:
        buf = bytearray(head)
        for f, _ in fields:
            buf[f.offset : f.offset + f.size] = bytes(f.size)
        return bytes(buf)

    def __len__(self) -> int:
        return len(self.head) + len(self.trailer)

    def rebuild(self, body: bytes) -> bytes:
        buf = bytearray(self.head) + body + self.trailer
        for f, k in self.fields:
            value = len(buf) - k
            if not 0 <= value < 256**f.size:
                raise PayloadError(f"{len(body)} bytes are too short for the shared header")
            buf[f.offset : f.offset + f.size] = value.to_bytes(f.size, f.byteorder)
        return bytes(buf)

    def strip(self, file: bytes) -> bytes | None:
        """The file without the shared bytes, or None when the file does not rebuild from them."""
        if len(file) < len(self) or not file.endswith(self.trailer):
            return None
        body = file[len(self.head) : len(file) - len(self.trailer)]
        try:
            return body if self.rebuild(body) == file else None
        except PayloadError:
            return None


class ImageCodec(Codec):
    """One library call per image: the formats themselves are per-image.

    Subclasses give `_encode_one` (an image to a file) and `_decode_one` (a file to an image, by
    the library) and, where the format has a container worth checking, `_layout`: its header is
    then checked (size, end of stream) before the library sees the file. Formats that list
    `magic` take a `shared_header` parameter: the header every file of a run shares is chosen in
    `fit` from the training split and sent once; a payload starting with `magic` is a whole file.
    """

    format = ""
    library_id = ""  # imagecodecs' name for the underlying library
    magic = b""  # how every whole file of the format starts (at byte `magic_at`)
    magic_at = 0
    shared_header = False
    _shared: SharedHeader | None = None

    @property
    def library(self) -> str:
        if not self.library_id:
            return f"Python {self.format}"
        version = getattr(imagecodecs, f"{self.library_id}_version")()
        return f"{version} (imagecodecs {imagecodecs.__version__})"

    def fit(self, data) -> ImageCodec:
        if self.shared_header:
            files = [self._encode_one(im) for im in check_images(data.train)[:SHARED_HEADER_SAMPLE]]
            self._shared = SharedHeader.common(files, [self._layout(f) for f in files])
        return self

    @property
    def side_info_bytes(self) -> int:
        return len(self._shared) if self._shared is not None else 0

    def header_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes per payload that are not coded image data, for the smallest file of this size
        (a constant image): where the layout separates them, headers only; else the whole file."""
        constant = np.repeat(np.array([0, 128, 255], np.uint8), shape[0] * shape[1])
        sizes = []
        for payload in self.encode(constant.reshape(3, *shape)):
            layout = self._layout(self._file(payload))
            content = layout.content if layout is not None and layout.content is not None else 0
            sizes.append(len(payload) - content)
        return min(sizes)

    def encode(self, images: np.ndarray) -> Payloads:
        images = check_images(images)
        files = [self._encode_one(im) for im in images]
        if self.shared_header:
            if self._shared is None:
                raise CodecError(f"{self.name}: the shared header comes from the training split; "
                                 "call fit() before encode()")
            files = [self._share(f) for f in files]
        return Payloads.from_list(files)

    def _share(self, file: bytes) -> bytes:
        body = self._shared.strip(file)
        return file if body is None or self._is_file(body) else body

    def _is_file(self, payload: bytes) -> bool:
        return payload[self.magic_at : self.magic_at + len(self.magic)] == self.magic

    def _file(self, payload: bytes) -> bytes:
        if not self.shared_header or self._is_file(payload):
            return payload
        if self._shared is None:
            raise PayloadError("needs the shared header that fit() chooses")
        return self._shared.rebuild(payload)

    def decode(self, payloads: Payloads | Sequence[bytes]) -> np.ndarray:
        payloads = payloads_to_decode(payloads, self.name)
        out = None
        for i, data in enumerate(payloads):
            try:
                image = self._decode_checked(self._file(data))
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

    def _decode_checked(self, data: bytes) -> np.ndarray:
        layout = self._layout(data)
        if layout is not None and layout.end is not None and layout.end != len(data):
            raise trailing(len(data) - layout.end, f"{self.format} stream")
        return self._decode_one(data)

    def _layout(self, data: bytes) -> Layout | None:
        return None

    def _encode_one(self, image: np.ndarray) -> bytes:
        raise NotImplementedError

    def _decode_one(self, data: bytes) -> np.ndarray:
        raise NotImplementedError


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2)


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

    lossless = True
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

    lossless = False

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
    lossless = True

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
    lossless = True

    def __init__(self, speed: int = 6, shared_header: bool = False):
        super().__init__(100, speed, shared_header)

    def _encode_one(self, image):
        return imagecodecs.avif_encode(image, level=100, speed=self.speed, numthreads=1)


class Png(ImageCodec):
    lossless = True
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
        self.quality, self.method, self.lossless = quality, method, lossless

    def _encode_one(self, image):
        return imagecodecs.webp_encode(_rgb(image), level=self.quality, method=self.method,
                                       lossless=self.lossless)

    def _layout(self, data):
        return webp_layout(data)

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

    def _layout(self, data):
        return jxl_layout(data)

    def _decode_one(self, data):
        return imagecodecs.jpegxl_decode(data)


class JpegXLLossless(JpegXL):
    lossless = True

    def __init__(self, effort: int = 7):
        self.effort = effort

    def _encode_one(self, image):
        return imagecodecs.jpegxl_encode(image, lossless=True, effort=self.effort)


class _Stream(ImageCodec):
    """A general-purpose compressor over the pixels, behind a 4-byte size header (H, W).

    `_decompress(stream, size)` returns at most `size + 1` bytes (so a hostile stream cannot
    expand without limit) and refuses bytes after the end of the stream."""

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
        pixels = self._decompress(data[self.header.size :], h * w)
        if len(pixels) != h * w:
            raise PayloadError(f"holds {len(pixels)} pixels, its header says {h}x{w}")
        return np.frombuffer(pixels, np.uint8).reshape(h, w)

    def _decompress_with(self, stream, data: bytes, size: int) -> bytes:
        """For the standard library's incremental decompressors, which know where they end."""
        pixels = stream.decompress(data, size + 1)
        if not stream.eof:
            raise PayloadError(f"the {self.format} stream is truncated or longer than its image")
        if stream.unused_data:
            raise trailing(len(stream.unused_data), f"{self.format} stream")
        return pixels


class Zlib(_Stream):
    format = "zlib"

    def __init__(self, level: int = 9):
        self.level = level

    def _compress(self, data):
        return zlib.compress(data, self.level)

    def _decompress(self, data, size):
        return self._decompress_with(zlib.decompressobj(), data, size)


class Lzma(_Stream):
    format = "LZMA"

    def __init__(self, preset: int = 6):
        self.preset = preset

    def _compress(self, data):
        # The .lzma container: a 13-byte header where .xz would spend about 60.
        return lzma.compress(data, format=lzma.FORMAT_ALONE, preset=self.preset)

    def _decompress(self, data, size):
        return self._decompress_with(
            lzma.LZMADecompressor(format=lzma.FORMAT_ALONE, memlimit=1 << 26), data, size)


class Zstd(_Stream):
    format = "zstd"
    library_id = "zstd"

    def __init__(self, level: int = 19):
        self.level = level

    def _compress(self, data):
        return imagecodecs.zstd_encode(data, level=self.level)

    def _decompress(self, data, size):
        end = zstd_frame_end(data)
        if end != len(data):
            raise trailing(len(data) - end, "zstd frame")
        return imagecodecs.zstd_decode(data, out=size + 1)


def zstd_frame_end(data: bytes) -> int:
    """Where a zstd frame ends (RFC 8878: frame header, blocks up to the last, checksum)."""
    if data[:4] != b"\x28\xb5\x2f\xfd" or len(data) < 6:
        raise PayloadError("not a zstd frame")
    fhd = data[4]
    single = (fhd >> 5) & 1
    i = 5 + (not single) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
    while True:
        if i + 3 > len(data):
            raise PayloadError("truncated zstd frame")
        block = int.from_bytes(data[i : i + 3], "little")
        kind = (block >> 1) & 3
        if kind == 3:
            raise PayloadError("reserved zstd block type")
        i += 3 + (1 if kind == 1 else block >> 3)
        if block & 1:
            break
    end = i + 4 * ((fhd >> 2) & 1)
    if end > len(data):
        raise PayloadError("truncated zstd frame")
    return end


class Brotli(_Stream):
    format = "Brotli"
    library_id = "brotli"

    def __init__(self, level: int = 9):
        self.level = level

    def _compress(self, data):
        return imagecodecs.brotli_encode(data, level=self.level)

    def _decompress(self, data, size):
        pixels = imagecodecs.brotli_decode(data, out=size + 1)
        # A Brotli stream ends in its last byte, and the decoder ignores what follows: the
        # stream is exactly `data` if and only if it cannot be decoded without its last byte.
        try:
            imagecodecs.brotli_decode(data[:-1], out=size + 1)
        except Exception:
            return pixels
        raise PayloadError("bytes after the end of the Brotli stream")
