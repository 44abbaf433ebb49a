"""A regex guardrail: a logistic model over "does this pattern occur in the response"."""
from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Sequence

import numpy as np

from ..config.schema import GuardrailConfig
from .base import ScoreRequest, score_prefixes_one_by_one


def sigmoid(x: float) -> float:
    # Two branches so exp never overflows for large |x| (weights in job files are unbounded).
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class RuleGuardrail:
    """P(safe) = sigmoid(bias + sum of the weights of the rules that match the response).

    Each rule counts once however often it matches: rules are presence features, so a long
    response repeating a word is not judged more harmful than a short one saying it once.
    The prompt is ignored: the rules judge the assistant turn only, as Llama Guard's "Agent"
    classification does, so a harmful question answered with a refusal scores as safe.
    """

    name = "rules"

    def __init__(self, cfg: GuardrailConfig):
        # float(): a config built in code may hold integers (bias=3), which must fingerprint
        # as the floats a job file gives
        self.bias = float(cfg.bias)
        # The rules are the whole model: their text and weights identify its judgements.
        spec = {"bias": self.bias, "rules": [[r.pattern, float(r.weight)] for r in cfg.rules]}
        self.fingerprint = "rules:" + hashlib.sha256(
            json.dumps(spec, sort_keys=True).encode()).hexdigest()
        self._rules: list[tuple[re.Pattern[str], float]] = []
        for i, rule in enumerate(cfg.rules):
            try:
                pattern = re.compile(rule.pattern, re.IGNORECASE)
            except re.error as err:
                raise ValueError(
                    f"guardrail rule {i}: bad pattern {rule.pattern!r}: {err}") from None
            self._rules.append((pattern, float(rule.weight)))

    def logit(self, response: str) -> float:
        return self.bias + sum(w for p, w in self._rules if p.search(response))

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return [sigmoid(self.logit(r)) for r in responses]

    def score_prefixes(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
        # A request's `context` (earlier turns) is ignored on purpose: the rules judge the
        # assistant text being scored and nothing else (not even the prompt), so a multi-turn
        # row scores exactly as its last exchange alone would.
        return score_prefixes_one_by_one(self, requests)
