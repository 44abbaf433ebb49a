"""STAR for every assistant turn of a conversation (data.train_turns=all).

Each assistant turn k of a row is its own ScoreRequest:

    key       turn_key(row id, k) = "<row id>#turn<k>" (k 0-based). Every request of a
              train_turns=all run has this form, and the map (row id, k) -> key is one to one
              (the key ends in "#turn" + digits, so its last "#turn" splits it back), so a
              turn key never equals another row's key, whatever the row ids are.
    prompt    the user message before turn k
    context   the user and assistant turns before that message, as the row has them; the
              system prompt is dropped, as it is for a single exchange (the guardrail judges
              the conversation, not the trainee's instructions)
    response  turn k's text as the trainee's template rendered it; cuts from its own tokens

The records of a row's turns are gathered into one ConversationRecord (`group_turns`), which
is what the weights, star.jsonl and rs read: its weights put each turn's trajectory on that
turn's tokens by offsets (align.token_weights), 0 on the tokens no turn trains; its
full-response P(safe) (rs) is the least of its turns' (a conversation is as unsafe as its worst
turn). In star.jsonl a row is one line per turn, in turn order: a StarRecord's fields (id =
the turn key) plus "row" (the row id) and "turn" (k).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Iterator, Mapping, Optional

import numpy as np

from ..config.schema import ChunkConfig
from ..data.format import EncodedRow
from ..data.rows import ChatRow
from ..guard.base import ScoreRequest
from .align import token_weights
from .chunk import chunk_cuts
from .trajectory import to_weights

TURN_SUFFIX = "#turn"


def turn_key(row_id: str, turn: int) -> str:
    return f"{row_id}{TURN_SUFFIX}{turn}"


def split_turn_key(key: str) -> tuple[str, int]:
    """(row id, turn) of a turn_key."""
    row_id, sep, turn = key.rpartition(TURN_SUFFIX)
    if not sep or not turn.isdigit():
        raise ValueError(f"{key!r} is not a turn key (<row id>{TURN_SUFFIX}<k>)")
    return row_id, int(turn)


def turn_requests(row: ChatRow, enc: EncodedRow, chunk: ChunkConfig,
                  full_response_only: bool) -> list[ScoreRequest]:
    """One request per assistant turn of the row (module docstring)."""
    if enc.token_turn is None or enc.turn_texts is None:
        raise ValueError(f"row {enc.id!r} was encoded with data.train_turns=last")
    dialog = [{"role": m["role"], "content": m["content"]} for m in row.conversation
              if m["role"] != "system"]
    turn_of = np.asarray(enc.token_turn, np.int64)
    out = []
    for k, text in enumerate(enc.turn_texts):
        if dialog[2 * k + 1]["role"] != "assistant":  # rows.parse_row guarantees the order
            raise ValueError(f"row {enc.id!r}: message {2 * k + 1} is not assistant turn {k}")
        spans = [enc.response_spans[i] for i in np.flatnonzero(turn_of == k)]
        cuts = ([len(text)] if full_response_only else
                chunk_cuts(text, chunk.unit, chunk.size, spans))
        out.append(ScoreRequest(turn_key(enc.id, k), dialog[2 * k]["content"], text, cuts,
                                tuple(dialog[:2 * k])))
    return out


@dataclass
class ConversationRecord:
    """The trajectories of every assistant turn of a row (StarRecords, in turn order)."""

    id: str
    turns: list

    @property
    def full_response_safe(self) -> float:
        return min(t.full_response_safe for t in self.turns)

    @property
    def n_prefixes(self) -> int:
        return sum(len(t.cuts) for t in self.turns)

    def lines(self) -> str:
        """The row's star.jsonl lines (module docstring)."""
        return "".join(json.dumps({**asdict(t), "row": self.id, "turn": k},
                                  ensure_ascii=False) + "\n" for k, t in enumerate(self.turns))

    def weights(self, enc: EncodedRow, threshold: Optional[float]) -> np.ndarray:
        """One weight per token from enc.response_start on: its turn's chunk score, 0 where
        no turn trains it."""
        turn_of = np.asarray(enc.token_turn, np.int64)
        if len(self.turns) != enc.n_turns:
            raise ValueError(f"row {enc.id!r}: {len(self.turns)} turn records for "
                             f"{enc.n_turns} assistant turns")
        out = np.zeros(len(turn_of), np.float64)
        for k, t in enumerate(self.turns):
            at = np.flatnonzero(turn_of == k)
            out[at] = token_weights(t.cuts, to_weights(np.array(t.trajectory), threshold),
                                    [enc.response_spans[i] for i in at])
        return out


def group_turns(records: Iterator, turns_of: Mapping[str, int]) -> Iterator[ConversationRecord]:
    """Turn records (any order) as one ConversationRecord per row, yielded once all its turns
    are in; `turns_of`: row id -> its assistant turns. Closes `records` when done."""
    waiting: dict[str, dict[int, object]] = {}
    try:
        for record in records:
            row_id, k = split_turn_key(record.id)
            got = waiting.setdefault(row_id, {})
            got[k] = record
            if len(got) == turns_of[row_id]:
                del waiting[row_id]
                yield ConversationRecord(row_id, [got[j] for j in range(len(got))])
    finally:  # a generator (Scorer.records) flushes the cache when closed
        close = getattr(records, "close", None)
        if close is not None:
            close()
