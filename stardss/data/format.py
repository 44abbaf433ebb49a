"""Chat formatting and tokenisation of a row, keeping character offsets for STAR.

The row is rendered with the trainee's own chat template and tokenised as one string, so the
token ids are exactly what the model sees at inference; offsets tell which tokens belong to
the response and where each one sits inside it.

data.train_turns=last trains the final assistant turn (every token from `response_start` on).
data.train_turns=all trains every assistant turn k: its characters are found the standard way,
rendering the conversation up to the user turn before it with the generation prompt (P_k) and
up to and including it (F_k); the whole conversation's text must start with both, and turn k
trains the tokens covering [len(P_k), len(F_k)): its content and its end-of-turn tokens, as the
single-turn case does. The user turns in between are not trained (`token_turn` -1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
    token_turn: Optional[list[int]] = None
    """train_turns=all: per token from response_start on, the assistant turn (0-based) it
    trains, or -1 for a token that is not trained (a user turn between two assistant turns);
    its response_spans entry is then in that turn's characters ((0, 0) when -1). None: the
    last-turn layout (every token from response_start on is the final turn's)."""
    turn_texts: Optional[list[str]] = None
    """train_turns=all: each assistant turn's text as rendered (the last is `response`)."""

    @property
    def n_turns(self) -> int:
        return 1 if self.turn_texts is None else len(self.turn_texts)


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


def _tokenize(tokenizer, row: ChatRow, full: str, max_length: int):
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if len(ids) > max_length:
        raise BadRow(row.source, row.index,
                     f"over max length: {len(ids)} tokens > data.max_length={max_length}", row.id,
                     kind="too_long")
    return ids, offsets


def encode_row(tokenizer, row: ChatRow, max_length: int,
               train_turns: str = "last") -> EncodedRow:
    """The row tokenised with its trained tokens located (data.train_turns: last | all)."""
    if train_turns == "all":
        return encode_turns(tokenizer, row, max_length)
    if train_turns != "last":
        raise ValueError(f"data.train_turns: unknown {train_turns!r} (last or all)")
    full, response, start = render(tokenizer, row)
    ids, offsets = _tokenize(tokenizer, row, full, max_length)
    # A token is part of the response when it covers any response character or comes after.
    first = next((i for i, (s, e) in enumerate(offsets) if e > start), len(ids))
    if first == len(ids):
        raise BadRow(row.source, row.index, "response has no tokens", row.id, kind="empty")
    spans = [(max(s, start) - start, e - start) for s, e in offsets[first:]]
    return EncodedRow(row.id, list(ids), first, spans, response)



def render_turns(tokenizer, row: ChatRow) -> tuple[str, list[tuple[int, int, str]]]:
    """(full text, per assistant turn (start, end, text)): turn k's trained characters are
    full[start:end], its rendered text full[start:start + len(text)]."""
    conv = [dict(m) for m in row.conversation]
    full = tokenizer.apply_chat_template(conv, tokenize=False)
    turns = []
    for j, message in enumerate(conv):
        if message["role"] != "assistant":
            continue
        k = len(turns)
        before = tokenizer.apply_chat_template(conv[:j], add_generation_prompt=True,
                                               tokenize=False)
        upto = full if j == len(conv) - 1 else tokenizer.apply_chat_template(
            conv[:j + 1], tokenize=False)
        if not (full.startswith(before) and full.startswith(upto)) or len(upto) <= len(before) \
                or (turns and len(before) < turns[-1][1]):
            raise BadRow(row.source, row.index, f"chat template renders the conversation up to "
                         f"assistant turn {k} differently from the whole conversation",
                         row.id, kind="template")
        text = next((t for t in (message["content"], message["content"].strip())
                     if t and full.startswith(t, len(before))), None)
        if text is None:
            raise BadRow(row.source, row.index, f"chat template alters the text of assistant "
                         f"turn {k}", row.id, kind="template")
        turns.append((len(before), len(upto), text))
    return full, turns


def encode_turns(tokenizer, row: ChatRow, max_length: int) -> EncodedRow:
    """train_turns=all: every assistant turn trained (module docstring). A token belongs to
    the last turn whose start it passes (ends after); it is trained when it starts before the
    turn's end (or is a zero-width token at it), as a single turn's tokens are."""
    full, turns = render_turns(tokenizer, row)
    ids, offsets = _tokenize(tokenizer, row, full, max_length)
    first = next((i for i, (s, e) in enumerate(offsets) if e > turns[0][0]), len(ids))
    token_turn: list[int] = []
    spans: list[tuple[int, int]] = []
    k = 0
    for s, e in offsets[first:]:
        while k + 1 < len(turns) and e > turns[k + 1][0]:
            k += 1
        start, end, _ = turns[k]
        if e > start and (s < end or s == e == end):
            token_turn.append(k)
            spans.append((max(s, start) - start, e - start))
        else:
            token_turn.append(-1)
            spans.append((0, 0))
    for k in range(len(turns)):
        if k not in token_turn:
            raise BadRow(row.source, row.index, f"assistant turn {k} has no tokens", row.id,
                         kind="empty")
    texts = [text for _, _, text in turns]
    return EncodedRow(row.id, list(ids), first, spans, texts[-1], token_turn, texts)
