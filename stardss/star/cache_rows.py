"""The STAR cache seen row by row: which rows of a batch it serves (split_rows), and
putting freshly scored rows (store_scored), keyed by the text the guardrail saw.

A turn of a multi-turn row (data.train_turns=all) is judged with the conversation before its
prompt (ScoreRequest.context), so that conversation is part of its text hash; a request with
no context hashes exactly as before (text_hash of prompt and response), so existing entries
keep their keys.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..hashing import hash_fields as _hash_fields
from .cache_store import (
    CACHE_VERSION,
    CacheSplit,
    Entry,
    _field,
    split_batch,
    text_hash,
)

_LOOKUP_BATCH = 65536
"""Rows split_rows hashes and looks up at once (bounds its transient memory)."""


def conversation_hash(prompt: str, response: str, context: Sequence = ()) -> str:
    """text_hash of (prompt, response), with the context (the turns before the prompt) as a
    third length-prefixed field when there is one: never the hash of another (prompt,
    response) pair, nor of the same pair in another conversation."""
    if not context:
        return text_hash(prompt, response)
    turns = json.dumps([[m["role"], m["content"]] for m in context], ensure_ascii=False)
    return hashlib.sha256(_field(prompt) + _field(response) + _field(turns)).hexdigest()


def split_rows(cache, guard_fps: Sequence[str], chunk_fp: str,
               items: Iterable[tuple]) -> CacheSplit:
    """Look up a batch of rows for every guardrail in `cache` (a cache.StarCache),
    _LOOKUP_BATCH rows at a time (one vectorised index lookup each).

    items: (row_id, prompt, response), (row_id, prompt, response, cuts) or (row_id, prompt,
    response, cuts, context) (context: ScoreRequest.context, () for none). With cuts given
    (cheap to compute: chunk_cuts), a cached entry whose cuts differ counts as a miss, a guard
    against an under-specified chunk fingerprint. A row is served when every guardrail hits
    with identical cuts; the others are in `todo`, in input order, each once. Stats count a
    hit per guardrail found, up to the first miss.
    """
    if not guard_fps:
        raise ValueError("split_cached needs at least one guardrail fingerprint")
    split = CacheSplit([], [], cache, np.empty((0, len(guard_fps)), np.int64), {})
    seen: set[str] = set()
    batch, pos = [], [split.pos]
    for item in items:
        if item[0] in seen:
            continue
        seen.add(item[0])
        want = list(item[3]) if len(item) > 3 and item[3] is not None else None
        context = item[4] if len(item) > 4 else ()
        batch.append((item[0], conversation_hash(item[1], item[2], context), want))
        if len(batch) >= _LOOKUP_BATCH:
            pos.append(split_batch(split, guard_fps, chunk_fp, batch))
            batch = []
    if batch:
        pos.append(split_batch(split, guard_fps, chunk_fp, batch))
    split.pos = np.concatenate(pos)
    return split


def split_cached(cache, guard_fps: Sequence[str], chunk_fp: str,
                 items: Iterable[tuple]) -> tuple[dict[str, Entry], list[str]]:
    """split_rows with the entries read: (served, to_score), served mapping row_id -> (cuts,
    scores (n_guards, n_cuts)) in guard_fps order. Holds every served entry: a caller that
    streams uses split_rows and CacheSplit.entries."""
    split = split_rows(cache, guard_fps, chunk_fp, items)
    return {row_id: (cuts, scores) for row_id, cuts, scores in split.entries()}, split.todo


def store_scored(cache, guard_fps: Sequence[str], chunk_fp: str,
                 scored: Mapping[str, tuple[str, str, Sequence[int], object]]) -> int:
    """Put freshly scored rows: row_id -> (prompt, response, cuts, scores (n_guards, n_cuts))
    or (..., context). Returns the number of entries that were new or changed. Does not
    flush."""
    n = 0
    for row_id, (prompt, response, cuts, scores, *context) in scored.items():
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim == 1 and len(guard_fps) == 1:
            arr = arr[None, :]
        if arr.shape != (len(guard_fps), len(cuts)):
            raise ValueError(f"row {row_id!r}: scores shape {arr.shape}, expected "
                             f"({len(guard_fps)}, {len(cuts)})")
        if cuts and cuts[-1] != len(response):
            raise ValueError(f"row {row_id!r}: last cut {cuts[-1]} != len(response) "
                             f"{len(response)}")
        th = conversation_hash(prompt, response, context[0] if context else ())
        for fp, row in zip(guard_fps, arr):
            key = _hash_fields(CACHE_VERSION, fp, chunk_fp, th)
            n += cache.put(key, cuts, row, guard_fp=fp, chunk_fp=chunk_fp, text_sha256=th)
    return n
