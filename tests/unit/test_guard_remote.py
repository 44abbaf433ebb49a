"""kind: remote against a real completions server started by the test (CompletionServer: the
tiny stand-in guard's real forward, answered in vLLM's layout): the same P(safe) as the local
HFCausalGuard over the same folder, the request it sends, retries and errors for 429 / 500 /
slow / garbage answers and a server that is not there, the bearer token kept out of every
message, the concurrency bound, and what the fingerprint depends on."""
from __future__ import annotations

import time

import numpy as np
import pytest

from stardss.config.schema import GuardrailConfig
from stardss.config.sources import ServerConfig
from stardss.guard.base import ScoreRequest
from stardss.guard.hf.rows import tokenize
from stardss.guard.registry import build_guardrail
from stardss.guard.remote import TOP_LOGPROBS, RemoteGuard
from stardss.httpclient import HttpError
from stardss.star.chunk import word_cuts
from tests.helpers import GUARD_RESPONSES as RESPONSES
from tests.http_support import (
    KEY,
    KEY_ENV,
    CompletionServer,
    Reply,
    build_served_guard,
    closed_port_url,
    on_completions,
)

REQUESTS = [ScoreRequest(f"r{i}", f"question {i}?", r, word_cuts(r, 5))
            for i, r in enumerate(RESPONSES)]
FAMILIES = ["llama_guard", "granite_guardian", "shieldgemma", "wildguard", "qwen3guard",
            "nemoguard"]
VARIANTS = {"llama_guard-4": ("llama_guard", "4")}
"""Stand-ins of a family's other variant, scored remotely as the family."""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Stand-in folders, built once per family when first asked for."""
    built: dict[str, str] = {}

    def get(key: str) -> str:
        if key not in built:
            kind, variant = VARIANTS.get(key, (key, None))
            built[key] = build_served_guard(kind, tmp_path_factory.mktemp(key), variant)
        return built[key]

    return get


def remote_cfg(folder: str, server, family: str = "llama_guard", **kw) -> GuardrailConfig:
    return GuardrailConfig(kind="remote", family=family, name_or_path=folder, server=server,
                           **kw)


def local(folder: str, kind: str):
    return build_guardrail(GuardrailConfig(kind=kind, name_or_path=folder, mode="naive"))


def completions(srv) -> list:
    return [s for s in srv.seen if s.path == "/v1/completions"]


@pytest.mark.parametrize("key", [*FAMILIES, *VARIANTS])
def test_remote_equals_local_and_sends_the_local_token_ids(folders, key):
    folder = folders(key)
    family = VARIANTS.get(key, (key,))[0]
    want = local(folder, family)
    with CompletionServer(folder) as srv:
        guard = build_guardrail(remote_cfg(folder, srv.server(concurrency=4), family))
        got = guard.score_prefixes(REQUESTS)
        one = guard.score(REQUESTS[0].prompt, REQUESTS[0].prefixes)
    assert isinstance(guard, RemoteGuard)
    for req, g, w in zip(REQUESTS, got, want.score_prefixes(REQUESTS)):
        assert g.dtype == np.float64 and g.shape == (len(req.cuts),)
        np.testing.assert_allclose(g, w, atol=1e-4)
    np.testing.assert_allclose(one, got[0], atol=1e-12)  # score = score_prefixes
    sent = completions(srv)
    prefixes = sum(len(r.cuts) for r in REQUESTS)
    if not guard.branched:  # one request per prefix (and per prefix again for score())
        assert len(sent) == prefixes + len(REQUESTS[0].cuts)
        fmt = want.format
        ids = tokenize(want.tokenizer, [fmt.render(r.prompt, p) for r in REQUESTS
                                        for p in r.prefixes])
        assert sorted(s.payload["prompt"] for s in sent[:prefixes]) == sorted(ids)
    else:  # a request per read of every branch, shared heads asked once: WildGuard's 4
        # branches read 1 + 2 + 4 = 7 times, NemoGuard's 2 branches 1 + 2 = 3 times
        brs = want.format.branches("q", "a")
        reads = len(brs) + len({b.text[:off] for b in brs for off, _ in b.steps})
        assert reads == {"wildguard": 7, "nemoguard": 3}[family]
        assert len(sent) == reads * (prefixes + len(REQUESTS[0].cuts))
    assert {k: v for k, v in sent[0].payload.items() if k != "prompt"} == {
        "model": "guard-model", "max_tokens": 1, "temperature": 0, "logprobs": TOP_LOGPROBS,
        "return_tokens_as_token_ids": True}


def test_token_text_keys_of_a_server_without_token_ids_give_the_same_scores(folders):
    folder = folders("llama_guard")
    with CompletionServer(folder) as ids_srv, \
            CompletionServer(folder, token_id_keys=False) as text_srv:
        by_ids = RemoteGuard(remote_cfg(folder, ids_srv.server())).score_prefixes(REQUESTS)
        by_text = RemoteGuard(remote_cfg(folder, text_srv.server())).score_prefixes(REQUESTS)
    top = completions(text_srv)[0].payload  # the request asked for ids; the server ignored it
    assert top["return_tokens_as_token_ids"] is True
    for a, b in zip(by_ids, by_text):
        np.testing.assert_array_equal(a, b)


def test_429_and_500_are_retried_then_the_scores_are_the_same(folders):
    folder = folders("llama_guard")
    with CompletionServer(folder) as srv:
        want = RemoteGuard(remote_cfg(folder, srv.server())).score_prefixes(REQUESTS[:1])
    faults = on_completions(Reply(status=429, headers={"Retry-After": "0"}), Reply(status=500),
                            Reply(status=503))
    with CompletionServer(folder, script=faults) as srv:
        guard = RemoteGuard(remote_cfg(folder, srv.server(max_retries=3)))
        got = guard.score_prefixes(REQUESTS[:1])
    np.testing.assert_array_equal(got[0], want[0])
    assert len(completions(srv)) == len(REQUESTS[0].cuts) + 3
    assert guard.client.requests_sent == 1 + len(REQUESTS[0].cuts) + 3  # GET models + posts


def test_5xx_past_max_retries_is_one_line_naming_server_reason_and_row(folders):
    folder = folders("llama_guard")
    with CompletionServer(folder, script=on_completions(then=Reply(status=500))) as srv:
        guard = RemoteGuard(remote_cfg(folder, srv.server(max_retries=2)))
        with pytest.raises(HttpError) as err:
            guard.score_prefixes(REQUESTS[:1])
    msg = str(err.value)
    assert msg.startswith(f"guardrail remote:llama_guard:guard-model: {srv.url}/completions "
                          f"answered 500")
    assert msg.endswith("(after 3 tries) (row 'r0' prefix 0)") and "\n" not in msg
    assert (err.value.status, err.value.reason) == (500, "status")
    assert len(completions(srv)) == 3  # the other prefixes were never sent (concurrency 1)


def test_slow_answers_time_out_and_are_retried(folders):
    folder = folders("llama_guard")
    with CompletionServer(folder, script=on_completions(Reply(delay_s=0.6))) as srv:
        guard = RemoteGuard(remote_cfg(folder, srv.server(timeout_s=0.3, max_retries=1)))
        got = guard.score_prefixes(REQUESTS[:1])  # the first try timed out, its retry did not
        assert len(completions(srv)) == len(REQUESTS[0].cuts) + 1
        np.testing.assert_allclose(got[0], local(folder, "llama_guard")
                                   .score_prefixes(REQUESTS[:1])[0], atol=1e-4)
    with CompletionServer(folder, script=on_completions(then=Reply(delay_s=0.6))) as srv:
        guard = RemoteGuard(remote_cfg(folder, srv.server(timeout_s=0.3, max_retries=1)))
        start = time.monotonic()
        with pytest.raises(HttpError) as err:
            guard.score_prefixes(REQUESTS[:1])
    assert time.monotonic() - start < 3
    assert err.value.reason == "timeout"
    assert str(err.value) == (f"guardrail remote:llama_guard:guard-model: {srv.url}/completions:"
                              f" no answer within 0.3s (after 2 tries) (row 'r0' prefix 0)")


def _drop_logprobs(answer: dict) -> dict:
    answer["choices"][0]["logprobs"] = None
    return answer


def _drop_label(label_id: int):
    def edit(answer: dict) -> dict:
        answer["choices"][0]["logprobs"]["top_logprobs"][0].pop(f"token_id:{label_id}")
        return answer
    return edit


def test_garbage_answers_are_protocol_errors_naming_the_row(folders):
    folder = folders("llama_guard")
    unsafe = local(folder, "llama_guard").format.unsafe_id
    cases = [
        (Reply(body=b"<html>502 proxy</html>"), "answered 200 with a body that is not JSON"),
        (Reply(body=b'{"choices": []}'), "the answer has no choices[0]"),
        (Reply(edit=_drop_logprobs), "the answer has no choices[0].logprobs.top_logprobs[0]"),
        (Reply(edit=_drop_label(unsafe)),
         f"label 'unsafe' (token {unsafe}) is not among the server's top {TOP_LOGPROBS} "
         f"log-probs at the decision position: P(safe) needs every label's log-prob"),
    ]
    for reply, why in cases:
        script = on_completions(Reply(), reply)  # the second prefix of the row gets garbage
        with CompletionServer(folder, script=script) as srv:
            guard = RemoteGuard(remote_cfg(folder, srv.server()))
            with pytest.raises(HttpError) as err:
                guard.score_prefixes(REQUESTS[:1])
        msg = str(err.value)
        assert why in msg and msg.endswith("(row 'r0' prefix 1)") and "\n" not in msg, msg
        assert err.value.reason == "protocol" and err.value.users_fault


def test_an_unreachable_server_fails_quickly_and_clearly(folders):
    folder = folders("llama_guard")
    url = closed_port_url()
    cfg = remote_cfg(folder, ServerConfig(base_url=url, model="guard-model", max_retries=2,
                                          backoff_s=0.01, timeout_s=1.0))
    start = time.monotonic()
    with pytest.raises(HttpError) as err:
        build_guardrail(cfg)
    assert time.monotonic() - start < 2
    assert str(err.value) == (f"guardrail remote:llama_guard:guard-model: {url}/models: "
                              f"connection refused (is the server running?) (after 3 tries)")
    assert err.value.reason == "unreachable"


def test_the_models_lookup_must_list_the_model(folders):
    folder = folders("llama_guard")
    with CompletionServer(folder, model="other-model") as srv:
        with pytest.raises(ValueError) as err:
            RemoteGuard(remote_cfg(folder, srv.server(model="guard-model")))
    assert str(err.value) == (f"guardrail remote:llama_guard:guard-model: {srv.url}/models "
                              f"lists ['other-model'], not server.model 'guard-model'")
    script = lambda seen: Reply(body=b'{"object": "list"}')  # noqa: E731
    with CompletionServer(folder, script=script) as srv:
        with pytest.raises(HttpError) as err:
            RemoteGuard(remote_cfg(folder, srv.server()))
    assert "models answered no model list (`data`)" in str(err.value)


def test_the_bearer_token_is_sent_and_appears_in_no_message(folders, monkeypatch):
    folder = folders("llama_guard")
    monkeypatch.setenv(KEY_ENV, KEY)
    # The server quotes the key in its error body, as a careless proxy might.
    script = on_completions(Reply(), then=Reply(status=500, body=f"bad token {KEY}".encode()))
    with CompletionServer(folder, key=KEY, script=script) as srv:
        guard = RemoteGuard(remote_cfg(folder, srv.server(api_key_env=KEY_ENV, max_retries=1)))
        with pytest.raises(HttpError) as err:
            guard.score_prefixes(REQUESTS[:1])
    assert {s.headers.get("Authorization") for s in srv.seen} == {f"Bearer {KEY}"}
    assert len(srv.seen) == 1 + 1 + 2  # models, one good prefix, a 500 and its retry
    for text in (str(err.value), repr(guard), repr(guard.client), guard.fingerprint):
        assert KEY not in text and KEY[:8] not in text
    assert "bad token ***" in str(err.value)
    with CompletionServer(folder, key=KEY) as srv:  # a missing key: the server's 401
        with pytest.raises(HttpError) as err:
            RemoteGuard(remote_cfg(folder, srv.server()))
    assert err.value.status == 401 and err.value.users_fault
    monkeypatch.delenv(KEY_ENV)
    with CompletionServer(folder, key=KEY) as srv:  # the variable not set: no request at all
        with pytest.raises(HttpError) as err:
            RemoteGuard(remote_cfg(folder, srv.server(api_key_env=KEY_ENV)))
    assert err.value.reason == "config" and srv.seen == []


def test_concurrency_is_bounded_by_the_server_config(folders):
    folder = folders("llama_guard")
    slow = on_completions(then=Reply(delay_s=0.05))
    with CompletionServer(folder, script=slow) as srv:
        RemoteGuard(remote_cfg(folder, srv.server(concurrency=3))).score_prefixes(REQUESTS)
    assert len(completions(srv)) == sum(len(r.cuts) for r in REQUESTS) > 6
    assert srv.max_in_flight == 3  # at most the bound, and the bound is used


def test_the_fingerprint_is_the_served_model_and_the_format_not_the_url(folders, monkeypatch):
    folder = folders("llama_guard")
    monkeypatch.setenv(KEY_ENV, KEY)

    def fp(model="guard-model", root="meta-llama/Llama-Guard-3-1B", reports=None, key=None,
           family="llama_guard", **cfg):
        with CompletionServer(folders(family), model=model, root=root, revision=reports,
                              key=key) as srv:
            env = {"api_key_env": KEY_ENV} if key else {}
            return RemoteGuard(remote_cfg(folders(family), srv.server(**env), family,
                                          **cfg)).fingerprint

    base = fp()
    assert fp(key=KEY) == base  # another server (port), with a key: the same scores
    changed = [fp(model="guard-b"),                # the served model's id,
               fp(root="/models/other"),           # what it says it loaded,
               fp(reports="abc"),                  # the revision it reports,
               fp(revision="v1"),                  # the revision the user pins,
               fp(excluded_categories=["S1"]),     # the format's options,
               fp(family="granite_guardian")]      # the format itself
    assert len({base, *changed}) == 1 + len(changed)
    local_fp = local(folder, "llama_guard").fingerprint
    assert base != local_fp  # a local guard's fingerprint has its weights; a remote one cannot


@pytest.mark.parametrize("family", ["llama_guard", "granite_guardian", "wildguard"])
def test_a_conversations_earlier_turns_are_rendered_as_locally(folders, family):
    folder = folders(family)
    context = ({"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi!"})
    reqs = [ScoreRequest("m0", "and now?", "Sure, here it is: step one.", [5, 17, 27], context),
            ScoreRequest("m1", "and now?", "Sure, here it is: step one.", [5, 17, 27])]
    want = local(folder, family)
    with CompletionServer(folder) as srv:
        guard = RemoteGuard(remote_cfg(folder, srv.server(), family))
        got = guard.score_prefixes(reqs)
    for g, w in zip(got, want.score_prefixes(reqs)):
        np.testing.assert_allclose(g, w, atol=1e-4)
    if not guard.branched:
        sent = [s.payload["prompt"] for s in completions(srv)]
        with_context = tokenize(want.tokenizer, [want.render(reqs[0].prompt, p, context)
                                                 for p in reqs[0].prefixes])
        assert sent[:3] == with_context and sent[3:] != with_context


def test_bad_config_is_one_line_errors(folders):
    folder = folders("llama_guard")
    with CompletionServer(folder) as srv:
        with pytest.raises(ValueError, match="family must be one of"):
            RemoteGuard(remote_cfg(folder, srv.server(), family="hf_classifier"))
        with pytest.raises(ValueError, match="needs server"):
            RemoteGuard(remote_cfg(folder, None))
        with pytest.raises(ValueError, match="needs name_or_path"):
            RemoteGuard(remote_cfg(None, srv.server()))
    assert srv.seen == []
