"""Read the raw records of one configured source, whatever its format.

`read_source` yields (row index, record) pairs and never validates records; a line that
cannot even be decoded is yielded as a `BadRow` in its place so the caller can quarantine it
and the row indices stay aligned with the file. A source's `where`, `columns`,
`answer_regex` and `system` turn a dataset's own record shape (GSM8K's question/answer,
BeaverTails' is_safe) into the row shape `rows.parse_row` accepts, here, before validation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

from ..config.fields import choices_of
from ..config.schema import SourceConfig
from ..errors import UserError
from .rows import BadRow

BATCH_ROWS = 1024
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What `datasets.load_dataset` calls the builder for a local data file of each suffix.
HF_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet",
               ".txt": "text", ".arrow": "arrow"}


class SourceError(UserError, ValueError):
    """A source exists but cannot be read as configured; the message names the source."""


def source_name(src: SourceConfig) -> str:
    return src.name or src.path


def _label(src: SourceConfig) -> str:
    name = source_name(src)
    return f"data source {name!r}" + ("" if name == src.path else f" (path {src.path!r})")


def _is_saved_dataset(folder: Path) -> bool:
    # save_to_disk writes state.json next to a Dataset, dataset_dict.json above a DatasetDict.
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def resolve_kind(src: SourceConfig) -> str:
    """The concrete kind (jsonl | parquet | hf | toy) of a source, resolving `auto`."""
    if src.kind != "auto":
        return src.kind
    path = Path(src.path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if path.is_dir() or (not path.exists() and HUB_ID.match(src.path)):
        return "hf"
    if path.exists():
        raise SourceError(f"{_label(src)}: cannot tell the format of {src.path} from its "
                          "suffix; set kind to jsonl, parquet or hf")
    raise FileNotFoundError(f"{_label(src)}: no such file or folder: {src.path}, and it does "
                            "not look like a Hub dataset id (owner/name)")


def _existing_file(src: SourceConfig) -> Path:
    path = Path(src.path)
    if not path.exists():
        raise FileNotFoundError(f"{_label(src)}: no such file: {src.path}")
    if path.is_dir():
        raise SourceError(f"{_label(src)}: {src.path} is a folder, not a file "
                          f"(kind {src.kind}); use kind hf for a dataset folder")
    return path


def _read_jsonl(src: SourceConfig, start: int = 0, end: Optional[int] = None,
                first: int = 0) -> Iterator[tuple[int, Any]]:
    """The lines in bytes [start, end) (whole lines: `start` is a line start, the 0-based
    line number `first`), or the whole file."""
    name = source_name(src)
    with _existing_file(src).open("rb") as f:
        f.seek(start)
        pos = start
        for index, line in enumerate(f, first):
            if end is not None and pos >= end:
                break
            pos += len(line)
            if not line.strip():
                continue  # blank lines are not rows, but still count as line numbers
            line = line.rstrip(b"\r\n")  # keeps the line ending out of quarantine records
            if index == 0 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte-order mark written by some editors
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield index, BadRow(name, index, f"not valid UTF-8 (byte 0x{line[err.start]:02x}"
                                    f" at offset {err.start})", line, kind="not_utf8")
                continue
            if index == 0 and text.lstrip().startswith("[") and src.path.endswith(".json"):
                raise SourceError(f"{_label(src)}: {src.path} holds a JSON array, not JSON "
                                  "lines (one object per line); use kind hf to read it")
            try:
                yield index, json.loads(text)
            except json.JSONDecodeError as err:
                yield index, BadRow(name, index, f"invalid JSON: {err.msg} (column {err.colno})",
                                    text, kind="invalid_json")


def open_parquet(src: SourceConfig):
    """The pyarrow ParquetFile of a source, or a SourceError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(_existing_file(src))
    except (pa.ArrowException, OSError) as err:
        raise SourceError(f"{_label(src)}: cannot read {src.path} as Parquet: {err}") from err


def _read_parquet(src: SourceConfig, groups: Optional[list[int]] = None,
                  first: int = 0) -> Iterator[tuple[int, Any]]:
    """The rows of row groups `groups` (the first of them is row `first`), or of the file."""
    import pyarrow as pa

    parquet = open_parquet(src)
    try:
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=groups)
    except (pa.ArrowException, OSError) as err:
        raise SourceError(f"{_label(src)}: cannot read {src.path} as Parquet: {err}") from err
    _check_columns(src, parquet.schema_arrow.names)
    index = first
    for batch in batches:
        for record in batch.to_pylist():
            yield index, record
            index += 1


def _load_hf(src: SourceConfig):
    import datasets

    path = Path(src.path)
    local = path.is_file() or (path.is_dir() and _is_saved_dataset(path))
    if src.subset and local:
        raise SourceError(f"{_label(src)}: subset {src.subset!r} is for Hub datasets (or "
                          f"folders of data files with configurations), not {src.path}")
    if path.is_dir() and _is_saved_dataset(path):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise SourceError(f"{_label(src)}: no split {src.split!r} in {src.path} "
                                  f"(it has {', '.join(ds)})")
            ds = ds[src.split]
        return ds
    if path.is_file():
        builder = HF_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise SourceError(f"{_label(src)}: datasets cannot read {path.suffix} files")
        return datasets.load_dataset(builder, data_files={src.split: str(path)},
                                     split=src.split)
    # A Hub id or a local folder of data files: the regular `load_dataset` resolution.
    subset = {"name": src.subset} if src.subset else {}
    try:
        return datasets.load_dataset(src.path, split=src.split, **subset)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{_label(src)}: {src.path} is not a local file or folder, "
                                f"and loading it as a Hub dataset failed: {err}") from err
    except Exception as err:  # offline, gated, no such split, ...: name the source
        named = f", name={src.subset!r}" if src.subset else ""
        raise SourceError(f"{_label(src)}: datasets.load_dataset({src.path!r}{named}, "
                          f"split={src.split!r}) failed: {type(err).__name__}: {err}") from err


def _read_hf(src: SourceConfig) -> Iterator[tuple[int, Any]]:
    ds = _load_hf(src)
    _check_columns(src, ds.column_names)
    index = 0
    for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for record in table.to_pylist():
            yield index, record
            index += 1


def _read_toy(src: SourceConfig, seed: int) -> Iterator[tuple[int, Any]]:
    from ..demo.world import toy_split

    try:
        rows = toy_split(src.path, seed)
    except ValueError as err:
        raise SourceError(f"{_label(src)}: {err}") from err
    yield from enumerate(rows)


def _check_columns(src: SourceConfig, names: list[str]) -> None:
    """A columnar dataset without a column `columns` or `where` names fails before any row is
    read: every row would be bad for the same reason."""
    wanted = list(dict.fromkeys([*src.columns.values(), *src.where]))
    missing = [c for c in wanted if c not in names]
    if missing:
        raise SourceError(f"{_label(src)}: no column {', '.join(map(repr, missing))} (it has "
                          f"{', '.join(names)}); see the source's `columns` / `where`")


class _Unshaped(Exception):
    """Internal: a record the source's shaping cannot apply to; becomes a BadRow."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


def _wanted(raw: Mapping, where: dict) -> bool:
    for column, value in where.items():
        if column not in raw:
            raise _Unshaped(f"missing column '{column}' (used by `where`)", "missing_field")
        if raw[column] != value:
            return False
    return True


def _with_system(record: dict, system: str) -> None:
    messages, current = record.get("messages"), record.get("system")
    if messages is None:
        if current is None or (isinstance(current, str) and not current.strip()):
            record["system"] = system
    elif isinstance(messages, (list, tuple)) and messages:
        first = messages[0]
        if not (isinstance(first, Mapping) and first.get("role") == "system"):
            record["messages"] = [{"role": "system", "content": system}, *messages]


def _reshape(raw: Mapping, src: SourceConfig, answer_regex: re.Pattern | None) -> dict:
    columns = dict(src.columns)
    for field, column in columns.items():
        if raw.get(column) is None:  # columnar sources give a row's missing values as null
            null = "" if column not in raw else "; it is null"
            raise _Unshaped(f"missing column '{column}' (mapped to '{field}'{null})",
                            "missing_field")
    record = {k: v for k, v in raw.items() if k not in columns.values()}
    record.update((field, raw[column]) for field, column in columns.items())
    if answer_regex is not None:
        answer = record.get("answer")
        if not isinstance(answer, str):
            raise _Unshaped(f"'answer' must be a string for answer_regex, got "
                            f"{'null' if answer is None else type(answer).__name__}",
                            "missing_field" if answer is None else "wrong_type")
        found = answer_regex.search(answer)
        if found is None:
            raise _Unshaped(f"'answer' does not match answer_regex {answer_regex.pattern!r}",
                            "answer_mismatch")
        record["answer"] = (found.group(1) if answer_regex.groups else found.group(0)).strip()
    if src.system:
        _with_system(record, src.system)
    return record


def _shaped(src: SourceConfig, records: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """Apply `where`, `columns`, `answer_regex` and `system` to every record, keeping the
    dataset's row indices (rows left out by `where` leave gaps)."""
    name = source_name(src)
    where = dict(src.where)
    answer_regex = re.compile(src.answer_regex) if src.answer_regex else None
    for index, raw in records:
        if isinstance(raw, BadRow) or not isinstance(raw, Mapping):
            yield index, raw  # parse_row names what is wrong with a non-object
            continue
        try:
            if _wanted(raw, where):
                yield index, _reshape(raw, src, answer_regex)
        except _Unshaped as err:
            yield index, BadRow(name, index, err.reason, raw, kind=err.kind)


def jsonl_ranges(src: SourceConfig, target_bytes: int) -> list[tuple[int, int, int]]:
    """(start byte, end byte, first line) of pieces of about `target_bytes` each, cut after
    a newline, so each piece holds whole lines and knows the file's row number of its first
    (one scan of the file, a block at a time: constant memory)."""
    path = _existing_file(src)
    size = path.stat().st_size
    cuts = [(0, 0)]
    if size > target_bytes:
        with path.open("rb") as f:
            pos = lines = 0
            want = target_bytes
            while block := f.read(1 << 22):
                while want < pos + len(block):
                    j = block.find(b"\n", max(want - pos, 0))
                    if j < 0:
                        break  # the cut falls in the next block's first line
                    cut = pos + j + 1
                    if cut < size:
                        cuts.append((cut, lines + block.count(b"\n", 0, j + 1)))
                    want = cut + target_bytes
                lines += block.count(b"\n")
                pos += len(block)
    ends = [c for c, _ in cuts[1:]] + [size]
    return [(start, end, line) for (start, line), end in zip(cuts, ends)]


def parquet_ranges(src: SourceConfig, target_rows: int) -> list[tuple[list[int], int]]:
    """(row groups, first row) of pieces of whole row groups, about `target_rows` each."""
    meta = open_parquet(src).metadata
    pieces: list[tuple[list[int], int]] = []
    row = 0
    for g in range(meta.num_row_groups):
        if not pieces or sum(meta.row_group(i).num_rows for i in pieces[-1][0]) >= target_rows:
            pieces.append(([], row))
        pieces[-1][0].append(g)
        row += meta.row_group(g).num_rows
    return pieces or [([], 0)]


def read_piece(src: SourceConfig, piece: Optional[tuple], seed: int = 0
               ) -> Iterator[tuple[int, Any]]:
    """read_source for one piece of a file (from jsonl_ranges / parquet_ranges; None: the
    whole source), with the same row indices and shaping."""
    if piece is None:
        return read_source(src, seed)
    kind = resolve_kind(src)
    records = (_read_jsonl(src, *piece) if kind == "jsonl" else
               _read_parquet(src, piece[0] or None, piece[1]))
    if src.where or src.columns or src.answer_regex or src.system:
        return _shaped(src, records)
    return records


def read_source(src: SourceConfig, seed: int = 0) -> Iterator[tuple[int, Any]]:
    """Yield (row index, raw record or BadRow) for every row of `src`, shaped by its
    `where`, `columns`, `answer_regex` and `system`. `seed` only matters for kind toy. A source
    that cannot be read at all raises here, before iteration starts (a missing file or an
    unresolvable kind), or on first iteration (corrupt file, a column the dataset lacks)."""
    kind = resolve_kind(src)
    if kind in ("jsonl", "parquet"):
        _existing_file(src)
    readers = {"jsonl": _read_jsonl, "parquet": _read_parquet, "hf": _read_hf,
               "toy": lambda s: _read_toy(s, seed)}
    if kind not in readers:
        raise SourceError(f"{_label(src)}: unknown kind {src.kind!r} (one of "
                          f"{', '.join(choices_of(SourceConfig, 'kind'))})")
    records = readers[kind](src)
    if src.where or src.columns or src.answer_regex or src.system:
        return _shaped(src, records)
    return records
