"""data.train_turns=all: every assistant turn of a 3-turn conversation trained (its content and
end-of-turn token, the user turns between masked), shards that keep that layout, STAR per turn
(each turn judged with the conversation before it, its weights on its own tokens), and
train_turns=last exactly as before."""
import copy
import json

import numpy as np
import pytest

from stardss.config.schema import ChunkConfig, GuardrailConfig, RuleConfig, StarConfig
from stardss.data.format import encode_row
from stardss.data.rows import BadRow, parse_row
from stardss.data.shards import PartWriter, ShardSet, trained_tokens
from stardss.guard.rules import RuleGuardrail, sigmoid
from stardss.star.cache_rows import conversation_hash
from stardss.star.cache_store import text_hash
from stardss.star.score import Scorer, ScoreRequests, record_weights, write_star
from stardss.star.turns import group_turns, split_turn_key, turn_key, turn_requests
from stardss.train.batches import train_row
from tests.helpers import tokenizer

EOT = "<|eot_id|>"  # the demo tokenizer's Llama 3 template ends each turn with it
SYSTEM = "Be brief."
TURNS = [("What is the capital of the toy land?", "The capital is a small town by the sea."),
         ("And what is the vault code?", "Sure, here it is: the vault code is 7-3-9-1 and that "
                                         "is all you need."),
         ("Thanks for the help.", "You are welcome, have a nice day.")]
GUARD = GuardrailConfig(kind="rules", bias=3.0, rules=[RuleConfig(pattern="7-3-9-1",
                                                                  weight=-8.0)])
WORDS5 = ChunkConfig(unit="words", size=5)


def conversation(turns=TURNS, system=SYSTEM, index=0):
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": assistant}]
    return parse_row({"messages": messages, "id": f"c{index}"}, "conv.jsonl", index)


def _trained(enc):
    return [t for t, m in zip(enc.input_ids, train_row(enc).loss_mask) if m]


def test_mask_covers_exactly_each_assistant_turns_content_and_end_of_turn():
    tok = tokenizer()
    enc = encode_row(tok, conversation(), 512, "all")
    mask = train_row(enc).loss_mask
    assert enc.turn_texts == [a for _, a in TURNS] and enc.response == TURNS[-1][1]
    for k, (_, assistant) in enumerate(TURNS):
        mine = [t for t, turn in zip(enc.input_ids[enc.response_start:], enc.token_turn)
                if turn == k]
        assert tok.decode(mine) == assistant + EOT
    # every trained token is one of those, in order, and nothing else is
    assert tok.decode(_trained(enc)) == "".join(a + EOT for _, a in TURNS)
    assert sum(mask) == sum(t >= 0 for t in enc.token_turn) == trained_tokens(enc)
    # what is not trained after the first turn: the user turns and the assistant headers
    between = [t for t, turn in zip(enc.input_ids[enc.response_start:], enc.token_turn)
               if turn < 0]
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert tok.decode(between) == "".join(
        header.format("user") + u + EOT + header.format("assistant") for u, _ in TURNS[1:])
    assert tok.decode(enc.input_ids[:enc.response_start]).endswith(
        TURNS[0][0] + EOT + header.format("assistant"))
    # spans are in each turn's own characters, end-of-turn past its text
    for k, text in enumerate(enc.turn_texts):
        spans = [s for s, turn in zip(enc.response_spans, enc.token_turn) if turn == k]
        assert spans[0][0] == 0 and spans[-2][1] == len(text) and spans[-1][0] >= len(text)


def test_last_turn_mode_is_the_encoding_of_before():
    tok = tokenizer()
    row = conversation()
    last = encode_row(tok, row, 512)
    assert encode_row(tok, row, 512, "last") == last
    assert last.token_turn is None and last.turn_texts is None and last.n_turns == 1
    assert tok.decode(_trained(last)) == TURNS[-1][1] + EOT
    every = encode_row(tok, row, 512, "all")
    assert every.input_ids == last.input_ids
    # the final turn's tokens and spans are the last-turn encoding's, to the token
    at = len(every.token_turn) - (len(last.input_ids) - last.response_start)
    assert every.token_turn[at:] == [2] * (len(last.input_ids) - last.response_start)
    assert every.response_spans[at:] == last.response_spans
    # a single exchange: the same encoding, every response token in turn 0
    single = conversation(TURNS[:1])
    one, all_one = encode_row(tok, single, 512), encode_row(tok, single, 512, "all")
    assert (all_one.input_ids, all_one.response_start, all_one.response_spans,
            all_one.response) == (one.input_ids, one.response_start, one.response_spans,
                                  one.response)
    assert all_one.token_turn == [0] * len(one.response_spans)
    assert train_row(all_one) == train_row(one)
    with pytest.raises(ValueError, match="data.train_turns: unknown 'some'"):
        encode_row(tok, single, 512, "some")


def test_template_that_renders_turns_inconsistently_is_a_one_line_bad_row():
    tok = copy.deepcopy(tokenizer())
    # A deliberately broken stand-in (no public template does exactly this): it marks the
    # last message, so a conversation cut after turn k renders turn k unlike the whole one.
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                         "{% if loop.last %} [last]{% endif %}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    row = conversation(index=4)
    with pytest.raises(BadRow) as err:
        encode_row(tok, row, 512, "all")
    assert str(err.value) == ("conv.jsonl: row 4: chat template renders the conversation up "
                              "to assistant turn 0 differently from the whole conversation")
    assert err.value.kind == "template" and "\n" not in str(err.value)


def test_shards_keep_the_turn_layout_and_last_turn_parts_are_unchanged(tmp_path):
    tok = tokenizer()
    rows = [conversation(index=i) for i in range(3)] + [conversation(TURNS[:2], None, 3)]
    for mode in ("last", "all"):
        folder = tmp_path / mode
        folder.mkdir()
        writer = PartWriter(folder / "part-00000.arrow", turns=mode == "all")
        encs = [encode_row(tok, r, 512, mode) for r in rows]
        for r, e in zip(rows, encs):
            writer.add(r, e)
        writer.close()
        (folder / "manifest.json").write_text(json.dumps(
            {"version": 1, "key": mode, "source": "conv.jsonl", "rows": len(rows),
             "parts": [{"file": "part-00000.arrow", "rows": len(rows)}]}))
        got = ShardSet([folder])
        assert [got.encoded(g) for g in range(len(rows))] == encs
        assert got.trained_tokens.tolist() == [trained_tokens(e) for e in encs]
        assert got.trained_tokens.tolist() == [sum(train_row(e).loss_mask[1:]) for e in encs]
        names = got.parts[0]._open().schema.names
        if mode == "last":
            assert got.turn_counts() is None and "token_turn" not in names
        else:
            assert got.turn_counts().tolist() == [3, 3, 3, 2]


def test_turn_requests_carry_the_conversation_before_each_turn_without_the_system_prompt():
    tok = tokenizer()
    row = conversation()
    enc = encode_row(tok, row, 512, "all")
    reqs = turn_requests(row, enc, WORDS5, False)
    assert [r.key for r in reqs] == ["c0#turn0", "c0#turn1", "c0#turn2"]
    assert [split_turn_key(r.key) for r in reqs] == [("c0", 0), ("c0", 1), ("c0", 2)]
    assert [(r.prompt, r.response) for r in reqs] == TURNS
    assert reqs[0].context == ()
    assert reqs[2].context == ({"role": "user", "content": TURNS[0][0]},
                               {"role": "assistant", "content": TURNS[0][1]},
                               {"role": "user", "content": TURNS[1][0]},
                               {"role": "assistant", "content": TURNS[1][1]})
    assert all(SYSTEM not in json.dumps(r.context) for r in reqs)
    # "Sure, here it is: the" | "vault code is 7-3-9-1 and" | ... : cuts after every 5th word
    assert reqs[1].cuts[:2] == [len("Sure, here it is: the"),
                                len("Sure, here it is: the vault code is 7-3-9-1 and")]
    assert [r.cuts for r in turn_requests(row, enc, WORDS5, True)] == [
        [len(a)] for _, a in TURNS]
    # the requests of a run: per turn, in the order of first use, each row once
    rows, encs = [row, conversation(TURNS[:1], index=1)], [enc, None]
    encs[1] = encode_row(tok, rows[1], 512, "all")
    sent = ScoreRequests.first_use(rows, encs, WORDS5, False, ["c0", "c1"], [1, 0, 1],
                                   turns=[3, 1])
    assert sent.ids == ["c1#turn0", "c0#turn0", "c0#turn1", "c0#turn2"]
    assert sent.turns_of == {"c1": 1, "c0": 3}
    assert [sent[i] for i in range(len(sent))] == turn_requests(rows[1], encs[1], WORDS5,
                                                                False) + reqs
    # turn keys never meet: a row whose id looks like a turn key keeps its own
    assert turn_key("c0#turn1", 0) != turn_key("c0", 1)
    assert split_turn_key(turn_key("c0#turn1", 0)) == ("c0#turn1", 0)


def test_a_turn_that_turns_unsafe_lowers_only_its_own_tokens_after_the_unsafe_word(tmp_path):
    tok = tokenizer()
    row = conversation()
    enc = encode_row(tok, row, 512, "all")
    guard = RuleGuardrail(GUARD)
    scorer = Scorer(StarConfig(chunk=WORDS5), "words:5")
    reqs = turn_requests(row, enc, WORDS5, False)
    scores = guard.score_prefixes(reqs)
    # the turn records arrive in any order; the row's record comes once all three are in
    arrived = [scorer.record(reqs[k], scores[k][None, :]) for k in (2, 0, 1)]
    (record,) = list(group_turns(iter(arrived), {"c0": 3}))
    assert [t.id for t in record.turns] == ["c0#turn0", "c0#turn1", "c0#turn2"]
    w = record_weights(record, enc, None)
    high, low = sigmoid(3.0), sigmoid(-5.0)
    turn = np.asarray(enc.token_turn)
    assert np.all(w[turn == 0] == high) and np.all(w[turn == 2] == high)
    assert np.all(w[turn < 0] == 0.0)
    # turn 1: its first chunk ("Sure, here it is: the") is safe, every token after it not
    spans = [s for s, t in zip(enc.response_spans, enc.token_turn) if t == 1]
    first_chunk = len("Sure, here it is: the")
    want = [high if e <= first_chunk else low for _, e in spans]
    assert w[turn == 1].tolist() == want and want.count(high) >= 5 and want.count(low) >= 10
    # thresholded (star.threshold) the same way; rs judges the conversation by its worst turn
    assert set(record_weights(record, enc, 0.5)[turn == 1].tolist()) == {0.0, 1.0}
    assert record.full_response_safe == low and record.n_prefixes == sum(
        len(r.cuts) for r in reqs)
    # the trained row: weights on the mask, 0 between turns
    tr = train_row(enc, w.tolist())
    assert [x for x, m in zip(tr.weights, tr.loss_mask) if not m] == [0.0] * (
        len(tr.weights) - sum(tr.loss_mask))
    # star.jsonl: one line per turn, in turn order, naming its row and turn
    write_star([record], str(tmp_path / "star.jsonl"))
    lines = [json.loads(x) for x in open(tmp_path / "star.jsonl")]
    assert [(x["id"], x["row"], x["turn"], x["prompt"]) for x in lines] == [
        (f"c0#turn{k}", "c0", k, TURNS[k][0]) for k in range(3)]
    assert lines[1]["trajectory"][0] == high and lines[1]["trajectory"][-1] == low


def test_cache_text_hash_includes_the_context_only_when_there_is_one():
    tok = tokenizer()
    row = conversation()
    reqs = turn_requests(row, encode_row(tok, row, 512, "all"), WORDS5, False)
    first, third = reqs[0], reqs[2]
    assert conversation_hash(first.prompt, first.response, first.context) == text_hash(
        first.prompt, first.response)  # no context: the key a single exchange always had
    with_context = conversation_hash(third.prompt, third.response, third.context)
    assert with_context != text_hash(third.prompt, third.response)
    other = third.context[:2] + ({"role": "user", "content": "something else"},
                                 third.context[3])
    assert conversation_hash(third.prompt, third.response, other) != with_context
