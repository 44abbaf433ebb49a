"""Reading sources (JSONL, Parquet, datasets folders/files, toy) into rows, with every bad
row either stopping the load (naming file and row) or quarantined and counted."""
import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from stardss.config.schema import SourceConfig  # noqa: E402
from stardss.data.load import load_rows  # noqa: E402
from stardss.data.quarantine import BadRowSink  # noqa: E402
from stardss.data.rows import BadRow  # noqa: E402
from stardss.data.sources import SourceError, read_source, resolve_kind, source_name  # noqa: E402

GOOD = b'{"prompt": "p0", "response": "r0"}'
GOOD_MSGS = (b'{"messages": [{"role": "user", "content": "u"}, '
             b'{"role": "assistant", "content": "a"}], "id": "m1"}')
BOT_TURNS = [{"role": "user", "content": "u"}, {"role": "bot", "content": "b"}]
# (line, reason, raw as quarantined) for every kind of bad JSONL line.
BAD_LINES = {
    "missing_field": (b'{"prompt": "p1"}', "missing field 'response'", {"prompt": "p1"}),
    "empty_response": (b'{"prompt": "p2", "response": "   "}',
                       "empty 'response' (blank or whitespace only)",
                       {"prompt": "p2", "response": "   "}),
    "wrong_type": (b'{"prompt": 5, "response": "r3"}',
                   "wrong type: 'prompt' must be a string, got int",
                   {"prompt": 5, "response": "r3"}),
    "not_utf8": (b'{"prompt": "p4", "response": "caf\xe9"}',
                 "not valid UTF-8 (byte 0xe9 at offset 33)",
                 repr(b'{"prompt": "p4", "response": "caf\xe9"}')),
    "invalid_json": (b'{"prompt": "p", "response": }',
                     "invalid JSON: Expecting value (column 29)", '{"prompt": "p", "response": }'),
    "bad_roles": (json.dumps({"messages": BOT_TURNS}).encode(),
                  "bad role: 'messages[1].role' is 'bot', not one of system, user, assistant",
                  {"messages": BOT_TURNS}),
    "not_object": (b'[1, 2]', "not an object: the record is list", [1, 2]),
}


def write_lines(path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep `datasets` caches out of the home folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_error_mode_stops_at_the_bad_row_naming_file_and_row(tmp_path, kind):
    line, reason, _ = BAD_LINES[kind]
    path = write_lines(tmp_path / "data.jsonl", [GOOD, line, GOOD])
    with pytest.raises(BadRow) as info:
        load_rows([SourceConfig(path=path)], BadRowSink("error", None), seed=0)
    assert str(info.value) == f"{path}: row 1: {reason}"
    assert not (tmp_path / "q.jsonl").exists()


def test_quarantine_mode_records_every_bad_row_and_keeps_the_good(tmp_path):
    kinds = list(BAD_LINES)
    # Line 2 is blank: skipped, but row indices stay line numbers.
    lines = [GOOD, BAD_LINES[kinds[0]][0], b"   "] + [BAD_LINES[k][0] for k in kinds[1:]]
    lines.append(GOOD_MSGS)
    path = write_lines(tmp_path / "data.jsonl", lines)
    qpath = tmp_path / "out" / "quarantine.jsonl"
    with BadRowSink("quarantine", qpath) as sink:
        rows, summary = load_rows([SourceConfig(path=path, name="mine")], sink, seed=0)
        counts = sink.counts

    assert [r.id for r in rows["mine"]] == ["mine:0", "m1"]
    assert [r.index for r in rows["mine"]] == [0, len(lines) - 1]
    assert summary == {"mine": {"read": 2, "bad": len(kinds)}}
    assert summary["mine"]["read"] + summary["mine"]["bad"] == len(lines) - 1  # minus blank
    records = [json.loads(x) for x in qpath.read_text(encoding="utf-8").splitlines()]
    expected_rows = [1] + list(range(3, 3 + len(kinds) - 1))
    assert records == [{"source": "mine", "row": row, "reason": BAD_LINES[k][1],
                        "raw": BAD_LINES[k][2]} for row, k in zip(expected_rows, kinds)]
    assert counts == {"total": 7, "by_source": {"mine": 7},
                      "by_reason": {"missing_field": 1, "empty": 1, "wrong_type": 1,
                                    "not_utf8": 1, "invalid_json": 1, "bad_messages": 1,
                                    "not_object": 1}}


def test_quarantine_file_only_appears_with_a_bad_row(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [GOOD, GOOD_MSGS])
    qpath = tmp_path / "q" / "quarantine.jsonl"
    with BadRowSink("quarantine", qpath) as sink:
        rows, summary = load_rows([SourceConfig(path=path)], sink, seed=0)
    assert summary == {path: {"read": 2, "bad": 0}}
    assert sink.counts == {"total": 0, "by_source": {}, "by_reason": {}}
    assert not qpath.parent.exists()


def test_sink_appends_and_rejects_bad_modes(tmp_path):
    qpath = tmp_path / "q.jsonl"
    for i in range(2):
        with BadRowSink("quarantine", qpath) as sink:
            sink.handle(BadRow("s", i, "too long", {"x": b"\x00"}, kind="too_long"))
    assert [json.loads(x) for x in qpath.read_text().splitlines()] == [
        {"source": "s", "row": i, "reason": "too long", "raw": {"x": "b'\\x00'"}} for i in (0, 1)]
    with pytest.raises(ValueError, match="'skip' is not one of error, quarantine"):
        BadRowSink("skip", qpath)
    with pytest.raises(ValueError, match="quarantine needs a file path"):
        BadRowSink("quarantine", None)


def test_blank_lines_bom_and_crlf(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [b"\xef\xbb\xbf" + GOOD + b"\r", b"", GOOD_MSGS])
    assert [i for i, _ in read_source(SourceConfig(path=path))] == [0, 2]


def test_json_array_file_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "p", "response": "r"}], indent=1))
    with pytest.raises(SourceError, match="holds a JSON array, not JSON lines"):
        list(read_source(SourceConfig(path=str(path))))


def test_missing_files_name_path_and_source(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError) as info:
        read_source(SourceConfig(path=missing, name="chat"))
    assert str(info.value) == f"data source 'chat' (path {missing!r}): no such file: {missing}"
    with pytest.raises(FileNotFoundError, match="does not look like a Hub dataset id"):
        read_source(SourceConfig(path=str(tmp_path / "nothing_here")))
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(SourceError, match="cannot tell the format"):
        read_source(SourceConfig(path=str(tmp_path / "x.csv")))


def test_duplicate_source_names_are_refused(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(ValueError, match=r"sources\[0\] and sources\[1\] are both named 'x'"):
        load_rows([SourceConfig(path=path, name="x"), SourceConfig(path=path, name="x")],
                  BadRowSink("error"), seed=0)


def test_source_name_and_kind_resolution(tmp_path):
    assert source_name(SourceConfig(path="a.jsonl")) == "a.jsonl"
    assert source_name(SourceConfig(path="a.jsonl", name="A")) == "A"
    assert resolve_kind(SourceConfig(path="x/a.JSONL")) == "jsonl"
    assert resolve_kind(SourceConfig(path="x/a.json")) == "jsonl"
    assert resolve_kind(SourceConfig(path="x/a.parquet")) == "parquet"
    assert resolve_kind(SourceConfig(path=str(tmp_path))) == "hf"
    assert resolve_kind(SourceConfig(path="owner/some.name-1")) == "hf"
    assert resolve_kind(SourceConfig(path="a.jsonl", kind="hf")) == "hf"


def test_parquet_mixed_forms(tmp_path):
    path = str(tmp_path / "d.parquet")
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    # Both record forms in one file: columns are shared, the unused one is null.
    table = pa.table({"prompt": ["p0", None, None, "p3"], "response": ["r0", "r1", None, " "],
                      "messages": [None, None, msgs, None]})
    pq.write_table(table, path, row_group_size=2)
    qpath = tmp_path / "q.jsonl"
    with BadRowSink("quarantine", qpath) as sink:
        rows, summary = load_rows([SourceConfig(path=path, name="pq")], sink, seed=0)
    assert summary == {"pq": {"read": 2, "bad": 2}}
    assert [(r.prompt, r.response, r.id) for r in rows["pq"]] == [("p0", "r0", "pq:0"),
                                                                  ("u", "a", "pq:2")]
    assert [json.loads(x) for x in qpath.read_text().splitlines()] == [
        {"source": "pq", "row": 1, "reason": "missing field 'prompt' (it is null)",
         "raw": {"prompt": None, "response": "r1", "messages": None}},
        {"source": "pq", "row": 3, "reason": "empty 'response' (blank or whitespace only)",
         "raw": {"prompt": "p3", "response": " ", "messages": None}}]


def test_parquet_binary_column_is_a_named_wrong_type(tmp_path):
    path = str(tmp_path / "e.parquet")
    pq.write_table(pa.table({"prompt": ["p0", "p1"], "response": [b"r0", b"\xffr1"]}), path)
    qpath = tmp_path / "q.jsonl"
    with BadRowSink("quarantine", qpath) as sink:
        _, summary = load_rows([SourceConfig(path=path, kind="parquet")], sink, seed=0)
    assert summary == {path: {"read": 0, "bad": 2}}
    records = [json.loads(x) for x in qpath.read_text().splitlines()]
    assert [r["reason"] for r in records] == [
        "wrong type: 'response' must be a string, got bytes (a binary column?)",
        "wrong type: 'response' must be a string, got bytes that are not valid UTF-8 "
        "(byte 0xff at offset 0)"]
    assert records[1]["raw"] == {"prompt": "p1", "response": "b'\\xffr1'"}
    with pytest.raises(BadRow, match=f"^{path}: row 0: wrong type: 'response'"):
        load_rows([SourceConfig(path=path)], BadRowSink("error"), seed=0)


def test_parquet_good_rows_in_order(tmp_path):
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(2500)],
                             "response": [f"r{i}" for i in range(2500)]}), path)
    rows, _ = load_rows([SourceConfig(path=path)], BadRowSink("error"), seed=0)
    assert [r.prompt for r in rows[path]] == [f"p{i}" for i in range(2500)]
    assert rows[path][2499].id == f"{path}:2499"


def test_corrupt_parquet_names_the_source(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match="cannot read .* as Parquet"):
        list(read_source(SourceConfig(path=str(path))))


def test_hf_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    records = [{"prompt": "p0", "response": "r0"}, {"prompt": "p1", "response": ""}]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    sink = BadRowSink("quarantine", tmp_path / "q.jsonl")
    rows, summary = load_rows([SourceConfig(path=str(folder), name="s")], sink, seed=0)
    assert summary == {"s": {"read": 1, "bad": 1}} and rows["s"][0].response == "r0"
    assert sink.counts["by_reason"] == {"empty": 1}

    dd = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:1]),
                          "test": datasets.Dataset.from_list([{"prompt": "t", "response": "u"}])}
                         ).save_to_disk(str(dd))
    rows, _ = load_rows([SourceConfig(path=str(dd), split="test", name="t")],
                        BadRowSink("error"), seed=0)
    assert [(r.prompt, r.response) for r in rows["t"]] == [("t", "u")]
    with pytest.raises(SourceError, match="no split 'dev' in .* \\(it has train, test\\)"):
        list(read_source(SourceConfig(path=str(dd), split="dev")))


def test_hf_load_dataset_from_local_json_file_and_folder(tmp_path, hf_cache):
    path = write_lines(tmp_path / "d.jsonl", [GOOD, b'{"prompt": "p1", "response": "r1"}'])
    rows, summary = load_rows([SourceConfig(path=path, kind="hf", name="j")],
                              BadRowSink("error"), seed=0)
    assert summary == {"j": {"read": 2, "bad": 0}}
    assert [r.prompt for r in rows["j"]] == ["p0", "p1"]

    folder = tmp_path / "plain"
    folder.mkdir()
    write_lines(folder / "train.jsonl", [GOOD])
    rows, _ = load_rows([SourceConfig(path=str(folder), name="f")], BadRowSink("error"), seed=0)
    assert [r.prompt for r in rows["f"]] == ["p0"]


def test_hub_ids_go_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, split=None, **kw):
        calls.append((path, split, kw))
        return datasets.Dataset.from_list([{"prompt": "hub", "response": "r"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = list(read_source(SourceConfig(path="owner/name", split="validation")))
    assert rows == [(0, {"prompt": "hub", "response": "r"})]
    assert calls == [("owner/name", "validation", {})]


def test_hub_failure_names_the_source(monkeypatch):
    import datasets

    def offline(path, split=None, **kw):
        raise ConnectionError("Couldn't reach 'owner/name' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceError) as info:
        list(read_source(SourceConfig(path="owner/name", name="web")))
    assert str(info.value) == (
        "data source 'web' (path 'owner/name'): datasets.load_dataset('owner/name', "
        "split='train') failed: ConnectionError: Couldn't reach 'owner/name' on the Hub "
        "(OfflineModeIsEnabled)")


def test_toy_source():
    from stardss.demo.world import SPLITS

    name = next(iter(SPLITS))
    rows, summary = load_rows([SourceConfig(path=name, kind="toy")], BadRowSink("error"), seed=3)
    again, _ = load_rows([SourceConfig(path=name, kind="toy")], BadRowSink("error"), seed=3)
    assert summary[name]["bad"] == 0 and summary[name]["read"] == len(rows[name]) > 0
    assert rows == again
    with pytest.raises(SourceError, match="data source 'no_such_split'"):
        list(read_source(SourceConfig(path="no_such_split", kind="toy")))


def test_prompt_only_rows_for_eval(tmp_path):
    path = write_lines(tmp_path / "eval.jsonl", [b'{"prompt": "how?", "answer": 7}', GOOD])
    rows, summary = load_rows([SourceConfig(path=path, name="e")], BadRowSink("error"), seed=0,
                              require_response=False)
    assert [(r.prompt, r.response, r.answer) for r in rows["e"]] == [("how?", "", "7"),
                                                                     ("p0", "r0", None)]
    with pytest.raises(BadRow, match=r"row 0: missing field 'response'"):
        load_rows([SourceConfig(path=path)], BadRowSink("error"), seed=0)


# --- shaping a dataset's own columns into rows: subset, columns, where, answer_regex, system ---

GSM8K_LIKE = [{"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
              {"question": "What is 4 * 10?", "answer": "4 * 10 = 40\n#### 40"}]


def test_columns_map_a_datasets_own_names_to_prompt_and_response(tmp_path):
    import datasets

    folder = tmp_path / "gsm8k"
    datasets.Dataset.from_list(GSM8K_LIKE).save_to_disk(str(folder))
    src = SourceConfig(path=str(folder), name="gsm8k",
                       columns={"prompt": "question", "response": "answer"})
    rows, summary = load_rows([src], BadRowSink("error"), seed=0)
    assert summary == {"gsm8k": {"read": 2, "bad": 0}}
    assert [(r.prompt, r.response, r.answer) for r in rows["gsm8k"]] == [
        ("What is 2 + 3?", GSM8K_LIKE[0]["answer"], None),  # `answer` was renamed to response
        ("What is 4 * 10?", GSM8K_LIKE[1]["answer"], None)]


def test_answer_regex_keeps_the_final_answer_and_system_adds_the_format(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_LIKE))
    src = SourceConfig(path=str(path), name="t", columns={"prompt": "question", "answer": "answer"},
                       answer_regex=r"####\s*(.+?)\s*$", system="End with #### and the answer.")
    rows, _ = load_rows([src], BadRowSink("error"), seed=0, require_response=False)
    assert [(r.prompt, r.answer, r.system, r.response) for r in rows["t"]] == [
        ("What is 2 + 3?", "5", "End with #### and the answer.", ""),
        ("What is 4 * 10?", "40", "End with #### and the answer.", "")]
    # No group: the whole match.
    whole = SourceConfig(path=str(path), name="w", columns={"prompt": "question"},
                         answer_regex=r"\d+$")
    rows, _ = load_rows([whole], BadRowSink("error"), seed=0, require_response=False)
    assert [r.answer for r in rows["w"]] == ["5", "40"]


def test_an_answer_the_regex_does_not_match_is_a_bad_row(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(GSM8K_LIKE[0]).encode(),
                                              b'{"question": "q", "answer": "no marker"}',
                                              b'{"question": "q", "answer": 7}'])
    src = SourceConfig(path=path, name="t", columns={"prompt": "question"},
                       answer_regex=r"####\s*(.+?)\s*$")
    with pytest.raises(BadRow, match=r"^t: row 1: 'answer' does not match answer_regex "):
        load_rows([src], BadRowSink("error"), seed=0, require_response=False)
    qpath = tmp_path / "q.jsonl"
    with BadRowSink("quarantine", qpath) as sink:
        rows, summary = load_rows([src], sink, seed=0, require_response=False)
    assert summary == {"t": {"read": 1, "bad": 2}}
    assert [json.loads(x)["reason"] for x in qpath.read_text().splitlines()] == [
        "'answer' does not match answer_regex '####\\\\s*(.+?)\\\\s*$'",
        "'answer' must be a string for answer_regex, got int"]


def test_a_mapped_column_missing_from_a_row_names_row_and_column(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [b'{"question": "q0", "solution": "s0"}',
                                              b'{"question": "q1"}',
                                              b'{"solution": "s2"}'])
    src = SourceConfig(path=path, name="d", columns={"prompt": "question", "response": "solution"})
    with pytest.raises(BadRow) as info:
        load_rows([src], BadRowSink("error"), seed=0)
    assert str(info.value) == "d: row 1: missing column 'solution' (mapped to 'response')"
    qpath = tmp_path / "q.jsonl"
    with BadRowSink("quarantine", qpath) as sink:
        rows, summary = load_rows([src], sink, seed=0)
    assert summary == {"d": {"read": 1, "bad": 2}} and rows["d"][0].response == "s0"
    assert [json.loads(x) for x in qpath.read_text().splitlines()] == [
        {"source": "d", "row": 1, "reason": "missing column 'solution' (mapped to 'response')",
         "raw": {"question": "q1"}},
        {"source": "d", "row": 2, "reason": "missing column 'question' (mapped to 'prompt')",
         "raw": {"solution": "s2"}}]


def test_a_columnar_dataset_without_a_mapped_column_fails_before_reading(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(GSM8K_LIKE).save_to_disk(str(folder))
    src = SourceConfig(path=str(folder), name="s", columns={"prompt": "problem"},
                       where={"is_safe": False})
    with pytest.raises(SourceError) as info:
        list(read_source(src))
    assert str(info.value) == (f"data source 's' (path {str(folder)!r}): no column 'problem', "
                               "'is_safe' (it has question, answer); see the source's "
                               "`columns` / `where`")
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), path)
    with pytest.raises(SourceError, match="no column 'response' \\(it has question, answer\\)"):
        list(read_source(SourceConfig(path=path, columns={"response": "response"})))


def test_where_keeps_matching_rows_with_their_indices(tmp_path):
    import datasets

    records = [{"prompt": "p0", "response": "r0", "is_safe": True},
               {"prompt": "p1", "response": "r1", "is_safe": False},
               {"prompt": "p2", "response": "r2", "is_safe": True},
               {"prompt": "p3", "response": "r3", "is_safe": False}]
    folder = tmp_path / "bt"
    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    src = SourceConfig(path=str(folder), name="bt", where={"is_safe": False},
                       columns={"prompt": "prompt", "response": "response"})
    assert [i for i, _ in read_source(src)] == [1, 3]
    rows, summary = load_rows([src], BadRowSink("error"), seed=0)
    assert summary == {"bt": {"read": 2, "bad": 0}}  # rows left out are not read
    assert [(r.prompt, r.id) for r in rows["bt"]] == [("p1", "bt:1"), ("p3", "bt:3")]
    # A JSONL row without the column is a bad row, not silently left out.
    path = write_lines(tmp_path / "bt.jsonl", [b'{"prompt": "p", "response": "r", '
                                               b'"is_safe": false}', GOOD])
    with pytest.raises(BadRow, match=r"row 1: missing column 'is_safe' \(used by `where`\)$"):
        load_rows([SourceConfig(path=path, where={"is_safe": False})], BadRowSink("error"),
                  seed=0)


def test_system_is_given_only_to_rows_without_one(tmp_path):
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    own = [{"role": "system", "content": "mine"}, *msgs]
    path = write_lines(tmp_path / "s.jsonl", [GOOD, b'{"prompt": "p", "response": "r", '
                                              b'"system": "theirs"}',
                                              json.dumps({"messages": msgs}).encode(),
                                              json.dumps({"messages": own}).encode()])
    rows, _ = load_rows([SourceConfig(path=path, name="s", system="fmt")], BadRowSink("error"),
                        seed=0)
    assert [r.system for r in rows["s"]] == ["fmt", "theirs", "fmt", "mine"]
    assert rows["s"][2].conversation == ({"role": "system", "content": "fmt"}, *msgs)


def test_hub_subset_is_passed_as_the_dataset_config_name(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, split=None, **kw):
        calls.append((path, split, kw))
        return datasets.Dataset.from_list(GSM8K_LIKE)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = SourceConfig(path="openai/gsm8k", subset="main", split="test",
                       columns={"prompt": "question", "answer": "answer"},
                       answer_regex=r"####\s*(.+?)\s*$")
    assert [r["answer"] for _, r in read_source(src)] == ["5", "40"]
    assert calls == [("openai/gsm8k", "test", {"name": "main"})]

    def offline(path, split=None, **kw):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceError, match=r"load_dataset\('openai/gsm8k', name='main', "
                                          r"split='test'\) failed: ConnectionError: offline"):
        list(read_source(src))


def test_subset_of_a_local_dataset_is_refused(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(GSM8K_LIKE).save_to_disk(str(folder))
    with pytest.raises(SourceError, match="subset 'main' is for Hub datasets"):
        list(read_source(SourceConfig(path=str(folder), subset="main")))


@pytest.mark.parametrize("override,message", [
    ("data.sources.0.columns.question=q",
     "data.sources[0].columns.question: not a field it fills (one of prompt, response,"),
    ("data.sources.0.columns.prompt=''", "data.sources[0].columns.prompt: name the column"),
    ("data.sources.0.subset=main", "data.sources[0].subset: kind toy has no subsets"),
    ("data.sources.0.where.is_safe=[0,1]", "data.sources[0].where.is_safe: must be one value"),
    ("eval.sets.2.answer_regex=(", "eval.sets[2].answer_regex: missing )"),
    ("eval.sets.0.columns.response=r", "eval.sets[0].columns.response: not a field it fills "
     "(one of prompt, category, prefill, answer, choices, id, system)"),
])
def test_bad_shaping_keys_fail_naming_the_key(override, message):
    from stardss.config import ConfigError, load_job

    with pytest.raises(ConfigError) as err:
        load_job("jobs/demo.yaml", [override])
    assert str(err.value).startswith(message)


def test_a_null_in_a_mapped_column_names_row_and_column(tmp_path):
    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"question": ["q0", None], "answer": ["a0", "a1"]}), path)
    src = SourceConfig(path=path, name="d", columns={"prompt": "question", "response": "answer"})
    with pytest.raises(BadRow) as info:
        load_rows([src], BadRowSink("error"), seed=0)
    assert str(info.value) == "d: row 1: missing column 'question' (mapped to 'prompt'; it is null)"
