"""Prompt formats of the Hugging Face guardrail families: the text a guard model reads for a
conversation ending in (user prompt, assistant response prefix), and the label tokens read
where it answers.

`load_format(cfg, tokenizer)` returns a `GuardFormat`. `render(prompt, response, context)` is
the whole guard prompt, special tokens included as text (tokenize it with
add_special_tokens=False), and it ends exactly at the **decision position**: the next token the
model would write is the label. With one safe and one unsafe label, P(safe) = softmax over
(logit[safe_id], logit[unsafe_id]) at the last position = sigmoid(logit_safe - logit_unsafe).
A family with more labels (Qwen3Guard's Safe / Unsafe / Controversial) has label *groups*
(`safe_ids`, `unsafe_ids`): P(safe) = softmax over every label id restricted to the safe group =
sigmoid(logsumexp(safe logits) - logsumexp(unsafe logits)). One forward pass, no sampling.
`context` holds the earlier turns of the conversation (families.py says how each family's
template renders them); context=() renders byte-identically to the single-exchange format.

Decision position per family (what follows the model's own generation prompt before the label):

- llama_guard (Llama Guard 3 1B / 8B): the templates end at
  "<|start_header_id|>assistant<|end_header_id|>" and the model first writes "\\n\\n", then
  "safe" or "unsafe" (then "\\nS1,..." when unsafe). Evidence: Cloudflare's Workers AI page for
  llama-guard-3-8b shows the raw response "\\n\\nunsafe\\nS2"; stored client code and tests for
  Llama Guard 3 (and a guard-benchmark harness: LLAMAGUARD_LABEL_OPENING = "\\n\\n") parse
  "\\n\\nsafe" / "\\n\\nunsafe\\nS1"; in the Llama 3 tokenizer "\\n\\n" is the single token 271. So
  render() = template + "\\n\\n", labels "safe" / "unsafe" (no leading space). The template
  trims (`| trim`, `.strip()`) both messages: the rendered text holds them stripped.
- granite_guardian 3.0-3.2: template with add_generation_prompt ends at
  "<|start_of_role|>assistant<|end_of_role|>"; the first generated token is the label
  "No" (safe) / "Yes" (unsafe) (the model cards read exactly that token).
- granite_guardian 3.3 (detected by "criteria_id" in the template): guardian_config
  {"criteria_id": risk}, think=False (one forward pass cannot read a verdict that follows a
  sampled reasoning trace); the model writes "<score> yes </score>" / "<score> no </score>",
  so render() = template + "<score>" and the labels are " no" / " yes" (lower case, the space
  belongs to the label token). If the tokenizer splits that space off, the fallback is
  render() = template + "<score> " with labels "no" / "yes". Which one applies is decided at
  load time by the in-context check below. (A template that already ends in "<score>" gets no
  second one.)
- shieldgemma: the prompt-response template (last message from the assistant: "Does the
  Chatbot Response violate the above principle?") with `guideline` = cfg.policy or the model
  card's "No Dangerous Content" principle; it ends "...answer correctly.\\n\\n" and the model's
  first token is "Yes" (violation) / "No" (the card reads exactly these two logits at the last
  position). render() = template, labels "No" / "Yes".
- wildguard: no chat template; the instruction format of allenai/wildguard. The model writes
  three lines "Harmful request: yes|no\\nResponse refusal: yes|no\\nHarmful response: yes|no";
  the response verdict is the third. Its exact probability is a sum over the two earlier
  answers: P(resp = a3) = sum_{a1,a2} P(a1) P(a2 | a1) P(a3 | a1, a2) (restricted to yes/no).
  - `render()` TEACHER-FORCES the first two lines to fixed, explicit values
    (`wildguard_forced`, default request "yes", refusal "no") and ends after
    "Harmful response:"; labels " no" (safe) / " yes" (unsafe). This is P(resp | forced
    answers), NOT the model's marginal verdict; the values are part of the fingerprint.
  - `branches()` gives the exact alternative: the four teacher-forced texts, each with the
    positions of its two earlier decisions, so ONE batched forward pass over the 4 rows yields
    P(safe) = sum_b prod_s p_b(step s) * p_b(safe at the end) (see `Branch`).
  Every other family has one branch (its render) and no steps.
- qwen3guard: template + "Safety:" (or "Safety: "), three labels in two groups (families_recent).
- nemoguard: Llama 3.1 template around the NeMo-Guardrails instruction, then the JSON answer up
  to the value of "Response Safety"; branches over both "User Safety" values (families_recent).

Load-time validation (ValueError naming the guardrail kind): the family needs a chat template
and the tokenizer has none (or it is not the family's); each label is exactly one token *in
context* (tokenizing render + label gives render's ids + exactly one id, checked on several
probes including multi-byte text and a multi-turn conversation; that in-context id is its id;
Qwen3Guard alone may read a longer label at its first token, see families_recent.py); all
label ids differ.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

from ...config.schema import GuardrailConfig
from .families import (
    DEFAULT_WILDGUARD_FORCED,
    PROBES,
    Branch,
    Plan,
    check_context,
    err,
    plan_granite,
    plan_llama_guard,
    plan_shieldgemma,
    plan_wildguard,
)
from .families_recent import DEFAULT_NEMOGUARD_FORCED, plan_nemoguard, plan_qwen3guard

_PLANS = {"llama_guard": plan_llama_guard, "granite_guardian": plan_granite,
          "shieldgemma": plan_shieldgemma, "wildguard": plan_wildguard,
          "qwen3guard": plan_qwen3guard, "nemoguard": plan_nemoguard}
"""The prompt format of each causal-LM family (the registry's kinds served by HFCausalGuard)."""
FAMILIES = tuple(_PLANS)


@dataclass(frozen=True)
class GuardFormat:
    """The prompt format of one guardrail family, bound to one tokenizer (see module doc)."""

    family: str
    variant: str
    """Which template shape was detected, e.g. "llama_guard_3_1b", "granite_guardian_3.3"."""
    safe_label: str
    unsafe_label: str
    safe_id: int
    unsafe_id: int
    fingerprint: str
    """sha256 over family, template text, labels, decision prefix and options."""
    decision_prefix: str
    """Text appended after the template's own output (its generation prompt) to reach the label."""
    template: str
    """The template (or instruction format) text the prompts are rendered with."""
    options: dict = field(default_factory=dict)
    """What was passed to the template: categories, risk, policy, forced answers, ..."""
    safe_labels: tuple[str, ...] = ()
    """Every label text of the safe group (safe_label first); one for most families."""
    unsafe_labels: tuple[str, ...] = ()
    safe_ids: tuple[int, ...] = ()
    """The in-context ids of safe_labels, in order (safe_id first)."""
    unsafe_ids: tuple[int, ...] = ()
    _base: Callable = field(default=None, repr=False, compare=False)
    _branch_fn: Callable | None = field(default=None, repr=False, compare=False)

    @property
    def grouped(self) -> bool:
        """Whether a label group has more than one label (P(safe) is a sum over the group)."""
        return len(self.safe_ids) > 1 or len(self.unsafe_ids) > 1

    def render(self, prompt: str, response: str, context: Sequence[dict] = ()) -> str:
        """The full guard prompt for the conversation [*context, user prompt, assistant
        response prefix], ending exactly where the label token comes next, special tokens
        included as text (add_special_tokens=False)."""
        return self._base(prompt, response, check_context(context)) + self.decision_prefix

    def branches(self, prompt: str, response: str,
                 context: Sequence[dict] = ()) -> list[Branch]:
        """Teacher-forced continuations whose weighted sum is the exact P(safe) (module doc).
        One branch with no steps (= render) for every family but WildGuard."""
        if self._branch_fn is None:
            return [Branch(self.render(prompt, response, context))]
        return self._branch_fn(prompt, response, check_context(context), self.safe_label,
                               self.unsafe_label)


def _plan(cfg: GuardrailConfig, tokenizer, wildguard_forced=DEFAULT_WILDGUARD_FORCED, *,
          family: str | None = None, nemoguard_forced: str = DEFAULT_NEMOGUARD_FORCED) -> Plan:
    kind = family or cfg.kind
    if kind not in _PLANS:
        raise ValueError(f"guardrail kind {kind!r} has no prompt format here (formats: "
                         f"{', '.join(FAMILIES)})")
    if kind == "wildguard":
        return plan_wildguard(cfg, tokenizer, wildguard_forced)
    if kind == "nemoguard":
        return plan_nemoguard(cfg, tokenizer, nemoguard_forced)
    return _PLANS[kind](cfg, tokenizer)


# ---------------------------------------------------------------------------------- checks

def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _label_ids_in_context(tokenizer, context: str, label: str) -> list[int] | None:
    """The ids `label` adds right after `context`, or None when it changes the tokens of the
    context (the label would not start a new token there)."""
    a, b = _ids(tokenizer, context), _ids(tokenizer, context + label)
    if len(b) > len(a) and b[: len(a)] == a:
        return b[len(a):]
    return None


def _pieces(tokenizer, context: str, label: str) -> list[str]:
    a, b = _ids(tokenizer, context), _ids(tokenizer, context + label)
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return tokenizer.convert_ids_to_tokens(b[k:])


def _candidate_ids(tokenizer, plan: Plan, prefix: str, labels: tuple[str, ...]):
    """({label: its id}, None) for one candidate, or (None, why it fails)."""
    ids: dict[str, set] = {lab: set() for lab in labels}
    multi: dict[str, set] = {lab: set() for lab in labels}
    for p, r, c in PROBES:
        ctx = plan.render_base(p, r, c) + prefix
        for lab in labels:
            got = _label_ids_in_context(tokenizer, ctx, lab)
            if got is None or (len(got) > 1 and not plan.first_token_labels):
                return None, (f"label {lab!r} is not exactly one token in context (after the "
                              f"decision prefix {prefix!r} it tokenizes as "
                              f"{_pieces(tokenizer, ctx, lab)})")
            ids[lab].add(got[0])
            if len(got) > 1:
                multi[lab].add(tuple(got))
    for lab in labels:
        if len(ids[lab]) != 1:
            return None, (f"label {lab!r} gets different token ids in different contexts "
                          f"({sorted(ids[lab])})")
    out = {lab: next(iter(ids[lab])) for lab in labels}
    for lab in labels:
        for other in labels:
            if other != lab and out[other] == out[lab]:
                kind = "starts with" if multi[lab] or multi[other] else "is"
                return None, (f"labels {lab!r} and {other!r}: the decision token {kind} the "
                              f"same id {out[lab]}")
    return out, None


def _resolve_labels(cfg, tokenizer, plan: Plan, family: str):
    """The first candidate (prefix, safe group, unsafe group) whose labels are single in-context
    tokens on every probe, with their ids; or a ValueError describing why the first fails."""
    first_error = None
    for prefix, safe, unsafe in plan.candidates:
        ids, problem = _candidate_ids(tokenizer, plan, prefix, tuple(safe) + tuple(unsafe))
        if problem is None:
            return (prefix, tuple(safe), tuple(unsafe), tuple(ids[s] for s in safe),
                    tuple(ids[u] for u in unsafe))
        first_error = first_error or problem
    raise err(cfg, first_error, family)


def _check_branches(cfg, tokenizer, fmt: GuardFormat, family: str) -> None:
    lab_id = {fmt.safe_label: fmt.safe_id, fmt.unsafe_label: fmt.unsafe_id}
    for p, r, c in PROBES:
        for br in fmt.branches(p, r, c):
            full = _ids(tokenizer, br.text)
            for off, lab in br.steps:
                if not br.text.startswith(lab, off):
                    raise err(cfg, f"branch step at {off} does not hold {lab!r}", family)
                head = _ids(tokenizer, br.text[:off])
                if full[: len(head) + 1] != head + [lab_id[lab]]:
                    raise err(cfg, f"forced answer {lab!r} is not one token at its decision "
                                   "position inside the teacher-forced text", family)


def _fingerprint(plan: Plan, prefix: str, safe: tuple, unsafe: tuple) -> str:
    payload = {"family": plan.family, "variant": plan.variant, "template": plan.template,
               "decision_prefix": prefix, "safe_label": safe[0], "unsafe_label": unsafe[0],
               "options": plan.options}
    if len(safe) > 1 or len(unsafe) > 1:  # single-label families keep the keys they had
        payload["safe_labels"], payload["unsafe_labels"] = list(safe), list(unsafe)
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_format(cfg: GuardrailConfig, tokenizer, *,
                wildguard_forced: Sequence[str] = DEFAULT_WILDGUARD_FORCED,
                family: str | None = None,
                nemoguard_forced: str = DEFAULT_NEMOGUARD_FORCED) -> GuardFormat:
    """The prompt format of guardrail family `family` (default: `cfg.kind`) for `tokenizer`,
    checked (module doc). `family` lets a guard of another kind (`remote`) use a family's
    format with the family's options read from `cfg`.

    `wildguard_forced`: the (harmful request, response refusal) answers WildGuard's render()
    teacher-forces before "Harmful response:"; `branches()` is the exact, unforced alternative.
    `nemoguard_forced`: the "User Safety" value NemoGuard's render() teacher-forces (likewise).
    """
    family = family or cfg.kind
    plan = _plan(cfg, tokenizer, wildguard_forced, family=family,
                 nemoguard_forced=nemoguard_forced)
    prefix, safe, unsafe, sids, uids = _resolve_labels(cfg, tokenizer, plan, family)
    fmt = GuardFormat(family=plan.family, variant=plan.variant, safe_label=safe[0],
                      unsafe_label=unsafe[0], safe_id=int(sids[0]), unsafe_id=int(uids[0]),
                      fingerprint=_fingerprint(plan, prefix, safe, unsafe),
                      decision_prefix=prefix, template=plan.template, options=dict(plan.options),
                      safe_labels=safe, unsafe_labels=unsafe,
                      safe_ids=tuple(int(i) for i in sids),
                      unsafe_ids=tuple(int(i) for i in uids),
                      _base=plan.render_base, _branch_fn=plan.branch_fn)
    if plan.branch_fn is not None:
        _check_branches(cfg, tokenizer, fmt, family)
    return fmt


__all__ = ["DEFAULT_WILDGUARD_FORCED", "FAMILIES", "Branch", "GuardFormat", "load_format"]
