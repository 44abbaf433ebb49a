"""The trainee's tokenizer, loaded the real way (Hub id or folder) with its chat template.

(No tokenizer can be downloaded on an offline machine: the demo and the tests train their own,
`stardss.demo.tokenizer`, and load it through this same `AutoTokenizer` path.)
"""
from __future__ import annotations

from typing import Optional


def load_tokenizer(name_or_path: str, revision: Optional[str] = None,
                   chat_template: Optional[str] = None):
    """AutoTokenizer with a pad token and a chat template, or a clear error naming what is
    missing."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    if chat_template is not None:
        tok.chat_template = chat_template
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"tokenizer {name_or_path!r} has no chat template: set "
                         f"model.chat_template")
    if tok.pad_token is None:
        # Llama 3 ships without one; the pad id is never trained on (masked), any token serves.
        tok.pad_token = tok.eos_token
    return tok
