"""General-purpose compressors over the raw pixels, behind a 4-byte size header: zlib and LZMA
(the standard library), zstd (the zstandard package, with zstd's content checksum) and Brotli
(imagecodecs)."""

from __future__ import annotations

import lzma
import struct
import zlib

import imagecodecs
import numpy as np

from bench.codec import PayloadError
from bench_codecs.containers import Layout, check_size, trailing
from bench_codecs.image_codec import ImageCodec


class _Stream(ImageCodec):
    """A general-purpose compressor over the pixels, behind a 4-byte size header (H, W).

    `_decompress(stream, size)` returns at most `size + 1` bytes (so a hostile stream cannot
    expand without limit) and refuses bytes after the end of the stream."""

    header = struct.Struct("<HH")

    def _encode_one(self, image):
        return self.header.pack(*image.shape) + self._compress(image.tobytes())

    def _layout(self, data):
        if len(data) < self.header.size:
            raise PayloadError(f"shorter than the {self.header.size}-byte size header")
        h, w = self.header.unpack_from(data)
        check_size(self.format, h, w)
        return Layout(h, w, end=None)

    def _decode_one(self, data):
        layout = self._layout(data)
        h, w = layout.height, layout.width
        pixels = self._decompress(data[self.header.size :], h * w)
        if len(pixels) != h * w:
            raise PayloadError(f"decodes to {len(pixels)} pixels, its header declares {h}x{w}")
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
    """The frame carries zstd's content checksum (4 bytes, in `header_bytes`), which libzstd
    checks: without it, most corruptions of the compressed data decode silently to other pixels.
    Through the zstandard package, whose compressor writes it (imagecodecs' cannot)."""

    format = "zstd"

    def __init__(self, level: int = 19):
        import zstandard

        self.level = level
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._decompressor = zstandard.ZstdDecompressor()

    @property
    def library(self) -> str:
        import zstandard

        return f"zstandard {zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})"

    def _compress(self, data):
        return self._compressor.compress(data)

    def _decompress(self, data, size):
        end = zstd_frame_end(data)
        if end != len(data):
            raise trailing(len(data) - end, "zstd frame")
        if not data[4] & _ZSTD_CHECKSUM_FLAG:
            raise PayloadError("the zstd frame has no content checksum")
        return self._decompressor.decompress(data, max_output_size=size + 1)


_ZSTD_CHECKSUM_FLAG = 4  # in the frame header descriptor


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
