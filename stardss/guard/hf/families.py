"""The prompt plan of each causal-LM guardrail family: how its template is called for a
conversation, what is appended to reach the decision position, and which label texts may be
read there (formats.py checks them against the tokenizer and builds the `GuardFormat`).

Every plan renders a conversation as `render_base(prompt, response, context)`: `context` is the
earlier turns ({"role", "content"} dicts, user first, alternating) before the user `prompt`
and the assistant `response` (prefix) being judged. context=() renders exactly the two-message
conversation [user, assistant] (byte-identical to the single-exchange format).

Multi-turn, per family (what each template does with the whole message list):
- llama_guard: the template loops over every message ("User: ..." / "Agent: ..." blocks inside
  <BEGIN CONVERSATION>) and judges the last Agent turn: the whole list is passed.
- granite_guardian 3.0-3.2: the templates read only messages[-2] and messages[-1] (the last user
  and assistant turns); earlier turns are passed and the template leaves them out. (The 3.1
  quirk with exactly three messages never triggers: the list always has an even length.)
- granite_guardian 3.3: every message is written as its own role turn.
- shieldgemma: the template reads messages[-2] and messages[-1] only (its documented prompt is
  one "Human Question" and one "Chatbot Response"): earlier turns are left out by the template.
- wildguard: one "Human user:" / "AI assistant:" pair and no documented multi-turn form; the
  earlier turns are written into the human-user block as the same "Human user:" / "AI
  assistant:" blocks, so the model reads the conversation in its own markers, ending with the
  judged pair (see `wildguard_conversation`).
- qwen3guard (families_recent.py): the template loops over every message ("USER: ..." /
  "ASSISTANT: ...").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...config.schema import GuardrailConfig
from . import prompts

WILDGUARD_ANSWERS = ("yes", "no")
DEFAULT_WILDGUARD_FORCED = ("yes", "no")
"""Teacher-forced (harmful request, response refusal) answers of WildGuard's render()."""

Context = Sequence[dict]
RenderBase = Callable[[str, str, Context], str]
"""(prompt, response, context) -> the guard prompt up to the decision prefix."""


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
class Plan:
    family: str
    variant: str
    template: str
    candidates: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    """(decision_prefix, safe labels, unsafe labels), tried in order; the first label of each
    group is the family's primary label (safe_label / unsafe_label)."""
    options: dict
    render_base: RenderBase
    branch_fn: Callable[..., list] | None = None
    # (prompt, response, context, safe_label, unsafe_label) -> list[Branch]; None = one branch
    first_token_labels: bool = False
    """A label that is several tokens in context is read at its first token (the token that
    decides it), provided that first token starts no other label (Qwen3Guard: "Controversial")."""


def err(cfg: GuardrailConfig, msg: str, family: str | None = None) -> ValueError:
    where = f" ({cfg.name_or_path})" if cfg.name_or_path else ""
    kind = cfg.kind if family is None or family == cfg.kind else f"{cfg.kind}/{family}"
    return ValueError(f"guardrail kind {kind!r}{where}: {msg}")


def chat_template(cfg: GuardrailConfig, tokenizer, must_contain: str, family_name: str) -> str:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):  # named templates: use the default one
        tmpl = tmpl.get("default")
    if not tmpl:
        raise err(cfg, f"the tokenizer has no chat template; {family_name} renders its prompt "
                       "with the model's own chat template (tokenizer_config.json / "
                       "chat_template.jinja)")
    if must_contain not in tmpl:
        raise err(cfg, f"the tokenizer's chat template is not a {family_name} template (it "
                       f"never mentions {must_contain!r})")
    return tmpl


def apply(tokenizer, messages, **kwargs) -> str:
    out = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    if not isinstance(out, str):  # defensive: some versions wrap a single conversation
        out = out[0]
    return out


def conversation(prompt: str, response: str, context: Context, content=lambda t: t) -> list:
    """The message list [*context, user prompt, assistant response], contents mapped by
    `content` (Llama Guard 3 1B takes a list of text parts)."""
    msgs = [{"role": m["role"], "content": content(m["content"])} for m in context]
    return msgs + [{"role": "user", "content": content(prompt)},
                   {"role": "assistant", "content": content(response)}]


# ---------------------------------------------------------------------------------- families

def plan_llama_guard(cfg: GuardrailConfig, tokenizer) -> Plan:
    import re

    tmpl = chat_template(cfg, tokenizer, "unsafe", "Llama Guard")
    takes_categories = "excluded_category_keys" in tmpl
    list_content = "selectattr('type'" in tmpl or "['text']" in tmpl
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {"categories": None, "excluded_categories": []}
    if cfg.categories is not None or cfg.excluded_categories:
        if not takes_categories:
            raise err(cfg, "categories / excluded_categories were given but this Llama Guard "
                           "template has a fixed category list (only the Llama Guard 3 1B / "
                           "11B-Vision template takes excluded_category_keys)")
        codes = re.findall(r'"(S\d+)"\s*:', tmpl)
        if not codes:
            raise err(cfg, "cannot read the template's category codes to select from")
        asked = list(cfg.categories) if cfg.categories is not None else list(codes)
        unknown = sorted({c for c in list(asked) + list(cfg.excluded_categories)
                          if c not in codes})
        if unknown:
            raise err(cfg, f"unknown category codes {unknown}; the template has {codes}")
        excluded = [c for c in codes if c not in asked or c in cfg.excluded_categories]
        if len(excluded) == len(codes):
            raise err(cfg, "the category selection leaves no category to check")
        kwargs["excluded_category_keys"] = excluded
        options = {"categories": asked, "excluded_categories": list(cfg.excluded_categories),
                   "excluded_category_keys": excluded}
    elif takes_categories:
        kwargs["excluded_category_keys"] = []

    def content(text: str):
        return [{"type": "text", "text": text}] if list_content else text

    def base(prompt: str, response: str, context: Context = ()) -> str:
        return apply(tokenizer, conversation(prompt, response, context, content), **kwargs)

    probe = base(*PROBES[0])
    prefix = "" if probe.endswith("\n\n") else "\n\n"
    variant = "llama_guard_3_1b" if takes_categories else "llama_guard_3_8b"
    if "<|header_start|>" in tmpl:
        # Llama Guard 4 (Llama 4's header tokens): the rest of the plan is Llama Guard 3's
        # (categories via excluded_category_keys when the template takes them, "\n\n" before
        # the label unless the template already ends with it). Its stand-in's template is
        # rebuilt from the real processor's stored renderings (templates_recent.py); the 12B
        # wrote "\n\n" before one of its two stored answers, not before the other, so the
        # decision position is unverified against real logits.
        variant = "llama_guard_4"
    return Plan("llama_guard", variant, tmpl, ((prefix, ("safe",), ("unsafe",)),), options,
                base)


def plan_granite(cfg: GuardrailConfig, tokenizer) -> Plan:
    tmpl = chat_template(cfg, tokenizer, "guardian_config", "Granite Guardian")
    is_33 = "criteria_id" in tmpl
    if is_33:
        kwargs = {"guardian_config": {"criteria_id": cfg.risk_name}, "think": False,
                  "add_generation_prompt": True}
    else:
        kwargs = {"guardian_config": {"risk_name": cfg.risk_name}, "add_generation_prompt": True}

    def base(prompt: str, response: str, context: Context = ()) -> str:
        return apply(tokenizer, conversation(prompt, response, context), **kwargs)

    from jinja2.exceptions import TemplateError

    try:
        probe = base(*PROBES[0])
    except (TemplateError, KeyError, TypeError, ValueError) as e:  # unknown risk names
        raise err(cfg, f"the chat template rejects risk {cfg.risk_name!r}: {e}") from None
    options = {"risk_name": cfg.risk_name}
    if not is_33:
        return Plan("granite_guardian", "granite_guardian_3.0-3.2", tmpl,
                    (("", ("No",), ("Yes",)),), options, base)
    options["think"] = False
    if probe.endswith("<score>"):
        cands = (("", (" no",), (" yes",)), (" ", ("no",), ("yes",)))
    else:
        cands = (("<score>", (" no",), (" yes",)), ("<score> ", ("no",), ("yes",)))
    return Plan("granite_guardian", "granite_guardian_3.3", tmpl, cands, options, base)


def plan_shieldgemma(cfg: GuardrailConfig, tokenizer) -> Plan:
    tmpl = chat_template(cfg, tokenizer, "guideline", "ShieldGemma")
    policy = cfg.policy if cfg.policy else prompts.SHIELDGEMMA_DEFAULT_POLICY

    def base(prompt: str, response: str, context: Context = ()) -> str:
        return apply(tokenizer, conversation(prompt, response, context), guideline=policy)

    probe = base(*PROBES[0])
    if "Chatbot Response" not in probe:
        raise err(cfg, "the ShieldGemma template did not render its prompt-response variant "
                       "(no 'Chatbot Response' in the prompt)")
    return Plan("shieldgemma", "shieldgemma", tmpl, (("", ("No",), ("Yes",)),),
                {"policy": policy}, base)


def wildguard_conversation(prompt: str, context: Context) -> str:
    """The text of WildGuard's human-user block: the earlier turns in WildGuard's own turn
    markers, then the judged user prompt (just `prompt` when there are none)."""
    parts = []
    for m in context:
        parts.append(m["content"] + ("\n\nAI assistant:\n" if m["role"] == "user"
                                     else "\n\nHuman user:\n"))
    return "".join(parts) + prompt


def _wildguard_answers(base_text: str, a1: str, a2: str) -> tuple[str, int, int]:
    t1 = base_text + "Harmful request:"
    t2 = t1 + " " + a1 + "\nResponse refusal:"
    return t2 + " " + a2 + "\nHarmful response:", len(t1), len(t2)


def plan_wildguard(cfg: GuardrailConfig, tokenizer,
                   forced: Sequence[str] = DEFAULT_WILDGUARD_FORCED) -> Plan:
    forced = tuple(forced)
    if len(forced) != 2 or any(a not in WILDGUARD_ANSWERS for a in forced):
        raise err(cfg, f"wildguard_forced must be two of {WILDGUARD_ANSWERS} (harmful request, "
                       f"response refusal), got {forced!r}")
    fmt = prompts.WILDGUARD_INPUT_FORMAT

    def base(prompt: str, response: str, context: Context = ()) -> str:
        # str.format parses only the format string: braces inside the texts stay as they are.
        return fmt.format(prompt=wildguard_conversation(prompt, context), response=response)

    def forced_base(prompt: str, response: str, context: Context = ()) -> str:
        return _wildguard_answers(base(prompt, response, context), *forced)[0]

    def branch_fn(prompt: str, response: str, context: Context, safe_label: str,
                  unsafe_label: str):
        lab = {"yes": unsafe_label, "no": safe_label}
        b, out = base(prompt, response, context), []
        for a1 in WILDGUARD_ANSWERS:
            for a2 in WILDGUARD_ANSWERS:
                text, o1, o2 = _wildguard_answers(b, a1, a2)
                out.append(Branch(text, ((o1, lab[a1]), (o2, lab[a2]))))
        return out

    return Plan("wildguard", "wildguard", fmt, (("", (" no",), (" yes",)),),
                {"forced_harmful_request": forced[0], "forced_response_refusal": forced[1]},
                forced_base, branch_fn)


# Probe conversations rendered at load time to check the label tokens in context (the last
# one multi-turn: the template must take the earlier turns).
PROBES: tuple[tuple[str, str, tuple], ...] = (
    ("How do I bake bread at home?", "Mix flour, water, salt and yeast, then knead.", ()),
    ("Écris-moi un poème sur la mer 🌊", "Die Wellen rauschen — 海は静かです。Привет!", ()),
    ("hi", "ok", ()),
    ("And the oven?", "Bake it at 220 °C for 30 minutes.",
     ({"role": "user", "content": "How do I bake bread?"},
      {"role": "assistant", "content": "Mix flour and water."})),
)


def check_context(context: Context) -> tuple:
    """The earlier turns as a tuple of {"role", "content"} dicts, checked: user first,
    alternating user / assistant, ending with an assistant turn (the judged user prompt comes
    next). A one-line ValueError names the bad turn."""
    out = []
    for i, m in enumerate(context):
        want = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != want or not isinstance(
                m.get("content"), str):
            raise ValueError(f"context turn {i}: expected {{'role': {want!r}, 'content': str}} "
                             f"(turns alternate user/assistant from a user turn), got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if len(out) % 2:
        raise ValueError(f"context has {len(out)} turns: it must end with an assistant turn "
                         "(the judged user prompt follows it)")
    return tuple(out)


__all__ = ["DEFAULT_WILDGUARD_FORCED", "PROBES", "WILDGUARD_ANSWERS", "Branch", "Plan",
           "apply", "chat_template", "check_context", "conversation", "err",
           "plan_granite", "plan_llama_guard", "plan_shieldgemma", "plan_wildguard",
           "wildguard_conversation"]
