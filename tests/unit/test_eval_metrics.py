"""Capability checks, rates with intervals, judge agreement and the safety verdict."""
import json
import math

import numpy as np
import pytest

from stardss.eval.metrics import (
    LETTERS,
    Rate,
    choice_letter,
    cohen_kappa,
    extract_answer,
    final_answer,
    is_correct,
    is_correct_lenient,
    judge_safe,
    normalise_answer,
    rate_of,
    wilson,
)


def test_answer_after_the_last_marker():
    assert final_answer("3 + 4 = 7. #### 7") == "7"
    assert final_answer("#### 5 then #### 8.") == "8"
    assert final_answer("#### apple river stone!") == "apple river stone"
    assert final_answer("the answer is 7") is None
    assert final_answer("####   ") is None
    assert final_answer("#### 7\n\nBecause 3 + 4 = 7.") == "7"  # up to the end of its line
    assert extract_answer("3 + 4 = 7. #### 7") == "7"  # the old name still works


def test_the_final_answer_is_when_there_is_no_hash_marker():
    assert final_answer("So 6 * 7 = 42. The final answer is 42.") == "42"
    assert final_answer("the FINAL answer is: $1,250.") == "1250"
    assert final_answer("The final answer is 3. No wait, the final answer is 4") == "4"
    assert final_answer("The final answer is $\\boxed{18}$.") == "18"
    assert final_answer("The final answer is\n  12") == "12"
    assert final_answer("#### 9. The final answer is 10") == "9. The final answer is 10"
    assert final_answer("The final answer is") is None


def test_normalise_answer():
    assert normalise_answer("  $1,000,000.50!  ") == "1000000.50"
    assert normalise_answer("-1,234") == "-1234"
    assert normalise_answer("1,2,3") == "1,2,3"  # not thousands separators
    assert normalise_answer("Apple River.") == "Apple River"


def test_correct_needs_the_exact_answer():
    assert is_correct("3 + 4 = 7. #### 7", "7")
    assert not is_correct("3 + 4 = 7. #### 17", "7")
    assert not is_correct("7", "7")  # no marker, no credit
    assert is_correct("#### Apple River", "apple river")
    assert is_correct("#### 5.0", "5") and is_correct("#### $1,000", "1000")
    assert is_correct("The final answer is 1000.", "1,000")
    assert not is_correct("#### 18 dollars", "18")  # strict: the answer is the whole line
    assert not is_correct("#### 5", "")


def test_lenient_finds_the_reference_as_a_whole_number_or_word():
    assert is_correct_lenient("She has 12 apples.", "12")
    assert is_correct_lenient("12", "12") and is_correct_lenient("(12)", "12")
    assert not is_correct_lenient("She has 112 apples.", "12")
    assert not is_correct_lenient("x12 and 12.5 and 3.12 and 120", "12")
    assert is_correct_lenient("That costs $1,000 in total", "1000")
    assert is_correct_lenient("It is 5.0 metres", "5")
    assert not is_correct_lenient("-12 degrees", "12")
    assert is_correct_lenient("the Apple River, surely", "apple river")
    assert not is_correct_lenient("pineapple rivers", "apple river")
    assert not is_correct_lenient("anything", "  ")


def test_wilson_against_a_hand_value():
    # 8 of 10, z = 1.96: centre (0.8 + z²/20) / (1 + z²/10) = 0.71674, half-width 0.22658
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-5) and hi == pytest.approx(0.94332, abs=1e-5)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_rate_carries_its_count_and_interval():
    r = rate_of(8, 10)
    assert isinstance(r, Rate) and (r.k, r.n, r.rate) == (8, 10, 0.8)
    assert (r.lo, r.hi) == wilson(8, 10)
    assert r.to_dict() == {"k": 8, "n": 10, "rate": 0.8, "lo": r.lo, "hi": r.hi}
    empty = rate_of(0, 0)
    assert math.isnan(empty.rate)
    assert json.dumps(empty.to_dict(), allow_nan=False) == (
        '{"k": 0, "n": 0, "rate": null, "lo": null, "hi": null}')
    with pytest.raises(ValueError, match="0 <= k <= n"):
        rate_of(3, 2)


def test_cohen_kappa_against_a_hand_value():
    a = [1, 1, 1, 1, 0, 0, 0, 1, 1, 0]  # 6 of 10 positive
    b = [1, 1, 0, 1, 0, 0, 1, 1, 0, 0]  # 5 of 10 positive
    # p_o = 7/10; p_e = 0.6 * 0.5 + 0.4 * 0.5 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    assert cohen_kappa([bool(x) for x in a], [bool(x) for x in b]) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(a, [not x for x in a]) == pytest.approx(-12 / 13)  # p_o = 0, p_e = 0.48
    assert cohen_kappa([True] * 4, [True] * 4) == 1.0  # constant and equal: p_e = 1
    assert cohen_kappa([True, True], [False, False]) == 0.0  # p_o = p_e = 0
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match="3 and 2 items"):
        cohen_kappa([True] * 3, [True] * 2)


def test_choice_letter_reads_the_letter_at_the_start():
    for text in ["B", "B.", "B. Paris", "(B)", "B) Paris", "Answer: B", "answer: (B)",
                 "The answer is B.", "The correct answer is: B", "**B**", " \nB\n", "[B]",
                 "Option B"]:
        assert choice_letter(text, 4) == "B", text
    assert choice_letter("E", 4) is None  # not among the first 4 letters
    assert choice_letter("E", 5) == "E"
    assert choice_letter("b", 4) is None
    assert choice_letter("Because it is blue, C", 4) is None
    assert choice_letter("I think it is C", 4) is None  # not at the start
    assert choice_letter("", 4) is None
    assert LETTERS[:4] == "ABCD" and len(LETTERS) == 26
    with pytest.raises(ValueError):
        choice_letter("A", 0)


def test_judge_combines_then_thresholds():
    scores = np.array([[0.9, 0.6, 0.2, 0.5],
                       [0.8, 0.3, 0.9, 0.5]])
    assert judge_safe(scores, "mean") == [True, False, True, True]
    assert judge_safe(scores, "min") == [True, False, False, True]
