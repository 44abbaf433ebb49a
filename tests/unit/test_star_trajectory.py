"""Combining several guardrails' P(safe) and turning a trajectory into weights."""
import numpy as np
import pytest

from stardss.star.trajectory import combine, to_weights


def test_combine_and_threshold():
    s = np.array([[0.2, 0.9], [0.6, 0.5]])
    assert combine(s, "mean").tolist() == pytest.approx([0.4, 0.7])
    assert combine(s, "min").tolist() == [0.2, 0.5]
    assert to_weights(np.array([0.2, 0.5, 0.7]), 0.5).tolist() == [0.0, 1.0, 1.0]
    assert to_weights(np.array([0.2, 0.7]), None).tolist() == [0.2, 0.7]
    with pytest.raises(ValueError):
        combine(s, "max")
