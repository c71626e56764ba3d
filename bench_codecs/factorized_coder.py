"""The table coder of the `factorized` codec (bench_codecs.factorized): latent vectors under fixed
integer tables, one range-coder stream per vector, with as little Python per image as it takes. The
per-symbol work is constriction's (about 20 ns to encode, 40 ns to decode a symbol here), so the
coder makes few calls per image: rows of similar table width share one call (`_plan` chooses the
groups), rows that share a table one concrete model, and "certain" rows (their table leaves their
usual value all but all the mass) are not coded at all when a flag says every one has it.

Stream body, after what `begin` writes: the certain flag, the escape flag (whether any value is
outside its table), the rows' symbols group by group (the certain rows' groups first, skipped
when the flag says so), the values of escaped rows as bench.entropy.TableCoder codes them, then
what `end` writes (the check symbol and the stream's ending).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bench import entropy
from bench.codec import PayloadError, Payloads

CERTAIN_MISS = 2**-10  # a latent is certain when its table leaves at most this to other values
ESCAPE_FREQ = (4095, 1)  # P(a payload has escaped latents) = 1/4096: 0.0004 bits when it has none
# The range coder's cost model for grouping rows by table width (ns, measured with constriction
# 0.5 on this machine: per call, per symbol, per table entry; decoding, which costs about twice
# encoding): rows of similar width share one call.
CALL_NS, SYMBOL_NS, ENTRY_NS = 700.0, 20.0, 1.2


class LatentCoder(entropy.TableCoder):
    """Latent vectors under fixed integer tables, one stream per vector, with little Python per
    image: a few constriction calls, each over a group of rows of similar table width (rows that
    share a table: one concrete model). `tables` has one row per distinct table, `kinds` names
    each coded row's table and `layout` where it sits in the latent vector. Escaped values are
    coded as bench.entropy.TableCoder codes them (its helpers are reused)."""

    def __init__(self, tables: entropy.Tables, kinds: np.ndarray, layout: np.ndarray):
        models = entropy.stream().model
        freq = np.ascontiguousarray(tables.freq, dtype=np.float64)
        totals, top = freq.sum(1), freq.max(1)
        size = tables.size.astype(np.int64)[kinds]
        certain = ((totals - top) <= CERTAIN_MISS * totals)[kinds]
        # P(some certain latent is not at its value), in integers: encoder and decoder agree.
        t, m = totals[kinds][certain].astype(np.int64), top[kinds][certain].astype(np.int64)
        miss = max(1, min(int(((t - m) * 2**16 // t + 1).sum()), 2**15))
        self.skip = models.Categorical(np.array([2**16 - miss, miss], np.float64), perfect=False)
        self.flag = models.Categorical(np.array(ESCAPE_FREQ, np.float64), perfect=False)
        self.side, self.bit_length = models.Uniform(2), models.Uniform(entropy.MAX_ESCAPE_BITS + 1)
        self.raw = {k: models.Uniform(1 << k) for k in range(1, 17)}
        self.groups, order, counts = [], [], np.bincount(kinds)
        for skippable in (True, False):  # the certain rows' groups first
            rows = np.flatnonzero(certain == skippable)
            shared = counts[kinds[rows]] >= entropy.SHARED_MIN
            spans = [rows[kinds[rows] == k] for k in np.unique(kinds[rows[shared]])]
            for members in spans:  # one concrete model for the many rows of one table
                k = kinds[members[0]]
                model = models.Categorical(freq[k, : tables.size[k]].copy(), perfect=False)
                self._group(order, members, model)
            rest = rows[~shared]
            for lo, hi in _plan(np.unique(size[rest], return_counts=True)):
                members = rest[(size[rest] >= lo) & (size[rest] <= hi)]
                table = np.zeros((len(members), hi))
                for i, r in enumerate(members):
                    table[i, : size[r]] = freq[kinds[r], : size[r]]
                self._group(order, members, entropy.categorical(), table)
            if skippable:
                self.certain, self.certain_groups = sum(map(len, order)), len(self.groups)
        self.order = np.concatenate(order) if order else np.zeros(0, np.int64)
        kinds = self.kinds = kinds[self.order]  # from here on, rows are in coded order
        self.layout = np.asarray(layout)[self.order]  # where each sits in the latent vector
        self.lo = tables.lo.astype(np.int64)[kinds]
        self.hi = self.lo + tables.size[kinds] - 2
        self.lo32, self.escape = self.lo.astype(np.int32), (tables.size[kinds] - 1).astype(np.int32)
        self.usual = freq.argmax(1)[kinds[: self.certain]].astype(np.int32)  # certain rows: symbol
        self.log2p = np.log2(np.maximum(freq, 1) / totals[:, None])  # per distinct table

    def _group(self, order: list, members: np.ndarray, model, probs=None) -> None:
        start = sum(map(len, order))
        order.append(members)
        self.groups.append((start, start + len(members), model, probs))

    def symbols(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, rows) latent vectors -> the symbols in coded order (escaped: the escape symbol),
        and where values are escaped."""
        sym = np.take(q, self.layout, axis=1)
        sym -= self.lo32
        escaped = sym.view(np.uint32) >= self.escape.view(np.uint32)  # below lo, or above hi
        np.copyto(sym, self.escape, where=escaped)
        return sym, escaped

    def encode(self, q: np.ndarray, begin: Callable, end: Callable) -> list[bytes]:
        """(N, rows) int32 latent vectors -> one stream each: `begin(encoder)` writes what comes
        first (the image size), `end(encoder)` ends the stream (bench.entropy.end_stream)."""
        sym, escaped = self.symbols(q)
        has_escape = escaped.any(1).tolist()
        certain = (sym[:, : self.certain] == self.usual).all(1).tolist()
        skip, flag, groups, first = self.skip, self.flag, self.groups, self.certain_groups
        out = []
        for i, row in enumerate(sym):
            enc = entropy.encoder()
            begin(enc)
            enc.encode(0 if certain[i] else 1, skip)
            enc.encode(1 if has_escape[i] else 0, flag)
            for a, b, model, probs in groups[first if certain[i] else 0 :]:
                if probs is None:
                    enc.encode(row[a:b], model)
                else:
                    enc.encode(row[a:b], model, probs)
            if has_escape[i]:
                for r in np.flatnonzero(escaped[i]):
                    for symbol, model in self._escape_symbols(int(q[i, self.layout[r]]), r):
                        enc.encode(symbol, model)
            out.append(end(enc))
        return out

    def decode(self, payloads: Payloads, begin: Callable, tag: int, codec: str, first: int = 0):
        """Payloads -> (N, rows) int32 latent vectors: `begin(decoder, index)` reads what comes
        first, then the check symbol `tag` ends each stream; payload i is named first + i."""
        n = len(payloads)
        sym = np.empty((n, len(self.order)), np.int32)
        sym[:, : self.certain] = self.usual
        escapes: dict[int, list[int]] = {}
        skip, flag, groups, certain_groups = self.skip, self.flag, self.groups, self.certain_groups
        words, offsets = entropy.batch_words(payloads)
        i = 0
        with entropy.refusing(codec, lambda: first + i):
            for i in range(n):
                data = payloads.buffer[payloads.offsets[i] : payloads.offsets[i + 1]]
                if not len(data):
                    raise PayloadError(f"{codec}: payload {first + i} is empty")
                dec = entropy.decoder(words[offsets[i] : offsets[i + 1]])
                begin(dec, first + i)
                start = certain_groups if dec.decode(skip) == 0 else 0
                escaped = dec.decode(flag)
                parts = [dec.decode(m, b - a) if p is None else dec.decode(m, p)
                         for a, b, m, p in groups[start:]]
                if parts:
                    np.concatenate(parts, out=sym[i, groups[start][0] :])
                if escaped:
                    where = np.flatnonzero(sym[i] == self.escape)
                    if not len(where):
                        raise PayloadError(f"{codec}: payload {first + i} says it has escaped values "
                                           "but has none")
                    escapes[i] = [self._decode_escape(dec, r) for r in where]
                entropy.check_end(dec, data, tag, codec, first + i)
        # What no encoder writes: a padding symbol of a width group, or an unannounced escape.
        unannounced = (sym == self.escape).any(1) & ~np.isin(np.arange(n), list(escapes))
        bad = (sym > self.escape).any(1) | unannounced
        if bad.any():
            raise PayloadError(f"{codec}: payload {first + int(np.argmax(bad))} is corrupt (a symbol outside "
                               "its table)")
        v = sym + self.lo32
        for i, values in escapes.items():
            v[i, sym[i] == self.escape] = values
        q = np.empty_like(v)
        q[:, self.layout] = v
        return q

    def bits(self, q: np.ndarray) -> np.ndarray:
        """-log2 of the tables' probability of each latent vector (escaped values: their escape
        symbol's), float64 (N,)."""
        sym, _ = self.symbols(q)
        return -self.log2p[self.kinds[None], sym].sum(1)


def _plan(widths_counts) -> list[tuple[int, int]]:
    """Rows' table widths (distinct, ascending) and counts -> groups (lowest, highest width) that
    minimise the modelled coding time: each group is one call, its rows padded to its widest."""
    widths, counts = (list(map(int, a)) for a in widths_counts)
    best, cut = [0.0] + [float("inf")] * len(widths), [0] * (len(widths) + 1)
    for j in range(1, len(widths) + 1):
        rows = 0
        for i in range(j - 1, -1, -1):
            rows += counts[i]
            cost = best[i] + CALL_NS + rows * (SYMBOL_NS + ENTRY_NS * widths[j - 1])
            if cost < best[j]:
                best[j], cut[j] = cost, i
    plan, j = [], len(widths)
    while j > 0:
        plan.append((widths[cut[j]], widths[j - 1]))
        j = cut[j]
    return plan[::-1]
