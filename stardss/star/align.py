"""Map chunk scores onto the trainee's tokens by character offsets.

Chunk k covers response characters [cuts[k-1], cuts[k]) (cuts[-1] = 0 for the first chunk). A
token gets the score of the first prefix that contains all of it: the chunk holding its last
character. A token inside one chunk therefore gets exactly that chunk's score; a token that
straddles a cut (possible with `tokens` of another tokenizer, never with byte-level BPE and
`words`, see tests) gets the later chunk's score, because only that prefix showed it whole to
the guardrail. Tokens after the response (end-of-turn markers) belong to the last chunk.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

import numpy as np


def token_chunk_index(cuts: Sequence[int], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Index of the chunk each token belongs to; spans are (start, end) relative to the response."""
    if not cuts:
        raise ValueError("a response has at least one cut (its length)")
    last = len(cuts) - 1
    out = np.empty(len(spans), dtype=np.int64)
    for i, (start, end) in enumerate(spans):
        # A zero-width token (a special token) sits at `start`; it goes with the character there.
        key = end if end > start else start + 1
        out[i] = min(bisect_left(cuts, key), last)
    return out


def token_weights(cuts: Sequence[int], chunk_scores: Sequence[float],
                  spans: Sequence[tuple[int, int]]) -> np.ndarray:
    scores = np.asarray(chunk_scores, dtype=np.float64)
    if len(scores) != len(cuts):
        raise ValueError(f"{len(scores)} chunk scores for {len(cuts)} chunks")
    return scores[token_chunk_index(cuts, spans)]
