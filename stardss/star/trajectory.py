"""From per-guardrail prefix scores to the trajectory that weights training tokens."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def combine(scores: np.ndarray, how: str,
            weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """(n_guardrails, n_chunks) P(safe) -> (n_chunks,) by `star.combine`: mean, min, or
    weighted (the mean with `weights`, one per guardrail, not all 0: the guardrails' `weight`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"expected (n_guardrails, n_chunks) scores, got shape {scores.shape}")
    if how == "mean":
        return scores.mean(axis=0)
    if how == "min":
        return scores.min(axis=0)
    if how == "weighted":
        if weights is None:
            raise ValueError("star.combine=weighted needs one weight per guardrail")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (scores.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0) \
                or w.sum() <= 0:
            raise ValueError(f"star.combine=weighted: need {scores.shape[0]} finite weights "
                             f">= 0, not all 0, got {w.tolist()}")
        # A single pass in guardrail order: the same sum whatever the chunk count.
        return (w[:, None] * scores).sum(axis=0) / w.sum()
    raise ValueError(f"star.combine: unknown {how!r}")


def to_weights(trajectory: np.ndarray, threshold: float | None) -> np.ndarray:
    """Soft weights are P(safe) itself (the paper); a threshold makes them 0/1."""
    trajectory = np.asarray(trajectory, dtype=np.float64)
    if threshold is None:
        return trajectory
    return (trajectory >= threshold).astype(np.float64)
