"""Tokenizers: the real loading path (Hub id or folder) and the byte-level BPE the demo trains.

No tokenizer can be downloaded on an offline machine, so the demo and the tests train a small
byte-level BPE (the same family as Llama 3's) on their own text and give it a Llama-3-shaped
chat template; everything downstream uses it through the ordinary `AutoTokenizer` path.
"""
from __future__ import annotations

from typing import Iterable, Optional

LLAMA3_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|pad|>"]


def load_tokenizer(name_or_path: str, revision: Optional[str] = None,
                   chat_template: Optional[str] = None):
    """AutoTokenizer with a pad token and a chat template, or a clear error naming what is missing."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    if chat_template is not None:
        tok.chat_template = chat_template
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"tokenizer {name_or_path!r} has no chat template: set model.chat_template")
    if tok.pad_token is None:
        # Llama 3 ships without one; the pad id is never trained on (masked), any token serves.
        tok.pad_token = tok.eos_token
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on `texts`; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", pad_token="<|pad|>")
    tok.chat_template = LLAMA3_STYLE_TEMPLATE
    return tok
