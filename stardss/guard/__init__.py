"""Guardrails (P(safe) of response prefixes) and the Ray actor pool that runs them."""
from .base import GUARDRAILS, Guardrail, build_guardrail
from .pool import GuardActor, GuardPool, GuardPoolError, ScoreRequest
from .rules import RuleGuardrail

__all__ = ["Guardrail", "build_guardrail", "GUARDRAILS", "RuleGuardrail", "GuardActor",
           "GuardPool", "GuardPoolError", "ScoreRequest"]
