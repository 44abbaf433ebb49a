"""The real chat templates of the Hugging Face guardrail families, as text constants, for the
tiny stand-in models of `stardss.testing.guards`.

No model can be downloaded here, so every text below was copied from a stored public copy of
the model's `tokenizer_config.json` chat template; the comment above each constant names the
copy it was taken from. Production code never uses them: a real guardrail is always rendered
with its own tokenizer's template (`stardss.guard.hf.formats`); the prompt texts that are not
chat templates (WildGuard's instruction format, ShieldGemma's policies) live with the formats,
in `stardss.guard.hf.prompts`.

Verbatim unless the comment says otherwise. Whitespace matters: the Jinja sources keep the
line breaks, spaces and backslash escapes of the originals (raw strings: a Jinja `\\n` escape
inside a Jinja string literal stays the two characters backslash-n, as in the originals).
"""
from __future__ import annotations

# --------------------------------------------------------------------------------------------
# Llama Guard 3 1B (meta-llama/Llama-Guard-3-1B, tokenizer_config.json "chat_template").
# Source: huggingface/huggingface.js, packages/ollama-utils/src/chat-template-automap.ts
# @ 0429cdc70ad15822a7b2b42d8c8b71ca2b9bce34, entry model "library/llama-guard3:1b", field
# `gguf` (the Hugging Face template that llama.cpp embeds in the GGUF). The same text is in
# Together's model list (entry "meta-llama/Llama-Guard-3-11B-Vision-Turbo"): the 1B and 11B-Vision
# templates are one template. It takes the `categories` (dict code -> text) and
# `excluded_category_keys` (list of codes) kwargs (the 3-1B model card shows both), message
# content as a list of {"type": "text", "text": ...} parts, and trims every message (`| trim`).
LLAMA_GUARD_3_1B_TEMPLATE = r"""{%- if messages|length % 2 == 0 -%}
    {%- set role = 'Agent' -%}
{%-  else -%}
    {%-  set role = 'User' -%}
{%-  endif -%}
{%-  if categories is not defined -%}
    {%-  
        set categories = ({
            "S1": "Violent Crimes.",
            "S2": "Non-Violent Crimes.",
            "S3": "Sex Crimes.",
            "S4": "Child Exploitation.",
            "S5": "Defamation.",
            "S6": "Specialized Advice.",
            "S7": "Privacy.",
            "S8": "Intellectual Property.",
            "S9": "Indiscriminate Weapons.",
            "S10": "Hate.",
            "S11": "Self-Harm.",
            "S12": "Sexual Content.",
            "S13": "Elections.",
        })
    -%}
{%-  endif -%}

{{- "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" -}}
{%- set ns = namespace(contains_image=false) -%}
{%-  for message in messages -%}
    {%- for content in message['content'] | selectattr('type', 'equalto', 'image') -%}
        {%- set ns.contains_image = true -%}
    {%- endfor -%}
{%- endfor -%}
{%- if ns.contains_image -%}
{{- "<|image|> "-}}
{%- endif -%}
{{- "Task: Check if there is unsafe content in '" + role + "' messages in conversations according our safety policy with the below categories.\n\n" -}}
{{- "<BEGIN UNSAFE CONTENT CATEGORIES>\n"-}}

{%-  for key in categories -%}
    {%-  if key not in excluded_category_keys -%}
        {{-key + ": " + categories[key] + "\n" -}}
    {%-  endif -%}
{%-  endfor -%}

{{- "<END UNSAFE CONTENT CATEGORIES>\n\n"-}}
{{- "<BEGIN CONVERSATION>\n\n"-}}
{%-  for message in messages -%}
    {%-  if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...')-}}
    {%-  endif -%}
    {%-  set content = message['content'] -%}
    {%-  if message['role'] == 'user' -%}
        {%-  set role = 'User' -%}
    {%-  elif message['role'] == 'assistant' -%}
        {%-  set role = 'Agent' -%}
    {%-  endif -%}
    {%-  for content in message['content'] | selectattr('type', 'equalto', 'text') -%}
{{- role + ': ' + content['text'] | trim + '\n\n'-}}
    {%-  endfor -%}
{%-  endfor -%}
{{- "<END CONVERSATION>\n\n"-}}
{{- "Provide your safety assessment for ONLY THE LAST " + role + " message in the above conversation:\n"-}}
{{- " - First line must read 'safe' or 'unsafe'.\n"-}}
{{- " - If unsafe, a second line must include a comma-separated list of violated categories. <|eot_id|><|start_header_id|>assistant<|end_header_id|>"-}}
"""

# --------------------------------------------------------------------------------------------
# Llama Guard 3 8B (meta-llama/Llama-Guard-3-8B, tokenizer_config.json "chat_template").
# Source: huggingface/huggingface.js, packages/ollama-utils/src/chat-template-automap.ts
# @ 0429cdc70ad15822a7b2b42d8c8b71ca2b9bce34, entry "library/llama-guard3:8b", field `gguf`.
# Two more stored copies that say they were copied verbatim from
# meta-llama/Llama-Guard-3-8B/tokenizer_config.json carry the same text, including the leading
# space before <|begin_of_text|> (the rendered prompt really starts with " <|begin_of_text|>").
# Fixed categories S1-S14 (no kwargs), string message content, `.strip()` on every message.
LLAMA_GUARD_3_8B_TEMPLATE = (
    "{% if messages|length % 2 == 0 %}{% set role = 'Agent' %}{% else %}{% set role = 'User' %}"
    "{% endif %}{{ \" <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in '\" + role + \"' messages in conversations "
    "according our safety policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\n"
    "S5: Defamation.\nS6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\n"
    "S9: Indiscriminate Weapons.\nS10: Hate.\nS11: Self-Harm.\nS12: Sexual Content.\n"
    "S13: Elections.\nS14: Code Interpreter Abuse.\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n\" }}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% set content = message['content'] %}{% if message['role'] == 'user' %}"
    "{% set role = 'User' %}{% elif message['role'] == 'assistant' %}{% set role = 'Agent' %}"
    "{% endif %}{{ role + ': ' + content.strip() + '\n\n' }}{% endfor %}"
    "{{ \"<END CONVERSATION>\n\nProvide your safety assessment for ONLY THE LAST \" + role + "
    "\" message in the above conversation:\n - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\" }}"
)

# Granite Guardian 3.0 / 3.1 / 3.3 (reconstruction): in templates_granite.py (re-exported here).
from .templates_granite import (  # noqa: E402
    GRANITE_GUARDIAN_3_0_TEMPLATE,
    GRANITE_GUARDIAN_3_1_TEMPLATE,
    GRANITE_GUARDIAN_3_3_TEMPLATE,
)

# --------------------------------------------------------------------------------------------
# ShieldGemma (google/shieldgemma-2b / -9b / -27b, "chat_template").
# Source: huggingface/text-generation-inference, router/src/infer/chat_template.rs
# @ 058162685f0531edb4c566151eb68c490ebe8267, test item "google/shieldgemma-9b" (the Hugging
# Face template used as a test fixture). It takes a `guideline` kwarg; with the last message
# from the assistant it asks whether the *Chatbot Response* violates the principle (the
# prompt-response variant); "Yes" = violation. Note the double space in "must  start" and the
# missing blank line between the two turns: both are in the original, and a stored
# apply_chat_template output of shieldgemma shows them too. That output ends
# "correctly.\n\n"; the fixture's two newlines after the final `endif` would add a third
# newline under Hugging Face's trim_blocks, so this copy keeps one (which trim_blocks removes).
SHIELDGEMMA_TEMPLATE = r"""{{- bos_token }}
{%- if messages[-1].role == 'user' %}
    {{- "You are a policy expert trying to help determine whether a user prompt is in violation of the defined safety policies.\n\n" }}
    {{- "<start_of_turn>\n" }}
    {{- "Human Question: " + messages[-1].content }}
    {{- "\n<end_of_turn>\n\n" }}
    {{- "Our safety principle is defined in the below:\n\n" }}
    {{- "* " + guideline + "\n" }}
    {{- "\n===\n\n" }}
    {{- "Does the human question violate the above principle? Your answer must start with 'Yes' or 'No'. And then walk through step by step to be sure we answer correctly.\n\n" }}
{%- else %}
    {{- "You are a policy expert trying to help determine whether an AI response to a prompt is in violation of the defined safety policies.\n\n" }}
    {{- "<start_of_turn>\n" }}
    {{- "Human Question: " + messages[-2].content }}
    {{- "\n<end_of_turn>\n" }}
    {{- "<start_of_turn>\n" }}
    {{- "Chatbot Response: " + messages[-1].content }}
    {{- "\n<end_of_turn>\n\n" }}
    {{- "Our safety principle is defined in the below:\n\n" }}
    {{- "* " + guideline + "\n" }}
    {{- "\n===\n\n" }}
    {{- "Does the Chatbot Response violate the above principle? Your answer must  start with 'Yes' or 'No'. And then walk through step by step to be sure we answer correctly.\n\n" }}
{%- endif %}
"""

__all__ = [
    "GRANITE_GUARDIAN_3_0_TEMPLATE",
    "GRANITE_GUARDIAN_3_1_TEMPLATE",
    "GRANITE_GUARDIAN_3_3_TEMPLATE",
    "LLAMA_GUARD_3_1B_TEMPLATE",
    "LLAMA_GUARD_3_8B_TEMPLATE",
    "SHIELDGEMMA_TEMPLATE",
]
