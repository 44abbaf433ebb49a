"""The STAR stage's one path, from a training row to the weights of its tokens:

    EncodedRow (+ its prompt) -> ScoreRequest (row id, prompt, response, prefix cuts)
        -> STAR cache hit | guardrail pool -> StarRecord (P(safe) per guardrail per prefix,
        combined trajectory) -> one weight per response token

`Scorer.records` is that path for every mode: precompute collects its records, stream mode
(stardss/train/stream.py) trains each step as soon as its records are in. The same requests in
the same order go to the pool in both, so model guardrails batch (and round) the same way and
both modes give the same weights bit for bit.

With data.train_turns=all each assistant turn of a row is a request of its own and the turns'
records are gathered into one per row (star/turns.py): `Scorer.row_records`.
"""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..config.schema import ChunkConfig, StarConfig
from ..data.format import EncodedRow
from ..data.rows import ChatRow
from ..guard.base import ScoreRequest
from .agreement import Agreement
from .align import token_weights
from .chunk import chunk_cuts
from .trajectory import combine, to_weights
from .turns import ConversationRecord, group_turns, turn_key, turn_requests


@dataclass
class StarRecord:
    """A row's trajectory: what star.jsonl holds, one line per row."""

    id: str
    prompt: str
    response: str
    cuts: list[int]
    """Prefix end offsets in `response` characters; the last is len(response)."""
    scores: list[list[float]]
    """P(safe) per guardrail (rows) per prefix (columns)."""
    trajectory: list[float]
    """Combined P(safe) per prefix (star.combine)."""

    @property
    def full_response_safe(self) -> float:
        """P(safe) of the whole response: the static judgement RS uses."""
        return self.trajectory[-1]

    @property
    def n_prefixes(self) -> int:
        return len(self.cuts)

    def lines(self) -> str:
        """Its star.jsonl line."""
        return json.dumps(asdict(self), ensure_ascii=False) + "\n"


def _request(row: ChatRow, enc: EncodedRow, chunk: ChunkConfig,
             full_response_only: bool) -> ScoreRequest:
    text = enc.response
    cuts = ([len(text)] if full_response_only else
            chunk_cuts(text, chunk.unit, chunk.size, enc.response_spans))
    return ScoreRequest(enc.id, row.prompt, text, cuts)


def score_requests(rows: Sequence[ChatRow], encoded: Sequence[EncodedRow], chunk: ChunkConfig,
                   full_response_only: bool = False) -> dict[str, ScoreRequest]:
    """Row id -> the request that scores it at its prefix cuts (one per id: a row the
    mixture repeats is scored once). `full_response_only`: one cut, the whole response (what
    rs and reweight judge). Every request in memory: for a few rows; a run uses
    ScoreRequests."""
    return {enc.id: _request(row, enc, chunk, full_response_only)
            for row, enc in zip(rows, encoded)}


class ScoreRequests(Sequence):
    """The score requests of rows `order` (indices into `rows` / `encoded`, each id once),
    each built when it is read, from rows decoded from the shards when they live there: a
    run's requests are never all in memory at once. `ids` are the requests' keys, known
    without building any.

    `turns` (data.train_turns=all): each row's assistant turns (by row index); a row is then
    one request per turn (star/turns.py), `ids` the turn keys, and `turns_of` maps each row
    id to its count (what Scorer.row_records gathers by)."""

    def __init__(self, rows: Sequence[ChatRow], encoded: Sequence[EncodedRow],
                 chunk: ChunkConfig, full_response_only: bool, order: Sequence[int],
                 ids: Sequence[str], turns: Optional[Sequence[int]] = None):
        self.rows, self.encoded, self.chunk = rows, encoded, chunk
        self.full_response_only, self.order, self.ids = full_response_only, order, ids
        self.turns_of: Optional[dict[str, int]] = None
        self._memo: tuple = (-1, [])  # (row index, its turn requests): built once per row
        if turns is not None:
            self.turns_of = {k: int(turns[j]) for k, j in zip(ids, order)}
            self.order = [j for j in order for _ in range(int(turns[j]))]
            self._turn = [t for j in order for t in range(int(turns[j]))]
            self.ids = [turn_key(k, t) for k, j in zip(ids, order) for t in range(int(turns[j]))]

    @classmethod
    def first_use(cls, rows, encoded, chunk: ChunkConfig, full_response_only: bool,
                  keys: Sequence[str], used: Iterable[int],
                  turns: Optional[Sequence[int]] = None) -> ScoreRequests:
        """One request per distinct id (per turn of it, with `turns`), in the order of their
        first index in `used` (row indices; `keys`: every row's id): a repeated row is scored
        once."""
        first: dict[str, int] = {}
        for i in used:
            first.setdefault(keys[i], i)
        return cls(rows, encoded, chunk, full_response_only, list(first.values()),
                   list(first), turns)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> ScoreRequest:
        j = self.order[i]
        if self.turns_of is None:
            return _request(self.rows[j], self.encoded[j], self.chunk, self.full_response_only)
        if self._memo[0] != j:
            self._memo = (j, turn_requests(self.rows[j], self.encoded[j], self.chunk,
                                           self.full_response_only))
        return self._memo[1][self._turn[i]]


class MissingScores(ValueError):
    """scoring.mode=cache and some rows have no cached scores."""


COMPACT_ABOVE_PARTS = 64
"""A cache with more part files than this is compacted into one when a scoring pass ends."""


class Scorer:
    """Scores requests with the STAR cache first and the guardrail pool for the rest, and
    stores what the pool scored in the cache.

    `chunk_fp` names the chunking (stardss.star.cache.chunk_fingerprint); with `cached_only`
    (scoring.mode=cache) a request the cache cannot serve raises MissingScores instead of
    going to the pool.
    """

    def __init__(self, star: StarConfig, chunk_fp: str, cache=None, cached_only: bool = False,
                 guards: Sequence[tuple[str, float]] = ()):
        if cached_only and cache is None:
            raise ValueError("scoring.mode=cache needs star.cache=true")
        self.combine_how = star.combine
        # (name, weight) of each guardrail, in the order of the scores' rows: the weights of
        # star.combine=weighted, and the names the agreement summary reports them by
        self.guard_weights = [w for _, w in guards] if star.combine == "weighted" else None
        self.agreement = Agreement([n for n, _ in guards]) if len(guards) > 1 else None
        """Ensembles: how often the guardrails disagree on a chunk, over every record made."""
        self.chunk_fp, self.cache, self.cached_only = chunk_fp, cache, cached_only
        self.cache_hits = 0
        """Requests the cache served in the last `records` call."""

    def records(self, pool, requests: Sequence[ScoreRequest],
                progress: Optional[Callable[[int, int], None]] = None) -> Iterator[StarRecord]:
        """A record for every request (distinct keys): cache hits first, then the pool's
        results as its batches finish, the pool seeing the rest in the order given. Hits are
        read from the cache's arrays one by one as they are yielded (a consumer that writes
        each record, like StarWriter, holds none). The cache is flushed when the iteration
        ends (close the iterator if you stop early)."""
        from .cache import split_rows, store_scored

        # key -> position: the requests themselves are built as they are needed (ScoreRequests)
        keys = getattr(requests, "ids", None) or [r.key for r in requests]
        at = {k: i for i, k in enumerate(keys)}
        if self.cache is not None:
            fps = pool.fingerprints()
            # where the hits are, not their entries: each is read as its record is yielded
            split = split_rows(self.cache, fps, self.chunk_fp,
                               ((r.key, r.prompt, r.response, r.cuts, r.context)
                                for r in requests))
            served, todo = split.entries(), split.todo
            self.cache_hits = len(split.served)
        else:
            served, todo = iter(()), list(at)
            self.cache_hits = 0
        if self.cached_only and todo:
            raise MissingScores(
                f"scoring.mode=cache: {len(todo)} of {len(at)} rows have no cached scores "
                f"for these guardrails and chunking, e.g. {todo[:5]}; run `stardss score` with "
                f"the same job first, or use scoring.mode=stream|precompute")
        try:
            for key, _, scores in served:
                yield self.record(requests[at[key]], scores)
            in_flight: dict[str, ScoreRequest] = {}  # sent, not yet answered (the pool
            # reads its input only as far as its actors can take it)

            def send() -> Iterator[ScoreRequest]:
                for k in todo:
                    in_flight[k] = requests[at[k]]
                    yield in_flight[k]

            for key, scores in pool.stream(send(), progress, total=len(todo)):
                r = in_flight.pop(key)
                if self.cache is not None:
                    store_scored(self.cache, fps, self.chunk_fp,
                                 {key: (r.prompt, r.response, r.cuts, scores, r.context)})
                yield self.record(r, scores)
        finally:
            if self.cache is not None:
                self.cache.flush()
                # stream mode flushes before every step it hands to training (resume safety):
                # merge the small parts once the run is through
                if len(self.cache.part_files()) > COMPACT_ABOVE_PARTS:
                    self.cache.compact()

    def row_records(self, pool, requests: Sequence[ScoreRequest],
                    progress: Optional[Callable[[int, int], None]] = None) -> Iterator:
        """`records`, one per row: a StarRecord, or with requests per turn (ScoreRequests
        with `turns`) a ConversationRecord once every turn of the row is in."""
        records = self.records(pool, requests, progress)
        turns_of = getattr(requests, "turns_of", None)
        return records if turns_of is None else group_turns(records, turns_of)

    def record(self, request: ScoreRequest, scores) -> StarRecord:
        scores = np.asarray(scores, dtype=np.float64)
        trajectory = combine(scores, self.combine_how, self.guard_weights)
        if self.agreement is not None:
            self.agreement.add(scores, trajectory)
        return StarRecord(request.key, request.prompt, request.response, list(request.cuts),
                          scores.tolist(), trajectory.tolist())


def record_weights(record, enc: EncodedRow, threshold: Optional[float]) -> np.ndarray:
    """The weight of each response token of `enc`: its chunk's combined P(safe), or 0/1 with
    a threshold (star.threshold). `record`: a StarRecord, or a ConversationRecord (each turn's
    tokens from its own trajectory, 0 on the tokens between turns)."""
    if isinstance(record, ConversationRecord):
        return record.weights(enc, threshold)
    return token_weights(record.cuts, to_weights(np.array(record.trajectory), threshold),
                         enc.response_spans)


def write_star(records: Sequence[StarRecord], path: str) -> None:
    """One JSON line per distinct row id (a row the mixture repeats is written once)."""
    seen: set[str] = set()
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            if r.id not in seen:
                seen.add(r.id)
                f.write(r.lines())


class StarWriter:
    """star.jsonl in data order from records that arrive in any order (cache hits first, then
    the pool's batches as they finish), holding none of them.

    Each record's line is appended to `<path>.spool` as it arrives; per distinct row id the
    writer keeps only the line's offset and length (int64 arrays, in first-occurrence order of
    `ids`). `close()` copies the lines into `path` in that order (what write_star writes for
    the same records) under a hidden name, then `os.replace`s it into place and removes the
    spool. Leaving the `with` block on an exception writes no star.jsonl. A row id never
    received (a stream cut short) is left out.
    """

    def __init__(self, path: str | Path, ids: Iterable[str]):
        self.path = Path(path)
        self._slot: dict[str, int] = {}
        for row_id in ids:
            self._slot.setdefault(row_id, len(self._slot))
        self._off = np.full(len(self._slot), -1, np.int64)  # (n_ids,) byte offset in spool
        self._len = np.zeros(len(self._slot), np.int64)  # (n_ids,) line length in bytes
        self.spool = self.path.with_name(self.path.name + ".spool")
        self._file = open(self.spool, "wb")
        self._end = 0
        self.written = 0
        """Distinct records received."""

    def add(self, record) -> None:
        """A StarRecord or ConversationRecord (its lines: one per turn)."""
        slot = self._slot.get(record.id)
        if slot is None:
            raise ValueError(f"STAR record of row {record.id!r}, which is not in the data")
        if self._off[slot] >= 0:  # a row the mixture repeats: written once
            return
        line = record.lines().encode("utf-8")
        self._file.write(line)
        self._off[slot], self._len[slot] = self._end, len(line)
        self._end += len(line)
        self.written += 1

    def close(self) -> Path:
        self._file.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(self.spool, "rb") as src, open(tmp, "wb") as dst:
                if self._end:
                    with mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as lines:
                        for slot in np.flatnonzero(self._off >= 0):
                            a = int(self._off[slot])
                            dst.write(lines[a:a + int(self._len[slot])])
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            self.spool.unlink(missing_ok=True)
        return self.path

    def __enter__(self) -> "StarWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self.spool.unlink(missing_ok=True)
