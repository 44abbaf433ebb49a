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


def test_weighted_combine_is_the_weighted_mean_and_refuses_bad_weights():
    s = np.array([[0.2, 0.9], [0.6, 0.5], [1.0, 0.0]])
    got = combine(s, "weighted", [1.0, 3.0, 0.0])
    assert got.tolist() == pytest.approx([(0.2 + 1.8) / 4, (0.9 + 1.5) / 4])
    assert combine(s, "weighted", [1, 1, 1]).tolist() == pytest.approx(combine(s, "mean").tolist())
    for bad in (None, [1.0, 1.0], [0, 0, 0], [1, -1, 1], [1, float("nan"), 1]):
        with pytest.raises(ValueError, match="weight"):
            combine(s, "weighted", bad)


def test_agreement_counts_disagreeing_chunks_per_pair_and_against_the_combined_verdict():
    from stardss.star.agreement import Agreement

    a = Agreement(["g1", "g2", "g3"])
    assert a.summary()["pairs"][0]["disagree"] is None  # nothing counted yet
    # 3 chunks: g1 safe/safe/unsafe, g2 safe/unsafe/unsafe, g3 always safe
    scores = np.array([[0.9, 0.6, 0.1], [0.8, 0.4, 0.2], [0.7, 0.9, 0.5]])
    a.add(scores, combine(scores, "min"))
    a.add(scores[:, :1], combine(scores[:, :1], "min"))  # a second record, one chunk
    got = a.summary()
    assert got["chunks"] == 4
    pairs = {tuple(p["guards"]): p for p in got["pairs"]}
    assert pairs[("g1", "g2")]["disagree"] == 0.25  # chunk 2 only
    assert pairs[("g1", "g3")]["disagree"] == 0.25  # chunk 3 (0.5 counts as safe)
    assert pairs[("g2", "g3")]["disagree"] == 0.5
    assert pairs[("g1", "g2")]["mean_abs_gap"] == pytest.approx((0.1 + 0.2 + 0.1 + 0.1) / 4)
    # min: combined verdicts safe, unsafe, unsafe, safe -> g3 differs on 2 chunks, g2 on none
    assert got["vs_combined"] == {"g1": 0.25, "g2": 0.0, "g3": 0.5}
    with pytest.raises(ValueError, match="expected"):
        a.add(scores[:2], combine(scores[:2], "min"))
