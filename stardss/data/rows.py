"""One chat example (`ChatRow`), the error a malformed record raises (`BadRow`), and the
parser that turns a raw record of any supported shape into the former or the latter."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatRow:
    """A conversation up to the final assistant turn, plus that turn."""

    id: str
    source: str
    messages: tuple[dict, ...]
    """[system], user, assistant, ..., user: everything before the final assistant turn."""
    response: str
    """The final assistant turn; "" only for prompt-only rows (eval prompts)."""
    answer: str | None = None
    """Reference answer of a benign eval task."""
    index: int = -1
    """0-based row index within the source (what a BadRow about this row reports)."""

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]

    @property
    def system(self) -> str | None:
        first = self.messages[0]
        return first["content"] if first["role"] == "system" else None

    @property
    def conversation(self) -> tuple[dict, ...]:
        """The messages with the response appended (when there is one)."""
        if not self.response:
            return self.messages
        return self.messages + ({"role": "assistant", "content": self.response},)


def jsonable(value: Any) -> Any:
    """A copy of `value` that json.dumps accepts and that round-trips strictly (no NaN)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return repr(value)  # bytes, numpy scalars, datetimes, ...


class BadRow(UserError, ValueError):
    """A record that cannot become a ChatRow. `row` is its 0-based index within `source`.

    `kind` is a short category used to group counts (the `reason` carries row-specific
    details such as byte offsets); it defaults to the reason itself.
    """

    def __init__(self, source: str, row: int, reason: str, raw: Any = None, *,
                 kind: str | None = None):
        super().__init__(f"{source}: row {row}: {reason}")
        self.source, self.row, self.reason = source, row, reason
        self.raw = jsonable(raw)
        self.kind = kind or reason

    def __reduce__(self):
        # Exceptions pickle through self.args by default, which would lose the fields
        # (and break unpickling); BadRows cross process boundaries under Ray.
        return (_rebuild_bad_row, (self.source, self.row, self.reason, self.raw, self.kind))


def _rebuild_bad_row(source, row, reason, raw, kind) -> BadRow:
    return BadRow(source, row, reason, raw, kind=kind)


class _Invalid(Exception):
    """Internal: a field-level problem; parse_row adds source, row and raw."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_text(value: Any, field: str, *, allow_empty: bool = False) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            bytes(value).decode("utf-8")
            detail = "bytes (a binary column?)"
        except UnicodeDecodeError as err:
            detail = (f"bytes that are not valid UTF-8 (byte 0x{value[err.start]:02x} "
                      f"at offset {err.start})")
        raise _Invalid(f"wrong type: '{field}' must be a string, got {detail}", "wrong_type")
    if not isinstance(value, str):
        raise _Invalid(f"wrong type: '{field}' must be a string, got {_type_name(value)}",
                       "wrong_type")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise _Invalid(f"'{field}' is not valid UTF-8 (lone surrogate "
                       f"U+{ord(value[err.start]):04X} at character {err.start})",
                       "not_utf8") from None
    # NUL never occurs in real chat text; it means binary data or a broken export.
    if "\x00" in value:
        raise _Invalid(f"'{field}' contains a NUL character at position {value.index(chr(0))}",
                       "nul_character")
    if not allow_empty and not value.strip():
        raise _Invalid(f"empty '{field}' (blank or whitespace only)", "empty")
    return value


def _required(raw: Mapping, key: str, field: str | None = None) -> Any:
    field = field or key
    if key not in raw:
        raise _Invalid(f"missing field '{field}'", "missing_field")
    if raw[key] is None:
        raise _Invalid(f"missing field '{field}' (it is null)", "missing_field")
    return raw[key]


def _parse_id(raw: Mapping, default: str) -> str:
    value = raw.get("id")
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _Invalid(f"wrong type: 'id' must be a string or integer, got {_type_name(value)}",
                       "wrong_type")
    return _check_text(value, "id")


def _parse_answer(raw: Mapping) -> str | None:
    value = raw.get("answer")
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Invalid("wrong type: 'answer' must be a string or number, got bool", "wrong_type")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(f"'answer' is {value!r}, not a usable answer", "wrong_type")
        # 3.0 read from a float column should match "3" in a response, not "3.0".
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (str, bytes, bytearray)):
        return _check_text(value, "answer")
    raise _Invalid(f"wrong type: 'answer' must be a string or number, got {_type_name(value)}",
                   "wrong_type")


def _system_message(system: Any) -> list[dict]:
    # A blank system prompt is treated as none, so templates do not emit an empty block.
    if system is None:
        return []
    text = _check_text(system, "system", allow_empty=True)
    return [{"role": "system", "content": text}] if text.strip() else []


def _from_prompt(raw: Mapping, require_response: bool) -> tuple[list[dict], str]:
    if "prompt" not in raw and "response" not in raw:  # neither form: name both
        raise _Invalid("missing field 'prompt' (or 'messages')", "missing_field")
    prompt = _check_text(_required(raw, "prompt"), "prompt")
    if require_response:
        response = _check_text(_required(raw, "response"), "response")
    elif raw.get("response") is None:
        response = ""
    else:
        response = _check_text(raw["response"], "response", allow_empty=True)
    messages = _system_message(raw.get("system")) + [{"role": "user", "content": prompt}]
    return messages, response


def _from_messages(value: Any, require_response: bool) -> tuple[list[dict], str]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"wrong type: 'messages' must be a list, got {_type_name(value)}",
                       "wrong_type")
    if not value:
        raise _Invalid("empty 'messages'", "empty")
    turns: list[dict] = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise _Invalid(f"wrong type: '{where}' must be an object, got {_type_name(msg)}",
                           "wrong_type")
        role = _check_text(_required(msg, "role", f"{where}.role"), f"{where}.role")
        if "content" not in msg:  # null content is reported as a wrong type below
            raise _Invalid(f"missing field '{where}.content'", "missing_field")
        if role not in ROLES:
            raise _Invalid(f"bad role: '{where}.role' is {role!r}, not one of "
                           f"{', '.join(ROLES)}", "bad_messages")
        if role == "system":
            if i != 0:
                raise _Invalid(f"bad order: '{where}' is a system message; only the first "
                               "message may be one", "bad_messages")
            turns += _system_message(msg["content"])
            continue
        expected = "user" if sum(t["role"] != "system" for t in turns) % 2 == 0 else "assistant"
        if role != expected:
            raise _Invalid(f"bad order: '{where}.role' is {role!r}, expected {expected!r} "
                           "(turns must alternate user/assistant, starting with user)",
                           "bad_messages")
        last = i == len(value) - 1
        allow_empty = last and role == "assistant" and not require_response
        turns.append({"role": role,
                      "content": _check_text(msg["content"], f"{where}.content",
                                             allow_empty=allow_empty)})
    if turns and turns[-1]["role"] == "assistant":
        response = turns.pop()["content"]
    elif require_response:
        raise _Invalid("bad order: 'messages' must end with the assistant's response, "
                       f"but the last message is from {turns[-1]['role'] if turns else 'nobody'!r}",
                       "bad_messages")
    else:
        response = ""
    if not turns or turns[-1]["role"] != "user":
        raise _Invalid("bad order: 'messages' has no user message before the response",
                       "bad_messages")
    return turns, response


def parse_row(raw: Any, source: str, index: int, *, require_response: bool = True) -> ChatRow:
    """Validate one raw record: {"prompt", "response", "system"?} or {"messages"}, each with
    optional "id" and "answer". Extra keys are ignored; a non-null "messages" wins when both
    forms are present (some Hub datasets carry a "prompt" column next to the conversation)."""
    try:
        if not isinstance(raw, Mapping):
            raise _Invalid(f"not an object: the record is {_type_name(raw)}", "not_object")
        # Columnar sources (Parquet, datasets) give every row every column, so a null
        # "messages" means the row uses the prompt form.
        if raw.get("messages") is not None:
            messages, response = _from_messages(raw["messages"], require_response)
        else:
            messages, response = _from_prompt(raw, require_response)
        row_id = _parse_id(raw, f"{source}:{index}")
        answer = _parse_answer(raw)
    except _Invalid as err:
        raise BadRow(source, index, err.reason, raw, kind=err.kind) from None
    return ChatRow(id=row_id, source=source, messages=tuple(messages), response=response,
                   answer=answer, index=index)
