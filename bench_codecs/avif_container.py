"""The AVIF container as libavif writes a still image (ISOBMFF boxes: ftyp, meta, mdat; one AV1
item) and the AV1 sequence headers inside it: read to check a file before libavif and the AV1
decoder allocate frames."""

from __future__ import annotations

import itertools
import struct

from bench.codec import PayloadError
from bench_codecs.containers import Field, Layout, check_size, need

# --- AVIF: ISOBMFF boxes, one AV1 item -----------------------------------------------------------


def _boxes(data: bytes, start: int, end: int):
    """(type, box start, payload start, box end) of the boxes in data[start:end]."""
    i = start
    while i < end:
        need(data, i + 8, "a box header")
        size, kind = struct.unpack_from(">I4s", data, i)
        head = 8
        if size == 1:
            need(data, i + 16, "a box header")
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
            need(data, body + 8, "the iinf box")
            count = struct.unpack_from(">H" if data[body] == 0 else ">I", data, body + 4)[0]
            if count != 1:
                raise PayloadError(f"AVIF file has {count} items, not one image")
        elif kind == b"iprp":
            for k2, _, b2, e2 in _boxes(data, body, end):
                for k3, _, b3, _ in _boxes(data, b2, e2) if k2 == b"ipco" else ():
                    if k3 == b"ispe":
                        need(data, b3 + 12, "the ispe box")
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
    frames = _check_av1(data, extent[0], extent[0] + extent[1])
    # libavif writes the image size twice, in ispe and as the AV1 maximum frame size. Neither is
    # checksummed, and a flip in either alone makes libavif return an image of another size.
    if frames != {size}:
        said = " and ".join(f"{h}x{w}" for h, w in sorted(frames)) or "nothing"
        raise PayloadError(f"AVIF ispe says {size[0]}x{size[1]}, the AV1 sequence header {said}")
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


def _check_av1(data: bytes, start: int, end: int) -> set[tuple[int, int]]:
    """Walk the item's OBUs, which libavif writes with sizes, to exactly the item's end. Every
    sequence header's maximum frame size must fit MAX_SIDE: the AV1 decoder allocates frames from
    it, whatever ispe says. Returns those sizes (height, width)."""
    i, frames = start, set()
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
            frames.add((h, w))
        i = j + size
    return frames


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
