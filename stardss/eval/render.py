"""The text the evaluated model continues: its own chat template with the generation prompt,
then the item's prefill (a prefilling attack puts words in the assistant's mouth)."""
from __future__ import annotations

from .items import EvalItem


def render_prompt(tokenizer, item: EvalItem) -> str:
    """The chat-template rendering of item.messages up to the assistant turn, plus item.prefill
    exactly as given (the model's continuation starts right after its last character)."""
    text = tokenizer.apply_chat_template(list(item.messages), add_generation_prompt=True,
                                         tokenize=False)
    return text + item.prefill
