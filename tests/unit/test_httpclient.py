"""HttpClient against a real local HTTP server started by the test (ChatServer, also used by
test_eval_judges.py): retries on 429 / 5xx / timeouts with backoff and Retry-After, errors that
say why (status, timeout, unreachable, protocol), the API key only in the Authorization header,
bounded concurrency, and `map` stopping after the first failure."""
from __future__ import annotations

import time

import pytest

from stardss.config.evaluation import ServerConfig
from stardss.httpclient import HttpClient, HttpError
from tests.http_support import (
    KEY,
    KEY_ENV,
    ChatServer,
    Reply,
    Seen,
    Sleeps,
    closed_port_url,
    scripted,
)


def test_chat_sends_the_openai_request_and_returns_the_content():
    with ChatServer(lambda s: Reply(f"echo {s.content}")) as srv:
        client = HttpClient(srv.server(), what="judge t")
        text = client.chat([{"role": "user", "content": "hi"}], temperature=0, max_tokens=4)
    assert text == "echo hi"
    assert client.requests_sent == 1
    (seen,) = srv.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.payload == {"model": "judge-model", "messages": [{"role": "user",
                                                                  "content": "hi"}],
                            "temperature": 0, "max_tokens": 4}
    assert "Authorization" not in seen.headers  # no api_key_env: no key


def test_429_honours_retry_after_and_5xx_backs_off_doubling():
    sleeps = Sleeps()
    replies = (Reply(status=429, headers={"Retry-After": "0.25"}),
               Reply(status=429, headers={"Retry-After": "0"}),
               Reply(status=500), Reply(status=503), Reply("done"))
    with ChatServer(scripted(*replies)) as srv:
        client = HttpClient(srv.server(max_retries=4), what="judge t", sleep=sleeps)
        assert client.chat([{"role": "user", "content": "x"}]) == "done"
    assert client.requests_sent == 5
    # Retry-After as given (0 too), else the backoff: 0.01 doubled after each try.
    assert sleeps == [0.25, 0.0, 0.04, 0.08]


def test_5xx_forever_fails_with_the_status_after_the_retries():
    sleeps = Sleeps()
    with ChatServer(lambda s: Reply(status=500, body=b"overloaded")) as srv:
        client = HttpClient(srv.server(max_retries=2), what="judge t", sleep=sleeps)
        with pytest.raises(HttpError) as err:
            client.chat([{"role": "user", "content": "x"}])
    assert str(err.value) == (f"judge t: {srv.url}/chat/completions answered 500: overloaded "
                              f"(after 3 tries)")
    assert (err.value.status, err.value.reason) == (500, "status")
    assert client.requests_sent == 3 and len(srv.seen) == 3
    assert sleeps == [0.01, 0.02]


def test_a_client_error_is_not_retried():
    with ChatServer(lambda s: Reply(status=400, body=b'{"error": "bad model"}')) as srv:
        client = HttpClient(srv.server(), what="judge t")
        with pytest.raises(HttpError, match=r"answered 400: \{\"error\": \"bad model\"\}$"):
            client.chat([{"role": "user", "content": "x"}])
    assert client.requests_sent == 1


def test_a_slow_server_times_out_then_is_retried():
    with ChatServer(scripted(Reply(delay_s=0.6), then=Reply("late but fine"))) as srv:
        client = HttpClient(srv.server(timeout_s=0.2), what="judge t")
        assert client.chat([{"role": "user", "content": "x"}]) == "late but fine"
        assert client.requests_sent == 2
    with ChatServer(lambda s: Reply(delay_s=0.6)) as srv:
        client = HttpClient(srv.server(timeout_s=0.2, max_retries=1), what="judge t")
        with pytest.raises(HttpError) as err:
            client.chat([{"role": "user", "content": "x"}])
    assert str(err.value) == (f"judge t: {srv.url}/chat/completions: no answer within 0.2s "
                              f"(after 2 tries)")
    assert (err.value.status, err.value.reason) == (None, "timeout")


def test_nobody_listening_is_unreachable_after_the_retries():
    url = closed_port_url()
    sleeps = Sleeps()
    cfg = ServerConfig(base_url=url, model="m", max_retries=2, backoff_s=0.01)
    client = HttpClient(cfg, what="judge t", sleep=sleeps)
    with pytest.raises(HttpError) as err:
        client.chat([{"role": "user", "content": "x"}])
    assert str(err.value) == (f"judge t: {url}/chat/completions: connection refused (is the "
                              f"server running?) (after 3 tries)")
    assert (err.value.status, err.value.reason) == (None, "unreachable")
    assert sleeps == [0.01, 0.02]


@pytest.mark.parametrize("body, message", [
    (b"<html>oops</html>", "answered 200 with a body that is not JSON: b'<html>oops</html>'"),
    (b'{"choices": []}', 'the answer has no choices[0].message.content: {"choices": []}'),
    (b'{"choices": [{"message": {"content": null}}]}',
     "choices[0].message.content is NoneType, not text"),
])
def test_answers_that_break_the_protocol(body, message):
    with ChatServer(lambda s: Reply(body=body)) as srv:
        client = HttpClient(srv.server(), what="judge t")
        with pytest.raises(HttpError) as err:
            client.chat([{"role": "user", "content": "x"}])
    assert message in str(err.value)
    assert (err.value.status, err.value.reason) == (200, "protocol")
    assert client.requests_sent == 1


def test_the_key_goes_in_the_bearer_header_and_nowhere_else(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    # A server whose error page quotes the request's key, long enough to be cut.
    def page(seen: Seen) -> Reply:
        return Reply(status=500, body=f"{'x' * 100} {seen.headers['Authorization']}".encode())

    with ChatServer(page) as srv:
        client = HttpClient(srv.server(api_key_env=KEY_ENV, max_retries=0), what="judge t")
        with pytest.raises(HttpError) as err:
            client.chat([{"role": "user", "content": "x"}])
    assert srv.seen[0].headers["Authorization"] == f"Bearer {KEY}"
    assert KEY[:8] not in str(err.value) and "Bearer ***" in str(err.value)  # not even cut
    assert KEY not in repr(client) and KEY not in repr(err.value)


def test_a_missing_key_variable_fails_before_any_request(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(HttpError) as err:
        HttpClient(ServerConfig(base_url="http://127.0.0.1:9/v1", model="m",
                                api_key_env=KEY_ENV), what="judge t")
    assert str(err.value) == (f"judge t: the environment variable {KEY_ENV} (its API key) is "
                              f"not set")
    assert err.value.reason == "config"


def test_map_keeps_order_and_bounds_the_requests_in_flight():
    with ChatServer(lambda s: Reply(s.content.upper(), delay_s=0.05)) as srv:
        client = HttpClient(srv.server(concurrency=3), what="judge t")
        words = [f"w{i}" for i in range(12)]
        out = client.map(lambda w: client.chat([{"role": "user", "content": w}]), words)
    assert out == [w.upper() for w in words]
    assert client.requests_sent == 12
    assert 2 <= srv.max_in_flight <= 3


def test_map_starts_no_new_call_after_a_failure():
    started = []

    def fn(x):
        started.append(x)
        time.sleep(0.02)
        if x == 1:
            raise HttpError("judge t: broken", 401)
        return x

    client = HttpClient(ServerConfig(base_url="http://127.0.0.1:9/v1", model="m",
                                     concurrency=2), what="judge t")
    with pytest.raises(HttpError, match="broken"):
        client.map(fn, range(50))
    assert len(started) <= 4  # the two in flight, maybe two more that started meanwhile
