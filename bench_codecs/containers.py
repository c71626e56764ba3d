"""Just enough of each file format to judge a payload before its library sees it.

Each parser returns a `Layout`: the image size the header claims (refused above MAX_SIDE before
the library allocates for it; the decoded image must have it), where the stream ends (bytes after
it are refused), how many bytes are coded image data (the rest is header), and which header bytes
a run's files can share (whole leading segments, and length fields that the decoder recomputes
from the file's length).
Malformed structure raises PayloadError; the library judges everything inside the segments.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from bench.codec import MAX_SIDE, PayloadError


@dataclass(frozen=True)
class Field:
    """A header field that holds the file's length minus a constant (a size of what follows)."""

    offset: int
    size: int
    byteorder: str = "big"

    def read(self, data: bytes) -> int:
        return int.from_bytes(data[self.offset : self.offset + self.size], self.byteorder)


@dataclass(frozen=True)
class Layout:
    height: int
    width: int
    end: int | None  # just past the stream; None where the format cannot tell without decoding
    content: int | None = None  # bytes of coded image data; None: not separated from the header
    cuts: tuple[int, ...] = ()  # offsets after whole header segments: where a shared header may end
    fields: tuple[Field, ...] = ()  # length fields inside the header, recomputable from the length
    trailer: int = 0  # bytes at the end that every file of the format ends with


def trailing(count: int, what: str) -> PayloadError:
    return PayloadError(f"{count} byte{'s' if count != 1 else ''} after the end of the {what}")


def check_size(fmt: str, height: int, width: int) -> None:
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise PayloadError(f"{fmt} header claims {width}x{height}, outside 1..{MAX_SIDE}")


def need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise PayloadError(f"truncated: {what} runs past the end of the payload")


# --- JPEG and JPEG-LS: marker segments, entropy-coded scans, EOI -------------------------------

_JPEG_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}


def jpeg_layout(data: bytes, ls: bool = False) -> Layout:
    """Marker segments to the end-of-image marker, skipping each scan's entropy-coded data.

    In JPEG a 0xFF inside a scan is followed by 0x00 (stuffing) or a restart marker; in JPEG-LS
    by a byte below 0x80. Anything else ends the scan, so the walk finds EOI exactly."""
    fmt = "JPEG-LS" if ls else "JPEG"
    if data[:2] != b"\xff\xd8":
        raise PayloadError(f"no {fmt} start-of-image marker")
    i, n, size, content, cuts, in_header = 2, len(data), None, 0, [2], True
    while True:
        need(data, i + 2, "a marker")
        if data[i] != 0xFF:
            raise PayloadError(f"no {fmt} marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            break
        need(data, i + 4, "a marker segment")
        length = struct.unpack_from(">H", data, i + 2)[0]
        if length < 2:
            raise PayloadError(f"{fmt} marker segment at byte {i} has length {length}")
        seg_end = i + 2 + length
        need(data, seg_end, "a marker segment")
        if marker == 0xF7 if ls else marker in _JPEG_SOF:
            if length < 8:
                raise PayloadError(f"{fmt} frame header at byte {i} is too short")
            h, w, comps = *struct.unpack_from(">HH", data, i + 5), data[i + 9]
            if size is None:
                check_size(fmt, h, w)
                if ls and comps != 1:
                    raise PayloadError(f"{fmt} frame has {comps} components, not 1 (grayscale)")
                size = (h, w)
        if in_header:
            cuts.append(seg_end)
        i = seg_end
        if marker == 0xDA:
            if size is None:
                raise PayloadError(f"{fmt} scan before any frame header")
            in_header = False
            while True:  # the scan's entropy-coded data, up to the next marker
                j = data.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    raise PayloadError(f"truncated: the {fmt} scan has no end-of-image marker")
                nxt = data[j + 1]
                if (nxt < 0x80 if ls else nxt == 0) or 0xD0 <= nxt <= 0xD7:
                    i = j + 2 if not ls or nxt >= 0x80 else j + 1
                    continue
                content += j - seg_end
                i = j
                break
    if size is None:
        raise PayloadError(f"no {fmt} frame header")
    return Layout(*size, end=i + 2, content=content, cuts=tuple(cuts))


def drop_segments(data: bytes, markers: set[int]) -> bytes:
    """A JPEG-family file without the given header segments (metadata no decoder needs)."""
    parts, i = [data[:2]], 2
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] != 0xDA:
        seg_end = i + 2 + struct.unpack_from(">H", data, i + 2)[0]
        if data[i + 1] not in markers:
            parts.append(data[i:seg_end])
        i = seg_end
    return b"".join(parts) + data[i:]


# --- JPEG 2000 codestream: main header, tile-parts, EOC ----------------------------------------

J2K_MAGIC = b"\xff\x4f\xff\x51"


def j2k_layout(data: bytes) -> Layout:
    """The SIZ segment, then the tile-parts to EOC.

    OpenJPEG, untiled, writes one tile that is the whole image at the origin, so the image size
    is stated twice (image and tile). The codestream has no checksum: without this, a bit flip
    in either size is a valid file of another size, which OpenJPEG decodes without complaint."""
    if data[:4] != J2K_MAGIC:
        raise PayloadError("not a JPEG 2000 codestream (no SOC and SIZ markers)")
    need(data, 42, "the SIZ segment")
    xsiz, ysiz, xo, yo, xt, yt, xto, yto, comps = struct.unpack_from(">8IH", data, 8)
    check_size("JPEG 2000", ysiz, xsiz)
    if comps != 1:
        raise PayloadError(f"JPEG 2000 image has {comps} components, not 1 (grayscale)")
    if (xo, yo, xto, yto) != (0, 0, 0, 0) or (xt, yt) != (xsiz, ysiz):
        raise PayloadError(f"JPEG 2000 header is not one tile that is the image: image {ysiz}x"
                           f"{xsiz} at ({yo}, {xo}), tile {yt}x{xt} at ({yto}, {xto})")
    i, cuts, content = 2, [2], 0
    while True:  # main-header segments up to the first tile-part
        need(data, i + 4, "a marker segment")
        marker = data[i : i + 2]
        if marker == b"\xff\x90":
            break
        if data[i] != 0xFF:
            raise PayloadError(f"no JPEG 2000 marker at byte {i}")
        i += 2 + struct.unpack_from(">H", data, i + 2)[0]
        need(data, i, "a marker segment")
        cuts.append(i)
    while data[i : i + 2] == b"\xff\x90":  # tile-parts: SOT ... SOD, data
        need(data, i + 12, "a tile-part header")
        psot = struct.unpack_from(">I", data, i + 6)[0]
        sod = data.find(b"\xff\x93", i + 12)
        if sod < 0:
            raise PayloadError(f"the JPEG 2000 tile-part at byte {i} has no start of data")
        if psot == 0:  # the last tile-part runs to EOC, which packet data cannot contain
            part_end = data.find(b"\xff\xd9", sod + 2)
            if part_end < 0:
                raise PayloadError("truncated: no JPEG 2000 end-of-codestream marker")
        else:
            part_end = i + psot
            if part_end < sod + 2:
                raise PayloadError(f"the JPEG 2000 tile-part at byte {i} claims {psot} bytes")
        need(data, part_end, "a tile-part")
        content += part_end - sod - 2
        i = part_end
    if data[i : i + 2] != b"\xff\xd9":
        raise PayloadError(f"no JPEG 2000 end-of-codestream marker at byte {i}")
    return Layout(ysiz, xsiz, end=i + 2, content=content, cuts=tuple(cuts))


def drop_j2k_comments(data: bytes) -> bytes:
    parts, i = [data[:2]], 2
    while data[i : i + 2] != b"\xff\x90":
        seg_end = i + 2 + struct.unpack_from(">H", data, i + 2)[0]
        if data[i : i + 2] != b"\xff\x64":
            parts.append(data[i:seg_end])
        i = seg_end
    return b"".join(parts) + data[i:]


# --- PNG: chunks with CRCs to IEND -------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_layout(data: bytes) -> Layout:
    if data[:8] != PNG_MAGIC:
        raise PayloadError("no PNG signature")
    i, size, cuts, idats, content = 8, None, [8], [], 0
    while True:
        need(data, i + 12, "a chunk")
        length, kind = struct.unpack_from(">I4s", data, i)
        end = i + 12 + length
        need(data, end, f"the {kind!r} chunk")
        if zlib.crc32(data[i + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise PayloadError(f"the {kind!r} chunk at byte {i} fails its CRC")
        if size is None:
            if kind != b"IHDR" or length < 8:
                raise PayloadError("the first PNG chunk is not IHDR")
            w, h = struct.unpack_from(">II", data, i + 8)
            check_size("PNG", h, w)
            size = (h, w)
        if kind == b"IDAT":
            idats.append(i)
            content += length
        elif not idats:
            cuts.append(end)
        if kind == b"IEND":
            break
        i = end
    fields, trailer = (), 0
    if len(idats) == 1 and data[end - 12 : end] == _IEND and i == idats[0] + 12 + content:
        # One IDAT right before IEND: a shared header may run up to the IDAT's data, its
        # length recomputed from the file's; IEND is the same 12 bytes in every file.
        cuts.append(idats[0] + 8)
        fields, trailer = (Field(idats[0], 4),), len(_IEND)
    return Layout(*size, end=end, content=content, cuts=tuple(cuts), fields=fields, trailer=trailer)


# --- WebP: one RIFF chunk list -----------------------------------------------------------------


def webp_layout(data: bytes) -> Layout:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise PayloadError("not a RIFF/WebP file")
    end = 8 + struct.unpack_from("<I", data, 4)[0]
    need(data, end, "the RIFF chunk")
    kind, chunk = data[12:16], data[20:end]
    if kind == b"VP8 " and len(chunk) >= 10 and chunk[3:6] == b"\x9d\x01\x2a":
        w, h = (v & 0x3FFF for v in struct.unpack_from("<HH", chunk, 6))
    elif kind == b"VP8L" and len(chunk) >= 5 and chunk[0] == 0x2F:
        bits = int.from_bytes(chunk[1:5], "little")
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8X" and len(chunk) >= 10:
        w, h = (int.from_bytes(chunk[k : k + 3], "little") + 1 for k in (4, 7))
    else:
        raise PayloadError(f"WebP file has no readable {kind!r} frame header")
    check_size("WebP", h, w)
    return Layout(h, w, end=end)


# --- JPEG XL: the size header at the start of a bare codestream --------------------------------

_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def jxl_layout(data: bytes) -> Layout:
    """The codestream's SizeHeader (bits read least significant first). The end of a JPEG XL
    codestream is known only to a full parse of its frames, so `end` is None."""
    if data[:2] != b"\xff\x0a":
        raise PayloadError("not a bare JPEG XL codestream")
    head = data[2:11]  # a SizeHeader takes at most 68 bits
    bits, pos = int.from_bytes(head, "little"), 0

    def u(n: int) -> int:
        nonlocal pos
        pos += n
        if pos > 8 * len(head):
            raise PayloadError("truncated: the JPEG XL size header runs past the payload")
        return (bits >> (pos - n)) & ((1 << n) - 1)

    def side(small: bool) -> int:
        return (u(5) + 1) * 8 if small else u((9, 13, 18, 30)[u(2)]) + 1

    small = bool(u(1))
    h = side(small)
    ratio = u(3)
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        w = h * num // den
    else:
        w = side(small)
    check_size("JPEG XL", h, w)
    return Layout(h, w, end=None)
