"""parse_row: both record shapes, every kind of malformed record with its exact reason."""
import json
import pickle

import pytest

from stardss.data.rows import BadRow, ChatRow, parse_row


def parse(raw, **kw):
    return parse_row(raw, "train.jsonl", 4, **kw)


def reason_of(raw, **kw) -> BadRow:
    with pytest.raises(BadRow) as info:
        parse(raw, **kw)
    err = info.value
    assert (err.source, err.row) == ("train.jsonl", 4)
    assert str(err) == f"train.jsonl: row 4: {err.reason}"
    return err


def test_prompt_form():
    row = parse({"prompt": "Hi?", "response": "Hello.", "system": "Be kind.", "extra": [1]})
    assert row == ChatRow(id="train.jsonl:4", source="train.jsonl",
                          messages=({"role": "system", "content": "Be kind."},
                                    {"role": "user", "content": "Hi?"}),
                          response="Hello.", answer=None, index=4)
    assert (row.prompt, row.system) == ("Hi?", "Be kind.")
    assert row.conversation[-1] == {"role": "assistant", "content": "Hello."}


def test_blank_or_null_system_means_none():
    for system in (None, "", "  "):
        row = parse({"prompt": "p", "response": "r", "system": system})
        assert row.system is None
        assert row.messages == ({"role": "user", "content": "p"},)


def test_content_is_kept_verbatim():
    row = parse({"prompt": "  p\n", "response": " r "})
    assert (row.prompt, row.response) == ("  p\n", " r ")


def test_messages_form_multi_turn():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1", "name": "bot"},
            {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]
    row = parse({"messages": msgs, "id": 17, "answer": 3})
    assert row.id == "17" and row.answer == "3"
    assert row.messages == ({"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                            {"role": "assistant", "content": "a1"},
                            {"role": "user", "content": "u2"})
    assert (row.response, row.prompt, row.system) == ("a2", "u2", "S")


def test_messages_win_over_prompt_columns_unless_null():
    row = parse({"prompt": "ignored", "messages": [{"role": "user", "content": "u"},
                                                   {"role": "assistant", "content": "a"}]})
    assert (row.prompt, row.response) == ("u", "a")
    row = parse({"prompt": "p", "response": "r", "messages": None})
    assert (row.prompt, row.response) == ("p", "r")


@pytest.mark.parametrize("answer, expected", [("42", "42"), (42, "42"), (3.0, "3"),
                                              (2.5, "2.5"), (None, None)])
def test_answer_conversion(answer, expected):
    assert parse({"prompt": "p", "response": "r", "answer": answer}).answer == expected


def test_prompt_only_rows_when_responses_not_required():
    row = parse({"prompt": "p"}, require_response=False)
    assert (row.prompt, row.response, row.conversation) == ("p", "", row.messages)
    row = parse({"messages": [{"role": "user", "content": "u"}]}, require_response=False)
    assert (row.prompt, row.response) == ("u", "")
    assert parse({"prompt": "p", "response": ""}, require_response=False).response == ""


BAD = [
    ([1, 2], "not an object: the record is list", "not_object"),
    ("text", "not an object: the record is str", "not_object"),
    ({"response": "r"}, "missing field 'prompt'", "missing_field"),
    ({"text": "t"}, "missing field 'prompt' (or 'messages')", "missing_field"),
    ({"messages": None}, "missing field 'prompt' (or 'messages')", "missing_field"),
    ({"prompt": "p"}, "missing field 'response'", "missing_field"),
    ({"prompt": "p", "response": None}, "missing field 'response' (it is null)",
     "missing_field"),
    ({"prompt": "p", "response": ""}, "empty 'response' (blank or whitespace only)", "empty"),
    ({"prompt": " \n\t", "response": "r"}, "empty 'prompt' (blank or whitespace only)", "empty"),
    ({"prompt": 5, "response": "r"}, "wrong type: 'prompt' must be a string, got int",
     "wrong_type"),
    ({"prompt": "p", "response": ["r"]}, "wrong type: 'response' must be a string, got list",
     "wrong_type"),
    ({"prompt": "p", "response": "r", "system": 1},
     "wrong type: 'system' must be a string, got int", "wrong_type"),
    ({"prompt": "p", "response": b"ok"},
     "wrong type: 'response' must be a string, got bytes (a binary column?)", "wrong_type"),
    ({"prompt": "p", "response": b"ab\xff"}, "wrong type: 'response' must be a string, got "
     "bytes that are not valid UTF-8 (byte 0xff at offset 2)", "wrong_type"),
    ({"prompt": "p", "response": "ab\udcff"},
     "'response' is not valid UTF-8 (lone surrogate U+DCFF at character 2)", "not_utf8"),
    ({"prompt": "p\x00", "response": "r"}, "'prompt' contains a NUL character at position 1",
     "nul_character"),
    ({"prompt": "p", "response": "r", "id": 1.5},
     "wrong type: 'id' must be a string or integer, got float", "wrong_type"),
    ({"prompt": "p", "response": "r", "answer": True},
     "wrong type: 'answer' must be a string or number, got bool", "wrong_type"),
    ({"prompt": "p", "response": "r", "answer": float("nan")},
     "'answer' is nan, not a usable answer", "wrong_type"),
    ({"messages": "hi"}, "wrong type: 'messages' must be a list, got str", "wrong_type"),
    ({"messages": []}, "empty 'messages'", "empty"),
    ({"messages": ["hi"]}, "wrong type: 'messages[0]' must be an object, got str", "wrong_type"),
    ({"messages": [{"content": "x"}]}, "missing field 'messages[0].role'", "missing_field"),
    ({"messages": [{"role": "user"}]}, "missing field 'messages[0].content'", "missing_field"),
    ({"messages": [{"role": "user", "content": None}]},
     "wrong type: 'messages[0].content' must be a string, got null", "wrong_type"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "bot", "content": "b"}]},
     "bad role: 'messages[1].role' is 'bot', not one of system, user, assistant",
     "bad_messages"),
    ({"messages": [{"role": "assistant", "content": "a"}]},
     "bad order: 'messages[0].role' is 'assistant', expected 'user' (turns must alternate "
     "user/assistant, starting with user)", "bad_messages"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "v"}]},
     "bad order: 'messages[1].role' is 'user', expected 'assistant' (turns must alternate "
     "user/assistant, starting with user)", "bad_messages"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "system", "content": "s"}]},
     "bad order: 'messages[1]' is a system message; only the first message may be one",
     "bad_messages"),
    ({"messages": [{"role": "user", "content": "u"}]}, "bad order: 'messages' must end with "
     "the assistant's response, but the last message is from 'user'", "bad_messages"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": " "}]},
     "empty 'messages[1].content' (blank or whitespace only)", "empty"),
]


@pytest.mark.parametrize("raw, reason, kind", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_rows_name_their_problem(raw, reason, kind):
    err = reason_of(raw)
    assert (err.reason, err.kind) == (reason, kind)
    json.dumps(err.raw, allow_nan=False)  # always recordable in the quarantine file


def test_system_only_prompt_row_is_bad():
    err = reason_of({"messages": [{"role": "system", "content": "s"}]}, require_response=False)
    assert err.reason == "bad order: 'messages' has no user message before the response"


def test_bad_row_raw_is_jsonable_and_survives_pickling():
    err = reason_of({"prompt": "p", "response": b"\xff", "n": float("inf")})
    assert err.raw == {"prompt": "p", "response": "b'\\xff'", "n": "inf"}
    back = pickle.loads(pickle.dumps(err))
    assert (back.source, back.row, back.reason, back.raw, back.kind, str(back)) == (
        err.source, err.row, err.reason, err.raw, err.kind, str(err))
    assert isinstance(back, ValueError)


def test_bad_row_kind_defaults_to_reason():
    assert BadRow("s", 0, "over max length").kind == "over max length"
