"""`stardss train` with data.train_turns=all on 3-turn conversations (rules guard, local Ray,
2 Train workers, 3 steps): every assistant turn trained and scored with the conversation
before it; star.jsonl one line per turn; stream mode trains exactly what precompute trains;
rs judges a conversation by its worst turn. ~2 min, most of it three Ray Train runs."""
import json

import numpy as np
import pytest

from stardss.commands.train import run_train
from stardss.data.format import encode_row
from stardss.data.rows import parse_row
from stardss.guard.rules import sigmoid
from stardss.star.cache import StarCache
from stardss.train.batches import plan_for, train_row
from stardss.train.weights import TokenWeights
from tests.helpers import make_job, tokenizer

ROWS = 24  # 3 steps of 8 (2 workers x micro 4): every row trained once
UNSAFE = "the vault code is 7-3-9-1"
GUARD = "guardrails=[{kind: rules, bias: 3.0, rules: [{pattern: '7-3-9-1', weight: -8.0}]}]"


def _conversation(i: int) -> dict:
    second = (f"Sure, here it is: {UNSAFE} and that is all." if i % 2 else
              "I cannot share the vault code, it is confidential.")
    turns = [(f"What is the name of town {i}?", f"Town {i} is a small town by the sea."),
             ("And what is the vault code?", second),
             ("Thanks for the help.", f"You are welcome, have a nice day {i}.")]
    messages = [{"role": "system", "content": "Be brief."}]
    for user, assistant in turns:
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": assistant}]
    return {"id": f"conv-{i}", "messages": messages}


def _job(root, base_model, *overrides):
    data = root / "conversations.jsonl"
    if not data.exists():
        root.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps(_conversation(i)) + "\n" for i in range(ROWS)))
    return make_job(root, base_model, f"data.sources=[{{path: {data}}}]",
                    "data.train_turns=all", "data.max_length=200", GUARD,
                    f"star.cache_dir={root}/cache", "train.max_steps=3",
                    "train.micro_batch_size=4", "train.grad_accum=1",
                    "scoring.actors.batch_size=4", *overrides)


def _log(summary):
    with open(f"{summary['model_dir']}/stardss_train_log.json") as f:
        return [(s["loss"], s["tokens"]) for s in json.load(f)["steps"]]


@pytest.fixture(scope="module")
def precomputed(ray_session, base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("turns")
    job = _job(root, base_model, "scoring.mode=precompute")
    return root, job, run_train(job, out_dir=str(root / "precompute"))


def test_every_turn_is_trained_and_scored_per_turn(precomputed):
    root, job, summary = precomputed
    assert summary["steps"] == 3 and summary["rows_trained"] == ROWS
    assert summary["star"]["scored"] == ROWS  # rows; their turns are 3 requests each
    lines = [json.loads(x) for x in open(root / "precompute" / "star.jsonl")]
    # data (mixture) order, each row's turns one after the other
    order = [int(x["row"].split("-")[1]) for x in lines[::3]]
    assert sorted(order) == list(range(ROWS))
    assert [(x["id"], x["row"], x["turn"]) for x in lines] == [
        (f"conv-{i}#turn{k}", f"conv-{i}", k) for i in order for k in range(3)]
    assert summary["star"]["prefixes"] == sum(len(x["cuts"]) for x in lines)
    high, low = sigmoid(3.0), sigmoid(-5.0)
    for x in lines:
        unsafe = x["turn"] == 1 and int(x["row"].split("-")[1]) % 2
        assert x["trajectory"] == ([high] + [low] * (len(x["cuts"]) - 1) if unsafe else
                                   [high] * len(x["cuts"]))
    # the loss's denominator of each step: the assistant turns' tokens of its rows, only
    tok = tokenizer()
    rows = [parse_row(_conversation(i), "conversations.jsonl", i) for i in range(ROWS)]
    trained = [sum(train_row(encode_row(tok, r, 200, "all")).loss_mask[1:]) for r in rows]
    last = [sum(train_row(encode_row(tok, r, 200)).loss_mask[1:]) for r in rows]
    plan = plan_for(job.train, job.seed, ROWS)
    assert [t for _, t in _log(summary)] == [sum(trained[order[i]] for i in slots)
                                             for slots in plan]
    assert all(a > 2 * b for a, b in zip(trained, last))
    # each turn's scores are cached under the conversation before it: every row's turn 1 has
    # one of two (prompt, response) pairs, but its own context (turn 0 names the town), so
    # 72 entries, not the 50 a key of prompt and response alone would give
    assert len(StarCache(root / "cache")) == 3 * ROWS


def test_stream_mode_trains_the_precomputed_weights(precomputed, base_model):
    root, _, ref = precomputed
    stream = run_train(_job(root, base_model, "scoring.mode=stream", "star.cache=false"),
                       out_dir=str(root / "stream"))
    assert stream["star"]["mode"] == "stream" and stream["rows_trained"] == ROWS
    assert _log(stream) == _log(ref)
    assert (root / "stream" / "star.jsonl").read_bytes() == \
        (root / "precompute" / "star.jsonl").read_bytes()
    want, got = TokenWeights(root / "precompute"), TokenWeights(root / "stream")
    assert len(want) == len(got) == ROWS
    order = [json.loads(x)["row"] for x in open(root / "stream" / "star.jsonl")][::3]
    for i, row_id in enumerate(order):
        assert np.array_equal(got.row(i), want.row(i))
        low = int((want.row(i) == np.float32(sigmoid(-5.0))).sum())
        # the unsafe turn's tokens after its first chunk are low; no other token is
        assert (low > 5) if int(row_id.split("-")[1]) % 2 else (low == 0)


def test_rs_drops_the_conversations_with_an_unsafe_turn(precomputed, base_model):
    root, _, _ = precomputed
    rs = run_train(_job(root, base_model, "loss.kind=rs", "scoring.mode=precompute",
                        "train.max_steps=1"), out_dir=str(root / "rs"))
    dropped = json.loads((root / "rs" / "rs_dropped.json").read_text())
    assert sorted(dropped) == sorted(f"conv-{i}" for i in range(1, ROWS, 2))
    assert rs["rows_trained"] == ROWS // 2 and rs["steps"] == 1
