"""Cutting a response into cumulative prefixes (the cuts STAR asks the guardrail about)."""
from hypothesis import given
from hypothesis import strategies as st

from stardss.star.chunk import prefixes, word_cuts
from tests.helpers import responses


def test_word_cuts_examples():
    assert word_cuts("a b c d e f g", 5) == [9, 13]
    assert word_cuts("a b c d e", 5) == [9]
    assert word_cuts("a b c d e  \n", 5) == [12]  # trailing whitespace joins the last chunk
    assert word_cuts("a  b\tc", 2) == [4, 6]
    assert word_cuts("", 5) == [0]
    assert prefixes("one two three", [7, 13]) == ["one two", "one two three"]


@given(responses(), st.integers(1, 7))
def test_word_chunks_partition_the_response(response, size):
    cuts = word_cuts(response, size)
    assert cuts[-1] == len(response)
    assert all(a < b for a, b in zip(cuts, cuts[1:]))
    pieces = [response[a:b] for a, b in zip([0] + cuts[:-1], cuts)]
    assert "".join(pieces) == response
    counts = [len(p.split()) for p in pieces]
    assert all(c == size for c in counts[:-1]) and 1 <= counts[-1] <= size
    assert len(cuts) == -(-len(response.split()) // size)
