"""A content-addressed, append-only cache of STAR scores, so re-runs reuse guardrail work.

One entry per (guardrail, row): the cut offsets and P(safe) of every prefix. The key is a
sha256 over everything the scores depend on:

    guardrail fingerprint  weights/revision + template + labels/options, and the
                           star.transform with its knobs when it is `authors` (opaque string
                           that every guardrail exposes as `fingerprint`), so raw and authors
                           scores never share an entry
    chunk fingerprint      chunking config (`chunk_fingerprint`: unit, size and, for the
                           `tokens` unit, the trainee tokenizer)
    text                   prompt and response as the guardrail sees them

Fields are length-prefixed before hashing, so ("ab", "c") and ("a", "bc") never collide, and
prompt/response texts themselves are not stored (only their hash).

Storage: Parquet part files under `root`. `flush()` writes one new part with a unique name
(time, pid, uuid), first under a hidden temporary name, then `os.replace`d into place, so
processes that write to the same cache never touch each other's files and a reader never sees
a half-written part. Opening the cache reads every part into memory; parts are read in name
(= time) order and a later entry for the same key wins.
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config.fields import check_choice
from ..config.schema import ChunkConfig

CACHE_VERSION = "stardss-star-cache/1"
"""Part of every key: bump it when what an entry means changes, and old entries stop matching."""

_PART_PREFIX = "part-"
_PART_SUFFIX = ".parquet"

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("guard_fp", pa.string()),
    ("chunk_fp", pa.string()),
    ("text_sha256", pa.string()),
    ("created", pa.timestamp("ms", tz="UTC")),
    ("cuts", pa.list_(pa.int64())),
    ("scores", pa.list_(pa.float64())),
])

Entry = tuple[list[int], np.ndarray]


def _hash_fields(*fields: str) -> str:
    h = hashlib.sha256()
    for f in fields:
        b = f.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


def _flat_lists(col: pa.ChunkedArray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list column, as numpy: row i is values[offsets[i]:offsets[i+1]]."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if arr.null_count:
        raise ValueError("null list in a STAR cache part")
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return offsets - offsets[0], values[offsets[0]:offsets[-1]]


def text_hash(prompt: str, response: str) -> str:
    """sha256 of the (prompt, response) pair, each length-prefixed."""
    return _hash_fields(prompt, response)


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


def tokenizer_fingerprint(tokenizer) -> str:
    """Content hash of what `tokens` cuts depend on: the trainee tokenizer's full definition
    (vocab, merges, normalizer, pre-tokenizer, added tokens) and its chat template (the response
    is tokenised as the template renders it). For a slow tokenizer without a serialisable
    backend, falls back to its class, name_or_path and vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        vocab = tokenizer.get_vocab()
        body = "|".join([type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")),
                         *(f"{t}={i}" for t, i in sorted(vocab.items()))])
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):
        template = repr(template)
    return "tok-sha256:" + _hash_fields(body, template)[:32]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    """Entries put since open that were new or changed (what the next flushes write)."""
    loaded: int = 0
    """Entries read from part files (before de-duplication by key)."""
    parts: int = 0
    """Part files read."""

    def as_dict(self) -> dict:
        return dict(hits=self.hits, misses=self.misses, stored=self.stored,
                    loaded=self.loaded, parts=self.parts)


class StarCache:
    """In-memory dict key -> (cuts, P(safe) per prefix) backed by append-only Parquet parts.

    Use as a context manager (flushes on exit, also after an exception: finished scores stay
    valid), or call `flush()` yourself. `flush_every=N` flushes whenever N entries are pending,
    so a long scoring run that dies keeps most of its work.
    """

    def __init__(self, root: str | Path, flush_every: Optional[int] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.stats = CacheStats()
        self._data: dict[str, Entry] = {}
        self._pending: dict[str, tuple[list[int], np.ndarray, str, str, str, float]] = {}
        self._read_parts: set[str] = set()
        self.refresh()

    # --- keys -----------------------------------------------------------------------------
    @staticmethod
    def key(guard_fp: str, chunk_fp: str, prompt: str, response: str) -> str:
        return _hash_fields(CACHE_VERSION, guard_fp, chunk_fp, text_hash(prompt, response))

    # --- reading ----------------------------------------------------------------------------
    def part_files(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir()
                      if p.name.startswith(_PART_PREFIX) and p.name.endswith(_PART_SUFFIX))

    def refresh(self) -> int:
        """Read part files that appeared since the last read (e.g. written by another process).
        Returns the number of entries read. Unreadable parts are skipped with a warning."""
        n = 0
        for path in self.part_files():
            if path.name in self._read_parts:
                continue
            try:
                table = pq.read_table(path, columns=["key", "cuts", "scores"])
            except FileNotFoundError:  # removed by a concurrent compact(); its entries moved on
                continue
            except Exception as e:  # noqa: BLE001 - a cache must not fail the run
                warnings.warn(f"STAR cache: skipping unreadable part {path}: {e}")
                self._read_parts.add(path.name)
                continue
            self._read_parts.add(path.name)
            keys = table.column("key").to_pylist()
            cut_off, cut_vals = _flat_lists(table.column("cuts"), np.int64)
            sc_off, sc_vals = _flat_lists(table.column("scores"), np.float64)
            for i, k in enumerate(keys):
                # a pending (not yet flushed) local put is newer than anything on disk
                if k not in self._pending:
                    self._data[k] = (cut_vals[cut_off[i]:cut_off[i + 1]].tolist(),
                                     sc_vals[sc_off[i]:sc_off[i + 1]].copy())
            n += len(keys)
            self.stats.parts += 1
        self.stats.loaded += n
        return n

    def get(self, key: str) -> Optional[Entry]:
        """(cuts, scores) of the entry, copies the caller may modify; None on a miss."""
        entry = self._data.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return list(entry[0]), entry[1].copy()

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    # --- writing ----------------------------------------------------------------------------
    def put(self, key: str, cuts: Sequence[int], scores, *, guard_fp: str, chunk_fp: str,
            text_sha256: str = "") -> bool:
        """Add or replace an entry; returns False when an identical entry is already there
        (nothing new to write). Raises ValueError on a malformed entry (no cuts, cuts not
        strictly increasing, length mismatch, non-finite scores)."""
        cuts = [int(c) for c in cuts]
        arr = np.array(scores, dtype=np.float64).reshape(-1)
        if not cuts:
            raise ValueError("a STAR cache entry needs at least one cut")
        if len(arr) != len(cuts):
            raise ValueError(f"{len(cuts)} cuts but {len(arr)} scores")
        if cuts[0] < 0 or any(a >= b for a, b in zip(cuts, cuts[1:])):
            raise ValueError(f"cuts must be non-negative and strictly increasing: {cuts}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"non-finite P(safe) in {arr.tolist()}")
        old = self._data.get(key)
        if old is not None and old[0] == cuts and np.array_equal(old[1], arr):
            return False
        self._data[key] = (cuts, arr)
        self._pending[key] = (cuts, arr, guard_fp, chunk_fp, text_sha256, time.time())
        self.stats.stored += 1
        if self.flush_every and len(self._pending) >= self.flush_every:
            self.flush()
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> Optional[Path]:
        """Write pending entries as one new part file; returns its path (None if none pending)."""
        if not self._pending:
            return None
        items = list(self._pending.items())
        path = self._write_part([(k, *v) for k, v in items])
        self._read_parts.add(path.name)
        self._pending.clear()
        return path

    def _write_part(self, rows: list[tuple]) -> Path:
        cols = list(zip(*rows))  # key, cuts, scores, guard_fp, chunk_fp, text_sha256, created
        table = pa.table({
            "key": pa.array(cols[0], pa.string()),
            "guard_fp": pa.array(cols[3], pa.string()),
            "chunk_fp": pa.array(cols[4], pa.string()),
            "text_sha256": pa.array(cols[5], pa.string()),
            "created": pa.array([int(t * 1000) for t in cols[6]], pa.timestamp("ms", tz="UTC")),
            "cuts": pa.array(cols[1], pa.list_(pa.int64())),
            "scores": pa.array([a.tolist() for a in cols[2]], pa.list_(pa.float64())),
        }, schema=SCHEMA)
        name = f"{_PART_PREFIX}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex}{_PART_SUFFIX}"
        final = self.root / name
        tmp = self.root / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def compact(self) -> Optional[Path]:
        """Rewrite every entry this process has read or written as one part, then delete the
        parts that were read. Parts other processes write meanwhile are left alone. Inspection
        columns of entries read from disk are carried over."""
        self.flush()
        old = [p for p in self.part_files() if p.name in self._read_parts]
        if len(old) <= 1:
            return old[0] if old else None
        tables = []
        for p in old:
            try:
                tables.append(pq.read_table(p, schema=SCHEMA))
            except FileNotFoundError:
                continue
        if not tables:
            return None
        table = pa.concat_tables(tables)
        # keep the last row of each key (parts are in time order)
        keys = table.column("key").to_pylist()
        last = {k: i for i, k in enumerate(keys)}
        table = table.take(pa.array(sorted(last.values()), pa.int64()))
        name = f"{_PART_PREFIX}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex}{_PART_SUFFIX}"
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        for p in old:
            p.unlink(missing_ok=True)
            self._read_parts.discard(p.name)
        self._read_parts.add(final.name)
        return final

    def __enter__(self) -> "StarCache":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def __repr__(self) -> str:
        return f"StarCache({str(self.root)!r}, entries={len(self)}, pending={self.pending})"


def split_cached(cache: StarCache, guard_fps: Sequence[str], chunk_fp: str,
                 items: Iterable[tuple]) -> tuple[dict[str, Entry], list[str]]:
    """Look up a batch of rows for every guardrail.

    items: (row_id, prompt, response) or (row_id, prompt, response, cuts). With cuts given
    (cheap to compute: chunk_cuts), a cached entry whose cuts differ counts as a miss, a guard
    against an under-specified chunk fingerprint.
    Returns (served, to_score): served maps row_id -> (cuts, scores (n_guards, n_cuts)) for rows
    where every guardrail hit with identical cuts, in guard_fps order; to_score lists the other
    row ids in input order (each once).
    """
    if not guard_fps:
        raise ValueError("split_cached needs at least one guardrail fingerprint")
    served: dict[str, Entry] = {}
    to_score: list[str] = []
    seen: set[str] = set()
    for item in items:
        row_id, prompt, response = item[0], item[1], item[2]
        want = [int(c) for c in item[3]] if len(item) > 3 and item[3] is not None else None
        if row_id in seen:
            continue
        seen.add(row_id)
        cuts, rows = None, []
        for fp in guard_fps:
            hit = cache.get(cache.key(fp, chunk_fp, prompt, response))
            if hit is None or (cuts is not None and hit[0] != cuts) or \
                    (want is not None and hit[0] != want):
                rows = None
                break
            cuts = hit[0]
            rows.append(hit[1])
        if rows is None:
            to_score.append(row_id)
        else:
            served[row_id] = (cuts, np.stack(rows))
    return served, to_score


def store_scored(cache: StarCache, guard_fps: Sequence[str], chunk_fp: str,
                 scored: Mapping[str, tuple[str, str, Sequence[int], object]]) -> int:
    """Put freshly scored rows: row_id -> (prompt, response, cuts, scores (n_guards, n_cuts)).
    Returns the number of entries that were new or changed. Does not flush."""
    n = 0
    for row_id, (prompt, response, cuts, scores) in scored.items():
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim == 1 and len(guard_fps) == 1:
            arr = arr[None, :]
        if arr.shape != (len(guard_fps), len(cuts)):
            raise ValueError(f"row {row_id!r}: scores shape {arr.shape}, expected "
                             f"({len(guard_fps)}, {len(cuts)})")
        if cuts and cuts[-1] != len(response):
            raise ValueError(f"row {row_id!r}: last cut {cuts[-1]} != len(response) "
                             f"{len(response)}")
        th = text_hash(prompt, response)
        for fp, row in zip(guard_fps, arr):
            key = _hash_fields(CACHE_VERSION, fp, chunk_fp, th)
            n += cache.put(key, cuts, row, guard_fp=fp, chunk_fp=chunk_fp, text_sha256=th)
    return n
