"""Guardrails (P(safe) of response prefixes) and the Ray actor pool that runs them."""
from .base import GUARDRAILS, Guardrail, PrefixItem, build_guardrail, score_prefixes_one_by_one
from .pool import GuardActor, GuardPool, GuardPoolError, ScoreRequest
from .rules import RuleGuardrail

__all__ = ["Guardrail", "PrefixItem", "score_prefixes_one_by_one", "build_guardrail", "GUARDRAILS", "RuleGuardrail", "GuardActor",
           "GuardPool", "GuardPoolError", "ScoreRequest"]
