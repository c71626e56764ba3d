"""The base of the classical codecs: one library call per image, the container checked before the
library sees a file, the decoded image held to the size its header declares, and the header every
file of a run shares, sent once (`shared_header`)."""

from __future__ import annotations

from collections.abc import Sequence

import imagecodecs
import numpy as np

from bench.codec import Codec, CodecError, PayloadError, Payloads, check_images, payloads_to_decode
from bench_codecs.containers import Field, Layout, trailing

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

    Subclasses give `_encode_one` (an image to a file), `_decode_one` (a file to an image, by the
    library) and `_layout` (the file's header, read before the library sees the file: the size it
    declares, where the stream ends). The decoded image must be exactly the declared size, 8-bit
    and one channel: a library that decodes a corrupt file to some other image is refused, never
    returned. Formats that list `magic` take a `shared_header` parameter: the header every file of
    a run shares is chosen in `fit` from the training split and sent once; a payload starting with
    `magic` is a whole file.
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
            content = self._layout(self._file(payload)).content
            sizes.append(len(payload) - (content or 0))
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
        if layout.end is not None and layout.end != len(data):
            raise trailing(len(data) - layout.end, f"{self.format} stream")
        image = self._decode_one(data)
        declared = (layout.height, layout.width)
        if image.dtype != np.uint8 or image.shape != declared:
            got = (f"{image.shape[0]}x{image.shape[1]}" if image.dtype == np.uint8 and image.ndim == 2
                   else f"a {image.dtype} array of shape {image.shape}")
            raise PayloadError(f"decodes to {got}, not the 8-bit grayscale {declared[0]}x{declared[1]} "
                               "image its header declares")
        return image

    def _layout(self, data: bytes) -> Layout:
        raise NotImplementedError

    def _encode_one(self, image: np.ndarray) -> bytes:
        raise NotImplementedError

    def _decode_one(self, data: bytes) -> np.ndarray:
        raise NotImplementedError


