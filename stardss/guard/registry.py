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
    transforms: tuple[str, ...] = ("raw",)
    """The `star.transform` values it can score with: `authors` needs the full-vocabulary
    logits at the label position, which only a causal LM has (a rule set or a sequence
    classifier has no vocabulary to penalise and filter)."""


_CAUSAL = ("stardss.guard.hf.causal", "HFCausalGuard")
_LM = ("raw", "authors")

GUARD_KINDS: dict[str, GuardKind] = {k.name: k for k in (
    GuardKind("rules", "stardss.guard.rules", "RuleGuardrail", ("bias", "rules"),
              needs_model=False),
    GuardKind("llama_guard", *_CAUSAL, (*MODEL, "mode", "categories", "excluded_categories"),
              transforms=_LM),
    GuardKind("granite_guardian", *_CAUSAL, (*MODEL, "mode", "risk_name"), transforms=_LM),
    GuardKind("shieldgemma", *_CAUSAL, (*MODEL, "mode", "policy"), transforms=_LM),
    GuardKind("wildguard", *_CAUSAL, (*MODEL, "mode"), transforms=_LM),
    GuardKind("qwen3guard", *_CAUSAL, (*MODEL, "mode", "controversial"), transforms=_LM),
    GuardKind("nemoguard", *_CAUSAL, (*MODEL, "mode"), transforms=_LM),
    GuardKind("qwen3guard_stream", "stardss.guard.hf.stream", "Qwen3GuardStream",
              (*MODEL, "controversial", "trust_remote_code")),
    GuardKind("hf_classifier", "stardss.guard.hf.classifier", "HFClassifierGuard",
              (*MODEL, "safe_label")),
    # The served model's prompt format is a causal family's, rendered here with the tokenizer
    # of name_or_path; the server answers top log-probs only, so no `authors` transform.
    GuardKind("remote", "stardss.guard.remote", "RemoteGuard",
              ("name_or_path", "revision", "family", "server", "categories",
               "excluded_categories", "risk_name", "policy", "controversial", "top_logprobs")),
)}

COMMON = ("kind", "weight")
"""Fields every kind has: its kind and its share under star.combine=weighted."""

REMOTE_FAMILIES = ("llama_guard", "granite_guardian", "shieldgemma", "wildguard", "qwen3guard",
                   "nemoguard")
"""The prompt formats a `remote` guard can render (the causal-LM families)."""


def guard_kind(name: str) -> GuardKind:
    try:
        return GUARD_KINDS[name]
    except KeyError:
        known = ", ".join(sorted(GUARD_KINDS))
        raise ValueError(f"unknown guardrail kind {name!r} (known kinds: {known})") from None


def build_guardrail(cfg, transform=None):
    """The guardrail a `guardrails` entry (GuardrailConfig) describes. `transform`: the
    `star.authors` knobs (AuthorsTransformConfig) when star.transform=authors, else None."""
    kind = guard_kind(cfg.kind)
    cls = getattr(importlib.import_module(kind.module), kind.cls)
    if transform is None:
        return cls(cfg)
    if "authors" not in kind.transforms:
        raise ValueError(f"guardrail kind {cfg.kind!r} cannot score with star.transform=authors "
                         f"(it has no full-vocabulary logits); kinds that can: "
                         f"{', '.join(authors_kinds())}")
    return cls(cfg, transform=transform)


def authors_kinds() -> list[str]:
    """The kinds that can score with star.transform=authors."""
    return sorted(k.name for k in GUARD_KINDS.values() if "authors" in k.transforms)
