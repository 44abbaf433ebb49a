"""How often the guardrails of an ensemble disagree, chunk by chunk: the numbers a user reads
before trusting `star.combine` (a min over two guards that never agree is one guard's veto).

Each guardrail's verdict on a chunk is P(safe) >= 0.5 (the same cut eval judges use). Per guard
pair: the share of chunks whose verdicts differ and the mean |P_i - P_j|; per guard: the share
of chunks where its verdict differs from the combined trajectory's. Counted over every chunk
of every record the run scored (a chunk is one prefix: its scores are a column of the
record's (n_guardrails, n_chunks) array).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

SAFE_AT = 0.5
"""A verdict is safe when P(safe) >= this."""


@dataclass
class Agreement:
    """Accumulates records' scores; `summary()` is what the score summary reports."""

    names: Sequence[str]
    """The guardrails, in the order of the scores' rows."""
    chunks: int = 0
    _pair_differ: np.ndarray = field(default=None, repr=False)
    _pair_gap: np.ndarray = field(default=None, repr=False)
    _vs_combined: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        n = len(self.names)
        self._pair_differ = np.zeros((n, n), np.int64)
        self._pair_gap = np.zeros((n, n), np.float64)
        self._vs_combined = np.zeros(n, np.int64)

    def add(self, scores, trajectory) -> None:
        """One record: scores (n_guardrails, n_chunks), trajectory (n_chunks,)."""
        s = np.asarray(scores, dtype=np.float64)
        t = np.asarray(trajectory, dtype=np.float64)
        if s.ndim != 2 or s.shape[0] != len(self.names) or t.shape != (s.shape[1],):
            raise ValueError(f"agreement: expected ({len(self.names)}, n) scores and (n,) "
                             f"trajectory, got {s.shape} and {t.shape}")
        safe = s >= SAFE_AT
        self._pair_differ += (safe[:, None, :] != safe[None, :, :]).sum(axis=2)
        self._pair_gap += np.abs(s[:, None, :] - s[None, :, :]).sum(axis=2)
        self._vs_combined += (safe != (t >= SAFE_AT)[None, :]).sum(axis=1)
        self.chunks += s.shape[1]

    def summary(self) -> dict:
        """{"chunks", "pairs": [{"guards", "disagree", "mean_abs_gap"}],
        "vs_combined": {name: share}}; shares are None before any chunk."""
        n, c = len(self.names), self.chunks

        def share(x):
            return None if c == 0 else round(float(x) / c, 6)

        pairs = [{"guards": [self.names[i], self.names[j]],
                  "disagree": share(self._pair_differ[i, j]),
                  "mean_abs_gap": share(self._pair_gap[i, j])}
                 for i in range(n) for j in range(i + 1, n)]
        return {"chunks": c, "pairs": pairs,
                "vs_combined": {name: share(self._vs_combined[i])
                                for i, name in enumerate(self.names)}}
