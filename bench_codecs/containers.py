"""Just enough of each file format to judge a payload before its library sees it.

Each parser returns a `Layout`: the image size the header claims (refused above MAX_SIDE before
the library allocates for it), where the stream ends (bytes after it are refused), how many bytes
are coded image data (the rest is header), and which header bytes a run's files can share (whole
leading segments, and length fields that the decoder recomputes from the file's length).
Malformed structure raises PayloadError; the library judges everything inside the segments.
"""

from __future__ import annotations

import itertools
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


def _need(data: bytes, end: int, what: str) -> None:
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
        _need(data, i + 2, "a marker")
        if data[i] != 0xFF:
            raise PayloadError(f"no {fmt} marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            break
        _need(data, i + 4, "a marker segment")
        length = struct.unpack_from(">H", data, i + 2)[0]
        if length < 2:
            raise PayloadError(f"{fmt} marker segment at byte {i} has length {length}")
        seg_end = i + 2 + length
        _need(data, seg_end, "a marker segment")
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
MAX_J2K_TILES = 64


def j2k_layout(data: bytes) -> Layout:
    if data[:4] != J2K_MAGIC:
        raise PayloadError("not a JPEG 2000 codestream (no SOC and SIZ markers)")
    _need(data, 42, "the SIZ segment")
    xsiz, ysiz, xo, yo, xt, yt, xto, yto, comps = struct.unpack_from(">8IH", data, 8)
    check_size("JPEG 2000", ysiz - yo if ysiz > yo else 0, xsiz - xo if xsiz > xo else 0)
    if comps != 1:
        raise PayloadError(f"JPEG 2000 image has {comps} components, not 1 (grayscale)")
    if xt == 0 or yt == 0 or xto > xo or yto > yo:
        raise PayloadError("JPEG 2000 header has an invalid tile grid")
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    if tiles > MAX_J2K_TILES:
        raise PayloadError(f"JPEG 2000 header claims {tiles} tiles, more than {MAX_J2K_TILES}")
    i, cuts, content = 2, [2], 0
    while True:  # main-header segments up to the first tile-part
        _need(data, i + 4, "a marker segment")
        marker = data[i : i + 2]
        if marker == b"\xff\x90":
            break
        if data[i] != 0xFF:
            raise PayloadError(f"no JPEG 2000 marker at byte {i}")
        i += 2 + struct.unpack_from(">H", data, i + 2)[0]
        _need(data, i, "a marker segment")
        cuts.append(i)
    while data[i : i + 2] == b"\xff\x90":  # tile-parts: SOT ... SOD, data
        _need(data, i + 12, "a tile-part header")
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
        _need(data, part_end, "a tile-part")
        content += part_end - sod - 2
        i = part_end
    if data[i : i + 2] != b"\xff\xd9":
        raise PayloadError(f"no JPEG 2000 end-of-codestream marker at byte {i}")
    return Layout(ysiz - yo, xsiz - xo, end=i + 2, content=content, cuts=tuple(cuts))


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
        _need(data, i + 12, "a chunk")
        length, kind = struct.unpack_from(">I4s", data, i)
        end = i + 12 + length
        _need(data, end, f"the {kind!r} chunk")
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
    _need(data, end, "the RIFF chunk")
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


# --- AVIF: ISOBMFF boxes, one AV1 item -----------------------------------------------------------


def _boxes(data: bytes, start: int, end: int):
    """(type, box start, payload start, box end) of the boxes in data[start:end]."""
    i = start
    while i < end:
        _need(data, i + 8, "a box header")
        size, kind = struct.unpack_from(">I4s", data, i)
        head = 8
        if size == 1:
            _need(data, i + 16, "a box header")
            size, head = struct.unpack_from(">Q", data, i + 8)[0], 16
        if size < head:  # 0 ("to the end of the file") is never written by libavif
            raise PayloadError(f"the {kind!r} box at byte {i} has size {size}")
        if i + size > end:
            raise PayloadError(f"truncated: the {kind!r} box at byte {i} runs past its container")
        yield kind, i, i + head, i + size
        i += size


def avif_layout(data: bytes) -> Layout:
    """ftyp, meta, mdat, as libavif writes a still image: one AV1 item whose size (ispe) and
    AV1 sequence headers are checked before libavif and the AV1 decoder allocate frames."""
    if data[4:8] != b"ftyp":
        raise PayloadError("not an ISOBMFF file (no ftyp box)")
    top = list(itertools.islice(_boxes(data, 0, len(data)), 3))  # what follows mdat is not AVIF
    if [b[0] for b in top] != [b"ftyp", b"meta", b"mdat"]:
        raise PayloadError("AVIF file is not ftyp, meta, mdat: "
                           + ", ".join(repr(b[0]) for b in top))
    _, meta_start, meta_body, meta_end = top[1]
    _, mdat_start, mdat_body, mdat_end = top[2]
    size, extent = None, None
    for kind, _, body, end in _boxes(data, meta_body + 4, meta_end):  # meta is a FullBox
        if kind == b"iinf":
            _need(data, body + 8, "the iinf box")
            count = struct.unpack_from(">H" if data[body] == 0 else ">I", data, body + 4)[0]
            if count != 1:
                raise PayloadError(f"AVIF file has {count} items, not one image")
        elif kind == b"iprp":
            for k2, _, b2, e2 in _boxes(data, body, end):
                for k3, _, b3, _ in _boxes(data, b2, e2) if k2 == b"ipco" else ():
                    if k3 == b"ispe":
                        _need(data, b3 + 12, "the ispe box")
                        w, h = struct.unpack_from(">II", data, b3 + 4)
                        check_size("AVIF", h, w)
                        size = (h, w)
        elif kind == b"iloc":
            extent = _single_extent(data, body, end)
    if size is None:
        raise PayloadError("AVIF file has no image size (ispe)")
    # (A length of 0 would mean "to the end of the file": never written, and left unchecked.)
    if extent is None or not (mdat_body <= extent[0] < extent[0] + extent[1] <= mdat_end):
        raise PayloadError("AVIF item data is not one extent inside mdat")
    _check_av1(data, extent[0], extent[0] + extent[1])
    fields = ()
    if (extent[0] == mdat_body and sum(extent[:2]) == mdat_end and mdat_body - mdat_start == 8
            and extent[3] == 4):
        # The item fills mdat: both lengths follow from the file's length.
        fields = (Field(mdat_start, 4), Field(extent[2], 4))
    return Layout(*size, end=mdat_end, content=extent[1], cuts=(meta_start, mdat_start, mdat_body),
                  fields=fields)


def _single_extent(data: bytes, body: int, end: int) -> tuple[int, int, int, int] | None:
    """(offset, length, offset of the length field, its size) of a one-item, one-extent iloc."""
    if body + 16 > end:
        return None
    version = data[body]
    off_size, len_size = data[body + 4] >> 4, data[body + 4] & 15
    base_size, index_size = data[body + 5] >> 4, (data[body + 5] & 15) if version else 0
    i = body + 6
    count_size = 2 if version < 2 else 4
    items = int.from_bytes(data[i : i + count_size], "big")
    i += count_size
    if items != 1 or off_size not in (0, 4, 8) or len_size not in (0, 4, 8):
        return None
    i += count_size  # item_ID
    if version in (1, 2):
        if data[i + 1] & 15:  # construction_method: data in idat or another item
            return None
        i += 2
    i += 2  # data_reference_index
    base = int.from_bytes(data[i : i + base_size], "big")
    i += base_size
    if i + 2 + index_size + off_size + len_size > end or struct.unpack_from(">H", data, i)[0] != 1:
        return None
    i += 2 + index_size
    offset = base + int.from_bytes(data[i : i + off_size], "big")
    length = int.from_bytes(data[i + off_size : i + off_size + len_size], "big")
    return offset, length, i + off_size, len_size


def _leb128(data: bytes, i: int, end: int) -> tuple[int, int]:
    value = 0
    for k in range(8):
        if i + k >= end:
            break
        value |= (data[i + k] & 0x7F) << (7 * k)
        if not data[i + k] & 0x80:
            return value, i + k + 1
    raise PayloadError("malformed AV1 OBU size")


_AV1_RESERVED = {0, 9, 10, 11, 12, 13, 14}


def _check_av1(data: bytes, start: int, end: int) -> None:
    """Walk the item's OBUs, which libavif writes with sizes, to exactly the item's end. Every
    sequence header's maximum frame size must fit MAX_SIDE: the AV1 decoder allocates frames from
    it, whatever ispe says."""
    i = start
    while i < end:
        header = data[i]
        kind, j = (header >> 3) & 15, i + 1 + ((header >> 2) & 1)
        if header & 0x80 or not header & 2 or kind in _AV1_RESERVED:
            raise PayloadError(f"AV1 OBU at byte {i} has header {header:#04x}: forbidden bit, "
                               "reserved type or no size")
        size, j = _leb128(data, j, end)
        if j + size > end:
            raise PayloadError(f"truncated: the AV1 OBU at byte {i} runs past the item")
        if kind == 1:
            h, w = _av1_max_frame_size(data[j : j + size])
            check_size("AV1 sequence header", h, w)
        i = j + size


def _av1_max_frame_size(obu: bytes) -> tuple[int, int]:
    """max_frame_height/width from an AV1 sequence header OBU (spec 5.5.1), bits MSB first."""
    bits, pos = int.from_bytes(obu, "big"), 0
    total = 8 * len(obu)

    def f(n: int) -> int:
        nonlocal pos
        pos += n
        if pos > total:
            raise PayloadError("truncated AV1 sequence header")
        return (bits >> (total - pos)) & ((1 << n) - 1)

    f(3)  # seq_profile
    f(1)  # still_picture
    if f(1):  # reduced_still_picture_header
        f(5)  # seq_level_idx
    else:
        decoder_model, delay_length = False, 0
        if f(1):  # timing_info_present_flag
            f(32), f(32)
            if f(1):  # equal_picture_interval: num_ticks_per_picture_minus_1, uvlc()
                zeros = 0
                while not f(1):
                    zeros += 1
                    if zeros >= 32:
                        raise PayloadError("malformed AV1 sequence header")
                f(zeros)
            decoder_model = bool(f(1))
            if decoder_model:
                delay_length = f(5) + 1
                f(32), f(5), f(5)
        initial_delay = bool(f(1))
        for _ in range(f(5) + 1):  # operating points
            f(12)
            if f(5) > 7:
                f(1)
            if decoder_model and f(1):
                f(delay_length), f(delay_length), f(1)
            if initial_delay and f(1):
                f(4)
    wbits, hbits = f(4) + 1, f(4) + 1
    w = f(wbits) + 1
    return f(hbits) + 1, w
