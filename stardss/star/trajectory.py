"""From per-guardrail prefix scores to the trajectory that weights training tokens."""
from __future__ import annotations

import numpy as np


def combine(scores: np.ndarray, how: str) -> np.ndarray:
    """(n_guardrails, n_chunks) P(safe) -> (n_chunks,) by `star.combine`."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"expected (n_guardrails, n_chunks) scores, got shape {scores.shape}")
    if how == "mean":
        return scores.mean(axis=0)
    if how == "min":
        return scores.min(axis=0)
    raise ValueError(f"star.combine: unknown {how!r}")


def to_weights(trajectory: np.ndarray, threshold: float | None) -> np.ndarray:
    """Soft weights are P(safe) itself (the paper); a threshold makes them 0/1."""
    trajectory = np.asarray(trajectory, dtype=np.float64)
    if threshold is None:
        return trajectory
    return (trajectory >= threshold).astype(np.float64)
