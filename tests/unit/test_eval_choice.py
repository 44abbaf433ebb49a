"""Multiple choice by log-likelihood: a tiny Llama trained here on a few lettered questions
picks every trained answer; the scores are the same whatever the batch size; the token rule at
the prompt/continuation boundary is pinned."""
import pytest
import torch

from stardss.demo.model import build_tiny_llama
from stardss.eval.choice import ChoiceError, choice_logliks, continuation, encode_continuation, pick
from stardss.eval.items import EvalItem
from stardss.eval.metrics import LETTERS
from stardss.eval.render import render_prompt
from tests.helpers import tiny_config, tokenizer

QUESTIONS = [  # (question, choices, correct letter): the letters vary, so the letter matters
    ("Which one is a colour?", ("stone", "red", "river", "seven"), "B"),
    ("Which one is a number?", ("apple", "cloud", "green", "seven"), "D"),
    ("Which one is a fruit?", ("apple", "table", "blue", "nine"), "A"),
    ("Which one flows?", ("brick", "three", "river", "lamp"), "C"),
    ("Which one shines at night?", ("moon", "shoe", "bread"), "A"),
    ("Which one is cold?", ("fire", "sun", "ice"), "C"),
]


def choice_item(index: int, question: str, choices: tuple, answer: str, prefill: str = ""):
    """An item as the sets module writes one: the lettered options in the user turn."""
    options = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(choices))
    content = f"{question}\n{options}\nAnswer with the letter of the correct option."
    return EvalItem("quiz", index, f"quiz.jsonl:{index + 1}", "choice",
                    ({"role": "user", "content": content},), prefill=prefill, answer=answer,
                    choices=tuple(choices))


ITEMS = [choice_item(i, *q) for i, q in enumerate(QUESTIONS)]


def train_on_answers(model, tok, items, steps: int = 150):
    """Plain torch SFT on render_prompt + the correct continuation, loss on its tokens only."""
    rows = []
    for item in items:
        ids, first = encode_continuation(tok, render_prompt(tok, item),
                                         continuation(item, LETTERS.index(item.answer)))
        rows.append((ids, first))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for r, (ids, first) in enumerate(rows):
        input_ids[r, :len(ids)] = torch.tensor(ids)
        mask[r, :len(ids)] = 1
        labels[r, first:len(ids)] = torch.tensor(ids[first:])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tok = tokenizer()
    untrained = build_tiny_llama(tiny_config(), tok, seed=0)
    trained = build_tiny_llama(tiny_config(), tok, seed=0)
    final_loss = train_on_answers(trained, tok, ITEMS)
    return tok, untrained, trained, final_loss


def right(model, tok, items, batch_size=4):
    scores = choice_logliks(model, tok, items, batch_size=batch_size, device="cpu")
    return [LETTERS[pick(s)] == item.answer for s, item in zip(scores, items)]


def test_trained_model_picks_every_trained_answer(models):
    tok, untrained, trained, final_loss = models
    assert final_loss < 0.1
    assert right(trained, tok, ITEMS) == [True] * len(ITEMS)
    assert not all(right(untrained, tok, ITEMS))  # the training made the picks right
    assert trained.training  # left in the mode it was in


def test_scores_do_not_depend_on_batch_size_or_padding(models):
    tok, _, trained, _ = models
    runs = [choice_logliks(trained, tok, ITEMS, batch_size=b, device="cpu") for b in (1, 3, 8)]
    assert [len(s) for s in runs[0]] == [len(item.choices) for item in ITEMS]
    for other in runs[1:]:
        assert [pick(s) for s in other] == [pick(s) for s in runs[0]]
        for s0, s1 in zip(runs[0], other):
            assert s1 == pytest.approx(s0, abs=1e-5)
    assert all(x < 0 for s in runs[0] for x in s)


def test_loglik_is_the_sum_over_the_continuation_tokens(models):
    tok, _, trained, _ = models
    item = ITEMS[1]
    prompt = render_prompt(tok, item)
    got = choice_logliks(trained, tok, [item], batch_size=2, device="cpu")[0]
    trained.eval()
    for j in range(len(item.choices)):
        ids = tok(prompt + continuation(item, j), add_special_tokens=False)["input_ids"]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = trained(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        want = sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
        assert got[j] == pytest.approx(want, abs=1e-5)
    trained.train()


def test_a_token_straddling_the_prompt_end_is_scored_with_the_continuation(models):
    """A prefill ending in a space before option I: the demo BPE has one token " I" (no " A"),
    which starts on the prompt's last character. It counts as the continuation's first token
    (it ends after the prompt), so the letter is scored."""
    tok, _, trained, _ = models
    item = choice_item(0, "Pick the ninth.", tuple(f"w{j}" for j in range(9)), "I",
                       prefill="Answer: ")
    prompt = render_prompt(tok, item)
    ids, first = encode_continuation(tok, prompt, continuation(item, 8))
    offsets = tok(prompt + "I. w8", add_special_tokens=False,
                  return_offsets_mapping=True)["offset_mapping"]
    assert tok.convert_ids_to_tokens(ids[first:first + 2]) == ["ĠI", "."]
    assert offsets[first] == (len(prompt) - 1, len(prompt) + 1)
    # No merge with option A: its first token starts right at the prompt's end.
    ids_a, first_a = encode_continuation(tok, prompt, continuation(item, 0))
    assert tok.convert_ids_to_tokens(ids_a[first_a - 1:first_a + 1]) == ["Ġ", "A"]
    assert len(choice_logliks(trained, tok, [item], batch_size=4, device="cpu")[0]) == 9


def test_an_item_without_choices_is_named():
    item = EvalItem("quiz", 3, "quiz.jsonl:4", "choice", ({"role": "user", "content": "?"},))
    with pytest.raises(ChoiceError, match=r"^quiz.jsonl:4: .*quiz/3 has no choices"):
        choice_logliks(None, tokenizer(), [item], batch_size=1, device="cpu")


def test_pick_is_the_argmax_and_a_tie_goes_to_the_first():
    assert pick([-3.0, -1.0, -2.0]) == 1
    assert pick([-1.0, -2.0, -1.0]) == 0
    assert pick([-5.0]) == 0
    assert pick([float("nan"), -9.0, -3.0]) == 2
    with pytest.raises(ValueError):
        pick([])
