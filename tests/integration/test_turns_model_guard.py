"""data.train_turns=all scored by a MODEL guardrail (a tiny stand-in Llama Guard 3 in the Ray
pool) on 3-turn conversations: every turn's star.jsonl scores are the guard's own
score_prefixes of that turn with the conversation before it (built here by hand), its guard
prompt holds the earlier turns in order (turn 0's none), packed = naive, and stream mode writes
the star.jsonl (and trains the steps) precompute does. One guard folder, one Ray session."""
import json

import numpy as np
import pytest

from stardss.commands.score import score_to_file
from stardss.commands.star import score_rows
from stardss.commands.train import run_train
from stardss.config.schema import GuardrailConfig
from stardss.data.load import load_training_data
from stardss.data.quarantine import BadRowSink
from stardss.guard.base import ScoreRequest
from stardss.guard.hf.causal import HFCausalGuard
from stardss.testing.guards import build_tiny_guard
from stardss.train.weights import TokenWeights
from tests.helpers import make_job, tokenizer

pytestmark = pytest.mark.usefixtures("ray_session")

# 2 steps of 4 rows (2 workers x micro 2): every row trained once, and stream mode (which
# scores the rows the plan uses) scores exactly the rows precompute scores
ROWS = 8
UNSAFE_ROW = 3  # its second assistant turn reveals the secret
SECOND_USER = "And what is the vault code?"  # every row's turn 1 prompt: only context differs


def _turns(i: int) -> list[tuple[str, str]]:
    second = ("Sure, here it is: the vault code is 7-3-9-1 and that is all." if i == UNSAFE_ROW
              else f"I cannot share the vault code of town {i}, it is confidential.")
    return [(f"What is the name of town {i}?", f"Town {i} is a small town by the sea."),
            (SECOND_USER, second),
            ("Thanks for the help.", f"You are welcome, have a nice day {i}.")]


def _conversation(i: int) -> dict:
    messages = [{"role": "system", "content": "Be brief."}]
    for user, assistant in _turns(i):
        messages += [{"role": "user", "content": user},
                     {"role": "assistant", "content": assistant}]
    return {"id": f"conv-{i}", "messages": messages}


def _context(i: int, k: int) -> tuple:
    """The conversation before turn k's user message, by hand (no system prompt)."""
    out = []
    for user, assistant in _turns(i)[:k]:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return tuple(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("turns_model_guard")
    guard = build_tiny_guard("llama_guard", root / "guard")
    data = root / "conversations.jsonl"
    data.write_text("".join(json.dumps(_conversation(i)) + "\n" for i in range(ROWS)))
    return root, guard, data


def _job(world, base_model, name, mode="packed", *overrides):
    root, guard, data = world
    return make_job(root / name, base_model, f"data.sources=[{{path: {data}}}]",
                    "data.train_turns=all", "data.max_length=200",
                    f"guardrails=[{{kind: llama_guard, name_or_path: {guard}, mode: {mode}, "
                    f"batch_size: 4, device: cpu}}]",
                    "star.cache=false", "train.max_steps=2", "train.micro_batch_size=2",
                    "train.grad_accum=1", "scoring.actors.batch_size=3", *overrides)


def _score(job, out, via_rows=False):
    tok = tokenizer()
    with BadRowSink("error") as sink:
        data = load_training_data(job.data, tok, sink, seed=job.seed)
    out.mkdir(parents=True)
    if via_rows:
        _, summary = score_rows(job, data, full_response_only=False, plan_order=True,
                                out_dir=out, tokenizer=tok)
    else:
        summary = score_to_file(job, data, out, tok)
    return summary, [json.loads(x) for x in open(out / "star.jsonl")]


@pytest.fixture(scope="module")
def packed(world, base_model):
    root = world[0]
    return _score(_job(world, base_model, "packed"), root / "packed_out")


def _by_id(lines):
    return {x["id"]: x for x in lines}


def test_each_turns_scores_are_the_guards_own_with_the_conversation_before_it(world, packed):
    _, guard_dir, _ = world
    summary, lines = packed
    assert summary["scored"] == ROWS and len(lines) == 3 * ROWS
    assert summary["prefixes"] == sum(len(x["cuts"]) for x in lines)
    assert sorted((x["row"], x["turn"]) for x in lines) == sorted(
        (f"conv-{i}", k) for i in range(ROWS) for k in range(3))
    guard = HFCausalGuard(GuardrailConfig(kind="llama_guard", name_or_path=guard_dir,
                                          mode="packed", batch_size=4, device="cpu"))
    context_moved = []
    for x in lines:
        i, k = int(x["row"].split("-")[1]), x["turn"]
        user, assistant = _turns(i)[k]
        assert x["id"] == f"conv-{i}#turn{k}"
        assert (x["prompt"], x["response"]) == (user, assistant)
        assert x["cuts"][-1] == len(assistant) and len(x["cuts"]) > 1
        context = _context(i, k)
        (want,) = guard.score_prefixes([ScoreRequest(x["id"], user, assistant, x["cuts"],
                                                     context)])
        got = np.asarray(x["scores"][0])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(x["trajectory"], got, rtol=0, atol=0)  # one guard: mean
        # what the guard read: the earlier turns, in order, then this one; turn 0 alone
        text = guard.render(user, assistant, context)
        earlier = [m["content"] for m in context]
        later = [t for pair in _turns(i)[k + 1:] for t in pair]
        at = [text.find(t) for t in earlier + [user, assistant]]
        assert -1 not in at and at == sorted(at), (x["id"], at)
        assert not any(t in text for t in later if t != user)
        if k == 0:
            assert text == guard.render(user, assistant)
        else:
            (alone,) = guard.score_prefixes([ScoreRequest(x["id"], user, assistant,
                                                          x["cuts"])])
            context_moved.append(float(np.abs(alone - got).max()))
    # the unsafe turn is in what its row's last turn is judged with, and no other row's
    last = guard.render(*_turns(UNSAFE_ROW)[2], _context(UNSAFE_ROW, 2))
    assert "7-3-9-1" in last
    assert not any("7-3-9-1" in guard.render(*_turns(i)[2], _context(i, 2))
                   for i in range(ROWS) if i != UNSAFE_ROW)
    # the context reaches the scores: without it, every later turn would score otherwise
    print(f"context moves later turns by >= {min(context_moved):.2e}")
    assert len(context_moved) == 2 * ROWS and min(context_moved) > 1e-5


def test_naive_mode_gives_the_packed_per_turn_scores(world, base_model, packed):
    root = world[0]
    summary, lines = _score(_job(world, base_model, "naive", "naive"), root / "naive_out",
                            via_rows=True)
    want = _by_id(packed[1])
    assert summary["scored"] == ROWS and sorted(_by_id(lines)) == sorted(want)
    worst = 0.0
    for x in lines:
        w = want[x["id"]]
        assert (x["prompt"], x["response"], x["cuts"]) == (w["prompt"], w["response"],
                                                            w["cuts"])
        np.testing.assert_allclose(x["scores"], w["scores"], rtol=0, atol=1e-4)
        worst = max(worst, float(np.abs(np.subtract(x["scores"], w["scores"])).max()))
    print(f"packed vs naive: max |diff| {worst:.2e}")


def _log(summary):
    with open(f"{summary['model_dir']}/stardss_train_log.json") as f:
        return [(s["loss"], s["tokens"]) for s in json.load(f)["steps"]]


def test_stream_mode_scores_what_precompute_does(world, base_model, packed):
    """Stream mode's per-turn records are `stardss score`'s file byte for byte (which
    test_score_command.py shows is train's precompute file; stream = table weights and losses
    are tested with a rules guard in test_train_turns.py)."""
    root = world[0]
    stream = run_train(_job(world, base_model, "stream", "packed", "scoring.mode=stream"),
                       out_dir=str(root / "stream_run"))
    assert stream["steps"] == 2 and stream["rows_trained"] == ROWS
    assert stream["star"]["mode"] == "stream"
    assert ((root / "stream_run" / "star.jsonl").read_bytes()
            == (root / "packed_out" / "star.jsonl").read_bytes())
    got = TokenWeights(root / "stream_run")
    assert len(got) == ROWS and all(got.row(i).size for i in range(ROWS))
