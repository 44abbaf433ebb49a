"""The "done when" corpus of issue 14: malformed inputs a new user gives `stardss`, generated
here into files, each driven through the console script's own function (stardss.cli.main, in
this process) with `stardss train` (or `check` / `eval` where they read the input): every case
exits 2 with exactly one "stardss: <kind> error: ..." line on stderr that names the file and row
or the key, and no traceback; with data.on_bad_row=quarantine, every bad row is a quarantine
record with its reason.

No case reaches Ray: data, model and config are all read before it starts, and every job
points ray.address at a closed port, so a case that slipped through would end in the address
error (not the expected line) within a second instead of training.
"""
from __future__ import annotations

import dataclasses
import json
import re
import socket
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stardss import cli
from stardss.config.schema import JobConfig

DEMO = str(Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml")
GOOD = {"prompt": "What is two plus two?", "response": "Four."}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, base_model):
    """(run, folder): run(command, *args) -> (exit code, stdout, stderr) of `stardss` in this
    process for the demo job on the test model, its out_dir under the folder."""
    root = tmp_path_factory.mktemp("corpus")
    closed = _closed_port()

    def job_args(command: str, *args: str) -> list[str]:
        return [command, DEMO, f"out_dir={root / 'out'}", f"model.name_or_path={base_model}",
                "loss.kind=sft", f"ray.address=127.0.0.1:{closed}", *args]

    return job_args, root


@pytest.fixture(autouse=True, scope="module")
def _no_ray_joined():
    """A Ray session left open in this process by another module would make init_ray a no-op,
    and a case that slipped through would train there instead of failing at the address."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _clear(capsys, argv: list[str]) -> str:
    """Run `stardss argv` here; assert exit 2, one stderr line, no traceback; return it."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err[-3000:]
    assert code == 2, (code, out[-2000:], err[-2000:])
    lines = err.splitlines()
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _jsonl(path: Path, *lines: bytes | str | dict) -> Path:
    """A JSONL file: dicts dumped, str / bytes written as the line itself."""
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line.encode() if isinstance(line, str) else line) + b"\n"
    path.write_bytes(out)
    return path


def _source(path: Path, kind: str = "jsonl", extra: str = "") -> str:
    return f"data.sources=[{{path: '{path}', kind: {kind}{extra}}}]"


# Bad training rows: (case, row line, the reason the error line gives for row 1).
BAD_ROWS = [
    ("missing response", {"prompt": "hi"}, "missing field 'response'"),
    ("missing prompt", {"response": "hi"}, "missing field 'prompt'"),
    ("neither form", {"question": "hi", "answer": "x"}, "missing field 'prompt' (or 'messages')"),
    ("number prompt", {"prompt": 3, "response": "x"},
     "wrong type: 'prompt' must be a string, got int"),
    ("list response", {"prompt": "a", "response": ["x"]},
     "wrong type: 'response' must be a string, got list"),
    ("null response", {"prompt": "a", "response": None}, "missing field 'response' (it is null)"),
    ("dict prompt", {"prompt": {"text": "a"}, "response": "x"},
     "wrong type: 'prompt' must be a string, got dict"),
    ("bool response", {"prompt": "a", "response": True},
     "wrong type: 'response' must be a string, got bool"),
    ("empty response", {"prompt": "a", "response": ""},
     "empty 'response' (blank or whitespace only)"),
    ("blank prompt", {"prompt": " \t\n", "response": "x"},
     "empty 'prompt' (blank or whitespace only)"),
    ("NUL in response", {"prompt": "a", "response": "x\u0000y"},
     "'response' contains a NUL character at position 1"),
    ("lone surrogate", '{"prompt": "a", "response": "x\\ud800"}',
     "'response' is not valid UTF-8 (lone surrogate U+D800 at character 1)"),
    ("number system", {"system": 5, "prompt": "a", "response": "x"},
     "wrong type: 'system' must be a string, got int"),
    ("list id", {"id": [1], "prompt": "a", "response": "x"},
     "wrong type: 'id' must be a string or integer, got list"),
    ("bool answer", {"prompt": "a", "response": "x", "answer": True},
     "wrong type: 'answer' must be a string or number, got bool"),
    ("unknown role", {"messages": [{"role": "bot", "content": "a"},
                                   {"role": "assistant", "content": "x"}]},
     "bad role: 'messages[0].role' is 'bot', not one of system, user, assistant"),
    ("messages not a list", {"messages": "hi"},
     "wrong type: 'messages' must be a list, got str"),
    ("messages empty", {"messages": []}, "empty 'messages'"),
    ("message not an object", {"messages": ["hi"]},
     "wrong type: 'messages[0]' must be an object, got str"),
    ("message without content", {"messages": [{"role": "user"}]},
     "missing field 'messages[0].content'"),
    ("message content number", {"messages": [{"role": "user", "content": 1},
                                             {"role": "assistant", "content": "x"}]},
     "wrong type: 'messages[0].content' must be a string, got int"),
    ("ends with the user", {"messages": [{"role": "user", "content": "a"}]},
     "bad order: 'messages' must end with the assistant's response, but the last message is "
     "from 'user'"),
    ("two users", {"messages": [{"role": "user", "content": "a"},
                                {"role": "user", "content": "b"},
                                {"role": "assistant", "content": "x"}]},
     "bad order: 'messages[1].role' is 'user', expected 'assistant' (turns must alternate "
     "user/assistant, starting with user)"),
    ("late system", {"messages": [{"role": "user", "content": "a"},
                                  {"role": "system", "content": "s"},
                                  {"role": "assistant", "content": "x"}]},
     "bad order: 'messages[1]' is a system message; only the first message may be one"),
    ("malformed JSON", '{"prompt": "cut off',
     "invalid JSON: Unterminated string starting at (column 12)"),
    ("trailing garbage", '{"prompt": "a", "response": "x"} extra',
     "invalid JSON: Extra data (column 34)"),
    ("a JSON list", "[1, 2]", "not an object: the record is list"),
    ("a JSON string", '"just text"', "not an object: the record is str"),
    ("a JSON number", "42", "not an object: the record is int"),
    ("JSON null", "null", "not an object: the record is null"),
    ("invalid UTF-8", b'{"prompt": "caf\xe9", "response": "x"}',
     "not valid UTF-8 (byte 0xe9 at offset 15)"),
]


@pytest.mark.parametrize("case, line, reason", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_a_bad_row_names_the_file_and_row(corpus, capsys, tmp_path, case, line, reason):
    job_args, _ = corpus
    data = _jsonl(tmp_path / "d.jsonl", GOOD, line)
    got = _clear(capsys, job_args("train", _source(data), "data.on_bad_row=error"))
    assert got == f"stardss: data error: {data}: row 1: {reason}"


def test_every_bad_row_is_quarantined_with_its_reason(corpus, capsys, tmp_path):
    """All of BAD_ROWS in one file (no good row): quarantine keeps a record per row with its
    reason, and the run stops with the counts and the quarantine file's path."""
    job_args, root = corpus
    data = _jsonl(tmp_path / "all.jsonl", *(line for _, line, _ in BAD_ROWS))
    got = _clear(capsys, job_args("train", _source(data), "data.on_bad_row=quarantine"))
    quarantine = root / "out" / "sft" / "quarantine.jsonl"
    n = len(BAD_ROWS)
    assert got.startswith(f"stardss: data error: no usable training rows: {n} rows read "
                          f"({data}: {n} read, {n} bad), {n} bad by reason: ")
    assert got.endswith(f"; the bad rows are in {quarantine}")
    records = [json.loads(x) for x in quarantine.read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in records] == [
        (i, reason) for i, (_, _, reason) in enumerate(BAD_ROWS)]


def test_a_row_too_long_for_max_length(corpus, capsys, tmp_path):
    job_args, _ = corpus
    data = _jsonl(tmp_path / "long.jsonl", GOOD, {"prompt": "word " * 400, "response": "x"})
    got = _clear(capsys, job_args("train", _source(data), "data.on_bad_row=error"))
    assert re.fullmatch(rf"stardss: data error: {re.escape(str(data))}: row 1: over max length: "
                        r"\d+ tokens > data.max_length=128", got), got


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["empty", "blank lines"])
def test_an_empty_file(corpus, capsys, tmp_path, content):
    job_args, _ = corpus
    data = tmp_path / "empty.jsonl"
    data.write_bytes(content)
    got = _clear(capsys, job_args("train", _source(data)))
    assert got == f"stardss: data error: no usable training rows: 0 rows read from {data}"


def test_huge_files(corpus, capsys, tmp_path):
    """One 50 MB line that is cut off, and 5 000 good rows with one bad row at the end."""
    job_args, _ = corpus
    data = _jsonl(tmp_path / "huge.jsonl", GOOD,
                  '{"prompt": "a", "response": "' + "x" * 50_000_000)
    got = _clear(capsys, job_args("train", _source(data), "data.on_bad_row=error"))
    assert got == (f"stardss: data error: {data}: row 1: invalid JSON: Unterminated string "
                   f"starting at (column 29)")
    data = _jsonl(tmp_path / "many.jsonl", *([GOOD] * 5_000), {"prompt": "a"})
    got = _clear(capsys, job_args("train", _source(data), "data.on_bad_row=error"))
    assert got == f"stardss: data error: {data}: row 5000: missing field 'response'"


def test_files_that_are_not_what_the_source_says(corpus, capsys, tmp_path):
    job_args, _ = corpus
    array = tmp_path / "array.json"
    array.write_text(json.dumps([GOOD, GOOD]))
    cases = [
        (_source(array, "auto"), f"stardss: data error: data source '{array}': {array} holds a "
         f"JSON array, not JSON lines (one object per line); use kind hf to read it"),
        (_source(tmp_path / "none.jsonl"), f"stardss: file error: data source "
         f"'{tmp_path / 'none.jsonl'}': no such file: {tmp_path / 'none.jsonl'}"),
        (_source(tmp_path, "jsonl"), f"stardss: data error: data source '{tmp_path}': "
         f"{tmp_path} is a folder, not a file (kind jsonl); use kind hf for a dataset folder"),
    ]
    text = tmp_path / "rows.txt"
    text.write_text(json.dumps(GOOD) + "\n")
    cases.append((_source(text, "auto"), f"stardss: data error: data source '{text}': cannot "
                  f"tell the format of {text} from its suffix; set kind to jsonl, parquet or hf"))
    for override, line in cases:
        assert _clear(capsys, job_args("train", override)) == line


def test_parquet_and_csv(corpus, capsys, tmp_path):
    """Columnar sources: a wrong-typed or null cell, a missing mapped column, a file that is
    not Parquet; a CSV read through datasets with an empty cell."""
    job_args, _ = corpus
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["x", None]}), typed)
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": [1, 2]}), ints)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,response\nWhat is two plus two?,Four.\nSay hi,\n")
    cases = [
        (_source(typed, "parquet"), f"stardss: data error: {typed}: row 1: missing field "
                                    f"'response' (it is null)"),
        (_source(ints, "parquet"), f"stardss: data error: {ints}: row 0: wrong type: "
                                   f"'response' must be a string, got int"),
        (_source(typed, "parquet", ", columns: {response: answer}"),
         f"stardss: data error: data source '{typed}': no column 'answer' (it has prompt, "
         f"response); see the source's `columns` / `where`"),
        (_source(csv, "hf"), f"stardss: data error: {csv}: row 1: missing field 'response' "
                             f"(it is null)"),
    ]
    import datasets

    datasets.disable_progress_bars()  # datasets' "Generating train split" bar is no error line
    try:
        for override, line in cases:
            assert _clear(capsys, job_args("train", override, "data.on_bad_row=error")) == line
    finally:
        datasets.enable_progress_bars()
    got = _clear(capsys, job_args("train", _source(broken, "parquet")))
    assert got.startswith(f"stardss: data error: data source '{broken}': cannot read {broken} "
                          f"as Parquet: ")


def _float_keys(cls=JobConfig, prefix: str = "") -> list[str]:
    """Every float field of the job's sections (nested dataclasses, not lists or mappings)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        key = f"{prefix}{f.name}"
        if hint is float or (args == [float] and typing.get_origin(hint) is typing.Union):
            keys.append(key)
        elif dataclasses.is_dataclass(hint):
            keys += _float_keys(hint, key + ".")
    return keys


FLOAT_KEYS = _float_keys()


def test_every_float_key_refuses_nan_and_inf(corpus, capsys):
    """Each float of every section (train, loss, star, scoring, eval, ...), and floats inside
    lists (a guardrail's bias, a source's ratio), with nan, inf and -inf."""
    job_args, _ = corpus
    assert {"train.lr", "loss.kl.coef", "train.grad_clip", "loss.rs_threshold"} <= set(FLOAT_KEYS)
    assert len({k.split(".")[0] for k in FLOAT_KEYS}) >= 4 and len(FLOAT_KEYS) >= 20
    values = ("nan", "inf", "-inf")
    sections: set = set()
    for i, key in enumerate(FLOAT_KEYS):  # all three for a section's first key, then in turn
        section = key.split(".")[0]
        for value in values if section not in sections else (values[i % 3],):
            got = _clear(capsys, job_args("check", f"{key}={value}"))
            assert got == f"stardss: config error: {key}: must be a finite number, got {value}"
        sections.add(section)
    lists = [("guardrails=[{kind: rules, bias: VALUE}]", "guardrails[0].bias"),
             ("data.sources=[{path: finetune, kind: toy, ratio: VALUE}]", "data.sources[0].ratio"),
             ("guardrails=[{kind: rules, rules: [{pattern: x, weight: VALUE}]}]",
              "guardrails[0].rules[0].weight"),
             ("train.betas=[VALUE, 0.9]", "train.betas[0]")]
    for override, key in lists:
        for value in ("nan", "inf", "-inf"):
            got = _clear(capsys, job_args("check", override.replace("VALUE", value)))
            assert got == f"stardss: config error: {key}: must be a finite number, got {value}"


BAD_OVERRIDES = [
    ("foo=1", "stardss: config error: foo: no such key"),
    ("loss.kl.coeff=1", "stardss: config error: loss.kl.coeff: no such key"),
    ("train.lr=fast", None),
    ("train.epochs=1.5", None),
    ("train.epochs=many", None),
    ("data.sources=notalist", None),
    ("data.on_bad_row=ignore", "stardss: config error: data.on_bad_row: 'ignore' is not one of "
                               "error, quarantine"),
    ("train.lr=-1", "stardss: config error: train.lr: must be > 0, got -1.0"),
    ("train.lr", "stardss: config error: override 'train.lr' is not key=value"),
    ("guardrails=[]", "stardss: config error: guardrails: `stardss train` loss.kind=dss needs "
                      "STAR: name at least one guardrail"),
]


@pytest.mark.parametrize("override, line", BAD_OVERRIDES, ids=[c[0] for c in BAD_OVERRIDES])
def test_bad_overrides_name_the_key(corpus, capsys, override, line):
    job_args, _ = corpus
    argv = job_args("train", override)
    if override == "guardrails=[]":
        argv.remove("loss.kind=sft")
    got = _clear(capsys, argv)
    key = override.split("=")[0]
    assert got.startswith("stardss: config error: ") and key in got
    if line is not None:
        assert got == line


def test_empty_lists_each_command_needs(corpus, capsys):
    job_args, _ = corpus
    # The demo's attacks and safety-over-training name its sets: emptying the sets alone is
    # refused at the first reference, then at the setting that needs one, then the list itself.
    steps = [("eval.attacks[0].sets[0]: no eval set named 'harmful' (sets: none)",
              "eval.attacks=[]"),
             ("eval.during_training.sets[0]: no eval set named 'harmful' (sets: none)",
              "eval.during_training.sets=[]"),
             ("eval.during_training.enabled: needs a safety set in eval.sets",
              "eval.during_training.enabled=false"),
             ("eval.sets: `stardss eval` needs at least one eval set", None)]
    overrides = ["eval.sets=[]"]
    for line, fix in steps:
        assert _clear(capsys, job_args("eval", *overrides)) == f"stardss: config error: {line}"
        overrides.append(fix)
    got = _clear(capsys, job_args("score", "guardrails=[]"))
    assert got == ("stardss: config error: guardrails: `stardss score` scores prefixes: name at "
                   "least one guardrail")


def test_job_files_that_are_not_jobs(capsys, tmp_path):
    cases = [(b"- a\n- list\n", "a job file is a mapping of sections, not a list"),
             (b"just a string\n", "a job file is a mapping of sections, not the str 'just a "
                                  "string'"),
             (b"42\n", "a job file is a mapping of sections, not the int 42"),
             (b"name: [unclosed\n", "invalid YAML (line 2, column 1): expected ',' or ']', but "
                                    "got '<stream end>'"),
             (b"a: b: c\n", "invalid YAML (line 1, column 5): mapping values are not allowed "
                            "here"),
             (b"name: x\nname: y\n", "invalid YAML (line 2, column 1): found duplicate key name"),
             (b"name: caf\xe9\n", "not valid UTF-8 (byte 0xe9 at offset 9)")]
    for i, (content, what) in enumerate(cases):
        job = tmp_path / f"job{i}.yaml"
        job.write_bytes(content)
        assert _clear(capsys, ["check", str(job)]) == f"stardss: config error: {job}: {what}"
    missing = tmp_path / "absent.yaml"
    assert _clear(capsys, ["train", str(missing)]) == (f"stardss: config error: job file not "
                                                       f"found: {missing}")
    job = tmp_path / "with_defaults.yaml"
    job.write_text("defaults: [parts/missing.yaml]\n")
    assert _clear(capsys, ["train", str(job)]) == (
        f"stardss: config error: job file not found: {tmp_path / 'parts' / 'missing.yaml'} (in "
        f"the defaults of {job.resolve()})")


def test_a_ray_address_where_nothing_answers(corpus, capsys, tmp_path):
    """Good data, so the run gets as far as Ray: the address (a closed port) is refused fast."""
    job_args, _ = corpus
    data = _jsonl(tmp_path / "ok.jsonl", GOOD, GOOD)
    assert cli.main(job_args("train", _source(data))) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    errors = [x for x in err.splitlines() if x.startswith("stardss:")]  # after progress lines
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1]
    assert errors[0].startswith("stardss: ray error: ray.address=127.0.0.1:") and (
        "no Ray cluster answered within 10 s (connection refused)" in errors[0])
