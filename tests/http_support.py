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
            def do_POST(self):  # noqa: N802 - the http.server name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    seen = Seen(len(server.seen), self.path, json.loads(raw), dict(self.headers))
                    server.seen.append(seen)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.script(seen)
                    time.sleep(reply.delay_s)
                    body = reply.body
                    if body is None:
                        body = json.dumps({"id": "x", "object": "chat.completion",
                                           "choices": [{"index": 0, "finish_reason": "stop",
                                                        "message": {"role": "assistant",
                                                                    "content": reply.text}}]
                                           }).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                        daemon=True)

    def __enter__(self) -> "ChatServer":
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
