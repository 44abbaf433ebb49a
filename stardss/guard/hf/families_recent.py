"""Prompt plans of the newer causal-LM guardrail families (see families.py for the older ones
and the plan contract).

qwen3guard (Qwen3Guard-Gen 0.6B / 4B / 8B): the chat template's response-moderation branch
(last message from the assistant) ends "<think>\\n\\n</think>\\n\\n" and the model writes
"Safety: Safe|Unsafe|Controversial\\nCategories: ...\\nRefusal: Yes|No". The verdict is the
token after "Safety:": render() = template + "Safety:" with labels " Safe" / " Unsafe" /
" Controversial" (the space belongs to the label token in Qwen's tokenizer; a stored client
reads the tokens " Safe", " Unsafe" and " Cont" at that position), else template + "Safety: "
with "Safe" / "Unsafe" / "Controversial"; which applies is decided at load time by the
in-context check. THREE labels, two groups: `controversial: unsafe` (the model card's strict
mode) puts "Controversial" in the unsafe group, `controversial: safe` (loose) in the safe group;
P(safe) = the softmax over all three restricted to the safe group
= sigmoid(logsumexp(safe logits) - logsumexp(unsafe logits)). In Qwen's tokenizer
" Controversial" is several tokens; its first token (" Cont") is the one the model chooses the
verdict with and starts no other label, so it is read there (`first_token_labels`).
The template takes the whole conversation ("USER: ..." / "ASSISTANT: ..." blocks).

nemoguard (Llama-3.1-NemoGuard-8B-ContentSafety, a LoRA on Llama-3.1-8B-Instruct): the
NeMo-Guardrails response-check instruction (prompts.py) is ONE user message of the Llama 3.1
chat template (add_generation_prompt); the model answers JSON
{"User Safety": "safe|unsafe", "Response Safety": "safe|unsafe", "Safety Categories": ...}.
The response verdict is the value of "Response Safety", which follows the user verdict, so it
is scored like WildGuard's third line: `branches()` teacher-forces both user-safety values,
'{"User Safety": "unsafe", "Response Safety": "' and the same with "safe", each with the user
verdict's own decision position, and P(safe) = sum_a P(user = a) P(response safe | a) (the
model's marginal; HFCausalGuard scores every format that has branches this way). `render()`
is the single teacher-forced text with user safety `nemoguard_forced` ("unsafe", like
WildGuard's forced harmful request), in the fingerprint. Labels "safe" / "unsafe" right after
the opening quote when they are one token there; Llama 3's pre-tokenizer glues a quote to the
letters after it, so the fallback reads '"safe' / '"unsafe' (quote included) after
'"Response Safety": ' (decided at load time by the in-context check). The answer JSON's
spacing is the one the brief and the stored parsers write ('{"User Safety": "unsafe", ...}');
the model card's pretty-printed example would put a newline and indent before each key.
Multi-turn: the prompt has no documented multi-turn block; earlier turns are written as more
"user: ..." / "response: agent: ..." blocks in the prompt's own markers, before the judged pair.
"""
from __future__ import annotations

from ...config.schema import GuardrailConfig
from . import prompts
from .families import Branch, Context, Plan, apply, chat_template, conversation, err

QWEN3GUARD_LABELS = ("Safe", "Unsafe", "Controversial")


def plan_qwen3guard(cfg: GuardrailConfig, tokenizer) -> Plan:
    tmpl = chat_template(cfg, tokenizer, "Safety: Controversial", "Qwen3Guard-Gen")
    if cfg.controversial not in ("unsafe", "safe"):
        raise err(cfg, f"controversial must be 'unsafe' or 'safe', got {cfg.controversial!r}")

    def base(prompt: str, response: str, context: Context = ()) -> str:
        return apply(tokenizer, conversation(prompt, response, context))

    probe = base("hi", "ok")
    if "THE LAST ASSISTANT's response" not in probe:
        raise err(cfg, "the Qwen3Guard template did not render its response-moderation "
                       "prompt (no \"THE LAST ASSISTANT's response\" in it)")
    cands = []
    for prefix, space in (("Safety:", " "), ("Safety: ", "")):
        safe, unsafe, contro = (space + lab for lab in QWEN3GUARD_LABELS)
        if cfg.controversial == "unsafe":
            cands.append((prefix, (safe,), (unsafe, contro)))
        else:
            cands.append((prefix, (safe, contro), (unsafe,)))
    return Plan("qwen3guard", "qwen3guard_gen", tmpl, tuple(cands),
                {"controversial": cfg.controversial}, base, first_token_labels=True)


NEMOGUARD_ANSWERS = ("unsafe", "safe")
DEFAULT_NEMOGUARD_FORCED = "unsafe"
"""The user-safety value NemoGuard's render() teacher-forces (branches() takes both)."""


def nemoguard_instruction(prompt: str, response: str, context: Context = ()) -> str:
    """The NemoGuard instruction for the conversation (the Llama 3.1 user message)."""
    turns = [(prompts.NEMOGUARD_USER_TURN if m["role"] == "user" else
              prompts.NEMOGUARD_AGENT_TURN).format(text=m["content"]) for m in context]
    return (prompts.NEMOGUARD_HEAD + "".join(turns)
            + prompts.NEMOGUARD_USER_TURN.format(text=prompt)
            + prompts.NEMOGUARD_AGENT_TURN.format(text=response) + prompts.NEMOGUARD_TAIL)


def plan_nemoguard(cfg: GuardrailConfig, tokenizer,
                   forced: str = DEFAULT_NEMOGUARD_FORCED) -> Plan:
    tmpl = chat_template(cfg, tokenizer, "<|start_header_id|>", "Llama 3.1 (NemoGuard's base)")
    if forced not in NEMOGUARD_ANSWERS:
        raise err(cfg, f"nemoguard_forced must be one of {NEMOGUARD_ANSWERS}, got {forced!r}")

    def head(prompt: str, response: str, context: Context = ()) -> str:
        msgs = [{"role": "user", "content": nemoguard_instruction(prompt, response, context)}]
        return apply(tokenizer, msgs, add_generation_prompt=True) + '{"User Safety": '

    def forced_base(prompt: str, response: str, context: Context = ()) -> str:
        return head(prompt, response, context) + '"' + forced + '", "Response Safety": '

    def branch_fn(prompt: str, response: str, context: Context, safe_label: str,
                  unsafe_label: str):
        quote = "" if safe_label.startswith('"') else '"'  # the opening quote's side
        h = head(prompt, response, context) + quote
        out = []
        for label in (unsafe_label, safe_label):
            text = h + label + '", "Response Safety": ' + quote
            out.append(Branch(text, ((len(h), label),)))
        return out

    cands = (('"', ("safe",), ("unsafe",)), ("", ('"safe',), ('"unsafe',)))
    return Plan("nemoguard", "nemoguard_content_safety", tmpl, cands,
                {"forced_user_safety": forced, "instruction": "nemo_guardrails_output_check"},
                forced_base, branch_fn)


__all__ = ["DEFAULT_NEMOGUARD_FORCED", "NEMOGUARD_ANSWERS", "QWEN3GUARD_LABELS",
           "nemoguard_instruction", "plan_nemoguard", "plan_qwen3guard"]
