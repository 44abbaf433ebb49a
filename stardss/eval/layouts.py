"""The public layouts of evaluation sets on disk: reading their CSV files with line numbers
that point at the file, HEx-PHI's folder of header-less category files, which columns of each
layout fill which item field, and telling a layout from a file's header or a folder's files.

Every CSV is read with the csv module (a prompt may be quoted and hold commas and newlines),
as UTF-8 (a byte-order mark is dropped), strictly: a record that is not valid CSV, or has
another number of fields than the header, is an error naming `file:line` (the record's first
physical line, 1-based), never a row skipped.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

from ..config.evaluation import SET_TASKS
from ..errors import UserError


class EvalSetError(UserError, ValueError):
    """An evaluation set that cannot be read as configured; the message names the set and
    the file and line (or dataset row) at fault."""


HEX_PHI_FILE = re.compile(r"category_(\d+)\.csv")
HEX_PHI_CATEGORIES = range(1, 12)
"""HEx-PHI's 11 categories (the public release withholds some: reported, not an error)."""

LAYOUT_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    # {item field: candidate columns, the first one a record has is used}. A set's `columns`
    # replaces a field's candidates with its one column. `context`, `label` and `type` are
    # internal fields a layout reads (HarmBench's context, XSTest's safe/unsafe split).
    "rows": {"prompt": ("prompt",), "category": ("category",), "prefill": ("prefill",),
             "answer": ("answer",), "choices": ("choices",), "id": ("id",),
             "system": ("system",)},
    "hex_phi": {"prompt": ("prompt",), "category": ("category",)},
    "advbench": {"prompt": ("goal", "prompt"), "prefill": ("target",)},
    "harmbench": {"prompt": ("Behavior",), "category": ("SemanticCategory",),
                  "id": ("BehaviorID",), "context": ("ContextString",)},
    "strongreject": {"prompt": ("forbidden_prompt",), "category": ("category",)},
    "xstest": {"prompt": ("prompt",), "category": ("type",), "id": ("id",),
               "label": ("label",), "type": ("type",)},
    "mmlu": {"prompt": ("question",), "category": ("subject",), "choices": ("choices",),
             "answer": ("answer",)},
    "arc": {"prompt": ("question",), "choices": ("choices",), "answer": ("answerKey",),
            "id": ("id",)},
}
LAYOUT_REQUIRED = {"advbench": ("prefill",), "xstest": ("type",)}
"""Fields a layout needs besides the prompt (a task adds its own: answer, choices)."""
LAYOUT_TASKS = {
    "hex_phi": ("safety",), "advbench": ("safety",), "harmbench": ("safety",),
    "strongreject": ("safety",), "xstest": ("safety", "overrefusal"), "mmlu": ("choice",),
    "arc": ("choice",), "rows": SET_TASKS,
}
"""What each layout's prompts can measure (XSTest holds safe and unsafe prompts)."""


def csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) of every CSV record of `path`; a blank line is no
    record (it still counts as a line)."""
    line = 1
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise EvalSetError(f"{path}:{line}: malformed CSV: {err}") from None
            except UnicodeDecodeError:
                raise EvalSetError(f"{path}: not valid UTF-8 (at or after line {line})") from None
            start, line = line, reader.line_num + 1
            if fields:
                yield start, fields


def csv_header(path: Path) -> list[str]:
    """The header row of a CSV file (an empty file is an error)."""
    for _, fields in csv_records(path):
        return fields
    raise EvalSetError(f"{path}: empty file (no header row)")


def csv_table(path: Path) -> tuple[list[str], Iterator[tuple[str, dict]]]:
    """The header and (origin `file:line`, {column: value}) of every data record."""
    records = csv_records(path)
    header = next((fields for _, fields in records), None)
    if header is None:
        raise EvalSetError(f"{path}: empty file (no header row)")
    doubled = sorted({c for c in header if header.count(c) > 1})
    if doubled:
        raise EvalSetError(f"{path}:1: the header names {', '.join(map(repr, doubled))} twice")

    def rows() -> Iterator[tuple[str, dict]]:
        for line, fields in records:
            if len(fields) != len(header):
                raise EvalSetError(f"{path}:{line}: {len(fields)} fields, the header has "
                                   f"{len(header)} ({','.join(header)})")
            yield f"{path}:{line}", dict(zip(header, fields))

    return header, rows()


def hex_phi_files(folder: Path) -> dict[int, Path]:
    """{category: file} of the category_<n>.csv files in `folder`."""
    found = {}
    for path in folder.iterdir():
        match = HEX_PHI_FILE.fullmatch(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def hex_phi_records(folder: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """(origin, {prompt, category}) of every prompt, in category then line order, and the
    categories (of 1..11) that have no file."""
    files = hex_phi_files(folder)
    if not files:
        raise EvalSetError(f"{folder}: no category_<n>.csv files (a HEx-PHI folder holds "
                           "category_1.csv ... category_11.csv)")
    missing = [str(n) for n in HEX_PHI_CATEGORIES if n not in files]
    records = []
    for category, path in files.items():
        before = len(records)
        for line, fields in csv_records(path):
            if len(fields) != 1:
                raise EvalSetError(f"{path}:{line}: {len(fields)} fields; a HEx-PHI line is "
                                   "one prompt (quote a prompt that holds a comma)")
            records.append((f"{path}:{line}", {"prompt": fields[0], "category": str(category)}))
        if len(records) == before:
            raise EvalSetError(f"{path}: empty category file (no prompts)")
    return records, missing


def layout_of_header(header: list[str]) -> str:
    """The public layout a CSV header belongs to (rows: a CSV of its own columns)."""
    columns = set(header)
    if columns & {"goal", "prompt"} and "target" in columns:
        return "advbench"
    if "Behavior" in columns:
        return "harmbench"
    if "forbidden_prompt" in columns:
        return "strongreject"
    if {"prompt", "type"} <= columns:
        return "xstest"
    return "rows"


def detect_layout(path: str, kind: str) -> str:
    """`format: auto`: a folder of category_<n>.csv is HEx-PHI, a CSV file is told by its
    header, anything else (JSONL, Parquet, a datasets folder or Hub id, a toy split) is rows."""
    if kind == "toy":
        return "rows"
    local = Path(path)
    if local.is_dir():
        return "hex_phi" if hex_phi_files(local) else "rows"
    if is_csv(path, kind):
        if not local.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return layout_of_header(csv_header(local))
    return "rows"


def is_csv(path: str, kind: str) -> bool:
    """Read with the csv module here (kind hf reads a .csv through `datasets` instead)."""
    return kind == "auto" and path.lower().endswith(".csv")
