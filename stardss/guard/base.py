"""The guardrail interface and the one place guardrail kinds are registered."""
from __future__ import annotations

from typing import Callable, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from ..config.schema import GuardrailConfig


class PrefixItem(NamedTuple):
    """One response to score at several cuts: prefix k is response[:cuts[k]]."""

    prompt: str
    response: str
    cuts: Sequence[int]


@runtime_checkable
class Guardrail(Protocol):
    """Judges partial assistant turns: P(safe) of each (prompt, response prefix) pair."""

    name: str
    fingerprint: str
    """Identifies everything the scores depend on (weights, template, labels, options): the
    STAR cache keys entries by it."""

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        """P(safe) in [0, 1] of each response (a prefix of the assistant turn), in order."""
        ...

    def score_prefixes(self, items: Sequence[PrefixItem]) -> list[np.ndarray]:
        """P(safe) of every prefix of every item: one float64 array of len(cuts) per item.
        Seeing whole responses with their cuts lets a model guardrail share the work of
        prefixes (packed scoring) and batch across responses."""
        ...


def score_prefixes_one_by_one(guard: Guardrail, items: Sequence[PrefixItem]) -> list[np.ndarray]:
    """`score_prefixes` for guardrails that judge each prefix text on its own."""
    return [np.asarray(guard.score(it.prompt, [it.response[:c] for c in it.cuts]),
                       dtype=np.float64) for it in items]


def _build_rules(cfg: GuardrailConfig) -> Guardrail:
    from .rules import RuleGuardrail  # imported lazily, like the model-backed kinds will be
    return RuleGuardrail(cfg)


def _build_hf_causal(cfg: GuardrailConfig) -> Guardrail:
    from .hf.causal import HFCausalGuard  # torch/transformers only when a model guard is used
    return HFCausalGuard(cfg)


def _build_hf_classifier(cfg: GuardrailConfig) -> Guardrail:
    from .hf.classifier import HFClassifierGuard
    return HFClassifierGuard(cfg)


# kind -> constructor. Model-backed families (llama_guard, ...) register here; their
# constructors import torch/transformers lazily so `rules` jobs never pay for them.
GUARDRAILS: dict[str, Callable[[GuardrailConfig], Guardrail]] = {
    "rules": _build_rules,
    "llama_guard": _build_hf_causal,
    "granite_guardian": _build_hf_causal,
    "shieldgemma": _build_hf_causal,
    "wildguard": _build_hf_causal,
    "hf_classifier": _build_hf_classifier,
}


def build_guardrail(cfg: GuardrailConfig) -> Guardrail:
    try:
        build = GUARDRAILS[cfg.kind]
    except KeyError:
        known = ", ".join(sorted(GUARDRAILS))
        raise ValueError(f"unknown guardrail kind {cfg.kind!r} (known kinds: {known})") from None
    return build(cfg)
