"""A real OpenAI-style chat-completions server for tests (`ChatServer`), scripted per request,
and its helpers: the judges', the HTTP client's and the generation server's tests all talk to
it."""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from stardss.config.evaluation import ServerConfig

KEY_ENV = "STARDSS_TEST_HTTP_KEY"
KEY = "sk-test-0123456789-secret"


@dataclass
class Reply:
    """What the server answers one request: a chat completion whose content is `text`, or
    `body` verbatim; after `delay_s`."""

    text: Optional[str] = "ok"
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: Optional[bytes] = None
    delay_s: float = 0.0
    edit: Optional[Callable[[dict], dict]] = None
    """CompletionServer: change the real answer (a decoded dict) before it is sent."""


@dataclass
class Seen:
    """One request as the server received it."""

    number: int  # 0-based, in arrival order
    path: str
    payload: dict
    headers: dict

    @property
    def content(self) -> str:
        """The last message's content."""
        return self.payload["messages"][-1]["content"]


class ChatServer:
    """An OpenAI-style chat-completions server on 127.0.0.1 (a free port), in a thread; each
    request is answered by `script(seen) -> Reply`. Records every request and the most
    requests it held at once. Use as a context manager."""

    def __init__(self, script: Callable[[Seen], Reply]):
        self.script = script
        self.seen: list[Seen] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server name
                self.do_POST()

            def do_POST(self):  # noqa: N802 - the http.server name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    seen = Seen(len(server.seen), self.path, json.loads(raw) if raw else {},
                                dict(self.headers))
                    server.seen.append(seen)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                counted = True

                def answered():
                    # Before the answer is written: once the client can read it, it may send
                    # its next request at once, and that one must not find this one counted
                    # (in flight = received and not yet answered, never more than the client's).
                    nonlocal counted
                    if counted:
                        with server._lock:
                            server.in_flight -= 1
                        counted = False

                try:
                    reply = server.script(seen)
                    time.sleep(reply.delay_s)
                    status, body = reply.status, reply.body
                    if body is None:
                        status, body = server.answer(seen, reply)
                    answered()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)
                finally:
                    answered()

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                        daemon=True)

    def answer(self, seen: Seen, reply: Reply) -> tuple[int, bytes]:
        """The status and body of a Reply without a body: a chat completion whose content is
        reply.text."""
        return reply.status, json.dumps({"id": "x", "object": "chat.completion",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant",
                                                    "content": reply.text}}]}).encode()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def server(self, **changes) -> ServerConfig:
        """A ServerConfig for this server: fast retries, short timeout."""
        cfg = dict(base_url=self.url, model="judge-model", concurrency=1, timeout_s=2.0,
                   max_retries=3, backoff_s=0.01)
        cfg.update(changes)
        return ServerConfig(**cfg)


def closed_port_url() -> str:
    """The base URL of a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class Sleeps(list):
    """An injected sleep that records its waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(round(seconds, 6))


def scripted(*replies: Reply, then: Reply = Reply()) -> Callable[[Seen], Reply]:
    """Answer the n-th request with replies[n], and every later one with `then`."""
    return lambda seen: replies[seen.number] if seen.number < len(replies) else then


class CompletionServer(ChatServer):
    """An OpenAI-style completions server (the layout vLLM answers) on 127.0.0.1 serving a real
    causal LM from `folder` (a tiny stand-in guard): POST /v1/completions runs the model on the
    prompt (token ids as sent, or a string tokenised as vLLM does) and answers one greedy token
    with the real top `logprobs` log-probs (float32 log_softmax) of the next token, keyed
    "token_id:N" when the request sets return_tokens_as_token_ids (and `token_id_keys`: False
    is a server without vLLM's extension), else by token text;
    GET /v1/models lists `model` with its `root` (and `revision` when given). A wrong model name
    is answered 404, `logprobs` above `max_logprobs` 400, a missing or wrong bearer token 401
    when `key` is set. `script(seen) -> Reply` scripts faults as ChatServer's does: a Reply
    without a body gets the real answer (after its delay, changed by its `edit`)."""

    def __init__(self, folder, *, model: str = "guard-model", root: Optional[str] = None,
                 revision: Optional[str] = None, key: Optional[str] = None,
                 max_logprobs: int = 20, token_id_keys: bool = True,
                 script: Callable[[Seen], Reply] = lambda s: Reply()):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(script)
        self.model_name, self.key, self.max_logprobs = model, key, max_logprobs
        self.token_id_keys = token_id_keys
        self.card = {"id": model, "object": "model", "created": 0, "owned_by": "vllm",
                     "root": root if root is not None else str(folder), "parent": None}
        if revision is not None:
            self.card["revision"] = revision
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self._model_lock = threading.Lock()  # one forward at a time; requests still overlap

    def server(self, **changes) -> ServerConfig:
        return super().server(**{"model": self.model_name, **changes})

    def answer(self, seen: Seen, reply: Reply) -> tuple[int, bytes]:
        if reply.status != 200:  # a scripted failure: no forward
            return reply.status, json.dumps({"object": "error", "message": "scripted failure",
                                             "code": reply.status}).encode()
        status, out = self._answer(seen)
        if status == 200 and reply.edit is not None:
            out = reply.edit(out)
        return status, json.dumps(out).encode()

    def _answer(self, seen: Seen) -> tuple[int, dict]:
        import torch

        if self.key is not None and seen.headers.get("Authorization") != f"Bearer {self.key}":
            return 401, {"object": "error", "message": "invalid API key", "code": 401}
        if seen.path.endswith("/models"):
            return 200, {"object": "list", "data": [self.card]}
        if not seen.path.endswith("/completions"):
            return 404, {"object": "error", "message": f"no route {seen.path}", "code": 404}
        p = seen.payload
        if p.get("model") != self.model_name:
            return 404, {"object": "error", "message": f"model {p.get('model')!r} does not "
                         f"exist", "code": 404}
        k = int(p.get("logprobs") or 0)
        if k > self.max_logprobs:
            return 400, {"object": "error", "message": f"logprobs {k} > max_logprobs "
                         f"{self.max_logprobs}", "code": 400}
        prompt = p["prompt"]
        ids = prompt if isinstance(prompt, list) else self.tokenizer(prompt)["input_ids"]
        with self._model_lock, torch.inference_mode():
            logits = self.lm(input_ids=torch.tensor([ids])).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, -1)
        top = torch.topk(logprobs, k) if k else None
        as_ids = self.token_id_keys and bool(p.get("return_tokens_as_token_ids"))
        name = (lambda i: f"token_id:{i}") if as_ids else (lambda i: self.tokenizer.decode([i]))
        best = int(torch.argmax(logprobs))
        choice = {"index": 0, "text": self.tokenizer.decode([best]), "finish_reason": "length",
                  "stop_reason": None, "prompt_logprobs": None, "logprobs": None}
        if k:
            choice["logprobs"] = {
                "text_offset": [0], "token_logprobs": [float(logprobs[best])],
                "tokens": [name(best)],
                "top_logprobs": [{name(int(i)): float(v)
                                  for v, i in zip(top.values, top.indices)}]}
        return 200, {"id": "cmpl-0", "object": "text_completion", "created": 0,
                     "model": self.model_name, "choices": [choice],
                     "usage": {"prompt_tokens": len(ids), "completion_tokens": 1,
                               "total_tokens": len(ids) + 1}}


def lean_on_labels(folder, label_ids, *, shift: float = 0.05, weight: float = 5.0,
                   scale: float = 10.0) -> None:
    """Make a random-weight stand-in rank its label tokens at the top of the vocabulary, as a
    real guard does (a random one ranks them anywhere, so no server's top-K would hold them):
    every input embedding gets `shift` on dimension 0 (a component the residual stream carries
    to the last position), the label rows of the (untied) output layer read it with `weight`,
    and their other dimensions are scaled by `scale` so the labels' difference still depends
    on the input (tied embeddings are untied first). Rewrites the folder's weights in place
    (local and served guards then read the same model)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb.data_ptr() == out.data_ptr():  # tied: give the output layer its own copy
        model.config.tie_word_embeddings = False
        model.config.get_text_config().tie_word_embeddings = False
        model.get_output_embeddings().weight = torch.nn.Parameter(emb.detach().clone())
        out = model.get_output_embeddings().weight
    ids = sorted(set(int(i) for i in label_ids))
    with torch.no_grad():
        emb[:, 0] += shift
        out[ids, 1:] *= scale
        out[ids, 0] = weight
    model.save_pretrained(folder)


def on_completions(*replies: Reply, then: Reply = Reply()) -> Callable[[Seen], Reply]:
    """Answer the n-th completions request with replies[n] and every later one with `then`;
    other requests (GET models) get the real answer."""
    count, lock = [0], threading.Lock()

    def script(seen: Seen) -> Reply:
        if not seen.path.endswith("/completions"):
            return Reply()
        with lock:
            n, count[0] = count[0], count[0] + 1
        return replies[n] if n < len(replies) else then

    return script


# Embedding shift that puts each family's labels at the top of its stand-in (Gemma 2's extra
# norms around every block need a larger one).
_LABEL_SHIFT = {"shieldgemma": 0.5}


def build_served_guard(kind: str, folder, variant: str | None = None) -> str:
    """A tiny stand-in guard of family `kind` (its `variant`) in `folder` whose labels (every
    label of the format's groups) lead its next-token distribution, as a real guard's do: what
    the local guard and a CompletionServer over it both read."""
    from transformers import AutoTokenizer

    from stardss.config.schema import GuardrailConfig
    from stardss.guard.hf.formats import load_format
    from stardss.testing.guards import build_tiny_guard

    path = build_tiny_guard(kind, folder, variant=variant)
    fmt = load_format(GuardrailConfig(kind=kind, name_or_path=path),
                      AutoTokenizer.from_pretrained(path))
    labels = (*getattr(fmt, "safe_ids", (fmt.safe_id,)),
              *getattr(fmt, "unsafe_ids", (fmt.unsafe_id,)))
    lean_on_labels(path, labels, shift=_LABEL_SHIFT.get(kind, 0.05))
    return path
