"""The guardrail interface and the one place guardrail kinds are registered."""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

from ..config.schema import GuardrailConfig


@runtime_checkable
class Guardrail(Protocol):
    """Judges partial assistant turns: P(safe) of each (prompt, response prefix) pair."""

    name: str

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        """P(safe) in [0, 1] of each response (a prefix of the assistant turn), in order."""
        ...


def _build_rules(cfg: GuardrailConfig) -> Guardrail:
    from .rules import RuleGuardrail  # imported lazily, like the model-backed kinds will be
    return RuleGuardrail(cfg)


# kind -> constructor. Model-backed families (llama_guard, ...) register here; their
# constructors import torch/transformers lazily so `rules` jobs never pay for them.
GUARDRAILS: dict[str, Callable[[GuardrailConfig], Guardrail]] = {
    "rules": _build_rules,
}


def build_guardrail(cfg: GuardrailConfig) -> Guardrail:
    try:
        build = GUARDRAILS[cfg.kind]
    except KeyError:
        known = ", ".join(sorted(GUARDRAILS))
        raise ValueError(f"unknown guardrail kind {cfg.kind!r} (known kinds: {known})") from None
    return build(cfg)
