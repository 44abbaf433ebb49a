"""What a guardrail is asked and what it answers (kinds are registered in registry.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class ScoreRequest:
    """One response to score at several cuts: the one request type of the guard stage, from
    the STAR stage to the pool, its actors and every guardrail (and the eval judges)."""

    key: str
    """Caller's id for the example (a row id); results are returned under it."""
    prompt: str
    response: str
    """The whole assistant response."""
    cuts: list[int]
    """Prefix k is response[:cuts[k]], shortest first; the last is len(response)."""
    context: tuple = ()
    """The conversation before `prompt`: ({"role": "user"|"assistant", "content": str}, ...)
    alternating and starting with a user turn; () for a single exchange. A multi-turn row
    scores each assistant turn with the turns before it here (data.train_turns=all)."""

    @property
    def prefixes(self) -> list[str]:
        return [self.response[:c] for c in self.cuts]


@runtime_checkable
class Guardrail(Protocol):
    """Judges partial assistant turns: P(safe) of each (prompt, response prefix) pair."""

    name: str
    fingerprint: str
    """Identifies everything the scores depend on (weights, template, labels, options): the
    STAR cache keys entries by it."""

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        """P(safe) in [0, 1] of each response (a prefix of the assistant turn), in order."""
        ...

    def score_prefixes(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
        """P(safe) of every prefix of every request: one float64 array of len(cuts) each.
        Seeing whole responses with their cuts lets a model guardrail share the work of
        prefixes (packed scoring) and batch across responses."""
        ...


def by_request(requests: Sequence[ScoreRequest], flat: Sequence) -> list[list]:
    """Values made for every prefix of every request, in order (len(flat) = the total of
    len(r.cuts)), split back into one list per request."""
    out, at = [], 0
    for r in requests:
        out.append(list(flat[at : at + len(r.cuts)]))
        at += len(r.cuts)
    if at != len(flat):
        raise ValueError(f"{len(flat)} values for {at} prefixes")
    return out


def score_prefixes_one_by_one(guard: Guardrail,
                              requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
    """`score_prefixes` for guardrails that judge each prefix text on its own."""
    return [np.asarray(guard.score(r.prompt, r.prefixes), dtype=np.float64) for r in requests]
