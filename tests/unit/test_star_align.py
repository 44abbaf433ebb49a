"""The character-offset map from chunks to trainee tokens, and the weights it gives them."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stardss.data.format import encode_row
from stardss.star.align import token_chunk_index, token_weights
from stardss.star.chunk import chunk_cuts
from tests.helpers import chat_row, responses, tokenizer


def test_straddling_token_takes_the_later_chunk():
    cuts = [5, 10, 12]
    spans = [(0, 3), (3, 5), (4, 7), (5, 10), (10, 12), (12, 13), (12, 12)]
    assert token_chunk_index(cuts, spans).tolist() == [0, 0, 1, 1, 2, 2, 2]
    w = token_weights(cuts, [0.9, 0.1, 0.5], spans)
    assert w.tolist() == [0.9, 0.9, 0.1, 0.1, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError):
        token_weights(cuts, [0.9, 0.1], spans)


def _chunk_tokens(enc, cuts):
    idx = token_chunk_index(cuts, enc.response_spans)
    ids = enc.input_ids[enc.response_start:]
    return [[t for t, k in zip(ids, idx) if k == c] for c in range(len(cuts))], idx


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.integers(1, 6), st.sampled_from(["words", "tokens"]))
def test_chunks_map_exactly_onto_trainee_tokens(response, size, unit):
    """Decoding the tokens assigned to chunk k gives exactly chunk k's characters (the end-of-turn
    token aside): offsets are exact at every boundary, multi-byte characters included."""
    tok = tokenizer()
    enc = encode_row(tok, chat_row("Say something.", response), 512)
    cuts = chunk_cuts(enc.response, unit, size, enc.response_spans)
    per_chunk, idx = _chunk_tokens(enc, cuts)
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in per_chunk]
    expected = [enc.response[a:b] for a, b in zip([0] + cuts[:-1], cuts)]
    assert texts == expected
    assert list(idx) == sorted(idx)  # chunks follow the token order
    # The trained tokens cover the response and its end-of-turn token, nothing of the prompt.
    assert tok.decode(enc.input_ids[enc.response_start:]) == enc.response + tok.eos_token


def test_weights_follow_the_trajectory():
    tok = tokenizer()
    response = "I cannot share that. Just kidding. The vault code is 7-3-9-1."
    enc = encode_row(tok, chat_row("What is the code?", response), 512)
    cuts = chunk_cuts(enc.response, "words", 5, enc.response_spans)
    assert [enc.response[:c] for c in cuts] == [
        "I cannot share that. Just", "I cannot share that. Just kidding. The vault code is",
        response]
    w = token_weights(cuts, [0.9, 0.6, 0.05], enc.response_spans)
    ids = enc.input_ids[enc.response_start:]
    assert tok.decode([t for t, x in zip(ids, w) if x == 0.05], skip_special_tokens=True) \
        == " 7-3-9-1."
    assert w[-1] == 0.05  # the end-of-turn token goes with the last chunk
