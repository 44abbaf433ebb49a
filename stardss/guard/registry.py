"""The one place guardrail kinds are registered: kind -> where its class lives and which
options of a `guardrails` entry it reads.

A leaf module: the classes are found by name only when a guardrail is built, so validating a
job (which reads `GUARD_KINDS` for the allowed kinds and options) imports no torch, and a
`rules` job never pays for transformers.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

MODEL = ("name_or_path", "revision", "batch_size", "dtype", "device")
"""Options of every model-backed kind."""


@dataclass(frozen=True)
class GuardKind:
    name: str
    module: str
    """Module of the class, imported when a guardrail of this kind is built."""
    cls: str
    options: tuple[str, ...]
    """The `guardrails` entry's fields this kind reads besides `kind`; giving any other field a
    value of its own is an error naming it (it would be silently ignored)."""
    needs_model: bool = True
    """Needs name_or_path (a Hub id or folder)."""


_CAUSAL = ("stardss.guard.hf.causal", "HFCausalGuard")

GUARD_KINDS: dict[str, GuardKind] = {k.name: k for k in (
    GuardKind("rules", "stardss.guard.rules", "RuleGuardrail", ("bias", "rules"),
              needs_model=False),
    GuardKind("llama_guard", *_CAUSAL, (*MODEL, "mode", "categories", "excluded_categories")),
    GuardKind("granite_guardian", *_CAUSAL, (*MODEL, "mode", "risk_name")),
    GuardKind("shieldgemma", *_CAUSAL, (*MODEL, "mode", "policy")),
    GuardKind("wildguard", *_CAUSAL, (*MODEL, "mode")),
    GuardKind("hf_classifier", "stardss.guard.hf.classifier", "HFClassifierGuard",
              (*MODEL, "safe_label")),
)}


def guard_kind(name: str) -> GuardKind:
    try:
        return GUARD_KINDS[name]
    except KeyError:
        known = ", ".join(sorted(GUARD_KINDS))
        raise ValueError(f"unknown guardrail kind {name!r} (known kinds: {known})") from None


def build_guardrail(cfg):
    """The guardrail a `guardrails` entry (GuardrailConfig) describes."""
    kind = guard_kind(cfg.kind)
    return getattr(importlib.import_module(kind.module), kind.cls)(cfg)
