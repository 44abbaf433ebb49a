"""Score every prefix of every response through the guardrail pool; turn trajectories into
per-token training weights (the STAR stage between the guardrail and the trainer)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..data.format import EncodedRow
from ..data.rows import ChatRow
from ..train.batches import TrainRow
from .align import token_weights
from .chunk import chunk_cuts
from .trajectory import combine, to_weights


@dataclass
class StarRecord:
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


Item = tuple[str, str, list[int]]
"""What a guardrail sees of a row: (prompt, response, prefix cuts)."""


def star_items(rows: Sequence[ChatRow], encoded: Sequence[EncodedRow], star_cfg,
               full_response_only: bool = False) -> dict[str, Item]:
    """Row id -> (prompt, response, cuts): the prefixes each row is scored at."""
    items = {}
    for row, enc in zip(rows, encoded):
        text = enc.response
        cuts = ([len(text)] if full_response_only else
                chunk_cuts(text, star_cfg.chunk.unit, star_cfg.chunk.size, enc.response_spans))
        items[enc.id] = (row.prompt, text, cuts)
    return items


def star_record(key: str, item: Item, scores, how: str) -> StarRecord:
    scores = np.asarray(scores, dtype=np.float64)
    prompt, text, cuts = item
    return StarRecord(key, prompt, text, list(cuts), scores.tolist(),
                      combine(scores, how).tolist())


class MissingScores(ValueError):
    """scoring.mode=cache and some rows have no cached scores."""


def score_star(rows: Sequence[ChatRow], encoded: Sequence[EncodedRow], pool, star_cfg,
               chunk_fp: str, cache=None, full_response_only: bool = False,
               progress: Optional[Callable[[int, int], None]] = None,
               cached_only: bool = False,
               order: Optional[Sequence[int]] = None) -> list[StarRecord]:
    """STAR for each row; rows whose every guardrail score is cached are not sent to the pool.

    `chunk_fp` names the chunking (stardss.star.cache.chunk_fingerprint); with
    full_response_only the guardrail sees one prefix, the whole response (what rs needs).
    Returns one record per row of `encoded` (a repeated row's record repeats). With cached_only, a row missing from the cache raises MissingScores instead of being scored.
    `order` (row indices, first ones first) is the order rows go to the pool: stream mode's
    order of first use, so that batches, and so float rounding in a model guardrail's batched
    forward passes, are the same in every mode. Records come back in data order either way.
    """
    from ..guard.pool import ScoreRequest
    from .cache import split_cached, store_scored

    items = star_items(rows, encoded, star_cfg, full_response_only)
    keys = [e.id for e in encoded]  # a mixture may repeat a row: scored once, used each time
    sent = list(dict.fromkeys([keys[i] for i in (order or [])] + keys))
    if cache is not None:
        fps = pool.fingerprints()
        served, todo = split_cached(cache, fps, chunk_fp, [(k, *items[k]) for k in sent])
    else:
        served, todo = {}, sent
    if cached_only and todo:
        raise MissingScores(
            f"scoring.mode=cache: {len(todo)} of {len(items)} rows have no cached scores for "
            f"these guardrails and chunking, e.g. {todo[:5]}; run `stardss score` with the same "
            f"job first, or use scoring.mode=stream|precompute")
    scored = pool.score([ScoreRequest(k, *items[k]) for k in todo], progress=progress)
    if cache is not None:
        store_scored(cache, fps, chunk_fp, {k: (*items[k], scored[k]) for k in todo})
        cache.flush()
    by_id = {k: star_record(k, item, served[k][1] if k in served else scored[k],
                            star_cfg.combine) for k, item in items.items()}
    return [by_id[k] for k in keys]


def unweighted_row(enc: EncodedRow) -> TrainRow:
    n = len(enc.input_ids)
    mask = [0] * enc.response_start + [1] * (n - enc.response_start)
    return TrainRow(enc.id, enc.input_ids, mask, [1.0] * n)


def weighted_row(enc: EncodedRow, record: StarRecord, threshold: Optional[float]) -> TrainRow:
    row = unweighted_row(enc)
    weights = token_weights(record.cuts, to_weights(np.array(record.trajectory), threshold),
                            enc.response_spans)
    row.weights = [0.0] * enc.response_start + weights.tolist()
    return row


def write_star(records: Sequence[StarRecord], path: str) -> None:
    """One JSON line per distinct row id (a row the mixture repeats is written once)."""
    seen: set[str] = set()
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            if r.id not in seen:
                seen.add(r.id)
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
