"""Images of any size for the fixed-size latent codecs (the autoencoders and their PCA controls),
whose transforms see one input size, the canvas: the training size (`tile_for`: a side longer than
TILED_ABOVE becomes TILE) rounded up to what the transform needs (edge-padded, so the padding
costs little to code). Training images larger than the canvas are cut into canvases too.

An image of the training size is sent as its canvases' latent bytes and nothing else. Any other
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
# Up to 64 pixels a side a transform sees the whole image (PCA's pixel covariance at 64x64 is
# 128 MiB); a longer side is cut in tiles of 32, which divide the common photograph sizes. A
# whole large image would need as many training images as latents (PCA) and weights that grow
# with its pixels: at 256x256, ae95 had 31 MB of them and coded each image in 39 bytes.
TILED_ABOVE, TILE = 64, 32


def tile_for(shape: tuple[int, int]) -> tuple[int, int]:
    """The tile a latent codec fitted on images of `shape` codes: the images' own size up to
    TILED_ABOVE a side, TILE on a longer side."""
    return tuple(int(side) if side <= TILED_ABOVE else TILE for side in shape)


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
    n = len(rows) // math.prod(grid(shape, tile))
    per_image = rows.reshape(n, -1)
    if tuple(shape) == tuple(trained):
        return Payloads.from_array(per_image)
    head = ((shape[0] - 1) << 12 | (shape[1] - 1)).to_bytes(HEADER, "big")
    return Payloads.from_array(np.concatenate(
        [np.broadcast_to(np.frombuffer(head, np.uint8), (n, HEADER)), per_image], axis=1))


def unpack(payloads, k: int, trained: tuple[int, int], tile: tuple[int, int],
           codec: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Payloads of one image size -> (latent rows (N * tiles, k), the size)."""
    payloads = payloads_to_decode(payloads, codec)
    plain = math.prod(grid(trained, tile)) * k  # an image of the training size
    if payloads.sizes[0] == plain:
        return fixed_rate_rows(payloads, plain, codec).reshape(-1, k), tuple(trained)
    first = payloads[0]
    if len(first) < HEADER:
        raise PayloadError(f"{codec}: payload 0 has {len(first)} bytes; its payloads have {plain}, or "
                           f"a {HEADER}-byte size header and {k} per tile")
    value = int.from_bytes(first[:HEADER], "big")
    shape = (value >> 12) + 1, (value & 0xFFF) + 1
    tiles = math.prod(grid(shape, tile))
    if len(first) != HEADER + tiles * k:
        raise PayloadError(f"{codec}: payload 0 has {len(first)} bytes: neither {plain} (an image of "
                           f"{trained[0]}x{trained[1]}) nor the {HEADER + tiles * k} that its size "
                           f"header ({shape[0]}x{shape[1]}, {tiles} tiles) calls for")
    rows = fixed_rate_rows(payloads, HEADER + tiles * k, f"{codec} ({shape[0]}x{shape[1]} images)")
    if (rows[:, :HEADER] != rows[0, :HEADER]).any():
        i = int(np.flatnonzero((rows[:, :HEADER] != rows[0, :HEADER]).any(1))[0])
        raise PayloadError(f"{codec}: payload {i} is of another size than payload 0; a batch shares "
                           "one size")
    return np.ascontiguousarray(rows[:, HEADER:]).reshape(len(rows) * tiles, k), shape
