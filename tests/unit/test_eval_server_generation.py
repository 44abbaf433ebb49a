"""ServerGenerator (backend openai) against a real local chat-completions server started by the
test: the request bodies (sampling fields, the prefill continuation fields, per-item seeds),
the texts, bounded concurrency, and its errors."""
from __future__ import annotations

import json

import pytest

from stardss.config.evaluation import GenerationConfig
from stardss.eval.generation import open_generator
from stardss.eval.items import EvalItem
from stardss.eval.server_generation import ServerGenerator, item_seed
from stardss.httpclient import HttpError
from tests.http_support import ChatServer, Reply


def items(n=4) -> list[EvalItem]:
    return [EvalItem("adv", i, f"adv.csv:{i + 2}", "safety",
                     ({"role": "system", "content": "be brief"},
                      {"role": "user", "content": f"question {i}"}),
                     prefill="Sure, here is" if i % 2 else "")
            for i in range(n)]


def completion(text: str, prompt_tokens: int, new_tokens: int) -> Reply:
    body = {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens}}
    return Reply(body=json.dumps(body).encode())


def answer(seen) -> Reply:
    """' how to X' after a prefill, 'answer to X' otherwise; token counts from the request."""
    user = seen.payload["messages"][1]["content"]
    prefilled = seen.payload["messages"][-1]["role"] == "assistant"
    return completion(f" how to {user}" if prefilled else f"answer to {user}", len(user), 3)


def gen(srv: ChatServer, **kw) -> GenerationConfig:
    return GenerationConfig(**{"backend": "openai", "server": srv.server(model="m"),
                               "max_new_tokens": 32, **kw})


def test_requests_and_texts():
    with ChatServer(answer) as srv:
        g = gen(srv, temperature=0.2, top_p=0.9, top_k=50, repetition_penalty=1.2)
        with open_generator("unused", g, seed=7) as generator:
            assert isinstance(generator, ServerGenerator)
            out = generator.generate(items())
    assert list(out) == ["adv/0", "adv/1", "adv/2", "adv/3"]
    assert out["adv/0"].text == "answer to question 0"
    assert out["adv/1"].text == "Sure, here is how to question 1"  # prefill + continuation
    assert (out["adv/1"].prompt_tokens, out["adv/1"].new_tokens) == (10, 3)
    by_user = {s.payload["messages"][1]["content"]: s for s in srv.seen}
    assert {s.path for s in srv.seen} == {"/v1/chat/completions"}
    plain, prefilled = by_user["question 0"].payload, by_user["question 1"].payload
    assert plain == {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "question 0"}],
                     "max_tokens": 32, "temperature": 0.2, "top_p": 0.9, "top_k": 50,
                     "repetition_penalty": 1.2, "seed": item_seed(7, "adv/0")}
    assert prefilled["messages"][-1] == {"role": "assistant", "content": "Sure, here is"}
    assert prefilled["continue_final_message"] is True
    assert prefilled["add_generation_prompt"] is False
    assert "continue_final_message" not in plain and "add_generation_prompt" not in plain
    assert prefilled["seed"] == item_seed(7, "adv/1")


def test_seeds_are_stable_per_item_and_seed():
    assert item_seed(7, "adv/0") == item_seed(7, "adv/0")  # hashlib: the same in any process
    seeds = {item_seed(s, f"adv/{i}") for s in (7, 8) for i in range(50)}
    assert len(seeds) == 100 and all(0 <= s < 2 ** 31 for s in seeds)
    with ChatServer(answer) as srv:
        # gen.seed wins over the job's seed
        ServerGenerator(gen(srv, seed=8), seed=7).generate(items(2))
    assert sorted(s.payload["seed"] for s in srv.seen) == sorted(
        item_seed(8, k) for k in ("adv/0", "adv/1"))


def test_greedy_leaves_out_the_vllm_sampling_fields():
    with ChatServer(answer) as srv:
        ServerGenerator(gen(srv), seed=0).generate(items(1))
    body = srv.seen[0].payload
    assert (body["temperature"], body["top_p"]) == (0.0, 1.0)
    assert "top_k" not in body and "repetition_penalty" not in body


def test_concurrency_is_bounded():
    def slow(seen):
        reply = answer(seen)
        reply.delay_s = 0.05
        return reply

    with ChatServer(slow) as srv:
        out = ServerGenerator(gen(srv, server=srv.server(model="m", concurrency=3)),
                              seed=0).generate(items(12))
    assert len(out) == 12 and len(srv.seen) == 12
    assert srv.max_in_flight == 3


def test_failed_item_is_named():
    def refuse_third(seen):
        if seen.payload["messages"][1]["content"] == "question 2":
            return Reply(status=400, body=b'{"error": "bad request"}')
        return answer(seen)

    with ChatServer(refuse_third) as srv:
        generator = ServerGenerator(gen(srv), seed=0)
        with pytest.raises(HttpError, match=r"answered 400.* \(item adv/2, adv\.csv:4\)$"):
            generator.generate(items())
    with ChatServer(lambda seen: Reply(body=b'{"choices": []}')) as srv:
        with pytest.raises(HttpError, match=r"item adv/0 \(adv\.csv:2\) has no text"):
            ServerGenerator(gen(srv), seed=0).generate(items(1))


def test_what_the_backend_cannot_do():
    with ChatServer(answer) as srv:
        with pytest.raises(ValueError, match="max_length is not supported by backend openai"):
            ServerGenerator(gen(srv, max_new_tokens=None, max_length=500), seed=0)
        generator = ServerGenerator(gen(srv), seed=0)
        with pytest.raises(ValueError, match="backend=hf"):
            generator.choice_logliks(items(1))
        assert generator.generate([]) == {} and generator.choice_logliks([]) == {}
    assert srv.seen == []
    with pytest.raises(ValueError, match="needs eval.generation.server"):
        ServerGenerator(GenerationConfig(backend="openai"), seed=0)
