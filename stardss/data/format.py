"""Chat formatting and tokenisation of a row, keeping character offsets for STAR.

The row is rendered with the trainee's own chat template and tokenised as one string, so the
token ids are exactly what the model sees at inference; offsets tell which tokens belong to
the response and where each one sits inside it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .rows import BadRow, ChatRow


@dataclass
class EncodedRow:
    id: str
    input_ids: list[int]
    response_start: int
    """Index of the first token that belongs to the response (every later token is trained)."""
    response_spans: list[tuple[int, int]]
    """(start, end) of each trained token in response characters; end-of-turn tokens lie past
    len(response)."""
    response: str
    """The response text the offsets refer to (as the template rendered it)."""


def render(tokenizer, row: ChatRow) -> tuple[str, str, int]:
    """Return (full text, rendered response, response char start) for the row."""
    messages = [dict(m) for m in row.messages]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": row.response}], tokenize=False)
    if not full.startswith(prompt):
        raise BadRow(row.source, row.index, "chat template renders the prompt differently "
                     "with and without the response", row.id, kind="template")
    # Some templates trim message content (Llama 3's does); the offsets must follow the text
    # the model is trained on.
    for response in (row.response, row.response.strip()):
        if response and full.startswith(response, len(prompt)):
            return full, response, len(prompt)
    raise BadRow(row.source, row.index, "chat template alters the response text", row.id,
                 kind="template")


def encode_row(tokenizer, row: ChatRow, max_length: int) -> EncodedRow:
    full, response, start = render(tokenizer, row)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if len(ids) > max_length:
        raise BadRow(row.source, row.index,
                     f"over max length: {len(ids)} tokens > data.max_length={max_length}", row.id,
                     kind="too_long")
    # A token is part of the response when it covers any response character or comes after.
    first = next((i for i, (s, e) in enumerate(offsets) if e > start), len(ids))
    if first == len(ids):
        raise BadRow(row.source, row.index, "response has no tokens", row.id, kind="empty")
    spans = [(max(s, start) - start, e - start) for s, e in offsets[first:]]
    return EncodedRow(row.id, list(ids), first, spans, response)

