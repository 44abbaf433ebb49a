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


def score_star(rows: Sequence[ChatRow], encoded: Sequence[EncodedRow], pool, star_cfg,
               full_response_only: bool = False,
               progress: Optional[Callable[[int, int], None]] = None) -> list[StarRecord]:
    """STAR for each row. With full_response_only the guardrail sees one prefix: the response."""
    from ..guard.pool import ScoreRequest

    cuts_of = {}
    requests = []
    for row, enc in zip(rows, encoded):
        text = enc.response
        cuts = ([len(text)] if full_response_only else
                chunk_cuts(text, star_cfg.chunk.unit, star_cfg.chunk.size, enc.response_spans))
        cuts_of[enc.id] = cuts
        requests.append(ScoreRequest(enc.id, row.prompt, text, cuts))
    scored = pool.score(requests, progress=progress)
    records = []
    for row, enc in zip(rows, encoded):
        scores = np.asarray(scored[enc.id], dtype=np.float64)
        records.append(StarRecord(enc.id, row.prompt, enc.response, cuts_of[enc.id],
                                  scores.tolist(), combine(scores, star_cfg.combine).tolist()))
    return records


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
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
