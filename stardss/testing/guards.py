"""Tiny local stand-ins for the Hugging Face guardrail families, built with no download.

`build_tiny_guard(kind, path)` writes a Hugging Face folder (config.json + model.safetensors +
tokenizer) that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load, with the family's
real architecture class, its special tokens and its real chat template (templates.py):

    llama_guard      -> LlamaForCausalLM   (variants "3-1b" default, "3-8b"; "4"*: Llama 4's
                                            Llama4ForConditionalGeneration, which
                                            AutoModelForCausalLM loads as Llama4ForCausalLM,
                                            its text part, as it does the real 12B)
    granite_guardian -> GraniteForCausalLM (variants "3.1" default, "3.0", "3.3"*)
    shieldgemma      -> Gemma2ForCausalLM
    wildguard        -> MistralForCausalLM (no chat template: WildGuard has none)
    qwen3guard       -> Qwen3ForCausalLM   (Qwen3Guard-Gen's template, templates_recent.py)
    nemoguard        -> LlamaForCausalLM   (Llama 3.1 Instruct's template; NemoGuard is a LoRA
                                            on it, the stand-in is a plain merged model)

(* the Granite 3.3 and Llama Guard 4 templates are reconstructions, see templates.py and
templates_recent.py.) Weights are random: a stand-in
checks shapes, formats and exactness, never what a guard says.

The tokenizer is a byte-level BPE trained on prompts rendered through the family's own format
(`formats._plan`) for a few hundred varied (prompt, response) pairs, multi-byte text included
(for the newer families some with earlier turns), each followed by every label, so the labels
are single tokens in context. Its pre-tokenizer is
Llama 3's split pattern (newline runs stay one piece, a word keeps its leading space), so
appending a label never re-tokenizes the prompt before it. The real Gemma / Mistral tokenizers
are SentencePiece models; the stand-ins are not, which the format checks do not depend on.

`build_tiny_classifier(path, labels)` writes a tiny BERT `AutoModelForSequenceClassification`
(id2label = labels) with a locally trained tokenizer that encodes (a, b) pairs as
"[CLS] a [SEP] b [SEP]".
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ..config.schema import GuardrailConfig
from . import templates, templates_recent

# Llama 3's pre-tokenizer split pattern (tokenizer.json of the Llama 3 family).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

FAMILY_SPECS: dict = {
    "llama_guard": {
        "arch": "llama",
        "variants": {"3-1b": templates.LLAMA_GUARD_3_1B_TEMPLATE,
                     "3-8b": templates.LLAMA_GUARD_3_8B_TEMPLATE,
                     "4": templates_recent.LLAMA_GUARD_4_TEMPLATE},
        "default": "3-1b",
        # Llama 3.1 / 3.2 special tokens the Llama Guard 3 templates use (+ Llama 3.1's pad).
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|image|>",
                     "<|finetune_right_pad_id|>"],
        "roles": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                  "pad_token": "<|finetune_right_pad_id|>"},
        # Llama Guard 4: Llama 4's tokens (the ones its rendering and generation config show:
        # eos <|eot|>, pad <|finetune_right_pad_id|>) and architecture.
        "overrides": {"4": {
            "arch": "llama4",
            "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|header_start|>",
                         "<|header_end|>", "<|eot|>", "<|eom|>", "<|image|>",
                         "<|finetune_right_pad_id|>"],
            "roles": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot|>",
                      "pad_token": "<|finetune_right_pad_id|>"}}},
    },
    "granite_guardian": {
        "arch": "granite",
        "variants": {"3.0": templates.GRANITE_GUARDIAN_3_0_TEMPLATE,
                     "3.1": templates.GRANITE_GUARDIAN_3_1_TEMPLATE,
                     "3.3": templates.GRANITE_GUARDIAN_3_3_TEMPLATE},
        "default": "3.1",
        # Granite 3.x: <|end_of_text|> is bos, eos, pad and unk at once.
        "specials": ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"],
        "roles": {"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>",
                  "pad_token": "<|end_of_text|>", "unk_token": "<|end_of_text|>"},
    },
    "shieldgemma": {
        "arch": "gemma2",
        "variants": {"shieldgemma": templates.SHIELDGEMMA_TEMPLATE},
        "default": "shieldgemma",
        "specials": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "roles": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                  "unk_token": "<unk>"},
    },
    "wildguard": {
        "arch": "mistral",
        "variants": {"wildguard": None},  # instruction format, no chat template
        "default": "wildguard",
        # Mistral's <unk>, <s>, </s>. "<|user|>", "<|assistant|>", "[INST]" stay plain text here
        # (their special-token status in WildGuard's own tokenizer was not verified).
        "specials": ["<unk>", "<s>", "</s>"],
        "roles": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "pad_token": "</s>"},
    },
    "qwen3guard": {
        "arch": "qwen3",
        "variants": {"gen": templates_recent.QWEN3GUARD_GEN_TEMPLATE},
        "default": "gen",
        # Qwen3's special tokens the template uses (<think> / </think> are added tokens there).
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        "roles": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    },
    "nemoguard": {
        "arch": "llama",
        "variants": {"content_safety": templates_recent.LLAMA_3_1_INSTRUCT_TEMPLATE},
        "default": "content_safety",
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
                     "<|finetune_right_pad_id|>"],
        "roles": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                  "pad_token": "<|finetune_right_pad_id|>"},
    },
}

_MULTI_TURN_CORPUS = ("qwen3guard", "nemoguard")

_SUBJECTS = ["my neighbour", "the teacher", "a small bakery", "our team", "the city council",
             "mon voisin", "der Lehrer", "教授", "Анна", "la señora García", "my cat 🐱",
             "the server", "a chemist", "the hospital", "someone online"]
_VERBS = ["bake", "hack into", "explain", "build", "translate", "steal from", "help",
          "write about", "repair", "poison", "summarise", "hurt", "protect", "clean", "track"]
_OBJECTS = ["sourdough bread", "the password database", "a birthday card", "a pipe bomb",
            "the tax form", "quantum physics", "a bicycle", "their email account", "grüner Tee",
            "数学の宿題", "a phishing page", "the garden fence", "résumé templates", "🙂 emojis",
            "a fake passport"]
_OPENERS = ["Sure, here is how", "I can't help with that.", "Of course!", "No problem:",
            "I'm sorry, but", "Here are the steps:", "Absolutely.", "Claro, aquí está:",
            "Bien sûr :", "Natürlich —", "好的，", "Step 1:", "First,", "Unfortunately,"]
_TAILS = ["mix the flour and water, then knead for ten minutes.",
          "open the terminal and run the script 3 times.",
          "this is harmless and purely educational.",
          "please contact a professional instead.",
          "use a strong password and 2FA.", "wait 24 hours before you try again.",
          "ça prend environ 20 minutes.", "это займёт немного времени.",
          "多くの人がそうします。", "the answer is 42 (probably).", "… and that's it!",
          "remember: safety first ⚠️.", "{braces} and <tags> stay as text."]


def sample_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` varied (prompt, response) pairs, multi-byte text included, deterministic per seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = (f"How can I {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} for "
                  f"{rng.choice(_SUBJECTS)}?")
        if rng.random() < 0.3:
            prompt = f"{rng.choice(_SUBJECTS).capitalize()} asked: {prompt}"
        k = rng.randint(1, 3)
        response = " ".join([rng.choice(_OPENERS)] + [rng.choice(_TAILS) for _ in range(k)])
        cut = rng.random()
        if cut < 0.3:  # STAR scores prefixes: include cut-off responses
            words = response.split()
            response = " ".join(words[: max(1, int(len(words) * rng.random()))])
        out.append((prompt, response))
    return out


def _spec(kind: str, variant: str | None = None) -> dict:
    """The family's spec, with the variant's own architecture / tokens where it has them."""
    try:
        spec = FAMILY_SPECS[kind]
    except KeyError:
        raise ValueError(f"no tiny stand-in for guardrail kind {kind!r} (have: "
                         f"{', '.join(FAMILY_SPECS)})") from None
    return {**spec, **spec.get("overrides", {}).get(variant or spec["default"], {})}


def _template(kind: str, variant: str | None) -> tuple[str, str | None]:
    spec = _spec(kind)
    variant = variant or spec["default"]
    if variant not in spec["variants"]:
        raise ValueError(f"tiny {kind}: unknown variant {variant!r} (have: "
                         f"{', '.join(spec['variants'])})")
    return variant, spec["variants"][variant]


def _fast_tokenizer(tok_object, spec: dict, chat_template: str | None):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=tok_object, model_max_length=1 << 20,
                                  **spec["roles"])
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def _new_bpe(spec: dict):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in spec["specials"]])
    return bpe


def training_texts(kind: str, variant: str | None = None, n_pairs: int = 240,
                   seed: int = 0) -> list[str]:
    """Guard prompts of `kind` rendered with the family's format, each followed by each label
    (and WildGuard's teacher-forced branches): the corpus the stand-in tokenizer learns from."""
    from ..guard.hf.formats import _plan

    spec = _spec(kind, variant)
    _, chat_template = _template(kind, variant)
    scratch = _fast_tokenizer(_new_bpe(spec), spec, chat_template)
    plan = _plan(GuardrailConfig(kind=kind), scratch)
    prefix, safe, unsafe = plan.candidates[0]
    labels = tuple(safe) + tuple(unsafe)
    pairs = sample_pairs(n_pairs, seed)
    texts = []
    for i, (p, r) in enumerate(pairs):
        # Every fourth conversation of the newer families carries two earlier turns
        # (multi-turn rendering); the older families keep the corpus their stand-ins were
        # built from, so their tokenizers (and every value pinned on them) stay as they were.
        multi = kind in _MULTI_TURN_CORPUS and i % 4 == 0
        context = () if not multi else ({"role": "user", "content": pairs[i - 1][0]},
                                        {"role": "assistant", "content": pairs[i - 1][1]})
        ctx = plan.render_base(p, r, context) + prefix
        texts += [ctx + lab for lab in labels]
        if plan.branch_fn is not None:
            texts += [b.text + safe[0]
                      for b in plan.branch_fn(p, r, context, safe[0], unsafe[0])]
    return texts


def build_tiny_tokenizer(kind: str, *, variant: str | None = None, vocab_size: int = 2000,
                         n_pairs: int = 240, seed: int = 0):
    """The stand-in tokenizer of `kind` (a transformers fast tokenizer, not saved). A
    `vocab_size` at or below 256 + the special tokens leaves no merges: every label then splits
    into several tokens (what the format check must refuse)."""
    from tokenizers import pre_tokenizers, trainers

    spec = _spec(kind, variant)
    _, chat_template = _template(kind, variant)
    bpe = _new_bpe(spec)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(training_texts(kind, variant, n_pairs, seed), trainer)
    return _fast_tokenizer(bpe, spec, chat_template)


def _model_config(arch: str, tok, hidden_size: int, layers: int, heads: int):
    from transformers import (
        Gemma2Config,
        GraniteConfig,
        LlamaConfig,
        MistralConfig,
        Qwen3Config,
    )

    common = {"vocab_size": len(tok), "hidden_size": hidden_size,
              "intermediate_size": 2 * hidden_size, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": heads,
              "max_position_embeddings": 8192, "bos_token_id": tok.bos_token_id,
              "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "granite":
        return GraniteConfig(**common, tie_word_embeddings=True)
    if arch == "gemma2":
        hd = hidden_size // heads
        return Gemma2Config(**common, head_dim=hd, query_pre_attn_scalar=hd, sliding_window=4096)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=hidden_size // heads, tie_word_embeddings=True)
    if arch == "llama4":
        return _llama4_config(common, hidden_size, heads)
    raise ValueError(f"unknown architecture {arch!r}")


def _llama4_config(common: dict, hidden_size: int, heads: int):
    """Llama 4's composite config (text + vision), as Llama Guard 4's config.json is: dense
    text layers (no experts), chunked attention longer than any stand-in prompt, a 1-layer
    vision tower the text path never runs."""
    from transformers import Llama4Config

    text = {**common, "head_dim": hidden_size // heads, "intermediate_size_mlp": 2 * hidden_size,
            "num_local_experts": 1, "moe_layers": [], "interleave_moe_layer_step": 0,
            "attention_chunk_size": 8192, "tie_word_embeddings": False}
    vision = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "vision_output_dim": 32, "projector_input_dim": 32,
              "projector_output_dim": 32, "image_size": 28, "patch_size": 14}
    return Llama4Config(text_config=text, vision_config=vision,
                        pad_token_id=common["pad_token_id"])


_ARCH_CLASS = {"llama": "LlamaForCausalLM", "granite": "GraniteForCausalLM",
               "gemma2": "Gemma2ForCausalLM", "mistral": "MistralForCausalLM",
               "qwen3": "Qwen3ForCausalLM", "llama4": "Llama4ForConditionalGeneration"}


def build_tiny_guard(kind: str, path: str | Path, *, hidden_size: int = 64, layers: int = 2,
                     heads: int = 4, vocab_size: int = 2000, seed: int = 0,
                     variant: str | None = None) -> str:
    """Write a tiny random-weight stand-in of guardrail family `kind` to `path`; returns the path.

    `variant` picks the template of families with several (llama_guard "3-1b" | "3-8b" | "4";
    granite_guardian "3.0" | "3.1" | "3.3"); None = the family's default."""
    import torch
    import transformers

    spec = _spec(kind, variant)
    tok = build_tiny_tokenizer(kind, variant=variant, vocab_size=vocab_size, seed=seed)
    config = _model_config(spec["arch"], tok, hidden_size, layers, heads)
    torch.manual_seed(seed)
    model = getattr(transformers, _ARCH_CLASS[spec["arch"]])(config)
    model.eval()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def build_tiny_classifier(path: str | Path, labels: Sequence[str] = ("safe", "unsafe"), *,
                          hidden_size: int = 32, layers: int = 2, heads: int = 4,
                          vocab_size: int = 600, seed: int = 0) -> str:
    """Write a tiny random-weight BERT sequence classifier (id2label = `labels`) and its
    tokenizer ("[CLS] a [SEP] b [SEP]" for pairs, token types 0 / 1) to `path`."""
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator([t for pr in sample_pairs(300, seed) for t in pr], trainer)
    cls_id, sep_id = bpe.token_to_id("[CLS]"), bpe.token_to_id("[SEP]")
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=512, pad_token="[PAD]",
                                  unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                  mask_token="[MASK]")
    labels = list(labels)
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise ValueError(f"classifier labels must be >= 2 distinct names, got {labels}")
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden_size,
                        max_position_embeddings=512, type_vocab_size=2,
                        pad_token_id=tok.pad_token_id, num_labels=len(labels),
                        id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


__all__ = [
    "FAMILY_SPECS",
    "LLAMA3_SPLIT",
    "build_tiny_classifier",
    "build_tiny_guard",
    "build_tiny_tokenizer",
    "sample_pairs",
    "training_texts",
]
