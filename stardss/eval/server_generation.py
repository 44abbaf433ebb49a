"""The evaluated model behind an OpenAI-compatible server (backend openai, e.g. `vllm serve
<checkpoint>`): one chat/completions request per item, `server.concurrency` in flight.

A prefill is sent as the assistant message that opens the answer, with vLLM's extension fields
`continue_final_message: true, add_generation_prompt: false`, so the server's chat template
leaves the turn open and the model continues the prefill (the answer's content is then only
the continuation: vLLM's `echo` is false by default). top_k and repetition_penalty are vLLM's
extra sampling fields; they are sent only when they are on, so a server that knows only the
OpenAI fields still takes a request that does not use them. Each item's `seed` is derived from
(seed, item key): the same seed gives the same request, and on a server with seeded sampling
the same answer.
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

from ..config.evaluation import GenerationConfig
from ..console import log
from ..httpclient import HttpClient, HttpError
from .items import EvalItem, Generation


def item_seed(seed: int, key: str) -> int:
    """An item's request seed: stable across processes (hashlib), within a signed 32-bit int
    (what servers accept as `seed`)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


class ServerGenerator:
    """generate(items) -> {item.key: Generation} through `gen.server`; a context manager like
    GenerationPool. `seed`: the job's seed, used when gen.seed is null."""

    def __init__(self, gen: GenerationConfig, *, seed: int):
        if gen.server is None:
            raise ValueError("eval.generation.backend=openai needs eval.generation.server "
                             "(base_url, model)")
        if gen.max_new_tokens is None:
            raise ValueError("eval.generation.max_length is not supported by backend openai "
                             "(the server counts only new tokens): set max_new_tokens")
        self.gen = gen
        self.seed = gen.seed if gen.seed is not None else seed
        self.client = HttpClient(gen.server, what="generation server")

    def request(self, item: EvalItem) -> dict:
        """The chat/completions body for one item."""
        gen = self.gen
        body: dict = {"model": self.client.model, "messages": list(item.messages),
                      "max_tokens": gen.max_new_tokens, "temperature": gen.temperature,
                      "top_p": gen.top_p, "seed": item_seed(self.seed, item.key)}
        if gen.top_k:
            body["top_k"] = gen.top_k
        if gen.repetition_penalty != 1.0:
            body["repetition_penalty"] = gen.repetition_penalty
        if item.prefill:
            body["messages"].append({"role": "assistant", "content": item.prefill})
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    def _one(self, item: EvalItem) -> Generation:
        try:
            answer = self.client.post("chat/completions", self.request(item))
        except HttpError as err:
            raise HttpError(f"{err} (item {item.key}, {item.origin})", err.status) from None
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise HttpError(f"generation server: the answer for item {item.key} "
                            f"({item.origin}) has no text choices[0].message.content: "
                            f"{json.dumps(answer)[:120]}", 200)
        usage = answer.get("usage") or {}
        return Generation(item.key, item.prefill + content, int(usage.get("prompt_tokens", 0)),
                          int(usage.get("completion_tokens", 0)))

    def generate(self, items: Sequence[EvalItem]) -> dict[str, Generation]:
        """item.key -> its Generation, in `items` order; HttpError naming the item when a
        request fails after its retries."""
        items = list(items)
        if len({it.key for it in items}) != len(items):
            raise ValueError("duplicate eval item keys")
        if not items:
            return {}
        log(f"generation: {len(items)} items on {self.client.base_url} "
            f"({self.client.concurrency} at once)")
        return {g.key: g for g in self.client.map(self._one, items)}

    def choice_logliks(self, items: Sequence[EvalItem]) -> dict[str, list[float]]:
        if not items:
            return {}
        raise ValueError("multiple-choice log-likelihoods need the model's logits: set "
                         "eval.generation.backend=hf for choice sets")

    def close(self) -> None:
        """Nothing to release (no connection is kept open between requests)."""

    def __enter__(self) -> ServerGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
