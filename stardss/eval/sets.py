"""Evaluation sets, read in their public layouts, as the items the model answers.

    load_sets(eval.sets, seed=...)  ->  {name: LoadedSet(items, notes, missing_categories)}

A set's layout (`format`, or told by the file when `auto`, see layouts.py) says which columns
fill which item field; a set's `columns` overrides them. Items keep the file's order and a
0-based index; each names its origin (`file:line` or `dataset[row]`) so any later message can
point at the record. Nothing is dropped silently: a missing HEx-PHI category, XSTest rows of
the other kind, or a `limit` are reported in `notes`; a malformed record is an error.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from ..config.evaluation import SET_COLUMNS, EvalSetConfig
from ..config.sources import SourceConfig
from ..data.rows import BadRow
from ..data.sources import read_source, resolve_kind
from .items import EvalItem
from .layouts import (
    LAYOUT_FIELDS,
    LAYOUT_REQUIRED,
    LAYOUT_TASKS,
    EvalSetError,
    csv_table,
    detect_layout,
    hex_phi_records,
    is_csv,
)

LETTERS = string.ascii_uppercase
CHOICE_INSTRUCTION = "Answer with the letter of the correct option."
TASK_REQUIRED = {"safety": (), "overrefusal": (), "answer": ("answer",),
                 "choice": ("answer", "choices")}
HARMBENCH_CONTEXT = "{context}\n\n---\n\n{behavior}"
"""How HarmBench asks a contextual behavior (its DirectRequest baseline): context first."""


@dataclass
class LoadedSet:
    """One evaluation set, read."""

    name: str
    format: str
    """The layout it was read in (`auto` resolved)."""
    items: list[EvalItem]
    notes: list[str] = field(default_factory=list)
    """What was left out or is missing, one line each (printed and kept in results)."""
    missing_categories: list[str] = field(default_factory=list)
    """HEx-PHI categories (of 1..11) without a file."""
    ids: list[Optional[str]] = field(default_factory=list)
    """The dataset's own id of items[i] (HarmBench's BehaviorID, ...), None where none."""


def set_name(cfg: EvalSetConfig) -> str:
    """The set's name: `name`, else the path's stem (data/advbench.csv -> advbench)."""
    return cfg.name or Path(cfg.path).stem


def format_choice(question: str, choices: list[str] | tuple[str, ...]) -> str:
    """A multiple-choice question as the user asks it: the question, lettered options one a
    line ("A. text"), and the instruction to answer with the letter."""
    options = [f"{LETTERS[i]}. {text}" for i, text in enumerate(choices)]
    return "\n".join([question, *options, CHOICE_INSTRUCTION])


def load_sets(sets: list[EvalSetConfig], *, seed: int) -> dict[str, LoadedSet]:
    """Every set, by name, in config order; names must be unique."""
    seen: dict[str, int] = {}
    for i, cfg in enumerate(sets):
        name = set_name(cfg)
        if name in seen:
            raise ValueError(f"eval.sets[{i}].name: {name!r} is also the name of "
                             f"eval.sets[{seen[name]}]; give one a distinct name")
        seen[name] = i
    return {set_name(cfg): load_set(cfg, seed=seed) for cfg in sets}


def load_set(cfg: EvalSetConfig, *, seed: int) -> LoadedSet:
    """The items of one set (`seed` matters for kind toy only). Errors name the set and the
    file:line or dataset[row] at fault."""
    name = set_name(cfg)
    try:
        return _load(cfg, name, seed)
    except EvalSetError as err:
        raise EvalSetError(f"eval set {name!r}: {err}") from None


def _load(cfg: EvalSetConfig, name: str, seed: int) -> LoadedSet:
    _check_config(cfg)
    try:
        layout = cfg.format if cfg.format != "auto" else detect_layout(cfg.path, cfg.kind)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"eval set {name!r}: {err}") from None
    if cfg.task not in LAYOUT_TASKS[layout]:
        raise EvalSetError(f"format {layout} holds {' or '.join(LAYOUT_TASKS[layout])} "
                           f"prompts, not a {cfg.task} set (use format rows and `columns`)")
    if layout == "hex_phi" and (cfg.columns or cfg.where):
        raise EvalSetError("format hex_phi: its files have no columns (remove columns/where)")
    fields = {f: cols for f, cols in LAYOUT_FIELDS[layout].items()}
    fields.update((f, (column,)) for f, column in cfg.columns.items())
    required = {"prompt", *LAYOUT_REQUIRED.get(layout, ()), *TASK_REQUIRED[cfg.task],
                *cfg.columns}
    loaded = LoadedSet(name, layout, [])
    records = _records(cfg, name, layout, fields, required, seed, loaded)
    system = _set_system(cfg, name)
    answer_regex = re.compile(cfg.answer_regex) if cfg.answer_regex else None
    other_kind = 0
    for origin, raw in records:
        values = _values(raw, fields, required, origin)
        if layout == "xstest" and _xstest_safe(values) != (cfg.task == "overrefusal"):
            other_kind += 1
            continue
        loaded.items.append(_item(cfg, name, layout, len(loaded.items), origin, values, system,
                                  answer_regex))
        loaded.ids.append(None if _blank(values.get("id")) else str(values["id"]))
    if other_kind:
        kept, dropped = (("safe", "unsafe (contrast)") if cfg.task == "overrefusal"
                         else ("unsafe (contrast)", "safe"))
        loaded.notes.append(f"{name}: left out {other_kind} {dropped} prompts of "
                            f"{other_kind + len(loaded.items)} (task {cfg.task} keeps the "
                            f"{kept} ones)")
    if not loaded.items:
        raise EvalSetError(f"no items in {cfg.path}")
    if cfg.limit is not None and cfg.limit < len(loaded.items):
        loaded.notes.append(f"{name}: the first {cfg.limit} of {len(loaded.items)} items "
                            "(limit)")
        del loaded.items[cfg.limit:], loaded.ids[cfg.limit:]
    return loaded


def _check_config(cfg: EvalSetConfig) -> None:
    if cfg.ratio is not None:
        raise EvalSetError("ratio: eval sets are never mixed (limit takes the first n items)")
    for f in cfg.columns:
        if f not in SET_COLUMNS:
            raise EvalSetError(f"columns.{f}: not an item field (one of "
                               f"{', '.join(SET_COLUMNS)})")
    needs = {"choices": ("choice",), "answer": ("answer", "choice")}
    for f, tasks in needs.items():
        if f in cfg.columns and cfg.task not in tasks:
            raise EvalSetError(f"columns.{f}: a {cfg.task} set has no {f}")
    if cfg.answer_regex and cfg.task != "answer":
        raise EvalSetError(f"answer_regex: a {cfg.task} set has no reference answer")


def _records(cfg, name, layout, fields, required, seed,
             loaded: LoadedSet) -> Iterator[tuple[str, Mapping]]:
    """(origin, raw record) of every row in file order, by how the set is stored."""
    path = Path(cfg.path)
    if layout == "hex_phi":
        if not path.is_dir():
            raise FileNotFoundError(f"eval set {name!r}: no such folder: {cfg.path}")
        records, loaded.missing_categories = hex_phi_records(path)
        loaded.notes.extend(f"{name}: category {c} missing (no category_{c}.csv)"
                            for c in loaded.missing_categories)
        return iter(records)
    if is_csv(cfg.path, cfg.kind):
        if not path.is_file():
            raise FileNotFoundError(f"eval set {name!r}: no such file: {cfg.path}")
        header, rows = csv_table(path)
        for f in sorted(required):
            if not set(fields[f]) & set(header):
                raise EvalSetError(f"{path}:1: no column {' or '.join(fields[f])} for the {f} "
                                   f"(header: {','.join(header)})")
        for column in cfg.where:
            if column not in header:
                raise EvalSetError(f"{path}:1: no column {column!r} (used by `where`)")
        return (r for r in rows if all(_cell_is(r[1][c], v) for c, v in cfg.where.items()))
    return _source_records(cfg, name, seed)


def _cell_is(cell: str, value: Any) -> bool:
    """`where` on a CSV cell (always text)."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell.strip().lower() == str(value).lower()
    return cell == str(value)


def _source_records(cfg: EvalSetConfig, name: str, seed: int) -> Iterator[tuple[str, Mapping]]:
    # Not the set's `columns`: they name item fields, which read_source does not know.
    src = SourceConfig(path=cfg.path, kind=cfg.kind, split=cfg.split, name=name,
                       subset=cfg.subset, where=dict(cfg.where))
    lines = resolve_kind(src) == "jsonl"
    for index, raw in read_source(src, seed):
        origin = f"{cfg.path}:{index + 1}" if lines else f"{cfg.path}[{index}]"
        if isinstance(raw, BadRow):
            raise EvalSetError(f"{origin}: {raw.reason}")
        if not isinstance(raw, Mapping):
            raise EvalSetError(f"{origin}: a row must be an object, got {type(raw).__name__}")
        yield origin, raw


def _values(raw: Mapping, fields: dict, required: set, origin: str) -> dict:
    """{field: the record's value}, from the first candidate column the record has."""
    values = {}
    for f, columns in fields.items():
        column = next((c for c in columns if c in raw), None)
        value = None if column is None else raw[column]
        if f in required and value is None:
            null = "" if column is None else "; it is null"
            raise EvalSetError(f"{origin}: no {f} (column {' or '.join(columns)}{null})")
        values[f] = value
    return values


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any, f: str, origin: str) -> str:
    if not isinstance(value, str):
        raise EvalSetError(f"{origin}: {f} must be text, got {type(value).__name__}")
    if not value.strip():
        raise EvalSetError(f"{origin}: empty {f}")
    return value


def _xstest_safe(values: dict) -> bool:
    """XSTest's safe prompts: label safe, or (without a label) a type not contrast_*."""
    label = values.get("label")
    if not _blank(label):
        return str(label).strip().lower() == "safe"
    return not str(values["type"]).startswith("contrast_")


def _set_system(cfg: EvalSetConfig, name: str) -> Optional[str]:
    if cfg.system_file:
        path = Path(cfg.system_file)
        if not path.is_file():
            raise FileNotFoundError(f"eval set {name!r}: system_file {cfg.system_file!r}: no "
                                    "such file")
        return path.read_text(encoding="utf-8-sig").strip() or None
    return cfg.system or None


def _item(cfg: EvalSetConfig, name: str, layout: str, index: int, origin: str, values: dict,
          system: Optional[str], answer_regex: Optional[re.Pattern]) -> EvalItem:
    prompt = _text(values["prompt"], "prompt", origin)
    if layout == "harmbench" and not _blank(values.get("context")):
        prompt = HARMBENCH_CONTEXT.format(context=values["context"], behavior=prompt)
    answer, choices = None, ()
    if cfg.task == "choice":
        choices, labels = _choices(values["choices"], origin)
        answer = _choice_letter(values["answer"], choices, labels, layout, origin)
        prompt = format_choice(prompt, choices)
    elif cfg.task == "answer":
        answer = _answer(values["answer"], answer_regex, origin)
    row_system = values.get("system")
    system = row_system if not _blank(row_system) else system
    messages = ([{"role": "system", "content": _text(system, "system", origin)}]
                if system else [])
    messages.append({"role": "user", "content": prompt})
    prefill = values.get("prefill")
    category = values.get("category")
    return EvalItem(set=name, index=index, origin=origin, task=cfg.task,
                    messages=tuple(messages),
                    category=None if _blank(category) else str(category),
                    answer=answer, choices=tuple(choices),
                    own_prefill="" if prefill is None else _prefill(prefill, origin))


def _prefill(value: Any, origin: str) -> str:
    """An own prefill may be empty (no opening for this item), but is text."""
    if not isinstance(value, str):
        raise EvalSetError(f"{origin}: prefill must be text, got {type(value).__name__}")
    return value


def _answer(value: Any, answer_regex: Optional[re.Pattern], origin: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    text = _text(value, "answer", origin)
    if answer_regex is None:
        return text.strip()
    found = answer_regex.search(text)
    if found is None:
        short = text if len(text) <= 60 else text[:57] + "..."
        raise EvalSetError(f"{origin}: answer {short!r} does not match answer_regex "
                           f"{answer_regex.pattern!r}")
    return (found.group(1) if answer_regex.groups else found.group(0)).strip()


def _choices(value: Any, origin: str) -> tuple[list[str], list[str]]:
    """The options' texts and labels (ARC's {text: [...], label: [...]}; a list has none)."""
    labels: list[str] = []
    if isinstance(value, Mapping):
        if "text" not in value:
            raise EvalSetError(f"{origin}: choices must be a list or {{text, label}}, got the "
                               f"keys {', '.join(map(str, value))}")
        texts, labels = value["text"], list(value.get("label") or [])
    else:
        texts = value
    if not isinstance(texts, (list, tuple)) or not texts:
        raise EvalSetError(f"{origin}: choices must be a non-empty list, got "
                           f"{type(texts).__name__}")
    if not 2 <= len(texts) <= len(LETTERS):
        raise EvalSetError(f"{origin}: {len(texts)} choices (2 to {len(LETTERS)} are lettered)")
    if labels and len(labels) != len(texts):
        raise EvalSetError(f"{origin}: {len(labels)} choice labels for {len(texts)} choices")
    choices = [str(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else t
               for t in texts]
    for i, text in enumerate(choices):
        _text(text, f"choices[{i}]", origin)
    return choices, [str(label).strip() for label in labels]


def _choice_letter(value: Any, choices: list[str], labels: list[str], layout: str,
                   origin: str) -> str:
    """The correct option's letter. An int is a 0-based index (MMLU); a string is one of the
    choice labels (ARC), a letter, or a 1-based number (ARC's keys "1".."4" without labels;
    MMLU's digits stay 0-based)."""
    position = None
    if isinstance(value, int) and not isinstance(value, bool):
        position = value
    elif isinstance(value, str):
        key = value.strip()
        if key in labels:
            position = labels.index(key)
        elif key.isdigit():
            position = int(key) if layout == "mmlu" else int(key) - 1
        elif len(key) == 1 and key.upper() in LETTERS:
            position = LETTERS.index(key.upper())
    if position is None or not 0 <= position < len(choices):
        raise EvalSetError(f"{origin}: answer {value!r} names none of the {len(choices)} "
                           "choices (an index from 0, a letter, or a choice label)")
    return LETTERS[position]
