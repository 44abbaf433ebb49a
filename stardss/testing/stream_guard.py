# ruff: noqa: E501  (QWEN3_CHAT_TEMPLATE is a verbatim copy: its lines are the data)
"""A tiny local stand-in of Qwen3Guard-Stream (Qwen/Qwen3Guard-Stream-0.6B/4B/8B), built with no
download: a Hugging Face folder whose model code ships inside it, as the Hub repositories' does.

`build_tiny_stream_guard(path)` writes
  - config.json: model_type "qwen3" (the Hub config's), `architectures: [Qwen3ForGuardModel]`,
    `auto_map: {AutoModel: modeling_qwen3_guard.Qwen3ForGuardModel}`, the guard-head sizes
    (guard_inner_size, num_risk_level, num_category, num_query_risk_level, num_query_category)
    and the label maps (response_/query_ risk_level_map, category_map);
  - modeling_qwen3_guard.py (MODELING_SOURCE below): a Qwen3 backbone with the two guard heads
    of the real model over every token (risk level + category for the assistant, the same pair
    for the user query), returning `GuardLogitsOutputWithPast` with the real field names;
  - model.safetensors: random weights, seeded;
  - a byte-level BPE tokenizer carrying Qwen3's chat template (QWEN3_CHAT_TEMPLATE) and its
    turn tokens (<|im_start|>, <|im_end|>, <|endoftext|>; <think>, </think> as plain added
    tokens, as in Qwen3's tokenizer_config.json).

What the stand-in's shape follows, and where from (no copy of the Hub modeling file itself was
found in the stored corpora):
  - heads and their names: vLLM's port `Qwen3ForGuardModel` (vllm model_executor/models, the
    file beginning "Inference-only Qwen3 Guard model compatible with HuggingFace weights"):
    risk_level_category_pre (Linear hidden -> guard_inner_size, no bias) ->
    risk_level_category_layernorm (RMSNorm) -> risk_level_head / category_head, and the same
    with a `query_` prefix; SGLang's port has the same modules (Qwen3MoeRMSNorm = RMSNorm);
  - output fields `risk_level_logits`, `category_logits`, `query_risk_level_logits`,
    `query_category_logits` ([batch, tokens, classes]) and the model attributes
    `response_risk_level_map` / `query_risk_level_map` (int -> name): third-party users of the
    Hub model (LuxxxLucy/qwen3guard-test src/bench_stream_direct_heads.py @ 176f663,
    forward(input_ids, past_key_values, use_cache).risk_level_logits and
    model.response_risk_level_map[int(argmax)]);
  - the risk map {0: Safe, 1: Unsafe, 2: Controversial}: a stored loader of the Hub model
    asserting `model.query_risk_level_map == {0:'Safe',1:'Unsafe',2:'Controversial'}` and the
    response map equal to it; the scorer looks classes up by name, never by index;
  - sizes of Qwen3Guard-Stream-0.6B's heads (guard_inner_size 512, 3 risk levels, 8 response
    and 9 query categories): a stored Rust port's pinned config; the category names are the
    Qwen3Guard README's safety categories (their order in the Hub config was not verified; no
    score reads the category head).
Weights are random: the stand-in checks shapes, offsets and exactness, never what a guard says.
The tokenizer is not Qwen's (a small BPE trained here, Llama 3's split pattern, as the other
stand-ins); the real one is Qwen2's byte-level BPE with its own split pattern.
"""
from __future__ import annotations

from pathlib import Path

from .guards import LLAMA3_SPLIT, sample_pairs

# --------------------------------------------------------------------------------------------
# Qwen3's chat template (Qwen/Qwen3-0.6B tokenizer_config.json "chat_template"), the template
# the Qwen3Guard-Stream card renders with: apply_chat_template(messages, tokenize=False,
# add_generation_prompt=False, enable_thinking=False), `enable_thinking` being this template's
# switch. Source: ye-NX/llama.cpp (a fork of ggml-org/llama.cpp),
# models/templates/Qwen-Qwen3-0.6B.jinja @ b354d7c9ecb76c97c07098617cdebbdfffa2583e (llama.cpp
# keeps the Hub templates there verbatim; the stored copy has CRLF line ends, restored to LF
# here as in the Hub JSON). Qwen3Guard-Stream's own tokenizer_config.json was not found in a
# stored copy: that the Stream model (base_model Qwen/Qwen3-0.6B) ships this same template is
# inferred from its card's `enable_thinking` argument and from stored third-party tests of the
# Stream model that see `<think>\n\n</think>\n\n` open the assistant turn. Production code never
# uses this constant: a real guard is rendered with its own tokenizer's template.
# What it renders for [user, assistant]: "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>
# assistant\n<think>\n\n</think>\n\n{response.lstrip('\n')}<|im_end|>\n"; assistant turns before
# the last user turn render without the think block.
QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
"""Qwen3's special turn tokens (tokenizer_config.json added_tokens_decoder, special: true)."""
THINK_TOKENS = ["<think>", "</think>"]
"""Added tokens that are not special in Qwen3's tokenizer (special: false)."""

RESPONSE_RISK_LEVELS = {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
RESPONSE_CATEGORIES = ["Violent", "Non-violent Illegal Acts", "Sexual Content or Sexual Acts",
                       "PII", "Suicide & Self-Harm", "Unethical Acts",
                       "Politically Sensitive Topics", "Copyright Violation"]
QUERY_CATEGORIES = RESPONSE_CATEGORIES + ["Jailbreak"]

MODELING_FILE = "modeling_qwen3_guard.py"
"""The Hub repositories' name for the guard's model code."""

# The stand-in's model code, written into the folder and loaded by transformers' remote-code
# path (trust_remote_code=True) exactly as the Hub model's is.
MODELING_SOURCE = '''"""Stand-in of Qwen3Guard-Stream's modeling_qwen3_guard.py (written by
stardss.testing.stream_guard): a Qwen3 backbone with token-level guard heads."""
import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import (Qwen3Model, Qwen3PreTrainedModel,
                                                      Qwen3RMSNorm)
from transformers.utils import ModelOutput


@dataclass
class GuardLogitsOutputWithPast(ModelOutput):
    risk_level_logits: Optional[torch.FloatTensor] = None
    category_logits: Optional[torch.FloatTensor] = None
    query_risk_level_logits: Optional[torch.FloatTensor] = None
    query_category_logits: Optional[torch.FloatTensor] = None
    past_key_values: Optional[object] = None  # not filled: the stand-in returns no cache
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


def _int_keys(d):
    return {int(k): v for k, v in dict(d).items()}


class Qwen3ForGuardModel(Qwen3PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen3Model(config)
        h, g = config.hidden_size, config.guard_inner_size
        self.risk_level_category_pre = nn.Linear(h, g, bias=False)
        self.risk_level_category_layernorm = Qwen3RMSNorm(g, eps=config.rms_norm_eps)
        self.risk_level_head = nn.Linear(g, config.num_risk_level, bias=False)
        self.category_head = nn.Linear(g, config.num_category, bias=False)
        self.query_risk_level_category_pre = nn.Linear(h, g, bias=False)
        self.query_risk_level_category_layernorm = Qwen3RMSNorm(g, eps=config.rms_norm_eps)
        self.query_risk_level_head = nn.Linear(g, config.num_query_risk_level, bias=False)
        self.query_category_head = nn.Linear(g, config.num_query_category, bias=False)
        self.response_risk_level_map = _int_keys(config.response_risk_level_map)
        self.response_category_map = _int_keys(config.response_category_map)
        self.query_risk_level_map = _int_keys(config.query_risk_level_map)
        self.query_category_map = _int_keys(config.query_category_map)
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, use_cache=None, **kwargs):
        extra = {} if past_key_values is None else {self._cache_arg: past_key_values}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, **extra)
        x = out.last_hidden_state
        r = self.risk_level_category_layernorm(self.risk_level_category_pre(x))
        q = self.query_risk_level_category_layernorm(self.query_risk_level_category_pre(x))
        return GuardLogitsOutputWithPast(
            risk_level_logits=self.risk_level_head(r), category_logits=self.category_head(r),
            query_risk_level_logits=self.query_risk_level_head(q),
            query_category_logits=self.query_category_head(q))
'''


def training_texts(n_pairs: int = 240, seed: int = 0) -> list[str]:
    """Guard inputs rendered with Qwen3's template (single and multi-turn): the corpus the
    stand-in tokenizer learns from."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(QWEN3_CHAT_TEMPLATE)
    pairs = sample_pairs(n_pairs, seed)
    texts = []
    for i, (p, r) in enumerate(pairs):
        msgs = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        if i % 3 == 0:
            q, a = pairs[(i + 1) % len(pairs)]
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}] + msgs
        texts.append(template.render(messages=msgs, add_generation_prompt=False,
                                     enable_thinking=False))
    return texts


def build_tiny_stream_tokenizer(vocab_size: int = 2000, n_pairs: int = 240, seed: int = 0):
    """The stand-in tokenizer (a transformers fast tokenizer, not saved)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(training_texts(n_pairs, seed), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=1 << 20,
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok


def _load_module(path: Path):
    """Import the written modeling file under a private name (dataclasses need it in
    sys.modules while the class is made)."""
    import importlib.util
    import sys

    name = f"_stardss_stream_guard_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def build_tiny_stream_guard(path: str | Path, *, hidden_size: int = 64, layers: int = 2,
                            heads: int = 4, guard_inner_size: int | None = None,
                            vocab_size: int = 2000, seed: int = 0) -> str:
    """Write a tiny random-weight Qwen3Guard-Stream stand-in to `path`; returns the path. Its
    model code is remote code: loading it needs trust_remote_code=True."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3Config

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_stream_tokenizer(vocab_size=vocab_size, seed=seed)
    inner = guard_inner_size or max(8, hidden_size // 2)
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        head_dim=hidden_size // heads, max_position_embeddings=8192, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        architectures=["Qwen3ForGuardModel"],
        auto_map={"AutoModel": f"{MODELING_FILE[:-3]}.Qwen3ForGuardModel"},
        guard_inner_size=inner, num_risk_level=len(RESPONSE_RISK_LEVELS),
        num_category=len(RESPONSE_CATEGORIES), num_query_risk_level=len(RESPONSE_RISK_LEVELS),
        num_query_category=len(QUERY_CATEGORIES),
        response_risk_level_map=dict(RESPONSE_RISK_LEVELS),
        query_risk_level_map=dict(RESPONSE_RISK_LEVELS),
        response_category_map={str(i): c for i, c in enumerate(RESPONSE_CATEGORIES)},
        query_category_map={str(i): c for i, c in enumerate(QUERY_CATEGORIES)})
    (out / MODELING_FILE).write_text(MODELING_SOURCE, encoding="utf-8")
    # Build the model from the very file it will be loaded from, so the saved weights' names
    # and shapes are the remote code's.
    module = _load_module(out / MODELING_FILE)
    torch.manual_seed(seed)
    model = module.Qwen3ForGuardModel(config).eval()
    # Random init leaves the tiny heads' logits near zero: scale them so P(safe) spreads over
    # (0, 1) and a wrong position reads a visibly different value.
    with torch.no_grad():
        for head in (model.risk_level_head, model.query_risk_level_head):
            head.weight.mul_(12.0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


__all__ = ["MODELING_FILE", "MODELING_SOURCE", "QWEN3_CHAT_TEMPLATE", "build_tiny_stream_guard",
           "build_tiny_stream_tokenizer", "training_texts"]
