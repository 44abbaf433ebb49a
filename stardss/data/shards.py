"""Tokenised rows on disk, columnar: what ingestion (ingest.py) writes and what the driver,
the STAR stage and the Train workers read back, memory-mapped, one row at a time.

One folder per source, content-addressed (`source_key`: the input's content digest, the
source's shaping, the tokenizer and chat template, data.max_length, the format version), so a
later run on the same data and tokenizer opens it instead of tokenising again:

    <root>/<key>/manifest.json   {"version", "key", "source", "rows", "parts": [{"file",
                                  "rows"}], "bad": bad rows}
    <root>/<key>/part-00000.arrow  Arrow IPC file, one per ingestion task, in row order
    <root>/<key>/bad.jsonl       the source's bad rows {"row", "reason", "raw", "kind",
                                  "stage": "parse" | "encode"}, replayed into the sink on reuse

A part's columns, per row (list columns are Arrow lists: a flat int32 value array plus int32
row offsets, so row r's tokens are values[offsets[r]:offsets[r+1]] with no per-token object):

    id str | index int64 (row in the source file) | input_ids list<int32> (n tokens)
    response_start int32 | span_start, span_end list<int32> (n - response_start: each trained
    token's [start, end) in response characters) | response str (as rendered) | messages str
    (JSON of the turns before the response) | chat_response str? (the row's own response when
    the template rendered it differently, else null) | answer str?

data.train_turns=all adds (the folder's key says so; train_turns=last parts are unchanged):

    token_turn list<int32> (n - response_start, the offsets of span_start: each token's
    assistant turn, 0-based, or -1 when it is not trained; its span is then in that turn's
    characters) | turns int32 (assistant turns) | trained int32 (tokens trained, position 0
    never) | turn_texts str (JSON list of each assistant turn's rendered text)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .format import EncodedRow
from .rows import BadRow, ChatRow
from .shard_write import BATCH_ROWS, PartWriter, trained_tokens  # noqa: F401 - the writing side

VERSION = 1
def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def content_digest(path: str) -> str:
    """What a source's records come from: the bytes of a local file, or of every file in a
    local folder (names included); a Hub id or a toy split stands for itself."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode("utf-8", "surrogatepass") + b"\0")
            h.update(file_digest(f).encode())
        return h.hexdigest()
    return "name:" + path


def source_key(fields: dict) -> str:
    """The folder name of a source's shards: sha256 over everything that changes its rows
    (`fields`: content digest, shaping, tokenizer fingerprint, max_length, ...)."""
    blob = json.dumps({"version": VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def bad_record(bad: BadRow, stage: str) -> dict:
    return {"row": bad.row, "reason": bad.reason, "raw": bad.raw, "kind": bad.kind,
            "stage": stage}


def bad_from_record(source: str, rec: dict) -> BadRow:
    return BadRow(source, rec["row"], rec["reason"], rec["raw"], kind=rec["kind"])


def commit(tmp: Path, folder: Path, manifest: dict, bad: Sequence[dict]) -> None:
    """Make a finished source folder visible at once (rename); a concurrent run that got
    there first wins, and ours is dropped (same key: same content)."""
    with open(tmp / "bad.jsonl", "w", encoding="utf-8") as f:
        for rec in bad:
            f.write(json.dumps(rec, ensure_ascii=True, allow_nan=False) + "\n")
    with open(tmp / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "manifest.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def new_tmp(root: Path, key: str) -> Path:
    tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def read_manifest(folder: Path) -> Optional[dict]:
    try:
        with open(folder / "manifest.json") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("version") == VERSION else None


def read_bad(folder: Path) -> list[dict]:
    with open(folder / "bad.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class _Part:
    """One memory-mapped part: its record batches, opened on first use."""

    def __init__(self, path: Path):
        self.path = path
        self._reader = None
        self._batches: dict = {}
        self.starts: Optional[np.ndarray] = None  # first row of each batch, and the total

    def _open(self):
        if self._reader is None:
            import pyarrow as pa
            import pyarrow.ipc as ipc

            self._reader = ipc.open_file(pa.memory_map(str(self.path), "r"))
            sizes = [self._reader.get_batch(b).num_rows
                     for b in range(self._reader.num_record_batches)]
            self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return self._reader

    def batch(self, row: int) -> tuple[dict, int]:
        """(the batch's columns as numpy / Arrow views, row within it)."""
        reader = self._open()
        b = int(np.searchsorted(self.starts, row, side="right") - 1)
        if b not in self._batches:
            rb = reader.get_batch(b)
            cols = {name: rb.column(name) for name in rb.schema.names}
            for name in ("input_ids", "span_start", "span_end", "token_turn")[
                    :3 + ("token_turn" in cols)]:
                cols[name + ".offsets"] = cols[name].offsets.to_numpy()
                cols[name + ".values"] = cols[name].values.to_numpy()
            cols["response_start.np"] = cols["response_start"].to_numpy()
            self._batches[b] = cols
        return self._batches[b], row - int(self.starts[b])

    def has(self, name: str) -> bool:
        return name in self._open().schema.names

    def column(self, name: str) -> np.ndarray:
        """A whole fixed-width column of the part (index, response_start), or list lengths."""
        reader = self._open()
        out = []
        for b in range(reader.num_record_batches):
            col = reader.get_batch(b).column(name)
            if name == "input_ids":
                off = col.offsets.to_numpy()
                out.append(np.diff(off))
            else:
                out.append(col.to_numpy())
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def __getstate__(self):  # shipped to workers: reopen there
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


class ShardSet:
    """The encoded rows of several source folders as one array of rows, in folder then row
    order: global row g is part `part_of[g]`, row `row_in_part[g]`. What it holds in memory
    is those two int32 arrays plus `lengths` and `response_start` (16 bytes a row); a row's
    tokens and text are read from the mapped files when asked for."""

    def __init__(self, folders: Sequence[Path]):
        # absolute: the driver's working directory is not a Train worker's (relative out_dir)
        self.folders = [Path(f).absolute() for f in folders]
        self.parts: list[_Part] = []
        self.sources: list[str] = []  # source name of each part
        self.keys: list[str] = []
        counts = []
        for folder in self.folders:
            manifest = read_manifest(folder)
            if manifest is None:
                raise FileNotFoundError(f"{folder}: no shard manifest (an ingestion that did "
                                        f"not finish?)")
            self.keys.append(manifest["key"])
            for part in manifest["parts"]:
                self.parts.append(_Part(folder / part["file"]))
                self.sources.append(manifest["source"])
                counts.append(part["rows"])
        counts = np.asarray(counts, dtype=np.int64)
        self.part_of = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.row_in_part = (np.arange(int(counts.sum()), dtype=np.int64)
                            - np.repeat(firsts, counts)).astype(np.int32)
        self._meta: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._trained: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.part_of)

    @property
    def digest(self) -> str:
        """Names what the set holds: its folders' content keys, in order."""
        return hashlib.sha256("|".join(self.keys).encode()).hexdigest()

    def _load_meta(self) -> tuple[np.ndarray, np.ndarray]:
        if self._meta is None:
            lengths = [p.column("input_ids") for p in self.parts]
            starts = [p.column("response_start") for p in self.parts]
            self._meta = (np.concatenate(lengths).astype(np.int32) if lengths else
                          np.zeros(0, np.int32),
                          np.concatenate(starts).astype(np.int32) if starts else
                          np.zeros(0, np.int32))
        return self._meta

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each row (int32)."""
        return self._load_meta()[0]

    @property
    def response_start(self) -> np.ndarray:
        """Index of each row's first response token (int32)."""
        return self._load_meta()[1]

    @property
    def trained_tokens(self) -> np.ndarray:
        """Loss targets of each row (int32; trained_tokens of its EncodedRow): a
        train_turns=all part's `trained` column, else every token from response_start on
        (position 0 never)."""
        if self._trained is None:
            lengths, starts = self._load_meta()
            out = (lengths - starts.clip(min=1)).astype(np.int32)
            at = 0
            for p in self.parts:
                n = len(p.column("response_start"))
                if p.has("trained"):
                    out[at:at + n] = p.column("trained")
                at += n
            self._trained = out
        return self._trained

    def turn_counts(self) -> Optional[np.ndarray]:
        """Assistant turns of each row (int32), or None when the set has the last-turn
        layout (data.train_turns=last)."""
        if not any(p.has("turns") for p in self.parts):
            return None
        return np.concatenate([p.column("turns") if p.has("turns") else
                               np.ones(len(p.column("response_start")), np.int32)
                               for p in self.parts]).astype(np.int32)

    def column(self, name: str) -> np.ndarray:
        """A fixed-width column over every row (e.g. `index`)."""
        return np.concatenate([p.column(name) for p in self.parts])

    def _at(self, g: int) -> tuple[dict, int, int]:
        part = int(self.part_of[g])
        cols, r = self.parts[part].batch(int(self.row_in_part[g]))
        return cols, r, part

    def input_ids(self, g: int) -> np.ndarray:
        cols, r, _ = self._at(g)
        off = cols["input_ids.offsets"]
        return cols["input_ids.values"][off[r]:off[r + 1]]

    def encoded(self, g: int) -> EncodedRow:
        cols, r, _ = self._at(g)
        off, soff = cols["input_ids.offsets"], cols["span_start.offsets"]
        spans = list(zip(cols["span_start.values"][soff[r]:soff[r + 1]].tolist(),
                         cols["span_end.values"][soff[r]:soff[r + 1]].tolist()))
        token_turn = turn_texts = None
        if "token_turn" in cols:
            toff = cols["token_turn.offsets"]
            token_turn = cols["token_turn.values"][toff[r]:toff[r + 1]].tolist()
            turn_texts = json.loads(cols["turn_texts"][r].as_py())
        return EncodedRow(cols["id"][r].as_py(),
                          cols["input_ids.values"][off[r]:off[r + 1]].tolist(),
                          int(cols["response_start.np"][r]), spans, cols["response"][r].as_py(),
                          token_turn, turn_texts)

    def chat_row(self, g: int) -> ChatRow:
        cols, r, part = self._at(g)
        response = cols["chat_response"][r].as_py()
        return ChatRow(id=cols["id"][r].as_py(), source=self.sources[part],
                       messages=tuple(json.loads(cols["messages"][r].as_py())),
                       response=cols["response"][r].as_py() if response is None else response,
                       answer=cols["answer"][r].as_py(), index=int(cols["index"][r].as_py()))

    def row_id(self, g: int) -> str:
        cols, r, _ = self._at(g)
        return cols["id"][r].as_py()

    def __getstate__(self):
        # Workers rebuild the maps from the manifests; the parts reopen lazily.
        return {"folders": self.folders}

    def __setstate__(self, state):
        self.__init__(state["folders"])


class RowsView(Sequence):
    """Rows of a ShardSet in an order (`positions`: global row per item), as EncodedRows or
    ChatRows decoded on access: what code written for lists of rows reads without the
    driver holding them."""

    def __init__(self, shards: ShardSet, positions: np.ndarray, what: str):
        self.shards, self.positions, self.what = shards, positions, what

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        g = int(self.positions[i])
        return self.shards.encoded(g) if self.what == "encoded" else self.shards.chat_row(g)

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(len(self)))

    def ids(self) -> list[str]:
        return [self.shards.row_id(int(g)) for g in self.positions]

    @property
    def digest(self) -> str:
        """The rows in this order, by content (train/resume.rows_digest reads it)."""
        h = hashlib.sha256(self.shards.digest.encode())
        h.update(np.ascontiguousarray(self.positions, dtype=np.int64).tobytes())
        return h.hexdigest()


def row_ids(rows: Sequence) -> list[str]:
    """Every row's id, in order: a RowsView gives them without decoding the rows, a list of
    EncodedRows from its items."""
    ids = getattr(rows, "ids", None)
    return ids() if ids is not None else [e.id for e in rows]
