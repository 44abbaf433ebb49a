"""Cut a response into cumulative prefixes: the cut offsets STAR asks the guardrail about.

A cut is a character offset into the response; prefix k is `response[:cuts[k]]`. Prefixes keep
the response's own characters (the authors' code rejoins words with single spaces, which moves
every offset after odd whitespace); the last cut is always len(response), so the last prefix is
the whole response.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

_WORD = re.compile(r"\S+")


def word_cuts(response: str, size: int) -> list[int]:
    """Cut after every `size`-th whitespace-separated word; trailing whitespace joins the last
    chunk."""
    ends = [m.end() for m in _WORD.finditer(response)]
    return _group_ends(ends, size, len(response))


def token_cuts(response: str, size: int, token_spans: Sequence[tuple[int, int]]) -> list[int]:
    """Cut after every `size`-th token of the trainee's tokenisation, at character boundaries.

    `token_spans` are the (start, end) character offsets, relative to the response, of the
    tokens in order. A byte-level token can hold the tail of one multi-byte character and the
    head of the next; a cut inside it would split a character, so the chunk runs on to the
    next token end that no token straddles.
    """
    if size <= 0:
        raise ValueError(f"chunk size must be > 0, got {size}")
    spans = [(s, e) for s, e in token_spans if s < len(response)]
    cuts, count = [], 0
    for i, (_, end) in enumerate(spans):
        count += 1
        clean = i + 1 == len(spans) or spans[i + 1][0] >= end
        if count >= size and clean and end < len(response):
            cuts.append(end)
            count = 0
    cuts.append(len(response))
    return cuts


def _group_ends(ends: list[int], size: int, length: int) -> list[int]:
    if size <= 0:
        raise ValueError(f"chunk size must be > 0, got {size}")
    cuts = ends[size - 1 :: size]
    if cuts and len(ends) % size == 0:
        cuts[-1] = length  # the last full group absorbs trailing whitespace
    else:
        cuts.append(length)
    return cuts


def chunk_cuts(response: str, unit: str, size: int,
               token_spans: Optional[Sequence[tuple[int, int]]] = None) -> list[int]:
    if unit == "words":
        return word_cuts(response, size)
    if unit == "tokens":
        if token_spans is None:
            raise ValueError("star.chunk.unit=tokens needs the trainee's token offsets")
        return token_cuts(response, size, token_spans)
    raise ValueError(f"star.chunk.unit: unknown unit {unit!r}")


def prefixes(response: str, cuts: Sequence[int]) -> list[str]:
    return [response[:c] for c in cuts]
