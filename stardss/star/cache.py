"""A content-addressed, append-only cache of STAR scores, so re-runs reuse guardrail work.

One entry per (guardrail, row): the cut offsets and P(safe) of every prefix. The key is a
sha256 over everything the scores depend on:

    guardrail fingerprint  weights/revision + template + labels/options, and the
                           star.transform with its knobs when it is `authors` (opaque string
                           that every guardrail exposes as `fingerprint`), so raw and authors
                           scores never share an entry
    chunk fingerprint      chunking config (`chunk_fingerprint`: unit, size and, for the
                           `tokens` unit, the trainee tokenizer)
    text                   prompt and response as the guardrail sees them, and the
                           conversation before the prompt when there is one (a turn of a
                           multi-turn row: cache_rows.conversation_hash; a single exchange
                           keeps the key it always had)

Fields are length-prefixed before hashing, so ("ab", "c") and ("a", "bc") never collide, and
prompt/response texts themselves are not stored (only their hash).

Storage: Parquet part files under `root`. `flush()` writes one new part with a unique name
(time, pid, uuid), first under a hidden temporary name, then `os.replace`d into place, so
processes that write to the same cache never touch each other's files and a reader never sees
a half-written part. Parts are read in name (= time) order and a later entry for the same key
wins. In memory the entries are flat numpy arrays with a sorted index (star/cache_store.py), so a
1M-row cache opens and serves a lookup of every row in seconds (benchmarks/star_cache_scale.py).
"""
from __future__ import annotations

import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..data.tokenizer import tokenizer_fingerprint  # noqa: F401 - re-exported
from ..hashing import hash_fields as _hash_fields
from .cache_store import (  # noqa: F401 - keys and fingerprints are imported from here too
    CACHE_VERSION,
    CacheSplit,
    Entry,
    Index,
    Segment,
    chunk_fingerprint,
    column_digests,
    digest,
    digests,
    last_of_each,
    split_batch,
    text_hash,
)

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

MERGE_PARTS = 64
"""A writer merges its own parts once this many of one size have piled up (see flush)."""
_SMALL_PART = 4096
"""Parts of at most this many rows (a step's, a flush_every's) are merged when they pile up."""


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
    """Key -> (cuts, P(safe) per prefix), backed by append-only Parquet parts and held as flat
    arrays with a sorted index (star/cache_store.py); entries not yet flushed in a dict.

    Use as a context manager (flushes on exit, also after an exception: finished scores stay
    valid), or call `flush()` yourself. `flush_every=N` flushes whenever N entries are pending,
    so a long scoring run that dies keeps most of its work.
    """

    def __init__(self, root: str | Path, flush_every: Optional[int] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.stats = CacheStats()
        self._index = Index()
        self._pending: dict[str, tuple[list[int], np.ndarray, str, str, str, float]] = {}
        self._read_parts: set[str] = set()
        self._own: dict[int, list[str]] = {}  # merge level -> parts written here, not merged
        self._own_rows: list[tuple] = []  # the rows of the level-0 parts in _own
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
        Returns the number of entries read. Unreadable parts are skipped with a one-line
        warning naming the file."""
        n = 0
        for path in self.part_files():
            if path.name in self._read_parts:
                continue
            try:
                segment = Segment.of_table(pq.read_table(path, columns=["key", "cuts", "scores"]))
            except FileNotFoundError:  # removed by a concurrent compact(); its entries moved on
                continue
            except Exception as e:  # noqa: BLE001 - a cache must not fail the run
                warnings.warn(f"STAR cache: skipping unreadable part {path}: "
                              f"{' '.join(str(e).split())}")
                self._read_parts.add(path.name)
                continue
            self._read_parts.add(path.name)
            self._index.add(segment)  # a pending (not yet flushed) put still wins: see _lookup
            n += len(segment)
            self.stats.parts += 1
        if n:
            self._index.update()  # once per read, so a put compares against what is on disk
            # Arrow's allocator keeps the parts' freed read buffers (~2x the entries at 1M
            # rows) unless asked to give them back
            pa.default_memory_pool().release_unused()
        self.stats.loaded += n
        return n

    def _lookup(self, key: str) -> Optional[Entry]:
        pending = self._pending.get(key)
        if pending is not None:
            return list(pending[0]), pending[1].copy()
        pos = int(self._index.locate(np.array([digest(key)], "S32"))[0])
        return None if pos < 0 else self._index.entry(pos)

    def get(self, key: str) -> Optional[Entry]:
        """(cuts, scores) of the entry, copies the caller may modify; None on a miss."""
        entry = self._lookup(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return entry

    def __contains__(self, key: str) -> bool:
        return key in self._pending or \
            self._index.locate(np.array([digest(key)], "S32"))[0] >= 0

    def __len__(self) -> int:
        n = len(self._index)
        if self._pending:
            n += int(np.sum(self._index.locate(digests(list(self._pending))) < 0))
        return n

    # --- writing ----------------------------------------------------------------------------
    def put(self, key: str, cuts: Sequence[int], scores, *, guard_fp: str, chunk_fp: str,
            text_sha256: str = "") -> bool:
        """Add or replace an entry; returns False when an identical entry is already there
        (nothing new to write). Raises ValueError on a malformed entry (a key that is not a
        sha256 hex digest, no cuts, cuts not strictly increasing, length mismatch, non-finite
        scores)."""
        cuts = [int(c) for c in cuts]
        arr = np.array(scores, dtype=np.float64).reshape(-1)
        d = digest(key)
        if not cuts:
            raise ValueError("a STAR cache entry needs at least one cut")
        if len(arr) != len(cuts):
            raise ValueError(f"{len(cuts)} cuts but {len(arr)} scores")
        if cuts[0] < 0 or any(a >= b for a, b in zip(cuts, cuts[1:])):
            raise ValueError(f"cuts must be non-negative and strictly increasing: {cuts}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"non-finite P(safe) in {arr.tolist()}")
        if self._same(key, d, cuts, arr):
            return False
        self._pending[key] = (cuts, arr, guard_fp, chunk_fp, text_sha256, time.time())
        self.stats.stored += 1
        if self.flush_every and len(self._pending) >= self.flush_every:
            self.flush()
        return True

    def _same(self, key: str, d: bytes, cuts: list[int], arr: np.ndarray) -> bool:
        """Is the newest entry of `key` this one? Looks at what the index covers (every part
        read) without indexing the parts flushed here since (no index rebuild per put in a
        streaming run, which flushes every step), and rebuilds only to confirm a match: a
        newer flushed entry may differ. A key put again after its own flush is written again
        (a duplicate row on disk, never a wrong answer)."""
        old = self._pending.get(key)
        if old is not None:
            return old[0] == cuts and np.array_equal(old[1], arr)
        for fresh in (False, True):
            pos = int(self._index.locate(np.array([d], "S32"), fresh=fresh)[0])
            if pos < 0:
                return False
            old_cuts, old_scores = self._index.entry(pos)
            if old_cuts != cuts or not np.array_equal(old_scores, arr):
                return False
            if not self._index.stale:
                return True
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> Optional[Path]:
        """Write pending entries as one new part file; returns its path (None if none pending).
        Once MERGE_PARTS parts written here have piled up, they are merged into one (the
        merged part is in place before its sources go), so a streaming run that flushes every
        step leaves a few dozen parts, not one per step."""
        if not self._pending:
            return None
        keys = list(self._pending)
        entries = [self._pending[k] for k in keys]
        rows = [(k, *e) for k, e in zip(keys, entries)]
        path = self._write_part(rows)
        self._read_parts.add(path.name)
        self._index.add(Segment.of_entries(keys, entries))
        self._pending.clear()
        if len(rows) <= _SMALL_PART:  # a bigger one is no pile-up
            self._own_rows.extend(rows)
            self._note_own(path.name, 0)
        return path

    def _note_own(self, name: str, level: int) -> None:
        """Merge MERGE_PARTS parts of one level (level l+1 = a merge of level-l parts): each
        row is rewritten once per level, O(log(flushes)) times in all. Level 0 (one step's
        rows each) merges from the rows it kept (no reading back); higher levels from disk."""
        names = self._own.setdefault(level, [])
        names.append(name)
        if len(names) < MERGE_PARTS:
            return
        self._own[level] = []
        if level == 0:
            rows, self._own_rows = self._own_rows, []
            merged = self._write_part(list({r[0]: r for r in rows}.values()))  # last put wins
            for n in names:
                (self.root / n).unlink(missing_ok=True)
                self._read_parts.discard(n)
            self._read_parts.add(merged.name)
        else:
            merged = self._rewrite([self.root / n for n in names])
        if merged is not None:
            self._note_own(merged.name, level + 1)

    def _write_part(self, rows: list[tuple]) -> Path:
        cols = list(zip(*rows))  # key, cuts, scores, guard_fp, chunk_fp, text_sha256, created
        return self._write_table(pa.table({
            "key": pa.array(cols[0], pa.string()),
            "guard_fp": pa.array(cols[3], pa.string()),
            "chunk_fp": pa.array(cols[4], pa.string()),
            "text_sha256": pa.array(cols[5], pa.string()),
            "created": pa.array([int(t * 1000) for t in cols[6]], pa.timestamp("ms", tz="UTC")),
            "cuts": pa.array(cols[1], pa.list_(pa.int64())),
            "scores": pa.array([a.tolist() for a in cols[2]], pa.list_(pa.float64())),
        }, schema=SCHEMA))

    def _write_table(self, table: pa.Table) -> Path:
        """A new part under a unique name, written under a hidden name first (never seen half
        written)."""
        name = f"{_PART_PREFIX}{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex}{_PART_SUFFIX}"
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def _rewrite(self, parts: list[Path]) -> Optional[Path]:
        """The newest entry of each key in `parts` (in time order) as one new part, then the
        parts deleted. Inspection columns are carried over. Memory is unchanged: the index
        already holds these entries."""
        tables = []
        for p in parts:
            try:
                tables.append(pq.read_table(p, schema=SCHEMA))
            except FileNotFoundError:  # a concurrent compact() took it
                continue
        if not tables:
            return None
        table = pa.concat_tables(tables)
        table = table.take(pa.array(last_of_each(column_digests(table.column("key")))))
        final = self._write_table(table)
        for p in parts:
            p.unlink(missing_ok=True)
            self._read_parts.discard(p.name)
        self._read_parts.add(final.name)
        return final

    def compact(self) -> Optional[Path]:
        """Rewrite every entry this process has read or written as one part, then delete the
        parts that were read. Parts other processes write meanwhile are left alone."""
        self.flush()
        old = [p for p in self.part_files() if p.name in self._read_parts]
        if len(old) <= 1:
            return old[0] if old else None
        self._own.clear()
        self._own_rows.clear()
        return self._rewrite(old)

    def __enter__(self) -> "StarCache":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def __repr__(self) -> str:
        return f"StarCache({str(self.root)!r}, entries={len(self)}, pending={self.pending})"


# The row-level side (lookups and puts of scored rows) lives in cache_rows.py.
from .cache_rows import (  # noqa: E402,F401 - imported from here too
    conversation_hash,
    split_cached,
    split_rows,
    store_scored,
)
