"""`RemoteGuard` (kind: remote): a causal-LM guardrail served by an OpenAI-compatible
completions endpoint (vLLM, SGLang), its family's prompt format rendered here.

Only the tokenizer of `name_or_path` is loaded (never the weights). Every read of a label is
one request, POST {base_url}/completions, whose prompt is the guard prompt as TOKEN IDS,
rendered and tokenised exactly as the local `HFCausalGuard` does (`fmt.render`, then
add_special_tokens=False): the server adds no second BOS and cannot re-tokenise differently.
The request asks for one greedy token with the top `cfg.top_logprobs` log-probs at the first
generated position (the decision position) and, with vLLM's `return_tokens_as_token_ids`, keys
them "token_id:N"; keys that are token strings (servers without that extension) are mapped
through the label ids' token strings. Top log-probs of the generated position are the portable
read (vLLM and SGLang both answer them; `prompt_logprobs` is vLLM's alone).

P(safe) = sigmoid(logsumexp(safe labels' log-probs) - logsumexp(unsafe labels')), the local
guard's two-label (or label-group) softmax: the normaliser of the log-probs cancels. **Exact or
refused**: a label missing from the top `cfg.top_logprobs` has an unknown log-prob, so the row is
refused with an error naming it, not scored with a bound. A format whose verdict follows
teacher-forced earlier answers (WildGuard's branches) is scored over all its branches as
locally: each read position is its own request (shared heads are asked once).

Requests run `server.concurrency` at a time (HttpClient.map); 429 / 5xx / timeouts /
refused connections are retried with backoff (HttpClient), each request has `server.timeout_s`;
the bearer token comes from the variable `server.api_key_env` names and appears in no
message, repr or fingerprint.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import numpy as np

from ..config.fields import check_fields
from ..config.schema import GuardrailConfig
from ..httpclient import HttpClient, HttpError
from .base import ScoreRequest, by_request
from .fingerprint import guard_fingerprint, weights_fingerprint
from .registry import REMOTE_FAMILIES

TOP_LOGPROBS = 20
"""The default of `top_logprobs`: vLLM's default --max-logprobs (a server refuses more). Not
part of the fingerprint: a score is exact whatever K (or refused)."""

class RemoteGuard:
    """P(safe) of (prompt, response prefix) pairs from the top log-probs a completions server
    answers at the decision position of the family's prompt (module doc)."""

    def __init__(self, cfg: GuardrailConfig):
        if not dataclasses.is_dataclass(cfg):
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_object(cfg)
        check_fields(cfg, "guardrail")
        if cfg.family not in REMOTE_FAMILIES:
            raise ValueError(f"guardrail kind 'remote': family must be one of "
                             f"{', '.join(REMOTE_FAMILIES)}, got {cfg.family!r}")
        if cfg.server is None:
            raise ValueError("guardrail kind 'remote' needs server (base_url, model, ...)")
        if not cfg.name_or_path:
            raise ValueError("guardrail kind 'remote' needs name_or_path (the served model's "
                             "tokenizer: a folder or Hub id)")
        from transformers import AutoTokenizer

        from .hf.formats import load_format

        self.cfg, self.server, self.top_logprobs = cfg, cfg.server, cfg.top_logprobs
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision)
        self.format = load_format(cfg, self.tokenizer, family=cfg.family)
        # Label groups (Qwen3Guard's Controversial joins one side); one label each otherwise.
        self.safe_ids = tuple(int(i) for i in self.format.safe_ids)
        self.unsafe_ids = tuple(int(i) for i in self.format.unsafe_ids)
        self.name = f"remote:{cfg.family}:{self.server.model}"
        self.client = HttpClient(self.server, what=f"guardrail {self.name}")
        # Keys a server without token-id keys uses: the label tokens' text (as detokenised) or
        # their vocabulary pieces. Two labels sharing one key would be ambiguous: not mapped.
        by_key: dict[str, set] = {}
        for i in self.safe_ids + self.unsafe_ids:
            for key in {self.tokenizer.decode([i]), self.tokenizer.convert_ids_to_tokens(i)}:
                by_key.setdefault(key, set()).add(i)
        self._key_ids = {k: next(iter(v)) for k, v in by_key.items() if len(v) == 1}
        branches = getattr(self.format, "branches", None)
        probe = branches("hi", "ok") if branches is not None else []
        self.branched = len(probe) > 1 or any(b.steps for b in probe)
        served = self._served_model()
        # Not the URL: the same model served elsewhere (another host, port or replica) gives
        # the same scores and shares STAR cache entries. What identifies the scores is the
        # format (template, labels, options), the tokenizer that made the ids, and the served
        # model: its id, the path / Hub id the server says it loaded (`root`) and any revision
        # it reports, plus the revision the user pins (cfg.revision). The key is in none.
        self.fingerprint = guard_fingerprint(
            "remote", cfg.family, self.format.fingerprint,
            weights_fingerprint(cfg.name_or_path, cfg.revision, tokenizer_only=True),
            cfg.revision,
            self.server.model, served.get("root"), served.get("revision"),
            "branches" if self.branched else "render")

    def __repr__(self) -> str:  # the client's repr has no key either
        return f"RemoteGuard({self.name!r}, {self.client!r})"

    def _served_model(self) -> dict:
        """The server's entry (GET models) for server.model."""
        models = self.client.models()
        for m in models:
            if m.get("id") == self.server.model:
                return m
        ids = [m.get("id") for m in models]
        raise ValueError(f"guardrail {self.name}: {self.client.base_url}/models lists "
                         f"{ids}, not server.model {self.server.model!r}")

    # ------------------------------------------------------------------------- scoring

    def _rows(self, pairs):
        """For each (prompt, response, context): its rows (ids, reads, forced_safe), as
        HFCausalGuard._rows builds them (one row ending at the label, or WildGuard's
        teacher-forced branches with a read at each forced answer)."""
        from .hf.rows import tokenize

        fmt = self.format
        if not self.branched:
            texts = [fmt.render(p, r, c) for p, r, c in pairs]
            return [[(x, [len(x) - 1], [])] for x in tokenize(self.tokenizer, texts)]
        out = []
        for p, r, c in pairs:
            rows = []
            for b in fmt.branches(p, r, c):
                x = tokenize(self.tokenizer, [b.text])[0]
                reads, forced = [], []
                for off, label in b.steps:
                    h = tokenize(self.tokenizer, [b.text[:off]])[0]
                    if x[: len(h)] != h or len(h) >= len(x):
                        raise ValueError(f"guardrail {self.name}: a teacher-forced answer "
                                         f"{label!r} does not start a new token")
                    reads.append(len(h) - 1)
                    forced.append(label == fmt.safe_label)
                reads.append(len(x) - 1)
                rows.append((x, reads, forced))
            out.append(rows)
        return out

    def _score_pairs(self, pairs, where: Sequence[str]) -> list[float]:
        """P(safe) of each (prompt, response, context); where[i] names pair i in errors."""
        rows = self._rows(pairs)
        queries: dict[tuple, str] = {}  # the ids up to a read position -> the first row asking
        for rs, w in zip(rows, where):
            for x, reads, _ in rs:
                for r in reads:
                    queries.setdefault(tuple(x[: r + 1]), w)
        asked = list(queries.items())
        values = dict(zip(queries, self.client.map(self._ask, asked)))
        out = []
        for rs in rows:
            total = 0.0
            for x, reads, forced in rs:
                q = [values[tuple(x[: r + 1])] for r in reads]
                w = 1.0
                for is_safe, p in zip(forced, q[:-1]):
                    w *= p if is_safe else 1.0 - p
                total += w * q[-1]
            out.append(total)
        return out

    def _ask(self, query: tuple[tuple, str]) -> float:
        ids, where = query
        try:
            choice = self.client.complete(list(ids), max_tokens=1, temperature=0,
                                          logprobs=self.top_logprobs,
                                          return_tokens_as_token_ids=True)
            return self._p_safe(choice)
        except HttpError as err:
            raise HttpError(f"{err} ({where})", err.status, err.reason) from None

    def _p_safe(self, choice: dict) -> float:
        try:
            top = choice["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError):
            top = None
        if not isinstance(top, dict) or not top:
            raise HttpError(f"guardrail {self.name}: the answer has no "
                            f"choices[0].logprobs.top_logprobs[0]: "
                            f"{self.client._scrub(json.dumps(choice))[:120]}", 200,
                            reason="protocol")
        logprob: dict[int, float] = {}
        # Keys: vLLM's placeholder f"token_id:{token_id}" when return_tokens_as_token_ids is set
        # (vllm-project/vllm, vllm/entrypoints/openai/serving_engine.py `_get_decoded_token`,
        # v0.8.3 lines 518-528), else the decoded token text (older vLLM: the vocabulary piece).
        for key, value in top.items():
            if key.startswith("token_id:") and key[9:].isdigit():
                tid = int(key[9:])
            else:
                tid = self._key_ids.get(key)
            if tid is not None and isinstance(value, (int, float)) and math.isfinite(value):
                logprob[tid] = float(value)
        for i in self.safe_ids + self.unsafe_ids:
            if i not in logprob:
                label = self.tokenizer.decode([i])
                raise HttpError(f"guardrail {self.name}: label {label!r} (token {i}) is not "
                                f"among the server's top {self.top_logprobs} log-probs at the "
                                f"decision position: P(safe) needs every label's log-prob "
                                f"(raise the guardrail's top_logprobs, and the server's "
                                f"limit, e.g. vLLM --max-logprobs)",
                                200, reason="protocol")
        safe = np.logaddexp.reduce([logprob[i] for i in self.safe_ids])
        unsafe = np.logaddexp.reduce([logprob[i] for i in self.unsafe_ids])
        return float(1.0 / (1.0 + np.exp(unsafe - safe)))

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return self._score_pairs([(prompt, r, ()) for r in responses],
                                 [f"response {i}" for i in range(len(responses))])

    def score_prefixes(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
        pairs, where = [], []
        for r in requests:
            for k, prefix in enumerate(r.prefixes):
                pairs.append((r.prompt, prefix, tuple(r.context)))
                where.append(f"row {r.key!r} prefix {k}")
        return [np.asarray(v, dtype=np.float64)
                for v in by_request(requests, self._score_pairs(pairs, where))]


__all__ = ["RemoteGuard", "TOP_LOGPROBS"]
