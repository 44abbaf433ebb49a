"""The writing side of tokenised shards (shards.py describes the layout): one part file,
its rows added in row order, written as Arrow record batches of BATCH_ROWS rows."""
from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Optional

import numpy as np

from .format import EncodedRow
from .rows import ChatRow

BATCH_ROWS = 2048
"""Rows per Arrow record batch of a part (what one read maps in)."""


def _schema(turns: bool = False):
    import pyarrow as pa

    fields = [
        ("id", pa.string()), ("index", pa.int64()), ("input_ids", pa.list_(pa.int32())),
        ("response_start", pa.int32()), ("span_start", pa.list_(pa.int32())),
        ("span_end", pa.list_(pa.int32())), ("response", pa.string()),
        ("messages", pa.string()), ("chat_response", pa.string()), ("answer", pa.string())]
    if turns:
        fields += [("token_turn", pa.list_(pa.int32())), ("turns", pa.int32()),
                   ("trained", pa.int32()), ("turn_texts", pa.string())]
    return pa.schema(fields)


class PartWriter:
    """Writes one part file: `add` rows in row order, `close` returns the row count.
    `turns`: the train_turns=all layout (every row's EncodedRow has token_turn)."""

    def __init__(self, path: Path, turns: bool = False):
        self.path, self.turns = path, turns
        self.rows = 0
        self._writer = None
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.index = array("q")
        self.tokens, self.tok_offsets = array("i"), array("i", [0])
        self.starts = array("i")
        self.span_s, self.span_e, self.span_offsets = array("i"), array("i"), array("i", [0])
        self.text: list[str] = []
        self.messages: list[str] = []
        self.chat_response: list[Optional[str]] = []
        self.answer: list[Optional[str]] = []
        self.token_turn, self.n_turns, self.trained = array("i"), array("i"), array("i")
        self.turn_texts: list[str] = []

    def add(self, row: ChatRow, enc: EncodedRow) -> None:
        self.ids.append(enc.id)
        self.index.append(row.index)
        self.tokens.extend(enc.input_ids)
        self.tok_offsets.append(len(self.tokens))
        self.starts.append(enc.response_start)
        for s, e in enc.response_spans:
            self.span_s.append(s)
            self.span_e.append(e)
        self.span_offsets.append(len(self.span_s))
        self.text.append(enc.response)
        self.messages.append(json.dumps(list(row.messages), ensure_ascii=False))
        self.chat_response.append(None if row.response == enc.response else row.response)
        self.answer.append(row.answer)
        if self.turns:
            if enc.token_turn is None:
                raise ValueError(f"row {enc.id!r}: a train_turns=all part needs token_turn")
            self.token_turn.extend(enc.token_turn)
            self.n_turns.append(enc.n_turns)
            self.trained.append(trained_tokens(enc))
            self.turn_texts.append(json.dumps(enc.turn_texts, ensure_ascii=False))
        if len(self.ids) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        if not self.ids:
            return
        if self._writer is None:
            self._writer = ipc.new_file(str(self.path), _schema(self.turns))

        def lists(offsets: array, values: array):
            return pa.ListArray.from_arrays(pa.array(np.frombuffer(offsets, np.int32)),
                                            pa.array(np.frombuffer(values, np.int32)))

        batch = pa.record_batch([
            pa.array(self.ids, pa.string()), pa.array(np.frombuffer(self.index, np.int64)),
            lists(self.tok_offsets, self.tokens), pa.array(np.frombuffer(self.starts, np.int32)),
            lists(self.span_offsets, self.span_s), lists(self.span_offsets, self.span_e),
            pa.array(self.text, pa.string()), pa.array(self.messages, pa.string()),
            pa.array(self.chat_response, pa.string()), pa.array(self.answer, pa.string()),
        ] + ([lists(self.span_offsets, self.token_turn),
              pa.array(np.frombuffer(self.n_turns, np.int32)),
              pa.array(np.frombuffer(self.trained, np.int32)),
              pa.array(self.turn_texts, pa.string())] if self.turns else []),
            schema=_schema(self.turns))
        self._writer.write_batch(batch)
        self.rows += len(self.ids)
        self._reset()

    def close(self) -> int:
        self._flush()
        if self._writer is None:  # no row: still a valid, empty part
            import pyarrow.ipc as ipc

            self._writer = ipc.new_file(str(self.path), _schema(self.turns))
        self._writer.close()
        return self.rows


def trained_tokens(enc: EncodedRow) -> int:
    """Tokens of the row that are loss targets (position 0 never is: nothing predicts it)."""
    n = len(enc.input_ids)
    if enc.token_turn is None:
        return n - max(enc.response_start, 1)
    return sum(t >= 0 for t in enc.token_turn[max(1 - enc.response_start, 0):])
