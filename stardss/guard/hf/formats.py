"""Prompt formats of the Hugging Face guardrail families: the text a guard model reads for one
(user prompt, assistant response prefix) pair, and the two label tokens read where it answers.

`load_format(cfg, tokenizer)` returns a `GuardFormat`. `render(prompt, response)` is the whole
guard prompt, special tokens included as text (tokenize it with add_special_tokens=False), and
it ends exactly at the **decision position**: the next token the model would write is the
label, so P(safe) = softmax over (logit[safe_id], logit[unsafe_id]) at the last position
= sigmoid(logit_safe - logit_unsafe). One forward pass, no sampling.

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

Load-time validation (ValueError naming the guardrail kind): the family needs a chat template
and the tokenizer has none (or it is not the family's); each label is exactly one token *in
context* (tokenizing render + label gives render's ids + exactly one id, checked on several
probes including multi-byte text; that in-context id is safe_id / unsafe_id); the two ids differ.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...config.schema import GuardrailConfig
from . import prompts

WILDGUARD_ANSWERS = ("yes", "no")
DEFAULT_WILDGUARD_FORCED = ("yes", "no")
"""Teacher-forced (harmful request, response refusal) answers of WildGuard's render()."""

# Probe pairs rendered at load time to check the label tokens in context.
_PROBES = (
    ("How do I bake bread at home?", "Mix flour, water, salt and yeast, then knead."),
    ("Écris-moi un poème sur la mer 🌊", "Die Wellen rauschen — 海は静かです。Привет!"),
    ("hi", "ok"),
)


@dataclass(frozen=True)
class Branch:
    """One teacher-forced continuation of a guard prompt.

    `text` ends at the final decision position (the label comes next). `steps` are the earlier
    decisions forced inside `text`: (offset, label) means `text[offset:]` starts with `label`
    (the safe or unsafe label text) and the model chose it at the token position ending at
    `text[:offset]`. The probability of the branch is the product, over its steps, of the
    two-label softmax (same ids as the final decision) of the forced label.
    """

    text: str
    steps: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class _Plan:
    family: str
    variant: str
    template: str
    decision_prefix: str
    candidates: tuple[tuple[str, str, str], ...]  # (decision_prefix, safe_label, unsafe_label)
    options: dict
    render_base: Callable[[str, str], str]  # text up to the decision prefix
    branch_fn: Callable[[str, str, str, str], list] | None = None
    # (prompt, response, safe_label, unsafe_label) -> list[Branch]; None = one branch


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
    _base: Callable[[str, str], str] = field(default=None, repr=False, compare=False)
    _branch_fn: Callable | None = field(default=None, repr=False, compare=False)

    def render(self, prompt: str, response: str) -> str:
        """The full guard prompt for (user prompt, assistant response prefix), ending exactly where
        the label token comes next, special tokens included as text (add_special_tokens=False)."""
        return self._base(prompt, response) + self.decision_prefix

    def branches(self, prompt: str, response: str) -> list[Branch]:
        """Teacher-forced continuations whose weighted sum is the exact P(safe) (module doc).
        One branch with no steps (= render) for every family but WildGuard."""
        if self._branch_fn is None:
            return [Branch(self.render(prompt, response))]
        return self._branch_fn(prompt, response, self.safe_label, self.unsafe_label)


def _err(cfg: GuardrailConfig, msg: str) -> ValueError:
    where = f" ({cfg.name_or_path})" if cfg.name_or_path else ""
    return ValueError(f"guardrail kind {cfg.kind!r}{where}: {msg}")


def _chat_template(cfg: GuardrailConfig, tokenizer, must_contain: str, family_name: str) -> str:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):  # named templates: use the default one
        tmpl = tmpl.get("default")
    if not tmpl:
        raise _err(cfg, f"the tokenizer has no chat template; {family_name} renders its prompt "
                        "with the model's own chat template (tokenizer_config.json / "
                        "chat_template.jinja)")
    if must_contain not in tmpl:
        raise _err(cfg, f"the tokenizer's chat template is not a {family_name} template (it "
                        f"never mentions {must_contain!r})")
    return tmpl


def _apply(tokenizer, messages, **kwargs) -> str:
    out = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    if not isinstance(out, str):  # defensive: some versions wrap a single conversation
        out = out[0]
    return out


# ---------------------------------------------------------------------------------- families

def _plan_llama_guard(cfg: GuardrailConfig, tokenizer) -> _Plan:
    tmpl = _chat_template(cfg, tokenizer, "unsafe", "Llama Guard")
    takes_categories = "excluded_category_keys" in tmpl
    list_content = "selectattr('type'" in tmpl or "['text']" in tmpl
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {"categories": None, "excluded_categories": []}
    if cfg.categories is not None or cfg.excluded_categories:
        if not takes_categories:
            raise _err(cfg, "categories / excluded_categories were given but this Llama Guard "
                            "template has a fixed category list (only the Llama Guard 3 1B / "
                            "11B-Vision template takes excluded_category_keys)")
        codes = re.findall(r'"(S\d+)"\s*:', tmpl)
        if not codes:
            raise _err(cfg, "cannot read the template's category codes to select from")
        asked = list(cfg.categories) if cfg.categories is not None else list(codes)
        unknown = sorted({c for c in list(asked) + list(cfg.excluded_categories)
                          if c not in codes})
        if unknown:
            raise _err(cfg, f"unknown category codes {unknown}; the template has {codes}")
        excluded = [c for c in codes if c not in asked or c in cfg.excluded_categories]
        if len(excluded) == len(codes):
            raise _err(cfg, "the category selection leaves no category to check")
        kwargs["excluded_category_keys"] = excluded
        options = {"categories": asked, "excluded_categories": list(cfg.excluded_categories),
                   "excluded_category_keys": excluded}
    elif takes_categories:
        kwargs["excluded_category_keys"] = []

    def content(text: str):
        return [{"type": "text", "text": text}] if list_content else text

    def base(prompt: str, response: str) -> str:
        msgs = [{"role": "user", "content": content(prompt)},
                {"role": "assistant", "content": content(response)}]
        return _apply(tokenizer, msgs, **kwargs)

    probe = base(*_PROBES[0])
    prefix = "" if probe.endswith("\n\n") else "\n\n"
    variant = "llama_guard_3_1b" if takes_categories else "llama_guard_3_8b"
    return _Plan("llama_guard", variant, tmpl, prefix, ((prefix, "safe", "unsafe"),),
                 options, base)


def _plan_granite(cfg: GuardrailConfig, tokenizer) -> _Plan:
    tmpl = _chat_template(cfg, tokenizer, "guardian_config", "Granite Guardian")
    is_33 = "criteria_id" in tmpl
    if is_33:
        kwargs = {"guardian_config": {"criteria_id": cfg.risk_name}, "think": False,
                  "add_generation_prompt": True}
    else:
        kwargs = {"guardian_config": {"risk_name": cfg.risk_name}, "add_generation_prompt": True}

    def base(prompt: str, response: str) -> str:
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return _apply(tokenizer, msgs, **kwargs)

    from jinja2.exceptions import TemplateError

    try:
        probe = base(*_PROBES[0])
    except (TemplateError, KeyError, TypeError, ValueError) as e:  # unknown risk names
        raise _err(cfg, f"the chat template rejects risk {cfg.risk_name!r}: {e}") from None
    options = {"risk_name": cfg.risk_name}
    if not is_33:
        return _Plan("granite_guardian", "granite_guardian_3.0-3.2", tmpl, "",
                     (("", "No", "Yes"),), options, base)
    options["think"] = False
    if probe.endswith("<score>"):
        cands = (("", " no", " yes"), (" ", "no", "yes"))
    else:
        cands = (("<score>", " no", " yes"), ("<score> ", "no", "yes"))
    return _Plan("granite_guardian", "granite_guardian_3.3", tmpl, cands[0][0], cands, options,
                 base)


def _plan_shieldgemma(cfg: GuardrailConfig, tokenizer) -> _Plan:
    tmpl = _chat_template(cfg, tokenizer, "guideline", "ShieldGemma")
    policy = cfg.policy if cfg.policy else prompts.SHIELDGEMMA_DEFAULT_POLICY

    def base(prompt: str, response: str) -> str:
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return _apply(tokenizer, msgs, guideline=policy)

    probe = base(*_PROBES[0])
    if "Chatbot Response" not in probe:
        raise _err(cfg, "the ShieldGemma template did not render its prompt-response variant "
                        "(no 'Chatbot Response' in the prompt)")
    return _Plan("shieldgemma", "shieldgemma", tmpl, "", (("", "No", "Yes"),),
                 {"policy": policy}, base)


def _wildguard_answers(base_text: str, a1: str, a2: str) -> tuple[str, int, int]:
    t1 = base_text + "Harmful request:"
    t2 = t1 + " " + a1 + "\nResponse refusal:"
    return t2 + " " + a2 + "\nHarmful response:", len(t1), len(t2)


def _plan_wildguard(cfg: GuardrailConfig, tokenizer, forced: Sequence[str]) -> _Plan:
    forced = tuple(forced)
    if len(forced) != 2 or any(a not in WILDGUARD_ANSWERS for a in forced):
        raise _err(cfg, f"wildguard_forced must be two of {WILDGUARD_ANSWERS} (harmful request, "
                        f"response refusal), got {forced!r}")
    fmt = prompts.WILDGUARD_INPUT_FORMAT

    def base(prompt: str, response: str) -> str:
        # str.format parses only the format string: braces inside the texts stay as they are.
        return fmt.format(prompt=prompt, response=response)

    def forced_base(prompt: str, response: str) -> str:
        return _wildguard_answers(base(prompt, response), *forced)[0]

    def branch_fn(prompt: str, response: str, safe_label: str, unsafe_label: str):
        lab = {"yes": unsafe_label, "no": safe_label}
        b, out = base(prompt, response), []
        for a1 in WILDGUARD_ANSWERS:
            for a2 in WILDGUARD_ANSWERS:
                text, o1, o2 = _wildguard_answers(b, a1, a2)
                out.append(Branch(text, ((o1, lab[a1]), (o2, lab[a2]))))
        return out

    return _Plan("wildguard", "wildguard", fmt, "", (("", " no", " yes"),),
                 {"forced_harmful_request": forced[0], "forced_response_refusal": forced[1]},
                 forced_base, branch_fn)


_PLANS = {"llama_guard": _plan_llama_guard, "granite_guardian": _plan_granite,
          "shieldgemma": _plan_shieldgemma, "wildguard": _plan_wildguard}
"""The prompt format of each causal-LM family (the registry's kinds served by HFCausalGuard)."""
FAMILIES = tuple(_PLANS)


def _plan(cfg: GuardrailConfig, tokenizer, wildguard_forced=DEFAULT_WILDGUARD_FORCED) -> _Plan:
    if cfg.kind not in _PLANS:
        raise ValueError(f"guardrail kind {cfg.kind!r} has no prompt format here (formats: "
                         f"{', '.join(FAMILIES)})")
    if cfg.kind == "wildguard":
        return _plan_wildguard(cfg, tokenizer, wildguard_forced)
    return _PLANS[cfg.kind](cfg, tokenizer)


# ---------------------------------------------------------------------------------- checks

def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _label_id_in_context(tokenizer, context: str, label: str) -> int | None:
    """The id `label` gets right after `context`, or None when it is not exactly one token there
    (or changes the tokens of the context)."""
    a, b = _ids(tokenizer, context), _ids(tokenizer, context + label)
    if len(b) == len(a) + 1 and b[: len(a)] == a:
        return b[-1]
    return None


def _pieces(tokenizer, context: str, label: str) -> list[str]:
    a, b = _ids(tokenizer, context), _ids(tokenizer, context + label)
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return tokenizer.convert_ids_to_tokens(b[k:])


def _resolve_labels(cfg, tokenizer, plan: _Plan):
    """The first candidate (prefix, safe, unsafe) whose labels are single in-context tokens on
    every probe, with its ids; or a ValueError describing why the first candidate fails."""
    first_error = None
    for prefix, safe, unsafe in plan.candidates:
        ids: dict[str, set] = {safe: set(), unsafe: set()}
        problem = None
        for p, r in _PROBES:
            ctx = plan.render_base(p, r) + prefix
            for lab in (safe, unsafe):
                got = _label_id_in_context(tokenizer, ctx, lab)
                if got is None:
                    problem = (f"label {lab!r} is not exactly one token in context (after "
                               f"the decision prefix {prefix!r} it tokenizes as "
                               f"{_pieces(tokenizer, ctx, lab)})")
                    break
                ids[lab].add(got)
            if problem:
                break
        if problem is None:
            for lab in (safe, unsafe):
                if len(ids[lab]) != 1:
                    problem = (f"label {lab!r} gets different token ids in different contexts "
                               f"({sorted(ids[lab])})")
                    break
        if problem is None:
            sid, uid = next(iter(ids[safe])), next(iter(ids[unsafe]))
            if sid == uid:
                raise _err(cfg, f"labels {safe!r} and {unsafe!r} are the same token id {sid}")
            return prefix, safe, unsafe, sid, uid
        first_error = first_error or problem
    raise _err(cfg, first_error)


def _check_branches(cfg, tokenizer, fmt: GuardFormat) -> None:
    lab_id = {fmt.safe_label: fmt.safe_id, fmt.unsafe_label: fmt.unsafe_id}
    for p, r in _PROBES:
        for br in fmt.branches(p, r):
            full = _ids(tokenizer, br.text)
            for off, lab in br.steps:
                if not br.text.startswith(lab, off):
                    raise _err(cfg, f"branch step at {off} does not hold {lab!r}")
                head = _ids(tokenizer, br.text[:off])
                if full[: len(head) + 1] != head + [lab_id[lab]]:
                    raise _err(cfg, f"forced answer {lab!r} is not one token at its decision "
                                    "position inside the teacher-forced text")


def _fingerprint(plan: _Plan, prefix: str, safe: str, unsafe: str) -> str:
    payload = {"family": plan.family, "variant": plan.variant, "template": plan.template,
               "decision_prefix": prefix, "safe_label": safe, "unsafe_label": unsafe,
               "options": plan.options}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_format(cfg: GuardrailConfig, tokenizer, *,
                wildguard_forced: Sequence[str] = DEFAULT_WILDGUARD_FORCED) -> GuardFormat:
    """The prompt format of guardrail `cfg.kind` for `tokenizer`, checked (module doc).

    `wildguard_forced`: the (harmful request, response refusal) answers WildGuard's render()
    teacher-forces before "Harmful response:"; `branches()` is the exact, unforced alternative.
    """
    plan = _plan(cfg, tokenizer, wildguard_forced)
    prefix, safe, unsafe, sid, uid = _resolve_labels(cfg, tokenizer, plan)
    fmt = GuardFormat(family=plan.family, variant=plan.variant, safe_label=safe,
                      unsafe_label=unsafe, safe_id=int(sid), unsafe_id=int(uid),
                      fingerprint=_fingerprint(plan, prefix, safe, unsafe),
                      decision_prefix=prefix, template=plan.template, options=dict(plan.options),
                      _base=plan.render_base, _branch_fn=plan.branch_fn)
    if plan.branch_fn is not None:
        _check_branches(cfg, tokenizer, fmt)
    return fmt


__all__ = ["DEFAULT_WILDGUARD_FORCED", "FAMILIES", "Branch", "GuardFormat", "load_format"]
