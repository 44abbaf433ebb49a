"""Capability checks and the safety verdict."""
import numpy as np

from stardss.eval.metrics import extract_answer, is_correct, judge_safe


def test_answer_after_the_last_marker():
    assert extract_answer("3 + 4 = 7. #### 7") == "7"
    assert extract_answer("#### 5 then #### 8.") == "8"
    assert extract_answer("#### apple river stone!") == "apple river stone"
    assert extract_answer("the answer is 7") is None
    assert extract_answer("####   ") is None


def test_correct_needs_the_exact_answer():
    assert is_correct("3 + 4 = 7. #### 7", "7")
    assert not is_correct("3 + 4 = 7. #### 17", "7")
    assert not is_correct("7", "7")  # no marker, no credit
    assert is_correct("#### Apple River", "apple river")


def test_judge_combines_then_thresholds():
    scores = np.array([[0.9, 0.6, 0.2, 0.5],
                       [0.8, 0.3, 0.9, 0.5]])
    assert judge_safe(scores, "mean") == [True, False, True, True]
    assert judge_safe(scores, "min") == [True, False, False, True]
