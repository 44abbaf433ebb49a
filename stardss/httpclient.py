"""The one HTTP client of stardss for servers it talks to (OpenAI-compatible judges,
generation servers and remote guardrails: `chat`, `complete`, `models`): JSON over POST / GET
with a timeout per request, retries with exponential backoff on 429 / 5xx / timeouts / refused
connections (Retry-After honoured), bounded concurrency, and the API key read from an
environment variable named in the config, never logged or written (it appears in no message,
repr or exception).

    server = ServerConfig(base_url="http://localhost:8000/v1", model="m")
    client = HttpClient(server, what="judge gpt")
    text = client.chat([{"role": "user", "content": "hi"}], temperature=0)
    texts = client.map(lambda m: client.chat(m), conversations)   # `concurrency` at once
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

from .errors import UserError

T = TypeVar("T")
R = TypeVar("R")
RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)
"""Statuses worth retrying: rate limits, overload, transient server errors."""
_MAX_BACKOFF_S = 60.0


REASONS = ("status", "timeout", "unreachable", "dropped", "protocol", "config")
"""Why a request failed (HttpError.reason): the server answered an error `status`; it sent no
answer within timeout_s (`timeout`); no connection could be made (`unreachable`: refused, no
route, unknown host, or no connection within timeout_s); the connection broke mid-answer
(`dropped`); the answer broke the protocol (`protocol`); the client could not be set up
(`config`, e.g. the API key variable is not set)."""


class HttpError(UserError, RuntimeError):
    """A request failed for good (after its retries), or the answer was not what the protocol
    says. `status` is the last HTTP status (None: no answer, e.g. a timeout or no server);
    `reason` one of REASONS (callers tell a server that is down from one that is slow)."""

    def __init__(self, message: str, status: Optional[int] = None,
                 reason: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.reason = reason if reason is not None else ("status" if status else None)
        # The user's to fix: a URL where nothing listens or another protocol answers, a key
        # variable not set, a request the server refuses (4xx: key, model name). A server
        # that fails (5xx), is slow, overloaded (408/429) or drops the connection: exit 1.
        self.users_fault = (self.reason in ("unreachable", "protocol", "config")
                            or (self.reason == "status" and status is not None
                                and 400 <= status < 500 and status not in (408, 429)))


class HttpClient:
    """A client for one server (`cfg`: base_url, model, api_key_env, concurrency, timeout_s,
    max_retries, backoff_s, as in config.sources.ServerConfig); `what` names it in errors.
    Thread-safe: `map` calls it from `concurrency` threads."""

    def __init__(self, cfg: Any, *, what: str, sleep: Callable[[float], None] = time.sleep):
        self.base_url = cfg.base_url.rstrip("/")
        self.model = cfg.model
        self.concurrency = cfg.concurrency
        self.timeout_s, self.max_retries = cfg.timeout_s, cfg.max_retries
        self.backoff_s = cfg.backoff_s
        self.what = what
        self._sleep = sleep
        self._key = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise HttpError(f"{what}: the environment variable {cfg.api_key_env} (its API "
                                f"key) is not set", reason="config")
            self._key = key
        self._count_lock = threading.Lock()  # `map` threads count at once
        self.requests_sent = 0  # every attempt, retries included (what a warm cache avoids)

    def __repr__(self) -> str:  # never the key
        return f"HttpClient({self.what!r}, {self.base_url!r})"

    def post(self, path: str, payload: dict) -> dict:
        """POST `payload` as JSON to base_url + path; the decoded JSON answer. Retries what
        RETRY_STATUS lists, timeouts and refused connections; HttpError after the last try or
        on any other status."""
        return self._request("POST", path, json.dumps(payload).encode())

    def get(self, path: str) -> dict:
        """GET base_url + path (e.g. `models`); the decoded JSON answer, retried as `post`."""
        return self._request("GET", path, None)

    def _request(self, method: str, path: str, body: Optional[bytes]) -> dict:
        url = f"{self.base_url}/{path.lstrip('/')}"
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        wait = self.backoff_s
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            with self._count_lock:
                self.requests_sent += 1
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as err:
                detail = _detail(err, self._scrub)
                if err.code not in RETRY_STATUS or last:
                    raise HttpError(f"{self.what}: {url} answered {err.code}{detail}"
                                    f"{_tries(attempt)}", err.code) from None
                after = _retry_after(err)
                self._sleep(wait if after is None else after)
            except urllib.error.URLError as err:
                # urllib wraps what goes wrong before the request is sent: connecting.
                if last:
                    why = _reason(err.reason, self.timeout_s, waited="no connection")
                    raise HttpError(f"{self.what}: {url}: {why}{_tries(attempt)}",
                                    reason="unreachable") from None
                self._sleep(wait)
            except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                # Connected and sent, then no (whole) answer: slow, or the connection broke.
                if last:
                    why = "timeout" if isinstance(err, TimeoutError) else "dropped"
                    raise HttpError(f"{self.what}: {url}: {_reason(err, self.timeout_s)}"
                                    f"{_tries(attempt)}", reason=why) from None
                self._sleep(wait)
            else:
                try:
                    return json.loads(raw)
                except ValueError:
                    raise HttpError(f"{self.what}: {url} answered 200 with a body that is not "
                                    f"JSON: {self._scrub(repr(raw))[:80]}", 200,
                                    reason="protocol") from None
            wait = min(wait * 2, _MAX_BACKOFF_S)
        raise AssertionError("unreachable")

    def _scrub(self, text: str) -> str:
        """`text` without the API key (what a server answers may quote the request)."""
        return text.replace(self._key, "***") if self._key else text

    def chat(self, messages: Sequence[dict], **params) -> str:
        """One chat completion (OpenAI protocol, POST chat/completions): the first choice's
        message content. `params` go into the request (temperature, max_tokens, seed, ...)."""
        answer = self.post("chat/completions", {"model": self.model, "messages": list(messages),
                                                **params})
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise HttpError(f"{self.what}: the answer has no choices[0].message.content: "
                            f"{self._scrub(json.dumps(answer))[:120]}", 200,
                            reason="protocol") from None
        if not isinstance(content, str):
            raise HttpError(f"{self.what}: choices[0].message.content is "
                            f"{type(content).__name__}, not text", 200, reason="protocol")
        return content

    def complete(self, prompt, **params) -> dict:
        """One text completion (OpenAI protocol, POST completions): the first choice, a dict
        (`text`, and `logprobs` when asked). `prompt` is a string or a list of token ids (a
        prompt tokenised here reaches the model as is: the server adds no BOS of its own).
        `params` go into the request (max_tokens, temperature, logprobs, ...)."""
        answer = self.post("completions", {"model": self.model, "prompt": prompt, **params})
        try:
            choice = answer["choices"][0]
        except (KeyError, IndexError, TypeError):
            choice = None
        if not isinstance(choice, dict):
            raise HttpError(f"{self.what}: the answer has no choices[0]: "
                            f"{self._scrub(json.dumps(answer))[:120]}", 200,
                            reason="protocol")
        return choice

    def models(self) -> list[dict]:
        """What GET models lists (OpenAI protocol: `data`, one dict per model with its `id`;
        vLLM adds `root`, the path or Hub id it loaded)."""
        answer = self.get("models")
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
            raise HttpError(f"{self.what}: {self.base_url}/models answered no model list "
                            f"(`data`): {self._scrub(json.dumps(answer))[:120]}", 200,
                            reason="protocol")
        return data

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`fn` over `items` with at most `concurrency` calls in flight, results in order; the
        first exception (in item order) is raised after the calls in flight end, and the calls
        not started yet never start (a broken server is not sent the whole list)."""
        items = list(items)
        if self.concurrency == 1 or len(items) <= 1:
            return [fn(x) for x in items]
        failed = threading.Event()

        def call(x):
            # Set by the failing call's own thread: the pool's threads take items in order,
            # so no later item starts even before this thread's caller wakes up to cancel.
            if failed.is_set():
                raise _NotStarted
            try:
                return fn(x)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            futures = [pool.submit(call, x) for x in items]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


class _NotStarted(Exception):
    """A call of HttpClient.map skipped after an earlier one failed (never raised to the
    caller: an earlier item's error always comes first)."""


def _tries(attempt: int) -> str:
    return f" (after {attempt + 1} tries)" if attempt else ""


def _reason(reason: Any, timeout_s: float, waited: str = "no answer") -> str:
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"{waited} within {timeout_s:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    return str(reason) or type(reason).__name__


def _retry_after(err: urllib.error.HTTPError) -> Optional[float]:
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        return min(max(float(value), 0.0), _MAX_BACKOFF_S) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def _detail(err: urllib.error.HTTPError, scrub: Callable[[str], str]) -> str:
    """The start of an error answer's body; the key taken out before it is cut (a server may
    quote the request, and a cut key would leave its first characters)."""
    try:
        text = scrub(err.read().decode("utf-8", "replace")).strip()
    except Exception:  # noqa: BLE001 - a body we cannot read adds nothing
        return ""
    return f": {' '.join(text.split())[:120]}" if text else ""
