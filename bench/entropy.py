"""The one entropy-coding layer, on constriction's range coder: integer probability tables, one
stream ending, word padding, and corrupt streams as PayloadError. Every entropy-coded codec
(built-in or plugin) codes through here, and this is the only module that imports constriction.

Why integer tables. A decoder must rebuild bit for bit the probabilities its encoder used, and
float network outputs differ across batch sizes, thread counts and devices. So a codec hands
constriction probabilities that are exact integers (float64 arrays of them, identical on both
sides), either fixed tables (`Tables`, `TableCoder`) or computed by integer arithmetic.

A stream is a sequence of big-endian 32-bit words. It ends (`finish`) at the point of the final
interval with the most trailing zero bits, whose trailing zero bytes are dropped; the decoder pads
with zeros (`words`). So a stream never ends in a zero byte (the empty stream is the one byte 0).

A range-coder stream has no end marker, and most byte strings decode to some symbols. So every
stream ends with a check symbol: TAG_BITS bits of a hash of the model that coded it (`end_stream`,
`check_end`). A payload of another model or setting is refused 15 times in 16, and so is a damaged
one: a flipped bit or a cut changes the symbols decoded after it, the check symbol among them.
Bytes appended to a stream mostly leave its symbols, and the image, as they were.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from bench.codec import MAX_SIDE, PayloadError, Payloads

_constriction = None
_categorical = None


def stream():
    """constriction.stream, imported on first use (`bench list` imports no codec library)."""
    global _constriction
    if _constriction is None:
        import constriction

        _constriction = constriction.stream
    return _constriction


def version() -> str:
    from importlib.metadata import version as installed

    return f"constriction {installed('constriction')}"


def categorical():
    """The categorical family whose probabilities come with each call (C-contiguous float64
    arrays of exact integers: constriction misreads any other layout)."""
    global _categorical
    if _categorical is None:
        _categorical = stream().model.Categorical(perfect=False)
    return _categorical


def encoder():
    return stream().queue.RangeEncoder()


@functools.lru_cache(maxsize=64)
def uniform(n: int):
    """The uniform model over 0 .. n - 1, built once per n (a model costs a microsecond to build)."""
    return stream().model.Uniform(int(n))


def words(data: bytes | np.ndarray) -> np.ndarray:
    """Payload bytes -> the coder's 32-bit words; the bytes `finish` dropped are zeros. Words
    (uint32, from `batch_words`) are taken as they are."""
    if isinstance(data, np.ndarray) and data.dtype == np.uint32:
        return data
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    padded = np.zeros(-(-len(data) // 4) * 4, np.uint8)
    padded[: len(data)] = data
    return padded.view(">u4").astype(np.uint32)


def batch_words(payloads: Payloads) -> tuple[np.ndarray, np.ndarray]:
    """Every payload's words (as `words` makes them) in one array, payload i's at
    offsets[i] .. offsets[i + 1]: one conversion for a batch instead of one per payload."""
    sizes = payloads.sizes
    offsets = np.concatenate([[0], np.cumsum(-(-sizes // 4))]).astype(np.int64)
    padded = np.zeros(4 * int(offsets[-1]), np.uint8)
    shift = np.repeat(4 * offsets[:-1] - payloads.offsets[:-1], sizes)
    padded[np.arange(len(payloads.buffer)) + shift] = payloads.buffer
    return padded.view(">u4").astype(np.uint32), offsets


def decoder(data: bytes | np.ndarray):
    return stream().queue.RangeDecoder(words(data))


def finish(enc) -> bytes:
    """The shortest stream that decodes to what `enc` encoded. Read as one big number (the decoder
    pads it with zero bytes), any value in the final interval decodes the same symbols;
    constriction's own seal writes about lower + 2**32. Take instead the value with the most
    trailing zero bits and drop its trailing zero bytes: 1.7 bytes less per stream on average.

    The interval, from the coder's state: the `pos` words before the 64-bit `lower` (some of them
    held back while a carry may still come: when the interval wraps past 2**64, constriction
    writes them at the seal, carried if its own point wrapped), then `lower`; it spans `range`
    from there. May be empty (every symbol certain, or the point 0)."""
    pos, (lower, rng) = enc.pos()
    written = enc.get_compressed()
    if lower and lower + rng < 1 << 64:  # the usual case, no carry: the same point, found faster
        high = lower + rng - 1
        top = ((lower - 1) ^ high).bit_length() - 1
        tail = (high >> top << top).to_bytes(8, "big").rstrip(b"\0")
        if tail:
            return written[:pos].astype(">u4").tobytes() + tail
    prefix = int.from_bytes(written[:pos].astype(">u4").tobytes(), "big")
    if lower + rng >= 1 << 64 and lower + (1 << 32) - 1 >= 1 << 64:
        prefix -= 1  # undo the seal's carry: the carry is part of the interval below
    low = prefix << 64 | lower
    high = low + rng - 1
    # The number in [low, high] with the most trailing zeros: high with every bit below the
    # highest bit where low - 1 and high differ cleared.
    top = ((low - 1) ^ high).bit_length() - 1 if low else high.bit_length()
    point = high >> top << top
    return point.to_bytes(4 * pos + 8, "big").rstrip(b"\0") or b"\0"


TAG_BITS = 4  # 1/16 of foreign or damaged streams pass the check symbol


def model_tag(*parts: bytes) -> int:
    """TAG_BITS bits of a hash of what defines a model's coding (its side information, settings)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()[0] & ((1 << TAG_BITS) - 1)


def _tag_model():
    return uniform(1 << TAG_BITS)


def end_stream(enc, tag: int) -> bytes:
    """The check symbol, then the shortest ending."""
    enc.encode(tag, _tag_model())
    return finish(enc)


def check_end(dec, data: bytes | np.ndarray, tag: int, codec: str, index: int) -> None:
    """After the last symbol: the check symbol must be the model's, and the stream must end as
    `finish` ends one; otherwise a PayloadError naming the payload."""
    got = int(dec.decode(_tag_model()))
    if got != tag:
        raise PayloadError(f"{codec}: payload {index} was made by another model or setting, or is "
                           f"corrupt (its check symbol is {got}, this model's {tag})")
    if len(data) > 1 and data[-1] == 0:
        raise PayloadError(f"{codec}: payload {index} ends in a zero byte, which no stream does "
                           "(bytes appended to it?)")


def encode_categorical(symbols: np.ndarray, probs: np.ndarray, tag: int) -> bytes:
    """One stream of `symbols` (int32), each under its own row of integer weights `probs`, ended
    by the check symbol `tag`."""
    enc = encoder()
    enc.encode(symbols, categorical(), probs)
    return end_stream(enc, tag)


def decode_each(decoders: list, probs: Sequence[np.ndarray], codec: str,
                index: Sequence[int]) -> np.ndarray:
    """One symbol from each decoder, under its own (1, K) row of weights: one C-level loop over
    the decoders' bound method, no Python frame per symbol. `index` names the payloads."""
    got: list[np.ndarray] = []
    decode = stream().queue.RangeDecoder.decode
    with refusing(codec, lambda: index[len(got)]):
        got.extend(map(decode, decoders, itertools.repeat(categorical()), probs))
    return np.concatenate(got)


def read_streams(payloads: Iterable[bytes], codec: str, tag: int, read: Callable) -> list:
    """`read(decoder)` on each payload's stream, then its end checked (`check_end`); anything the
    coder or `read` refuses is a PayloadError naming the payload."""
    out = []
    for i, data in enumerate(payloads):
        if not data:
            raise PayloadError(f"{codec}: payload {i} is empty")
        dec = decoder(data)
        with refusing(codec, i):
            out.append(read(dec))
            check_end(dec, data, tag, codec, i)
    return out


@contextmanager
def refusing(codec: str, index: int | Callable[[], int]) -> Iterator[None]:
    """Whatever the coder raises inside (constriction refuses some corrupt streams) becomes a
    PayloadError that names the codec and the payload; `index` may be computed when it fails."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, PayloadError) and str(exc).startswith(f"{codec}: "):
            raise
        i = index() if callable(index) else index
        raise PayloadError(f"{codec}: payload {i} is corrupt or truncated ({exc})") from None


# -- fixed integer tables ---------------------------------------------------------------------

@dataclass(frozen=True)
class Tables:
    """One integer table per row (a latent, say): row r codes the integers lo[r] .. lo[r] +
    size[r] - 2 with frequencies freq[r, :size[r] - 1], and an escape symbol (frequency
    freq[r, size[r] - 1]) for any value outside. Frequencies are at least 1 and sum to about
    2**precision."""

    lo: np.ndarray  # (rows,) int
    size: np.ndarray  # (rows,) int, at least 2
    freq: np.ndarray  # (rows, max size) int, zero beyond each row's size

    @classmethod
    def from_cdf(cls, cdf: np.ndarray, first: int, tail_mass: float, precision: int) -> Tables:
        """Tables from each row's CDF at the half-integer edges first - 1/2 .. first + G - 1/2
        ((rows, G + 1), float64): each row keeps the integers outside of which its density has
        at most tail_mass / 2 on either side, the rest of the mass goes to the escape."""
        rows, half_tail = len(cdf), tail_mass / 2
        pmf = np.diff(cdf, axis=1).clip(min=0)
        below, above = cdf[:, 0], 1 - cdf[:, -1]
        # Mass strictly below / above each grid point.
        left = below[:, None] + np.concatenate([np.zeros((rows, 1)), np.cumsum(pmf, 1)[:, :-1]], 1)
        right = above[:, None] + np.concatenate(
            [np.cumsum(pmf[:, ::-1], 1)[:, ::-1][:, 1:], np.zeros((rows, 1))], 1)
        los, his = [], []
        for r in range(rows):
            ok_lo, ok_hi = np.flatnonzero(left[r] <= half_tail), np.flatnonzero(right[r] <= half_tail)
            lo = int(ok_lo.max()) if len(ok_lo) else 0
            hi = int(ok_hi.min()) if len(ok_hi) else pmf.shape[1] - 1
            if hi < lo:
                lo = hi = int(np.argmax(pmf[r]))
            los.append(lo)
            his.append(hi)
        sizes = np.array(his) - np.array(los) + 2
        freq = np.zeros((rows, int(sizes.max())), np.int64)
        for r, (lo, hi) in enumerate(zip(los, his)):
            outside = pmf[r, :lo].sum() + pmf[r, hi + 1 :].sum() + below[r] + above[r]
            p = np.concatenate([pmf[r, lo : hi + 1], [outside]])
            freq[r, : len(p)] = np.maximum(1, np.round(p / p.sum() * (1 << precision)))
        return cls(np.array(los) + first, sizes, freq)

    def check(self, max_abs_lo: int) -> None:
        """Refuse tables a decoder could not use (a damaged or foreign checkpoint): ValueError."""
        lo, size, freq = (np.asarray(a) for a in (self.lo, self.size, self.freq))
        width = freq.shape[1] if freq.ndim == 2 else 0
        if width < 2 or len(size) != len(freq) or (size < 2).any() or (size > width).any():
            raise ValueError("its entropy tables are missing or malformed")
        used = np.arange(width)[None] < size[:, None]
        if (freq[used] < 1).any() or (np.abs(lo) > max_abs_lo).any():
            raise ValueError("its entropy tables hold impossible values")


SHARED_MIN = 16  # rows with byte-identical tables (dead latents) share one constriction model
MAX_ESCAPE_BITS = 32  # escape codes carry d + 1 in at most this many bits


class TableCoder:
    """Codes int32 vectors of `rows` values under fixed integer `Tables`, inside a stream the
    caller begins and ends: one symbol per row in a fixed order, then the value of every escaped
    row (side bit, bit length, raw bits: any int32 is representable, nothing is clipped)."""

    def __init__(self, tables: Tables):
        models = stream().model
        self.lo, self.size = tables.lo.astype(np.int64), tables.size.astype(np.int64)
        self.hi = self.lo + self.size - 2  # the last regular value; symbol size-1 is the escape
        self.escape = self.size - 1
        probs = np.ascontiguousarray(tables.freq, dtype=np.float64)
        rows = len(self.size)
        keys = [self.lo[r].tobytes() + probs[r, : self.size[r]].tobytes() for r in range(rows)]
        _, which, counts = np.unique(np.array(keys, dtype=object), return_inverse=True,
                                     return_counts=True)
        shared = counts[which] >= SHARED_MIN
        # Symbols are sent grouped: first the rows that share a table (one concrete model each),
        # then the others by table width rounded up to a power of two (one family call each, with
        # a narrow probability array).
        self.groups, order, start = [], [], 0
        for u in np.flatnonzero(counts >= SHARED_MIN):
            members = np.flatnonzero(which == u)
            r = members[0]
            model = models.Categorical(np.ascontiguousarray(probs[r, : self.size[r]]), perfect=False)
            self.groups.append((start, start + len(members), model, None))
            order.append(members)
            start += len(members)
        family = categorical()
        bucket = np.maximum(2, 2 ** np.ceil(np.log2(self.size))).astype(np.int64)
        for b in np.unique(bucket[~shared]):
            members = np.flatnonzero((bucket == b) & ~shared)
            table = np.zeros((len(members), int(b)))
            w = min(int(b), probs.shape[1])
            table[:, :w] = probs[members, :w]
            self.groups.append((start, start + len(members), family, np.ascontiguousarray(table)))
            order.append(members)
            start += len(members)
        self.order = np.concatenate(order)
        self.side = models.Uniform(2)
        self.bit_length = models.Uniform(MAX_ESCAPE_BITS + 1)
        self.raw = {k: models.Uniform(1 << k) for k in range(1, 17)}

    # escape values: side bit, bit length of d + 1 (d = distance beyond [lo, hi]), its low bits

    def _escape_symbols(self, v: int, r: int) -> list:
        side, d = (0, self.lo[r] - 1 - v) if v < self.lo[r] else (1, v - self.hi[r] - 1)
        m = int(d) + 1
        nb = m.bit_length()
        out = [(side, self.side), (nb - 1, self.bit_length)]
        rest, k = m - (1 << (nb - 1)), nb - 1
        while k > 0:
            take = min(16, k)
            out.append(((rest >> (k - take)) & ((1 << take) - 1), self.raw[take]))
            k -= take
        return out

    def _decode_escape(self, dec, r: int) -> int:
        side = int(dec.decode(self.side))
        nb = int(dec.decode(self.bit_length)) + 1
        if nb > MAX_ESCAPE_BITS:
            raise PayloadError(f"escape code with {nb} bits (at most {MAX_ESCAPE_BITS})")
        rest, k = 0, nb - 1
        while k > 0:
            take = min(16, k)
            rest = (rest << take) | int(dec.decode(self.raw[take]))
            k -= take
        d = (1 << (nb - 1)) + rest - 1
        v = int(self.lo[r]) - 1 - d if side == 0 else int(self.hi[r]) + 1 + d
        if not -(2**31) <= v < 2**31:
            raise PayloadError(f"escaped value {v} outside int32")
        return v

    def encode(self, q: np.ndarray, end: Callable, begin: Callable = lambda enc: None) -> list[bytes]:
        """(N, rows) int32 -> one stream per vector: `begin(encoder)` writes what comes first
        (a size, say), `end(encoder)` finishes the stream (`end_stream` with the model's tag)."""
        sym = q - self.lo
        escaped = (sym < 0) | (sym > self.hi - self.lo)
        sym = np.where(escaped, self.escape, sym).astype(np.int32)
        flat = np.ascontiguousarray(sym[:, self.order])
        with_escapes = set(np.flatnonzero(escaped.any(1)).tolist())
        out = []
        for i in range(len(q)):
            row, enc = flat[i], encoder()
            begin(enc)
            for a, b, model, probs in self.groups:
                if probs is None:
                    enc.encode(row[a:b], model)
                else:
                    enc.encode(row[a:b], model, probs)
            if i in with_escapes:
                for r in np.flatnonzero(escaped[i]):
                    for s, model in self._escape_symbols(int(q[i, r]), r):
                        enc.encode(s, model)
            out.append(end(enc))
        return out

    def read(self, dec) -> np.ndarray:
        """One vector from a stream positioned at its first symbol; what no encoder writes (a
        padding symbol of a width bucket, an escape beyond int32) is a PayloadError."""
        row = np.empty(len(self.size), np.int32)
        for a, b, model, probs in self.groups:
            row[a:b] = dec.decode(model, b - a) if probs is None else dec.decode(model, probs)
        sym = np.empty_like(row)
        sym[self.order] = row
        if (sym > self.escape).any():
            raise PayloadError("a symbol outside its table")
        q = sym + self.lo.astype(np.int32)
        for r in np.flatnonzero(sym == self.escape):  # escape values follow the regular symbols
            q[r] = self._decode_escape(dec, r)
        return q


# -- image sizes ----------------------------------------------------------------------------------

def encode_size(enc, shape: tuple[int, int], default: tuple[int, int]) -> None:
    """An image's size at the start of its stream: one bit when it is `default` (the size the
    model was trained on), else 1 + 2 x 10 bits (sides 1 .. MAX_SIDE)."""
    same = tuple(shape) == tuple(default)
    enc.encode(0 if same else 1, uniform(2))
    if not same:
        for side in shape:
            enc.encode(int(side) - 1, uniform(MAX_SIDE))


def decode_size(dec, default: tuple[int, int]) -> tuple[int, int]:
    if int(dec.decode(uniform(2))) == 0:
        return tuple(default)
    return tuple(int(dec.decode(uniform(MAX_SIDE))) + 1 for _ in range(2))
