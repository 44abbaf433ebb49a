"""The STAR cache's keys and in-memory store: entries as flat numpy arrays, one sorted index,
and the batch lookup over it (star/cache.py is the cache itself: parts on disk, put, flush).

What a 1M-row cache costs (benchmarks/star_cache_scale.py) is set here: no Python object per
entry. Each part read or written is a segment, and one sorted index over all segments finds a
batch of keys with `np.searchsorted`:

    Segment   off (n + 1,) int64      entry i: cuts[off[i]:off[i+1]], scores[off[i]:off[i+1]]
              cuts (off[-1],) int64   (one P(safe) per cut, so one offsets array serves both)
              scores (off[-1],) float64
              keys (n,) S32           the keys' sha256 digests (32 bytes)
    Index     off, cuts, scores       every indexed segment's entries laid end to end
              keys (m,) S32           digests, sorted, unique
              pos (m,) int64          the entry number (into off) of each key's newest entry

A segment is merged into the index lazily (one copy of the flat arrays, one stable argsort of
the keys) by the first lookup after it was added, so the flushes of a streaming run (one per
step) cost no index work. A segment added later wins over an earlier one for the same key.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from itertools import chain, compress
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..config.fields import check_choice
from ..config.schema import ChunkConfig

Entry = tuple[list[int], np.ndarray]

CACHE_VERSION = "stardss-star-cache/1"
"""Part of every key: bump it when what an entry means changes, and old entries stop matching."""

_KEY = re.compile(r"[0-9a-f]{64}\Z")
_NIBBLE = np.full(256, 255, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def _field(s: str) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return len(b).to_bytes(8, "big") + b


def text_hash(prompt: str, response: str) -> str:
    """sha256 of the (prompt, response) pair, each length-prefixed (= hashing.hash_fields, in one
    update: this runs once per row of every lookup)."""
    return hashlib.sha256(_field(prompt) + _field(response)).hexdigest()


def row_keys(guard_fps: Sequence[str], chunk_fp: str, text_hashes: Sequence[str]) -> list[str]:
    """StarCache.key of every (text, guardrail), texts outer: the fixed fields are hashed once
    per guardrail and the hasher copied per row (the same digests as hashing.hash_fields)."""
    bases = [hashlib.sha256(_field(CACHE_VERSION) + _field(fp) + _field(chunk_fp))
             for fp in guard_fps]
    out = []
    for th in text_hashes:
        tail = _field(th)
        for base in bases:
            h = base.copy()
            h.update(tail)
            out.append(h.hexdigest())
    return out


def chunk_fingerprint(unit: str, size: int, tokenizer_fp: Optional[str] = None) -> str:
    """The chunk part of a key.

    `words`: cuts depend on the text only. `tokens`: cuts depend on the trainee's token offsets,
    so `tokenizer_fp` must identify the tokenizer *and* the chat template it renders the response
    with (e.g. name/revision + sha of the template). `full`: the single whole-response prefix
    that RS scores (size is ignored).
    """
    if unit == "full":
        return "full"
    check_choice(ChunkConfig, "unit", unit, "star.chunk.unit")
    if int(size) <= 0:
        raise ValueError(f"chunk size must be > 0, got {size}")
    if unit == "tokens":
        if not tokenizer_fp:
            raise ValueError("the tokens chunk unit needs a tokenizer fingerprint")
        return f"tokens:{int(size)}:{tokenizer_fp}"
    return f"words:{int(size)}"


def digest(key: str) -> bytes:
    """The 32 bytes of a key (a sha256 hex digest, as StarCache.key makes them)."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"a STAR cache key is a sha256 hex digest (StarCache.key), got {key!r}")
    return bytes.fromhex(key)


def digests(keys: Sequence[str]) -> np.ndarray:
    """(n,) S32 digests of keys made by StarCache.key (not re-validated: see `digest`)."""
    if not len(keys):
        return np.empty(0, "S32")
    return np.array([bytes.fromhex(k) for k in keys], dtype="S32")


def flat_lists(col: pa.ChunkedArray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list column, as numpy: row i is values[offsets[i]:offsets[i+1]]."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        raise ValueError("null list in a STAR cache part")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return offsets - offsets[0], values[offsets[0]:offsets[-1]]


def column_digests(col: pa.ChunkedArray) -> np.ndarray:
    """A part's key column as (n,) S32 digests, decoded without a Python object per row.
    ValueError when a key is not 64 lowercase hex characters."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if arr.null_count:
        raise ValueError("a null key")
    if n == 0:
        return np.empty(0, "S32")
    offsets = np.frombuffer(arr.buffers()[1], np.int64, n + 1, arr.offset * 8)
    if not np.all(np.diff(offsets) == 64):
        raise ValueError("a key that is not a sha256 hex digest")
    hexes = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].reshape(n, 64)
    nib = _NIBBLE[hexes]
    if np.any(nib == 255):
        raise ValueError("a key that is not a sha256 hex digest")
    return np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2]).view("S32").reshape(n)


def last_of_each(keys: np.ndarray) -> np.ndarray:
    """Row numbers, ascending, of the last row of each distinct key (the newest entry)."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    last = np.ones(len(k), bool)
    last[:-1] = k[1:] != k[:-1]
    return np.sort(order[last])


@dataclass
class Segment:
    """One part's entries (shapes in the module docstring)."""

    keys: np.ndarray
    off: np.ndarray
    cuts: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.off) - 1

    @classmethod
    def of_table(cls, table: pa.Table) -> "Segment":
        """ValueError on a malformed part (the caller names the file)."""
        cut_off, cuts = flat_lists(table.column("cuts"), np.int64)
        sc_off, scores = flat_lists(table.column("scores"), np.float64)
        if not np.array_equal(cut_off, sc_off):
            raise ValueError("an entry whose cuts and scores differ in length")
        return cls(column_digests(table.column("key")), cut_off, cuts, scores)

    @classmethod
    def of_entries(cls, keys: Sequence[str], entries: Sequence[tuple]) -> "Segment":
        """From (cuts, scores, ...) tuples already validated by StarCache.put."""
        lengths = np.array([len(e[0]) for e in entries], np.int64)
        off = np.zeros(len(entries) + 1, np.int64)
        np.cumsum(lengths, out=off[1:])
        cuts = np.fromiter((c for e in entries for c in e[0]), np.int64, int(off[-1]))
        scores = (np.concatenate([e[1] for e in entries]) if entries
                  else np.empty(0, np.float64))
        return cls(digests(keys), off, cuts, scores)


class Index:
    """Every indexed entry laid end to end in flat arrays, the sorted key index over them,
    and the segments added since the last `update` (not yet visible to lookups)."""

    def __init__(self):
        self.off = np.zeros(1, np.int64)  # (N + 1,): entry p is cuts/scores[off[p]:off[p+1]]
        self.cuts = np.empty(0, np.int64)
        self.scores = np.empty(0, np.float64)
        self._keys = np.empty(0, "S32")
        self._pos = np.empty(0, np.int64)
        self._new: list[Segment] = []

    def add(self, segment: Segment) -> None:
        self._new.append(segment)

    @property
    def stale(self) -> bool:
        return bool(self._new)

    def update(self) -> None:
        """Append the segments added since the last update (one copy of the flat arrays) and
        merge their keys into the index (one stable argsort)."""
        new, self._new = self._new, []
        if not new:
            return
        n0, t0 = len(self.off) - 1, int(self.off[-1])
        offs, base = [self.off[:-1]], t0
        for s in new:
            offs.append(s.off[:-1] + base)
            base += int(s.off[-1])
        self.off = np.concatenate(offs + [np.array([base], np.int64)])
        self.cuts = np.concatenate([self.cuts] + [s.cuts for s in new])
        self.scores = np.concatenate([self.scores] + [s.scores for s in new])
        keys = np.concatenate([self._keys] + [s.keys for s in new])
        pos = np.concatenate([self._pos, np.arange(n0, len(self.off) - 1, dtype=np.int64)])
        # stable: of a key's rows, the last (the newest segment's) wins
        order = np.argsort(keys, kind="stable")
        keys, pos = keys[order], pos[order]
        last = np.ones(len(keys), bool)
        last[:-1] = keys[1:] != keys[:-1]
        self._keys, self._pos = keys[last], pos[last]

    def locate(self, keys: np.ndarray, fresh: bool = True) -> np.ndarray:
        """(n,) int64 entry number of each digest's newest entry, -1 where absent.
        `fresh=False`: in what is indexed already (no update; newer segments unseen)."""
        if fresh:
            self.update()
        if not len(self._keys) or not len(keys):
            return np.full(len(keys), -1, np.int64)
        # sorted queries walk the index in order: half the cache misses of random ones
        order = np.argsort(keys) if len(keys) > 1 else np.zeros(1, np.int64)
        i = np.minimum(np.searchsorted(self._keys, keys[order]), len(self._keys) - 1)
        found = np.empty(len(keys), np.int64)
        found[order] = np.where(self._keys[i] == keys[order], self._pos[i], -1)
        return found

    def entry(self, pos: int) -> Entry:
        a, b = int(self.off[pos]), int(self.off[pos + 1])
        return self.cuts[a:b].tolist(), self.scores[a:b].copy()

    def same_cuts(self, pos: np.ndarray, want_off: np.ndarray, want: np.ndarray) -> np.ndarray:
        """(n,) bool: entry pos[i]'s cuts == want[want_off[i]:want_off[i+1]] (pos >= 0)."""
        a, b = self.off[pos], self.off[pos + 1]
        lengths = want_off[1:] - want_off[:-1]
        same = (b - a) == lengths
        if not same.any():
            return same
        # compare the rows of equal length element-wise, in one flat gather
        rows = np.flatnonzero(same)
        n = lengths[rows]
        row_of = np.repeat(np.arange(len(rows)), n)
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        bad = self.cuts[a[rows][row_of] + within] != want[want_off[rows][row_of] + within]
        same[rows[np.unique(row_of[bad])]] = False
        return same

    def __len__(self) -> int:
        self.update()
        return len(self._keys)


@dataclass
class CacheSplit:
    """What the cache serves of a batch of rows (split_rows), row ids in input order. Holds
    where each served row's entries are (int64 per guardrail), not the entries."""

    served: list[str]
    todo: list[str]
    cache: object
    """The StarCache looked in."""
    pos: np.ndarray
    """(len(served), n_guards) row numbers in the cache's index; -1 where `side` has it."""
    side: dict[int, list[Entry]]
    """Served row number -> its entries, for rows served from not yet flushed puts."""

    def entries(self) -> Iterator[tuple[str, list[int], np.ndarray]]:
        """(row id, cuts, scores (n_guards, n_cuts)) of each served row, read as asked (the
        offsets of 4096 rows gathered at once)."""
        index = self.cache._index
        off = index.off if len(index.off) > 1 else np.zeros(2, np.int64)  # all in `side`
        for start in range(0, len(self.served), 4096):
            pos = np.maximum(self.pos[start:start + 4096], 0)  # -1: the row is in `side`
            for j, (a, b) in enumerate(zip(off[pos].tolist(), off[pos + 1].tolist())):
                got = self.side.get(start + j)
                if got is not None:
                    cuts, scores = got[0][0], np.stack([e[1] for e in got])
                else:
                    cuts = index.cuts[a[0]:b[0]].tolist()
                    scores = (index.scores[a[0]:b[0]][None].copy() if len(a) == 1 else
                              np.stack([index.scores[x:y] for x, y in zip(a, b)]))
                yield self.served[start + j], cuts, scores


def split_batch(split, guard_fps: Sequence[str], chunk_fp: str, batch: list[tuple]) -> np.ndarray:
    """Sort one batch of (row id, text hash, expected cuts or None) into split.served /
    split.todo (input order) of a cache.CacheSplit; returns the served rows' positions. Rows
    with expected cuts and no pending put are checked with array operations, the others one
    by one (`_split_row`)."""
    cache, index, n_g = split.cache, split.cache._index, len(guard_fps)
    keys = row_keys(guard_fps, chunk_fp, [th for _, th, _ in batch])
    pos = index.locate(digests(keys)).reshape(len(batch), n_g)
    wants = [want for _, _, want in batch]
    slow = np.array([want is None for want in wants], bool)
    if cache._pending:
        slow |= np.array([k in cache._pending for k in keys], bool).reshape(-1, n_g).any(1)
    lengths = np.array([0 if want is None else len(want) for want in wants], np.int64)
    want_off = np.zeros(len(batch) + 1, np.int64)
    np.cumsum(np.where(slow, 0, lengths), out=want_off[1:])
    want = np.array(list(chain.from_iterable(compress(wants, (~slow).tolist()))), np.int64)
    # ok[i, g]: guardrail g has row i with the expected cuts
    ok = np.zeros((len(batch), n_g), bool)
    for g in range(n_g):
        rows = np.flatnonzero(~slow & (pos[:, g] >= 0))
        ok[rows, g] = _same_rows(index, pos[rows, g], rows, want_off, want)
    # stats as a per-guardrail walk stops: a hit counted per guardrail up to the first miss
    bad = ~ok
    first = np.where(bad.any(1), bad.argmax(1), n_g)
    fast = ~slow
    unserved = fast & (first < n_g)
    # the first bad guardrail had an entry (cuts differ): counted a hit; else a miss
    was_hit = unserved & (pos[np.arange(len(batch)), np.minimum(first, n_g - 1)] >= 0)
    cache.stats.hits += int(np.where(fast & ~unserved, n_g, 0).sum() + first[unserved].sum()
                            + was_hit.sum())
    cache.stats.misses += int((unserved & ~was_hit).sum())
    served = fast & ~unserved
    side = {}
    for i in np.flatnonzero(slow):
        entries = _split_row(cache, keys[i * n_g:(i + 1) * n_g], pos[i], batch[i][2])
        served[i] = entries is not None
        if entries is not None:
            side[i] = entries
    rank = len(split.served) + np.cumsum(served) - 1  # row i's number among split.served
    split.side.update((int(rank[i]), e) for i, e in side.items())
    ids = [row_id for row_id, _, _ in batch]
    split.served.extend(compress(ids, served.tolist()))
    split.todo.extend(compress(ids, (~served).tolist()))
    return pos[served]


def _same_rows(index: Index, pos: np.ndarray, rows: np.ndarray, want_off: np.ndarray,
               want: np.ndarray) -> np.ndarray:
    """Entries pos[j] against the expected cuts of batch rows rows[j]."""
    sub_off = np.zeros(len(rows) + 1, np.int64)
    lengths = want_off[rows + 1] - want_off[rows]
    np.cumsum(lengths, out=sub_off[1:])
    idx = np.repeat(want_off[rows] - sub_off[:-1], lengths) + np.arange(int(sub_off[-1]))
    return index.same_cuts(pos, sub_off, want[idx])


def _split_row(cache, keys: list[str], pos: np.ndarray,
               want: Optional[list[int]]) -> Optional[list[Entry]]:
    """One row's entries in guardrail order, or None (a miss, or cuts that differ from the
    expected or the first guardrail's); pending puts win over the index."""
    ref, got = want, []
    for key, p in zip(keys, pos):
        hit = cache._pending.get(key)
        if hit is not None:
            entry = (list(hit[0]), hit[1].copy())
        elif p >= 0:
            entry = cache._index.entry(int(p))
        else:
            cache.stats.misses += 1
            return None
        cache.stats.hits += 1
        if ref is None:
            ref = entry[0]
        elif entry[0] != ref:
            return None
        got.append(entry)
    return got
