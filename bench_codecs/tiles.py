"""Images of any size for the fixed-size latent codecs (the autoencoders and their PCA controls),
whose transforms see one input size, the canvas: the training size rounded up to what the
transform needs (edge-padded, so the padding costs little to code).

An image of the training size is sent as one canvas of latent bytes and nothing else. Any other
image is edge-padded to a whole number of canvases, each sent as its latent bytes, after a 3-byte
header with its size (12 bits per side): the padding and the header are in its bytes. Payload
lengths tell the two apart (3 + tiles x latent is never a multiple of the latent length for
latents of more than 3 bytes).
"""

from __future__ import annotations

import math

import numpy as np

from bench.codec import PayloadError, Payloads, fixed_rate_rows, payloads_to_decode

HEADER = 3


def canvas(shape: tuple[int, int], multiple: int = 1) -> tuple[int, int]:
    return tuple(math.ceil(side / multiple) * multiple for side in shape)


def grid(shape: tuple[int, int], tile: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(shape[0] / tile[0]), math.ceil(shape[1] / tile[1])


def split(images: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N * tiles, th, tw): each image edge-padded to whole tiles, tiles row-major."""
    n, h, w = images.shape
    gh, gw = grid((h, w), tile)
    padded = np.pad(images, ((0, 0), (0, gh * tile[0] - h), (0, gw * tile[1] - w)), mode="edge")
    tiles = padded.reshape(n, gh, tile[0], gw, tile[1]).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(tiles.reshape(n * gh * gw, *tile))


def join(tiles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The inverse of split: (N * tiles, th, tw) -> (N, h, w), the padding cropped."""
    th, tw = tiles.shape[1:]
    gh, gw = grid(shape, (th, tw))
    n = len(tiles) // (gh * gw)
    whole = tiles.reshape(n, gh, gw, th, tw).transpose(0, 1, 3, 2, 4).reshape(n, gh * th, gw * tw)
    return np.ascontiguousarray(whole[:, : shape[0], : shape[1]])


def pack(rows: np.ndarray, shape: tuple[int, int], trained: tuple[int, int],
         tile: tuple[int, int]) -> Payloads:
    """Latent rows (N * tiles, k) of images of `shape` -> one payload per image."""
    if tuple(shape) == tuple(trained):
        return Payloads.from_array(rows)
    n = len(rows) // math.prod(grid(shape, tile))
    head = ((shape[0] - 1) << 12 | (shape[1] - 1)).to_bytes(HEADER, "big")
    per_image = rows.reshape(n, -1)
    return Payloads.from_array(np.concatenate(
        [np.broadcast_to(np.frombuffer(head, np.uint8), (n, HEADER)), per_image], axis=1))


def unpack(payloads, k: int, trained: tuple[int, int], tile: tuple[int, int],
           codec: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Payloads of one image size -> (latent rows (N * tiles, k), the size)."""
    payloads = payloads_to_decode(payloads, codec)
    if payloads.sizes[0] == k:
        return fixed_rate_rows(payloads, k, codec), tuple(trained)
    first = payloads[0]
    if len(first) < HEADER:
        raise PayloadError(f"{codec}: payload 0 has {len(first)} bytes; its payloads have {k}, or a "
                           f"{HEADER}-byte size header and {k} per tile")
    value = int.from_bytes(first[:HEADER], "big")
    shape = (value >> 12) + 1, (value & 0xFFF) + 1
    tiles = math.prod(grid(shape, tile))
    if len(first) != HEADER + tiles * k:
        raise PayloadError(f"{codec}: payload 0 has {len(first)} bytes: neither {k} (an image of "
                           f"{trained[0]}x{trained[1]}) nor the {HEADER + tiles * k} that its size "
                           f"header ({shape[0]}x{shape[1]}, {tiles} tiles) calls for")
    rows = fixed_rate_rows(payloads, HEADER + tiles * k, f"{codec} ({shape[0]}x{shape[1]} images)")
    if (rows[:, :HEADER] != rows[0, :HEADER]).any():
        i = int(np.flatnonzero((rows[:, :HEADER] != rows[0, :HEADER]).any(1))[0])
        raise PayloadError(f"{codec}: payload {i} is of another size than payload 0; a batch shares "
                           "one size")
    return np.ascontiguousarray(rows[:, HEADER:]).reshape(len(rows) * tiles, k), shape
